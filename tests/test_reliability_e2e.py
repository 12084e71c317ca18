"""Hostile input on the real broker: poison messages interleaved with good ones, redeliveries, forgetting a user.

One `stream-app worker` process (RocksDB tables, embedded Qdrant, the default encoder) on private topics, fed a
small catalogue. Nothing is mocked; the test talks Kafka and reads the worker's web view.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from test_pipeline_e2e import BASE_TS, Worker, as_json, free_port, start_worker, stop_worker, wait_until

from stream_app.sample_data import load_catalogue

pytestmark = pytest.mark.kafka
BIG = 4 << 20  # topic and producer limit here, so that a > 1 MiB value reaches the worker (which rejects it)
N_ITEMS = 20


async def produce(bootstrap: str, topic: str, messages: list[tuple[bytes | None, bytes | None]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=BIG)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key)
        await producer.flush()
    finally:
        await producer.stop()


async def read_topic(bootstrap: str, topic: str, done, timeout: float = 120, quiet_s: float = 2.0) -> list:
    """Every message of a topic from the start until done(messages) holds and nothing more came for quiet_s."""
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None,
                                max_partition_fetch_bytes=BIG)
    await consumer.start()
    got: list = []
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=int(quiet_s * 1000))
            got += [m for msgs in batch.values() for m in msgs]
            if not batch and done(got):
                return got
        raise AssertionError(f"timed out reading {topic}: {len(got)} messages")
    finally:
        await consumer.stop()


def user_page(w: Worker, user: str) -> dict:
    with urllib.request.urlopen(f"{w.web}/users/{urllib.parse.quote(user)}/", timeout=10) as r:
        return json.loads(r.read())


def user_page_soon(w: Worker, user: str) -> dict:
    """The user's page, or {} while the worker cannot serve it yet (503 while its tables recover)."""
    try:
        return user_page(w, user)
    except OSError:
        return {}


def ev(user: str, item: str, minute: int, **extra) -> dict:
    return {"event_id": f"{user}-{uuid.uuid4().hex[:8]}", "user_id": user, "type": "view", "item_id": item,
            "ts": BASE_TS + 60 * minute, **extra}


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory) -> Iterator[Worker]:
    run = uuid.uuid4().hex[:8]
    port = free_port()
    data = tmp_path_factory.mktemp("rel-worker")
    env = {
        **os.environ,
        "STREAM_APP_KAFKA_BOOTSTRAP": kafka_bootstrap,
        "STREAM_APP_APP_ID": f"rel-{run}",
        "STREAM_APP_ITEMS_TOPIC": f"rel-items-{run}",
        "STREAM_APP_BEHAVIOUR_TOPIC": f"rel-behaviour-{run}",
        "STREAM_APP_RECOMMENDATIONS_TOPIC": f"rel-recs-{run}",
        "STREAM_APP_DLQ_TOPIC": f"rel-dlq-{run}",
        "STREAM_APP_ITEMS_DLQ_TOPIC": f"rel-items-dlq-{run}",
        "STREAM_APP_DATA_DIR": str(data),
        "STREAM_APP_TABLE_STORE": "rocksdb://",
        "STREAM_APP_WEB_PORT": str(port),
        "STREAM_APP_TOPIC_PARTITIONS": "2",
    }

    async def big_topics() -> None:  # the inputs accept > 1 MiB values, so the worker must judge them itself
        admin = AIOKafkaAdminClient(bootstrap_servers=kafka_bootstrap)
        await admin.start()
        try:
            await admin.create_topics([NewTopic(env[f"STREAM_APP_{t}_TOPIC"], num_partitions=2, replication_factor=1,
                                                topic_configs={"max.message.bytes": str(BIG)})
                                       for t in ("ITEMS", "BEHAVIOUR")])
            # A DLQ that refuses records over 4 KiB: a dead letter with the value's copy is refused by the broker,
            # retried, and delivered without the copy.
            await admin.create_topics([NewTopic(env["STREAM_APP_ITEMS_DLQ_TOPIC"], num_partitions=1,
                                                replication_factor=1, topic_configs={"max.message.bytes": "4096"})])
        finally:
            await admin.close()

    asyncio.run(big_topics())
    w = start_worker(env, data, f"http://127.0.0.1:{port}")
    try:
        asyncio.run(produce(kafka_bootstrap, w.topic("items"),
                            [(i["item_id"].encode(), as_json(i)) for i in load_catalogue()[:N_ITEMS]]))
        wait_until(lambda: (w.stats() or {}).get("items_indexed", 0) >= N_ITEMS, 300, "indexing", w.proc)
        yield w
    finally:
        stop_worker(w)


def test_poison_items_cost_only_themselves(worker):
    bootstrap = worker.env["STREAM_APP_KAFKA_BOOTSTRAP"]
    items = load_catalogue()[N_ITEMS:N_ITEMS + 10]
    good = [(i["item_id"].encode(), as_json(i)) for i in items]
    poison = {
        b"p-item-surrogate": b'{"item_id": "x-\\ud800", "title": "t"}',
        b"p-item-key": as_json({"item_id": "not-the-key", "title": "t"}),
        b"p-item-deep": b"[" * 100_000 + b"]" * 100_000,
        b"p-item-null": None,
    }
    before = (worker.stats() or {})["items_indexed"]
    messages = good[:5] + list(poison.items()) + good[5:]
    asyncio.run(produce(bootstrap, worker.topic("items"), messages))
    wait_until(lambda: (worker.stats() or {}).get("items_indexed", 0) >= before + 10, 120, "indexing", worker.proc)
    dead = asyncio.run(read_topic(bootstrap, worker.topic("items_dlq"), lambda got: len(got) >= len(poison)))
    reasons = {m.key: json.loads(m.value)["reason"] for m in dead}
    assert len(dead) == len(poison) and set(reasons) == set(poison)
    assert "lone surrogate" in reasons[b"p-item-surrogate"]
    assert "key is not the item_id" in reasons[b"p-item-key"]
    assert "nested too deeply" in reasons[b"p-item-deep"]
    deep = next(json.loads(m.value) for m in dead if m.key == b"p-item-deep")  # refused once with its copy
    assert deep["value_b64"] is None and deep["value_length"] == 200_000 and deep["value_truncated"]
    assert "empty value" in reasons[b"p-item-null"]
    assert (worker.stats() or {})["items_indexed"] == before + 10


def poison_behaviour(item_id: str, tag: str = "") -> dict[bytes, tuple[bytes | None, str]]:
    """key -> (value, expected reason) of every poison kind, keys (and user ids) made unique by `tag`."""
    valid = {"event_id": "p", "user_id": "p", "type": "view", "item_id": item_id, "ts": BASE_TS}
    head = json.dumps(valid)[:-1].encode()  # a valid event without its closing brace, to append fields to

    def poison_event(key: str, **fields) -> bytes:
        return as_json({**valid, "event_id": key, "user_id": key, **fields})

    kinds: dict[str, tuple[bytes | None, str]] = {
        "p-deep-array": (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        "p-deep-object": (head + b', "x": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}", "nested too deeply"),
        "p-digits": (head + b', "n": ' + b"7" * 5000 + b"}", "not valid JSON"),
        "p-null": (None, "empty value"),
        "p-empty": (b"", "empty value"),
        "p-surrogate-user": (b'{"event_id": "s1", "user_id": "p-surrogate-user\\ud800", "type": "view", '
                             b'"item_id": "x", "ts": 1}', "lone surrogate"),
        "p-surrogate-text": (as_json({"event_id": "s2", "user_id": f"p-surrogate-text{tag}", "type": "search",
                                      "ts": 1}).replace(b'"ts"', b'"text": "phone \\ud800", "ts"'), "lone surrogate"),
        "p-surrogate-item": (as_json({"event_id": "s3", "user_id": f"p-surrogate-item{tag}", "type": "view",
                                      "ts": 1}).replace(b'"ts"', b'"item_id": "x-\\ud800", "ts"'), "lone surrogate"),
        "p-long-text": (poison_event(f"p-long-text{tag}", type="review", text="长" * 10_000), "longer than 16384 bytes"),
        "p-over-1mib": (poison_event(f"p-over-1mib{tag}", type="review", text="a" * (3 << 19)),
                        "over the 1048576-byte limit"),
        "p-key": (as_json({**valid, "event_id": "k", "user_id": "somebody-else"}), "key is not the user_id"),
        "p-future": (poison_event(f"p-future{tag}", ts=time.time() + 3 * 86_400), "ahead of the message's broker"),
        "p-not-json": (b"{nope", "not valid JSON"),
        "p-unknown-item": (poison_event(f"p-unknown-item{tag}", item_id="sku-nowhere"), "unknown or deleted item_id"),
    }
    return {f"{k}{tag}".encode(): v for k, v in kinds.items()}


def test_poison_behaviour_interleaved_with_good_events(worker):
    """Every good event is answered; every poison message is dead-lettered once, with its own reason."""
    hostile_run(worker, n_users=12, per_user=3, copies=1)


def hostile_run(worker: Worker, n_users: int, per_user: int, copies: int) -> dict:
    """n_users x per_user good events with `copies` of every poison kind spread among them; checks and counts."""
    bootstrap = worker.env["STREAM_APP_KAFKA_BOOTSTRAP"]
    item_ids = [i["item_id"] for i in load_catalogue()[:N_ITEMS]]
    run = uuid.uuid4().hex[:6]
    poison: dict[bytes, tuple[bytes | None, str]] = {}
    for c in range(copies):
        poison.update(poison_behaviour(item_ids[0], f"-{run}-{c}"))
    users = [f"good-{run}-{u}" for u in range(n_users)]
    good = [ev(u, item_ids[(n + k) % N_ITEMS], minute=k) for k in range(per_user) for n, u in enumerate(users)]
    messages: list[tuple[bytes | None, bytes | None]] = []
    bad = list(poison.items())
    every = max(1, len(good) // (len(bad) + 1))
    for n, event in enumerate(good):  # poison spread through the good events, so batches mix both
        messages.append((event["user_id"].encode(), as_json(event)))
        if n % every == every - 1 and bad:
            key, (value, _) = bad.pop()
            messages.append((key, value))
    messages += [(key, value) for key, (value, _) in bad]

    t0 = time.monotonic()
    asyncio.run(produce(bootstrap, worker.topic("behaviour"), messages))
    wanted = {e["event_id"] for e in good}
    recs = asyncio.run(read_topic(bootstrap, worker.topic("recommendations"), lambda got: wanted <= {
        i for m in got for i in json.loads(m.value)["event_ids"]}))
    answered = Counter(i for m in recs for i in json.loads(m.value)["event_ids"])
    assert wanted <= set(answered)
    answered_s = time.monotonic() - t0
    dead = [m for m in asyncio.run(read_topic(bootstrap, worker.topic("dlq"),
                                              lambda got: {m.key for m in got} >= set(poison))) if m.key in poison]
    by_key = Counter(m.key for m in dead)
    assert by_key == Counter(set(poison)), by_key  # each poison once
    for m in dead:
        rec = json.loads(m.value)
        assert poison[m.key][1] in rec["reason"], (m.key, rec["reason"])
        assert rec["topic"] == worker.topic("behaviour") and rec["offset"] >= 0
        assert len(m.value) < 256 * 1024  # the record fits the broker whatever the message was
        if m.key.startswith(b"p-over-1mib"):
            assert rec["value_truncated"] and rec["value_length"] > 1 << 20 and len(rec["value_sha256"]) == 64
    assert not [m for m in asyncio.run(read_topic(bootstrap, worker.topic("dlq"), lambda got: True))
                if m.key and m.key.startswith(b"good-")]  # no good event dead-lettered
    for u in users:
        assert user_page(worker, u)["events"] == per_user
    assert worker.proc.poll() is None
    return {"good": len(good), "answered": len(wanted & set(answered)), "poison": len(poison),
            "dead_lettered_once": sum(n == 1 for n in by_key.values()), "all_answered_s": round(answered_s, 1)}


def test_a_triple_sent_event_is_applied_once(worker):
    bootstrap = worker.env["STREAM_APP_KAFKA_BOOTSTRAP"]
    item_ids = [i["item_id"] for i in load_catalogue()[:N_ITEMS]]
    run = uuid.uuid4().hex[:6]
    same_batch, across = f"triple-a-{run}", f"triple-b-{run}"
    first = ev(same_batch, item_ids[1], 0)
    second = ev(across, item_ids[2], 0)
    before = (worker.stats() or {})["duplicates"]
    msgs = [(same_batch.encode(), as_json(first))] * 3 + [(across.encode(), as_json(second))]
    asyncio.run(produce(bootstrap, worker.topic("behaviour"), msgs))
    wait_until(lambda: (worker.stats() or {}).get("duplicates", 0) >= before + 2, 60, "in-batch duplicates",
               worker.proc)
    asyncio.run(produce(bootstrap, worker.topic("behaviour"), [(across.encode(), as_json(second))] * 2))
    wait_until(lambda: (worker.stats() or {}).get("duplicates", 0) >= before + 4, 60, "redeliveries", worker.proc)
    assert user_page(worker, same_batch)["events"] == 1
    assert user_page(worker, across)["events"] == 1
    later = ev(across, item_ids[3], 1)
    asyncio.run(produce(bootstrap, worker.topic("behaviour"), [(across.encode(), as_json(later))]))
    wait_until(lambda: user_page_soon(worker, across).get("events") == 2, 60, "a new event", worker.proc)


def test_a_forgotten_user_stays_forgotten_after_a_restart_from_the_changelog(worker):
    """Runs last: forget one user with the CLI, restart the worker with its local tables deleted (so it restores
    them from the changelog), and find nothing of that user; another user's state is restored intact."""
    bootstrap = worker.env["STREAM_APP_KAFKA_BOOTSTRAP"]
    item_ids = [i["item_id"] for i in load_catalogue()[:N_ITEMS]]
    run = uuid.uuid4().hex[:6]
    gone, kept = f"forget-me-{run}", f"keep-me-{run}"
    events = [ev(u, item_ids[k], k) for u in (gone, kept) for k in range(3)]
    asyncio.run(produce(bootstrap, worker.topic("behaviour"), [(e["user_id"].encode(), as_json(e)) for e in events]))
    wait_until(lambda: user_page_soon(worker, gone).get("events") == 3 and user_page_soon(worker, kept).get("events") == 3,
               60, "both users", worker.proc)
    assert "last_recommendation" in user_page(worker, gone)

    forgotten = (worker.stats() or {})["forgotten"]
    subprocess.run([sys.executable, "-m", "stream_app.cli", "forget", gone], env=worker.env, check=True,
                   capture_output=True)
    wait_until(lambda: (worker.stats() or {}).get("forgotten", 0) > forgotten, 60, "the forget", worker.proc)
    page = user_page(worker, gone)
    assert not page["known"] and "last_recommendation" not in page

    stop_worker(worker)
    data = Path(worker.env["STREAM_APP_DATA_DIR"])
    shutil.rmtree(data / "faust")  # local tables gone: the restart restores them from the changelog
    fresh = start_worker(worker.env, data, worker.web)
    worker.proc = fresh.proc
    wait_until(lambda: user_page_soon(worker, kept).get("events") == 3, 120, "the restored state", worker.proc)
    page = user_page(worker, gone)
    assert not page["known"] and "last_recommendation" not in page

    # No user id reached the worker's log (it logs at WARNING and above here; ids only at DEBUG).
    log_text = (data / "worker.log").read_text(errors="replace")
    assert "a send to Kafka failed" in log_text  # the refused dead letter above, logged without its contents
    for user in (gone, kept, "good-", "triple-", "p-item-deep"):
        assert user not in log_text
