"""Reads of the broker's view a worker needs outside Faust: a consumer group's committed offsets."""

from __future__ import annotations

from typing import Any


async def group_offsets(admin: Any, group: str) -> dict[tuple[str, int], int]:
    """The consumer group's committed offsets, (topic, partition) -> next offset to read (partitions without a
    committed offset are left out). admin: a started aiokafka AIOKafkaAdminClient."""
    offsets = await admin.list_consumer_group_offsets(group)
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
