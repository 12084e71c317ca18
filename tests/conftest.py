"""Shared fixtures: the real Kafka broker (started when none runs) and per-test unique topics."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

REPO = Path(__file__).resolve().parents[1]
BOOTSTRAP = os.environ.get("STREAM_APP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")


def _port_open(bootstrap: str) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


@pytest.fixture(scope="session")
def kafka_bootstrap() -> str:
    """The bootstrap address of a running broker; starts scripts/kafka.sh when none answers (and stops it after)."""
    started = False
    if not _port_open(BOOTSTRAP):
        subprocess.run([str(REPO / "scripts" / "kafka.sh"), "start"], check=True)
        started = True
    yield BOOTSTRAP
    if started:
        subprocess.run([str(REPO / "scripts" / "kafka.sh"), "stop"], check=False)


TopicFactory = Callable[..., Awaitable[str]]


@pytest.fixture
async def new_topic(kafka_bootstrap: str) -> AsyncIterator[TopicFactory]:
    """Create uniquely named topics on the real broker for one test, and delete them afterwards."""
    admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
    await admin.start()
    created: list[str] = []

    async def create(prefix: str = "t", partitions: int = 1) -> str:
        name = f"test-{prefix}-{uuid.uuid4().hex[:10]}"
        await admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        created.append(name)
        for _ in range(100):  # metadata propagates asynchronously
            if name in await admin.list_topics():
                break
            await asyncio.sleep(0.05)
        return name

    try:
        yield create
    finally:
        if created:
            try:
                await admin.delete_topics(created)
            except Exception:  # a topic already gone must not fail the test run
                pass
        await admin.close()
