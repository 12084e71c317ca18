"""Reads of the broker's view a worker needs outside Faust: a consumer group's committed offsets."""

from __future__ import annotations

import asyncio
from typing import Any

from stream_app.adapters.kafka_security import client_kwargs
from stream_app.settings import Settings


class LazyAdmin:
    """One aiokafka admin client per worker, started on first use (again after a failed start), closed by close();
    after close(), get() refuses (a start still under way when close() came is closed, not kept)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.client: Any = None
        self.closed = False

    async def get(self, timeout_s: float | None = None) -> Any:
        if self.closed:
            raise RuntimeError("the admin client is closed (the worker is stopping)")
        if self.client is None:
            from aiokafka.admin import AIOKafkaAdminClient

            client = AIOKafkaAdminClient(**client_kwargs(self.settings))
            try:
                await asyncio.wait_for(client.start(), timeout_s)
                if self.closed:
                    raise RuntimeError("the admin client was closed while it started (the worker is stopping)")
            except BaseException:
                await client.close()
                raise
            self.client = client
        return self.client

    async def close(self) -> None:
        self.closed = True
        if self.client is not None:
            client, self.client = self.client, None
            await client.close()


async def group_offsets(admin: Any, group: str) -> dict[tuple[str, int], int]:
    """The consumer group's committed offsets, (topic, partition) -> next offset to read (partitions without a
    committed offset are left out). admin: a started aiokafka AIOKafkaAdminClient."""
    offsets = await admin.list_consumer_group_offsets(group)
    return {(tp.topic, tp.partition): meta.offset for tp, meta in offsets.items() if meta.offset >= 0}
