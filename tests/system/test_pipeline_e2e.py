"""End to end on the real broker: a `stream-app worker` process, the sample catalogue, behaviour in, lists out.

Nothing is mocked: the worker is the product's own command with the default (multilingual) encoder and the
embedded Qdrant engine; the test only talks Kafka and reads the worker's web view.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_app.core.events import LIST_TITLE_CHARS
from stream_app.sample_data import RELATED_CATEGORIES, category_of, load_catalogue
from stream_app.stream.process import WorkerProcess as Worker
from stream_app.stream.process import private_env, start_worker, wait_until

pytestmark = pytest.mark.kafka
BASE_TS = 1767225600


async def produce(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for key, value in messages:
            await producer.send(topic, value, key=key.encode())
        await producer.flush()
    finally:
        await producer.stop()


def as_json(obj: dict) -> bytes:
    return json.dumps(obj, ensure_ascii=False).encode()


@pytest.fixture(scope="module")
def worker(kafka_bootstrap: str, tmp_path_factory) -> Iterator[Worker]:
    """A real worker on private topics, fed the whole sample catalogue, indexed before the tests start."""
    data = tmp_path_factory.mktemp("worker")
    env = private_env("e2e", kafka_bootstrap, data,
        STREAM_APP_TABLE_STORE="rocksdb://",  # the production store
        STREAM_APP_TOPIC_PARTITIONS="2",
        STREAM_APP_STORE_TIMEOUT_S="5",  # short, so the stopped-store test below is quick
    )
    w = start_worker(env, data)
    try:
        catalogue = load_catalogue()
        asyncio.run(produce(kafka_bootstrap, w.topic("items"),
                            [(i["item_id"], as_json(i)) for i in catalogue]))
        wait_until(lambda: (w.stats() or {}).get("items_indexed", 0) >= len(catalogue), 300, "indexing", w.proc)
        yield w
    finally:
        w.stop()


async def play_and_collect(w: Worker, events: list[dict], timeout: float = 60, burst: bool = False,
                           every: bool = False) -> list[dict]:
    """Send behaviour events (50 ms apart, or all at once with burst), return the recommendations that follow until
    each user's last event is answered (with every: until every event is).

    The worker sends one list per user per batch, so several events of a user can share one recommendation.
    """
    bootstrap = w.env["STREAM_APP_KAFKA_BOOTSTRAP"]
    users = {e["user_id"] for e in events if isinstance(e, dict)}
    consumer = AIOKafkaConsumer(w.topic("recommendations"), bootstrap_servers=bootstrap,
                                auto_offset_reset="latest", group_id=f"test-{uuid.uuid4().hex[:6]}")
    await consumer.start()
    try:
        while not consumer.assignment():
            await asyncio.sleep(0.05)
        for tp in consumer.assignment():
            await consumer.position(tp)  # pin "latest" before producing
        if burst:
            await produce(bootstrap, w.topic("behaviour"), [(e["user_id"], as_json(e)) for e in events])
        for e in [] if burst else events:
            await produce(bootstrap, w.topic("behaviour"), [(e["user_id"], as_json(e))])
            await asyncio.sleep(0.05)
        waiting = {e["event_id"] for e in (events if every else {e["user_id"]: e for e in events}.values())}
        got: list[dict] = []
        async with asyncio.timeout(timeout):
            async for msg in consumer:
                rec = json.loads(msg.value)
                if rec["user_id"] in users:
                    got.append(rec)
                    waiting -= set(rec["event_ids"])
                if not waiting:
                    break
        return got
    finally:
        await consumer.stop()


def ev(user: str, kind: str, item: str | None = None, text: str | None = None, minute: int = 0) -> dict:
    e = {"event_id": f"{user}-{uuid.uuid4().hex[:6]}", "user_id": user, "type": kind, "ts": BASE_TS + 60 * minute}
    if item:
        e["item_id"] = item
    if text:
        e["text"] = text
    return e


def ids_by_title(fragment: str) -> str:
    matches = [i["item_id"] for i in load_catalogue() if fragment in i["title"]]
    assert matches, fragment
    return matches[0]


def related_share(rec: dict, category: str) -> float:
    cats = category_of()
    related = RELATED_CATEGORIES[category]
    return sum(cats[i["item_id"]] in related for i in rec["items"]) / len(rec["items"])


def test_phone_accessory_buyer_gets_phone_related_items_not_what_they_consumed(worker):
    user = f"alice-{uuid.uuid4().hex[:6]}"
    case = ids_by_title("Spigen Tough Armor Case")
    charger = ids_by_title("Anker")
    events = [ev(user, "view", case, minute=0), ev(user, "view", charger, minute=1),
              ev(user, "cart", case, minute=2), ev(user, "purchase", case, minute=3),
              ev(user, "purchase", charger, minute=4)]
    recs = asyncio.run(play_and_collect(worker, events))
    last = recs[-1]
    assert last["strategy"] == "blend" and len(last["items"]) == 10
    assert {case, charger}.isdisjoint(i["item_id"] for i in last["items"])
    assert related_share(last, "phone-accessories") >= 0.8, last["items"]
    assert last["latency_ms"] >= 0

    # The web view explains it: the worker that owns the user's partition serves its state and last list.
    with urllib.request.urlopen(f"{worker.web}/users/{user}/", timeout=10) as r:
        explained = json.loads(r.read())
    assert explained["known"] and explained["events"] == len(events)
    assert set(explained["recent_items"]) == {case, charger}
    assert explained["last_recommendation"]["items"] == last["items"]
    with urllib.request.urlopen(f"{worker.web}/api/dashboard", timeout=10) as r:  # what /dashboard shows
        assert user in [row["user_id"] for row in json.loads(r.read())["latest"]]


def test_chinese_user_gets_chinese_phone_related_items(worker):
    user = f"小明-{uuid.uuid4().hex[:6]}"
    phone = ids_by_title("华为 Mate 60 Pro")
    buds = ids_by_title("FreeBuds")
    events = [ev(user, "view", phone, minute=0), ev(user, "purchase", buds, minute=2),
              ev(user, "search", text="手机 充电器", minute=3)]
    recs = asyncio.run(play_and_collect(worker, events))
    last = recs[-1]
    assert {phone, buds}.isdisjoint(i["item_id"] for i in last["items"])
    assert related_share(last, "phones") >= 0.8, last["items"]
    chinese = sum(any("\u4e00" <= ch <= "\u9fff" for ch in i["title"]) for i in last["items"])
    assert chinese >= 5, last["items"]


def test_malformed_events_go_to_the_dlq_and_the_worker_keeps_going(worker):
    bootstrap = worker.env["STREAM_APP_KAFKA_BOOTSTRAP"]
    user = f"dlq-{uuid.uuid4().hex[:6]}"
    bad = [(user, b"{this is not json"), (user, as_json({"event_id": "x", "user_id": user, "type": "teleport",
                                                          "item_id": "sku-0001", "ts": BASE_TS}))]

    async def scenario() -> tuple[list[dict], list[dict]]:
        dlq = AIOKafkaConsumer(worker.topic("dlq"), bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                               group_id=None)
        await dlq.start()
        try:
            await produce(bootstrap, worker.topic("behaviour"), bad)
            recs = await play_and_collect(worker, [ev(user, "view", ids_by_title("Hoka Clifton 9"))])
            dead: list[dict] = []
            async with asyncio.timeout(60):
                async for msg in dlq:
                    rec = json.loads(msg.value)
                    if rec["key"] == user:
                        dead.append(rec)
                    if len(dead) == 2:
                        break
            return recs, dead
        finally:
            await dlq.stop()

    recs, dead = asyncio.run(scenario())
    assert recs[0]["user_id"] == user  # the worker survived and served the next good event
    reasons = sorted(d["reason"] for d in dead)
    assert reasons[0].startswith("not valid JSON") and "unknown event type" in reasons[1]
    assert all(d["topic"] == worker.topic("behaviour") and d["offset"] >= 0 for d in dead)
    assert worker.proc.poll() is None


def test_deleted_item_is_never_recommended_afterwards(worker):
    bootstrap = worker.env["STREAM_APP_KAFKA_BOOTSTRAP"]
    user = f"del-{uuid.uuid4().hex[:6]}"
    tea = ids_by_title("西湖龙井")
    before = asyncio.run(play_and_collect(worker, [ev(user, "purchase", tea)]))[0]
    victim = before["items"][0]["item_id"]
    deleted_before = (worker.stats() or {})["items_deleted"]
    asyncio.run(produce(bootstrap, worker.topic("items"), [(victim, as_json({"item_id": victim, "deleted": True}))]))
    wait_until(lambda: (worker.stats() or {}).get("items_deleted", 0) > deleted_before, 60, "the deletion", worker.proc)
    after = asyncio.run(play_and_collect(worker, [ev(user, "view", tea, minute=1), ev(user, "click", tea, minute=2)]))
    for rec in after:
        assert victim not in {i["item_id"] for i in rec["items"]}
        assert len(rec["items"]) == 10
    # Put it back: the tests after this one share the worker and may name any catalogue item.
    indexed_before = (worker.stats() or {})["items_indexed"]
    original = next(i for i in load_catalogue() if i["item_id"] == victim)
    asyncio.run(produce(bootstrap, worker.topic("items"), [(victim, as_json(original))]))
    wait_until(lambda: (worker.stats() or {}).get("items_indexed", 0) > indexed_before, 60, "the re-added item",
               worker.proc)


def test_unchanged_catalogue_resend_is_not_encoded_again(worker):
    bootstrap = worker.env["STREAM_APP_KAFKA_BOOTSTRAP"]
    items = load_catalogue()[:5]
    before = worker.stats() or {}
    asyncio.run(produce(bootstrap, worker.topic("items"), [(i["item_id"], as_json(i)) for i in items]))
    wait_until(lambda: (worker.stats() or {}).get("items_unchanged", 0) >= before["items_unchanged"] + 5, 60,
               "the re-send", worker.proc)
    changed = {**items[0], "text": items[0]["text"] + " Now in a new colour."}
    asyncio.run(produce(bootstrap, worker.topic("items"), [(changed["item_id"], as_json(changed))]))
    wait_until(lambda: (worker.stats() or {}).get("items_indexed", 0) > before["items_indexed"], 60, "the change",
               worker.proc)
    after = worker.stats() or {}
    assert after["items_indexed"] == before["items_indexed"] + 1
    assert after["items_unchanged"] == before["items_unchanged"] + 5


def test_the_last_message_for_an_item_decides_within_a_burst(worker):
    """A deletion then the unchanged item, and an edit then the original, sent in one burst (one batch when they
    arrive together; any split must give the same result): the first item stays in the catalogue and the second
    keeps its original title, as if the messages had come one by one."""
    bootstrap = worker.env["STREAM_APP_KAFKA_BOOTSTRAP"]
    kept, reverted = load_catalogue()[10], load_catalogue()[11]
    edited = {**reverted, "title": reverted["title"] + " V2-EDITED"}
    counters = ("items_indexed", "items_deleted", "items_unchanged", "items_superseded")
    before = worker.stats() or {}
    asyncio.run(produce(bootstrap, worker.topic("items"), [
        (kept["item_id"], as_json({"item_id": kept["item_id"], "deleted": True})), (kept["item_id"], as_json(kept)),
        (reverted["item_id"], as_json(edited)), (reverted["item_id"], as_json(reverted))]))
    wait_until(lambda: sum((worker.stats() or {}).get(k, 0) for k in counters) >= sum(before[k] for k in counters) + 4,
               60, "the burst", worker.proc)
    user = f"burst-{uuid.uuid4().hex[:6]}"
    first, second = ev(user, "view", kept["item_id"]), ev(user, "view", reverted["item_id"], minute=1)
    recs = asyncio.run(play_and_collect(worker, [first, second]))
    assert {first["event_id"], second["event_id"]} <= {e for rec in recs for e in rec["event_ids"]}  # none dead-lettered
    with urllib.request.urlopen(f"{worker.web}/users/{user}/", timeout=10) as r:
        titles = {row["item_id"]: row["title"] for row in json.loads(r.read())["behaviours"]}
    assert titles == {kept["item_id"]: kept["title"], reverted["item_id"]: reverted["title"]}


def test_a_list_of_long_titles_for_a_burst_of_long_event_ids_is_sent_and_answers_every_event(worker):
    """Found by a hostile test: 16 KiB titles of control characters (6 bytes each once JSON-escaped) and event ids
    of 250 emoji (12 bytes each) made one user's list 1.01 MB, over the producer's 1 MB limit; the send was retried
    forever and the behaviour agent stopped for every user. Now a list carries titles cut to LIST_TITLE_CHARS and
    splits its event ids over several records if they do not fit one: every event is answered, no record is over
    the limit, and the worker keeps serving others."""
    bootstrap = worker.env["STREAM_APP_KAFKA_BOOTSTRAP"]
    tag = uuid.uuid4().hex[:6]
    big = [{"item_id": f"big-{tag}-{n:02d}", "title": "\x01" * 16377 + " kettle",
            "text": "Electric kettle zzqx stainless steel 1.7 litre"} for n in range(20)]
    before = (worker.stats() or {})["items_indexed"]
    asyncio.run(produce(bootstrap, worker.topic("items"), [(i["item_id"], as_json(i)) for i in big]))
    wait_until(lambda: (worker.stats() or {}).get("items_indexed", 0) >= before + 20, 120, "the long-title items",
               worker.proc)
    user = f"big-{tag}"
    events = [{**ev(user, "view", i["item_id"], minute=n), "event_id": f"v{n}-" + "😀" * 250}
              for n, i in enumerate(big[:10])]
    events += [{**ev(user, "search", text="electric kettle zzqx", minute=10 + n), "event_id": f"s{n}-" + "😀" * 250}
               for n in range(150)]
    try:
        recs = asyncio.run(play_and_collect(worker, events, timeout=120, burst=True))
        answered = [e for rec in recs for e in rec["event_ids"]]
        assert sorted(answered) == sorted(e["event_id"] for e in events)  # each event answered once
        assert all(len(json.dumps(rec).encode()) < 1_000_000 for rec in recs)
        assert all(len(i["title"]) <= LIST_TITLE_CHARS for rec in recs for i in rec["items"])
        assert any(i["item_id"].startswith(f"big-{tag}") for i in recs[-1]["items"])  # the long-title items served
        other = f"after-big-{tag}"
        assert asyncio.run(play_and_collect(worker, [ev(other, "view", ids_by_title("Hoka Clifton 9"))]))
    finally:  # the tests after this one share the worker's catalogue
        asyncio.run(produce(bootstrap, worker.topic("items"),
                            [(i["item_id"], as_json({"item_id": i["item_id"], "deleted": True})) for i in big]))


def test_a_restarted_worker_keeps_user_state_and_catalogue(worker):
    """Runs last: stop the worker, start a new one on the same data dir and topics; users carry on."""
    user = f"restart-{uuid.uuid4().hex[:6]}"
    case = ids_by_title("Spigen Tough Armor Case")
    asyncio.run(play_and_collect(worker, [ev(user, "view", case), ev(user, "purchase", case, minute=1)]))
    worker.stop()
    assert worker.proc.returncode is not None
    data = worker.env["STREAM_APP_DATA_DIR"]
    fresh = start_worker(worker.env, Path(data))
    worker.proc = fresh.proc  # the fixture stops whatever runs last
    charger = ids_by_title("Anker")
    recs = asyncio.run(play_and_collect(worker, [ev(user, "view", charger, minute=2)], timeout=120))
    last = recs[-1]
    assert last["strategy"] == "blend"
    assert {case, charger}.isdisjoint(i["item_id"] for i in last["items"])  # the history survived the restart
    with urllib.request.urlopen(f"{worker.web}/users/{user}/", timeout=10) as r:
        assert json.loads(r.read())["events"] == 3


def test_an_event_for_an_unknown_item_is_dead_lettered_once(worker):
    bootstrap = worker.env["STREAM_APP_KAFKA_BOOTSTRAP"]
    user = f"unknown-{uuid.uuid4().hex[:6]}"

    async def scenario() -> list[dict]:
        await produce(bootstrap, worker.topic("behaviour"), [(user, as_json(ev(user, "view", "sku-does-not-exist")))])
        await asyncio.sleep(1.0)  # handled alone, in a batch of its own
        await play_and_collect(worker, [ev(user, "view", ids_by_title("Hoka Clifton 9"), minute=1)])
        dlq = AIOKafkaConsumer(worker.topic("dlq"), bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                               group_id=None)
        await dlq.start()
        dead: list[dict] = []
        try:
            while batches := await dlq.getmany(timeout_ms=3000):
                dead += [rec for msgs in batches.values() for m in msgs if (rec := json.loads(m.value))["key"] == user]
        finally:
            await dlq.stop()
        return dead

    dead = asyncio.run(scenario())
    assert [d["reason"] for d in dead] == ["unknown or deleted item_id 'sku-does-not-exist'"]


def store_child_pid(w: Worker) -> int:
    """The worker's vector-store child process (python -m stream_app.adapters.vectorstore.child)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if ppid == w.proc.pid and b"stream_app.adapters.vectorstore.child" in cmdline:
            return int(entry.name)
    raise AssertionError("no store child under the worker")


def test_a_stopped_store_child_times_out_is_restarted_and_serving_resumes(worker):
    """SIGSTOP the embedded store's child: the next store call times out, the child is killed and restarted on
    the same data, the batch is retried, and the event is still answered (nothing dead-lettered, nothing lost)."""
    user = f"stop-{uuid.uuid4().hex[:6]}"
    stuck = store_child_pid(worker)
    os.kill(stuck, signal.SIGSTOP)
    try:
        recs = asyncio.run(play_and_collect(worker, [ev(user, "purchase", ids_by_title("Hoka Clifton 9"))],
                                            timeout=120))
    finally:
        try:
            os.kill(stuck, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert recs and recs[-1]["items"]
    assert store_child_pid(worker) != stuck
    with pytest.raises(ProcessLookupError):
        os.kill(stuck, 0)
