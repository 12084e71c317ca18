"""Shared fixtures: the real Kafka broker (started when none runs) and per-test unique topics."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from stream_app.stream.process import RUN_TAGS

REPO = Path(__file__).resolve().parents[1]
BOOTSTRAP = os.environ.get("STREAM_APP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
log = logging.getLogger(__name__)


def _port_open(bootstrap: str) -> bool:
    host, port = bootstrap.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


def made_by_this_session(topic: str) -> bool:
    """A topic of one of the runs private_env gave this process: "<prefix>-<kind>-<run>" or "<prefix>-<run>-..." (the
    tables' changelogs, Faust's assignor topic, item-vectors)."""
    return any(re.search(rf"-{run}(-|$)", topic) for run in RUN_TAGS)


async def _topics(bootstrap: str) -> set[str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return set(await admin.list_topics())
    finally:
        await admin.close()


async def _delete_topics(bootstrap: str, names: list[str]) -> int:
    """Delete the topics; the number the broker deleted (a topic already gone, or refused, is not counted)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=60_000)
    await admin.start()
    deleted = 0
    try:
        for start in range(0, len(names), 100):
            response = await admin.delete_topics(names[start:start + 100], timeout_ms=60_000)
            deleted += sum(1 for _name, error_code, *_ in response.topic_error_codes if error_code == 0)
    finally:
        await admin.close()
    return deleted


@pytest.fixture(scope="session")
def kafka_bootstrap() -> Iterator[str]:
    """The bootstrap address of a running broker; starts scripts/kafka.sh when none answers (and stops it after).

    The private topics of this session's runs (private_env's RUN_TAGS) are deleted at its end, never another run's:
    left behind, a development broker gathered ~5,000 partitions, which made its restarts slow (and showed a bug:
    see README, Reliability).
    """
    started = False
    if not _port_open(BOOTSTRAP):
        subprocess.run([str(REPO / "scripts" / "kafka.sh"), "start"], check=True)
        started = True
    try:
        before = asyncio.run(_topics(BOOTSTRAP))
    except Exception as exc:  # noqa: BLE001 - the tests report an unreachable broker themselves
        log.warning("cannot list the broker's topics (%s): this session's topics will be left on it", exc)
        before = None
    yield BOOTSTRAP
    if before is not None:
        try:
            made = sorted(t for t in asyncio.run(_topics(BOOTSTRAP)) - before if made_by_this_session(t))
            deleted = asyncio.run(_delete_topics(BOOTSTRAP, made))
            log.info("deleted %d of the %d topics this session created", deleted, len(made))
        except Exception as exc:  # noqa: BLE001 - clean-up must not fail the run
            log.warning("could not delete this session's topics: %s", exc)
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
