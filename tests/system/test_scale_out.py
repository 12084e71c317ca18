"""Scale-out on the real broker: two `stream-app worker` processes of one app on 4-partition topics.

Each worker has its own data dir and web port. Checked: both hold the whole catalogue (each item encoded once),
English and Chinese users get lists in their own or related categories, /users/<id>/ answers from either worker,
both workers' collaborative counters equal a one-process count of the same events, and after one worker is
SIGKILLed the other serves all users again with their state intact.
"""

from __future__ import annotations

import asyncio
import json
import math
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from stream_app.adapters.kafka_admin import group_offsets
from stream_app.core.collab import CollabParams
from stream_app.core.events import parse_behaviour
from stream_app.stream.replica import counters_json
from stream_app.sample_data import RELATED_CATEGORIES, category_of, load_catalogue
from stream_app.settings import Settings
from stream_app.core.signal_state import SignalState, count_events
from stream_app.stream.process import WorkerProcess as Worker
from stream_app.stream.process import free_port, private_env, wait_until
from test_pipeline_e2e import BASE_TS, as_json, play_and_collect, produce

pytestmark = pytest.mark.kafka

# (user, category, language): each user views two items of a category and buys a third
USERS = [("alice", "phone-accessories", "en"), ("xiaoming", "phones", "zh"), ("runner", "running", "en"),
         ("mei", "tea-coffee", "zh"), ("dev", "laptops", "en")]


def get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.loads(r.read())
    except OSError:
        return None


def replicas(w: Worker) -> dict:
    return get_json(f"{w.web}/replicas/") or {}


def items_of(category: str, lang: str, n: int) -> list[str]:
    return [i["item_id"] for i in load_catalogue() if i["category"] == category and i.get("lang") == lang][:n]


def top5_related_share(rec: dict, category: str) -> float:
    cats = category_of()
    top = rec["items"][:5]
    return sum(cats[i["item_id"]] in RELATED_CATEGORIES[category] for i in top) / len(top)


async def topic_exists(bootstrap: str, topic: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return topic in await admin.list_topics()
    finally:
        await admin.close()


async def cleanup_policy(bootstrap: str, topic: str) -> str:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        [resp] = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        entries = {e[0]: e[1] for e in resp.resources[0][4]}
        return entries["cleanup.policy"]
    finally:
        await admin.close()


async def uncommitted(bootstrap: str, group: str, topics: list[str]) -> dict[tuple[str, int], tuple[int, int]]:
    """(topic, partition) -> (committed offset, end offset) for each partition of topics whose group commit is
    below its end (a partition never committed counts as committed at 0)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    try:
        committed = await group_offsets(admin, group)
        await consumer.topics()  # loads the cluster metadata partitions_for_topic reads
        tps = [TopicPartition(t, p) for t in topics for p in sorted(consumer.partitions_for_topic(t) or ())]
        ends = await consumer.end_offsets(tps)
    finally:
        await consumer.stop()
        await admin.close()
    return {(tp.topic, tp.partition): (committed.get((tp.topic, tp.partition), 0), end) for tp, end in ends.items()
            if committed.get((tp.topic, tp.partition), 0) < end}


def assert_same_counters(got: dict, reference: SignalState) -> None:
    """Equal counters: the same items and neighbours in every counter map, each value within 1e-9 relative.

    Exact equality is not asked: two workers add the same terms in different orders across users.
    """
    want = counters_json(reference, top=1000)
    assert got["events"] == want["events"] and got["items"] == want["items"]
    for name, values in want.items():
        if not isinstance(values, dict):
            continue
        assert got[name].keys() == values.keys(), name
        for i, v in values.items():
            if isinstance(v, dict):
                assert got[name][i].keys() == v.keys(), (name, i)
                assert all(math.isclose(got[name][i][j], x, rel_tol=1e-9) for j, x in v.items()), (name, i)
            else:
                assert math.isclose(got[name][i], v, rel_tol=1e-9), (name, i)


@pytest.fixture(scope="module")
def two_workers(kafka_bootstrap: str, tmp_path_factory) -> Iterator[list[Worker]]:
    base = private_env("scale", kafka_bootstrap, "",
                       STREAM_APP_TABLE_STORE="rocksdb://",
                       STREAM_APP_TOPIC_PARTITIONS="4",
                       STREAM_APP_WEB_HOST="127.0.0.1",  # the advertised address other workers route /users/<id>/ to
                       STREAM_APP_SIGNAL_SNAPSHOT_INTERVAL_S="1",  # so a SIGKILLed worker has a snapshot to resume from
                       )
    vectors_topic = base["STREAM_APP_APP_ID"] + "-item-vectors"
    workers: list[Worker] = []
    try:
        for n in range(2):
            data = tmp_path_factory.mktemp(f"worker{n}")
            env = {**base, "STREAM_APP_DATA_DIR": str(data), "STREAM_APP_WEB_PORT": str(free_port())}
            w = Worker(env, data)
            w.start()
            workers.append(w)
            if n == 0:  # the first creates the topics; the second starts meanwhile
                wait_until(lambda: asyncio.run(topic_exists(kafka_bootstrap, vectors_topic)),
                           120, "the topics", w.proc)
        for w in workers:
            wait_until(lambda: w.stats() is not None, 240, "the web view", w.proc)

        def balanced() -> bool:  # both in the group, so that each owns (and encodes) a share of the catalogue
            owned = [set(replicas(w).get("behaviour_partitions") or ()) for w in workers]
            return all(owned) and owned[0].isdisjoint(owned[1]) and len(owned[0] | owned[1]) == 4

        # the web view answers before the group's first rebalance: a catalogue sent before the second worker joined
        # would all be encoded by the first, and the first test's "both encode" check would fail (a race, and a
        # likely cause of one fast failure of that test that was not kept)
        wait_until(balanced, 240, "the two workers sharing the partitions", workers[1].proc)
        catalogue = load_catalogue()
        asyncio.run(produce(kafka_bootstrap, workers[0].topic("items"), [(i["item_id"], as_json(i)) for i in catalogue]))
        for w in workers:
            wait_until(lambda: replicas(w).get("catalogue_items") == len(catalogue)
                       and replicas(w).get("ready"), 300, "the whole catalogue", w.proc)
        yield workers
    finally:
        for w in workers:
            w.stop()


@pytest.mark.timeout(900)
def test_two_workers_catalogue_lists_routing_counters_and_failover(two_workers):
    a, b = two_workers
    bootstrap = a.env["STREAM_APP_KAFKA_BOOTSTRAP"]
    n_items = len(load_catalogue())

    # --- the whole catalogue on both, each item encoded by one worker only
    assert asyncio.run(cleanup_policy(bootstrap, f"{a.env['STREAM_APP_APP_ID']}-item-vectors")) == "compact"
    for w in (a, b):
        assert replicas(w)["catalogue_items"] == n_items
    assert a.stats()["items_encoded"] + b.stats()["items_encoded"] == n_items
    assert a.stats()["items_encoded"] > 0 and b.stats()["items_encoded"] > 0  # both own `items` partitions

    # --- lists as good as one worker's: each user's top 5 in their own or a related category
    run = uuid.uuid4().hex[:6]
    users = {f"{name}-{run}": (cat, lang) for name, cat, lang in USERS}
    events = []
    for k, (user, (cat, lang)) in enumerate(users.items()):
        first, second, bought = items_of(cat, lang, 3)
        for m, (kind, item) in enumerate([("view", first), ("view", second), ("purchase", bought)]):
            events.append({"event_id": f"{user}-{m}", "user_id": user, "type": kind, "item_id": item,
                           "ts": BASE_TS + 60 * (3 * k + m)})
    recs = asyncio.run(play_and_collect(a, events, timeout=120))
    last = {r["user_id"]: r for r in recs}
    assert set(last) == set(users)
    shares = {u: top5_related_share(last[u], users[u][0]) for u in users}
    assert min(shares.values()) >= 0.6 and sum(shares.values()) / len(shares) >= 0.8, shares

    # --- one user on each partition (found with the producer's own partitioner): those on b's move in the failover,
    # and whichever partitions b gets back after its restart, one of them is there
    owned_by_b = replicas(b)["behaviour_partitions"]
    assert owned_by_b and set(owned_by_b).isdisjoint(replicas(a)["behaviour_partitions"])
    partitioner, parts = DefaultPartitioner(), list(range(4))
    mover_of = {}
    for u in (f"mover-{run}-{k:03d}" for k in range(1000)):  # one width: no mover's id is a prefix of another's
        mover_of.setdefault(partitioner(u.encode(), parts, parts), u)
    assert sorted(mover_of) == parts
    movers = [mover_of[p] for p in parts]
    mover_events = [{"event_id": f"{u}-{m}", "user_id": u, "type": kind, "item_id": item, "ts": BASE_TS + 60 * m}
                    for u in movers for m, (kind, item) in enumerate(zip(["view", "purchase"], items_of("audio", "en", 2)))]
    asyncio.run(play_and_collect(a, mover_events, timeout=120))
    events += mover_events
    expected = {**{u: 3 for u in users}, **{u: 2 for u in movers}}

    # --- /users/<id>/ answers from either worker (routed to the owner of the user's partition)
    for user, n in expected.items():
        for w in (a, b):
            view = get_json(f"{w.web}/users/{user}/")
            assert view is not None and view["known"] and view["events"] == n, (w.web, user, view)

    # --- both workers' counters equal one process counting the same events (see test_signal_state for the rule)
    reference = SignalState()
    count_events(reference, [parse_behaviour(as_json(e)) for e in events], CollabParams.from_settings(Settings()))
    for w in (a, b):
        wait_until(lambda: (replicas(w).get("signal") or {}).get("events_counted") == reference.collab.events,
                   60, "the signal", w.proc)
        assert_same_counters(get_json(f"{w.web}/replicas/counters/?top=1000"), reference)

    # --- failover: SIGKILL b; a takes b's partitions (standby replicas) and serves every user with their state
    b.kill()
    killed_at = time.monotonic()
    more = [{"event_id": f"{u}-last", "user_id": u, "type": "view", "item_id": items_of("audio", "en", 3)[2],
             "ts": BASE_TS + 3600} for u in expected]
    recs = asyncio.run(play_and_collect(a, more, timeout=180))
    served_after_s = time.monotonic() - killed_at
    assert {r["user_id"] for r in recs} >= set(expected)
    assert set(replicas(a)["behaviour_partitions"]) == set(parts)
    for user, n in expected.items():
        view = get_json(f"{a.web}/users/{user}/")
        assert view is not None and view["events"] == n + 1, (user, view)  # earlier events kept, none twice
    # --- b restarts on its data dir: the catalogue resumes at its saved positions (nothing re-read), the signal from
    # its last snapshot plus the tail, and its counters again equal one process's count of every event
    b.start()
    wait_until(lambda: replicas(b).get("ready"), 240, "the restarted worker", b.proc)
    after = replicas(b)
    assert after["catalogue_items"] == n_items and after["catalogue"]["records_read"] == 0
    count_events(reference, [parse_behaviour(as_json(e)) for e in more], CollabParams.from_settings(Settings()))
    assert after["signal"]["events_counted"] == reference.collab.events
    assert 0 < after["signal"]["counted_since_start"] < reference.collab.events  # only the tail was replayed
    assert_same_counters(get_json(f"{b.web}/replicas/counters/?top=1000"), reference)

    # --- forget a mover once b owns it again: a, which served it during the failover, drops what it kept too (its
    # last list on the dashboard and the user page), not only the owner that deletes the state (found by a hostile
    # test: a kept showing the forgotten user's list and, after a second failover, served it on /users/<id>/).
    # b need not get the same partitions back: it was out of the group longer than the session timeout, so it joins
    # as a new member and Faust's assignor places it (seen after a group whose first assignment was {0, 2} / {1, 3}).
    back_on_b: set[int] = set()

    def b_serves_again() -> bool:
        on_a, on_b = (set(replicas(w).get("behaviour_partitions") or ()) for w in (a, b))
        back_on_b.clear()
        back_on_b.update(on_b)
        return bool(on_b) and on_a.isdisjoint(on_b) and on_a | on_b == set(parts)

    wait_until(b_serves_again, 120, "b serving partitions again", b.proc)
    # a's dashboard lists the 8 users it served last, and it served 9 during the failover: take a mover it still shows
    on_a_dashboard = json.dumps(get_json(f"{a.web}/api/dashboard"))
    shown = [mover_of[p] for p in sorted(back_on_b) if json.dumps(mover_of[p]) in on_a_dashboard]
    assert shown, (sorted(back_on_b), movers)
    gone = shown[0]
    forget = {"event_id": f"{gone}-forget", "user_id": gone, "type": "forget", "ts": BASE_TS + 7200}
    asyncio.run(produce(bootstrap, a.topic("behaviour"), [(gone, as_json(forget))]))
    wait_until(lambda: json.dumps(gone) not in json.dumps(get_json(f"{a.web}/api/dashboard")), 60, "the forget on a",
               a.proc)
    wait_until(lambda: (get_json(f"{b.web}/users/{gone}/") or {}).get("known") is False, 60, "the forget on b", b.proc)
    for w in (a, b):
        view = get_json(f"{w.web}/users/{gone}/")
        assert view is not None and not view["known"] and "last_recommendation" not in view, (w.web, view)
    print(f"\nall users (incl. {len(set(owned_by_b))} on the killed worker) served again {served_after_s:.1f} s after the "
          f"SIGKILL; top-5 shares {shares}")


def test_a_takeover_under_traffic_answers_every_event(two_workers):
    """Found by a hostile test: one worker stopped (SIGTERM) under traffic, the other took its partitions over, and
    1-2 of 480 events were neither answered nor dead-lettered, in every run (faust-streaming skips messages right
    after an assignment; stream_app.stream.offsets seeks back to them). 40 users x 12 events at 20/s; b stops 8 s
    in. Every event must be answered; redeliveries may be answered twice, but no user's state counts one twice."""
    a, b = two_workers
    wait_until(lambda: replicas(b).get("ready") and replicas(a)["behaviour_partitions"]
               and replicas(b)["behaviour_partitions"], 240, "both workers serving", b.proc)
    run = uuid.uuid4().hex[:6]
    item_ids = [i["item_id"] for i in load_catalogue()]
    events = [{"event_id": f"t-{run}-u{u}-{k}", "user_id": f"t-{run}-u{u}", "type": "view",
               "item_id": item_ids[(7 * u + 3 * k) % len(item_ids)], "ts": BASE_TS + 60 * k}
              for k in range(12) for u in range(40)]
    stopper = threading.Timer(8.0, b.stop)
    stopper.start()
    try:
        recs = asyncio.run(play_and_collect(a, events, timeout=180, every=True))
    finally:
        stopper.join()
    answered = {e for rec in recs for e in rec["event_ids"]}
    assert answered >= {e["event_id"] for e in events}
    for u in (0, 13, 39):
        view = get_json(f"{a.web}/users/t-{run}-u{u}/")
        assert view is not None and view["events"] == 12, view
    # The seeks back (stream_app.stream.offsets) hold the consumer's commits below a skipped offset until it is
    # read again: once every event is answered, the group's commits must reach the end of both input topics.
    topics = [a.env["STREAM_APP_ITEMS_TOPIC"], a.env["STREAM_APP_BEHAVIOUR_TOPIC"]]
    deadline = time.monotonic() + 60
    while (lagging := asyncio.run(uncommitted(a.env["STREAM_APP_KAFKA_BOOTSTRAP"], a.env["STREAM_APP_APP_ID"], topics))
           ) and time.monotonic() < deadline:
        time.sleep(1)
    assert not lagging, f"(committed, end) of the partitions the group's commits did not reach the end of: {lagging}"

