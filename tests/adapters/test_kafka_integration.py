"""Integration tests against the real Kafka broker: raw aiokafka round trip and a minimal Faust worker."""

from __future__ import annotations

import asyncio
import json
import uuid

import faust
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

pytestmark = pytest.mark.kafka


async def read_json(bootstrap: str, topic: str, n: int, timeout: float = 30.0) -> list[tuple[bytes | None, dict]]:
    """Read n JSON messages from the start of a topic (fails the test when they do not arrive in time)."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None)
    await consumer.start()
    out: list[tuple[bytes | None, dict]] = []
    try:
        async with asyncio.timeout(timeout):
            async for msg in consumer:
                out.append((msg.key, json.loads(msg.value)))
                if len(out) == n:
                    break
    finally:
        await consumer.stop()
    return out


async def test_aiokafka_json_round_trip(kafka_bootstrap, new_topic):
    topic = await new_topic("roundtrip")
    events = [{"event_id": f"e{i}", "user_id": f"u{i % 3}", "type": "view", "item_id": f"sku-{i}", "ts": 1767225600 + i}
              for i in range(50)]
    producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
    await producer.start()
    try:
        for e in events:
            await producer.send(topic, json.dumps(e).encode(), key=e["user_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()

    got = await read_json(kafka_bootstrap, topic, len(events))
    assert [v for _, v in got] == events  # one partition: order is kept
    assert [k for k, _ in got] == [e["user_id"].encode() for e in events]


async def test_faust_agent_consumes_and_produces(kafka_bootstrap, new_topic, tmp_path):
    """A Faust app with one agent, run as a worker inside the test, maps one real topic onto another."""
    source_name = await new_topic("faust-in")
    sink_name = await new_topic("faust-out")
    app = faust.App(
        f"test-app-{uuid.uuid4().hex[:8]}",
        broker=f"kafka://{kafka_bootstrap}",
        store="memory://",
        datadir=str(tmp_path),
        web_enabled=False,
        topic_partitions=1,
        consumer_auto_offset_reset="earliest",
    )
    source = app.topic(source_name, value_serializer="json")
    sink = app.topic(sink_name, value_serializer="json")

    @app.agent(source)
    async def double(stream):
        async for key, value in stream.items():
            await sink.send(key=key, value={"n": value["n"], "doubled": value["n"] * 2})

    await app.start()
    try:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap)
        await producer.start()
        try:
            for n in range(10):
                await producer.send(source_name, json.dumps({"n": n}).encode(), key=str(n).encode())
            await producer.flush()
        finally:
            await producer.stop()
        got = await read_json(kafka_bootstrap, sink_name, 10, timeout=60)
    finally:
        await app.stop()
    assert sorted(v["doubled"] for _, v in got) == [2 * n for n in range(10)]
    assert {k for k, _ in got} == {str(n).encode() for n in range(10)}
