"""Faults on the real broker: a worker SIGKILLed mid-stream, the broker restarted mid-stream, the web bind address.

Nothing is mocked: the worker is `stream-app worker` as a child process (default encoder, embedded Qdrant, RocksDB
tables); the test talks Kafka, reads the worker's web view, and afterwards opens the worker's own stores.
Recovery times are printed (run with -s to see them); only generous bounds are asserted.
Knobs: STREAM_APP_TEST_FAULT_EVENTS (events of the SIGKILL test, default 5000; the issue's size is 20000) and
STREAM_APP_TEST_WORKER_LOGLEVEL (the workers' --loglevel, default warn; info shows where a restart's time goes).
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from pydantic import SecretStr

from stream_app.interest import InterestParams, apply_event, decode_state, new_state
from stream_app.sample_data import load_catalogue
from stream_app.settings import Settings
from stream_app.vectorstore import open_item_store

pytestmark = pytest.mark.kafka
REPO = Path(__file__).resolve().parents[1]
BASE_TS = 1767225600
KINDS = ("view", "view", "view", "click", "click", "cart", "purchase")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> int:
    """A port p such that p and p+1 are free on 127.0.0.1 (a private broker and its controller)."""
    for _ in range(50):
        port = free_port()
        try:
            with socket.socket() as s2:
                s2.bind(("127.0.0.1", port + 1))
            return port
        except OSError:
            continue
    raise RuntimeError("no free port pair")


@dataclass
class Worker:
    """A `stream-app worker` child process and what it was started with."""

    env: dict[str, str]
    data: Path
    proc: subprocess.Popen | None = None
    log_files: list[Path] = field(default_factory=list)

    @property
    def web(self) -> str:
        return f"http://127.0.0.1:{self.env['STREAM_APP_WEB_PORT']}"

    def topic(self, name: str) -> str:
        return self.env[f"STREAM_APP_{name.upper()}_TOPIC"]

    def start(self) -> None:
        log = self.data / f"worker-{len(self.log_files)}.log"
        self.log_files.append(log)
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "stream_app.cli", "worker", "--loglevel", os.environ.get("STREAM_APP_TEST_WORKER_LOGLEVEL", "warn")],
                                         env=self.env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                         cwd=self.data)

    def stats(self) -> dict | None:
        try:
            with urllib.request.urlopen(f"{self.web}/stats/", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            return None

    def wait_until(self, predicate, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert self.proc is not None and self.proc.poll() is None, \
                f"worker exited ({self.proc.returncode if self.proc else None}) waiting for {what}; log: {self.log_tail()}"
            assert time.monotonic() < deadline, f"timed out waiting for {what}; log: {self.log_tail()}"
            time.sleep(0.1)

    def kill(self) -> None:
        """SIGKILL the worker and everything it started (the vector-store child too): a crash, no clean-up."""
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()

    def log_tail(self, n: int = 3000) -> str:
        return self.log_files[-1].read_text(errors="replace")[-n:] if self.log_files else ""

    def log_text(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.log_files)


def worker_env(bootstrap: str, data: Path, **extra: str) -> dict[str, str]:
    run = uuid.uuid4().hex[:8]
    return {
        **os.environ,
        "STREAM_APP_KAFKA_BOOTSTRAP": bootstrap,
        "STREAM_APP_APP_ID": f"faults-{run}",
        "STREAM_APP_WORKER_ID": "w1",
        "STREAM_APP_ITEMS_TOPIC": f"faults-items-{run}",
        "STREAM_APP_BEHAVIOUR_TOPIC": f"faults-behaviour-{run}",
        "STREAM_APP_RECOMMENDATIONS_TOPIC": f"faults-recs-{run}",
        "STREAM_APP_DLQ_TOPIC": f"faults-dlq-{run}",
        "STREAM_APP_ITEMS_DLQ_TOPIC": f"faults-items-dlq-{run}",
        "STREAM_APP_DATA_DIR": str(data),
        "STREAM_APP_TABLE_STORE": "rocksdb://",
        "STREAM_APP_WEB_PORT": str(free_port()),
        "STREAM_APP_TOPIC_PARTITIONS": "4",
        **extra,
    }


def make_events(n_events: int, n_users: int, item_ids: list[str], seed: int = 7) -> list[dict]:
    """n_events behaviour events over n_users users, each user's timestamps increasing."""
    rng = random.Random(seed)
    clock: dict[str, int] = defaultdict(int)
    events = []
    for i in range(n_events):
        user = f"u{rng.randrange(n_users):05d}"
        clock[user] += rng.randrange(1, 600)
        events.append({"event_id": f"e{i:06d}", "user_id": user, "type": rng.choice(KINDS),
                       "item_id": rng.choice(item_ids), "ts": BASE_TS + clock[user]})
    return events


async def produce_items(bootstrap: str, topic: str, items: list[dict]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        for item in items:
            await producer.send(topic, json.dumps(item, ensure_ascii=False).encode(), key=item["item_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


@dataclass
class Ledger:
    """Where every produced event ended up: its position, the lists that answered it, the DLQ records naming it."""

    position: dict[tuple[int, int], str] = field(default_factory=dict)  # (partition, offset) -> event_id
    served: set[str] = field(default_factory=set)
    dead: set[str] = field(default_factory=set)
    answers: int = 0  # recommendation messages (a redelivered event may be answered twice)
    first_answer_after: dict[float, float] = field(default_factory=dict)  # mark time -> first generated_at after it

    def accounted(self) -> set[str]:
        return self.served | self.dead

    def note_recommendation(self, rec: dict) -> None:
        self.answers += 1
        self.served.update(rec["event_ids"])
        for mark in self.first_answer_after:
            if not self.first_answer_after[mark] and rec["generated_at"] >= mark:
                self.first_answer_after[mark] = rec["generated_at"]

    def note_dead_letter(self, rec: dict) -> None:
        event_id = self.position.get((rec["partition"], rec["offset"]))
        if event_id is not None:
            self.dead.add(event_id)


async def open_readers(bootstrap: str, w: Worker) -> tuple[AIOKafkaConsumer, AIOKafkaConsumer]:
    """Consumers of the recommendations and the DLQ from their beginning (the topics are private to the test)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        described = await admin.describe_topics([w.topic("recommendations"), w.topic("dlq")])
    finally:
        await admin.close()
    readers = []
    for topic in described:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        consumer.assign([TopicPartition(topic["topic"], p["partition"]) for p in topic["partitions"]])
        await consumer.seek_to_beginning()
        readers.append(consumer)
    by_topic = dict(zip((t["topic"] for t in described), readers))
    return by_topic[w.topic("recommendations")], by_topic[w.topic("dlq")]


async def drain(recs: AIOKafkaConsumer, dlq: AIOKafkaConsumer, ledger: Ledger) -> None:
    for consumer, note in ((recs, ledger.note_recommendation), (dlq, ledger.note_dead_letter)):
        for msgs in (await consumer.getmany(timeout_ms=100, max_records=5000)).values():
            for m in msgs:
                note(json.loads(m.value))


async def send_events(producer: AIOKafkaProducer, topic: str, events: list[dict], ledger: Ledger) -> None:
    futures = [(e["event_id"], await producer.send(topic, json.dumps(e).encode(), key=e["user_id"].encode()))
               for e in events]
    for event_id, fut in futures:
        meta = await fut
        ledger.position[(meta.partition, meta.offset)] = event_id


def stored_states(w: Worker) -> dict[str, bytes]:
    """The user-state table as the (stopped) worker left it on disk: its RocksDB partitions, read-only."""
    from rocksdict import AccessType, Options, Rdict

    tables = list((w.data / "faust").rglob("tables/user-state-*.db"))
    assert tables, f"no user-state RocksDB under {w.data / 'faust'}"
    out: dict[str, bytes] = {}
    for path in tables:
        db = Rdict(str(path), options=Options(raw_mode=True), access_type=AccessType.read_only())
        try:
            for key, value in db.items():
                if not key.startswith(b"__faust"):
                    out[key.decode()] = value
        finally:
            db.close()
    return out


def item_vectors(w: Worker, item_ids: list[str]) -> dict[str, np.ndarray]:
    """The vectors the worker indexed, read back from its embedded store (worker stopped)."""

    async def read() -> dict[str, np.ndarray]:
        settings = Settings(data_dir=w.data)
        store = open_item_store(settings)
        try:
            await store.ensure_collection(384)
            return await store.get_vectors(item_ids)
        finally:
            await store.close()

    return asyncio.run(read())


def assert_states_match_offline_recomputation(w: Worker, events: list[dict], vectors: dict[str, np.ndarray]) -> None:
    """Each user's stored state equals the fold of apply_event over that user's events, each applied once."""
    params = InterestParams.from_settings(Settings())
    dim = len(next(iter(vectors.values())))
    expected = {}
    for e in events:
        state = expected.get(e["user_id"]) or new_state(dim)
        expected[e["user_id"]] = apply_event(state, vectors[e["item_id"]], e["type"], e["ts"], e["item_id"], params)
    stored = {user: decode_state(raw) for user, raw in stored_states(w).items()}
    assert stored.keys() == expected.keys()
    twice = {u: stored[u].n_events - s.n_events for u, s in expected.items() if stored[u].n_events != s.n_events}
    assert not twice, (f"{len(twice)} users' states count a different number of events than were sent "
                       f"(redelivered events applied twice need the per-user event-id dedupe): "
                       f"{dict(list(twice.items())[:5])}")
    for user, want in expected.items():
        got = stored[user]
        assert (got.last_ts, got.recent) == (want.last_ts, want.recent), user
        # Float margins: before the crash item vectors came from the encoder, after it from Qdrant (which stores the
        # normalised vector); the same arithmetic otherwise, so differences stay at float32 rounding.
        for name in ("log_offset", "pos_mass", "neg_mass", "vectors"):
            np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-4, atol=1e-5,
                                       err_msg=f"{user}: {name}")


def index_catalogue(w: Worker, items: list[dict], bootstrap: str) -> None:
    asyncio.run(produce_items(bootstrap, w.topic("items"), items))
    w.wait_until(lambda: (w.stats() or {}).get("items_indexed", 0) >= len(items), 300, "indexing")


# The issue measured 20,000 events / 2,000 users (STREAM_APP_TEST_FAULT_EVENTS=20000); CI runs fewer to stay lean.
N_EVENTS = int(os.environ.get("STREAM_APP_TEST_FAULT_EVENTS", "5000"))
N_USERS = N_EVENTS // 10
N_ITEMS = 120


def test_sigkill_mid_stream_loses_nothing_applies_nothing_twice_and_recovers_fast(kafka_bootstrap, tmp_path):
    w = Worker(worker_env(kafka_bootstrap, tmp_path), tmp_path)
    items = load_catalogue()[:N_ITEMS]
    events = make_events(N_EVENTS, N_USERS, [i["item_id"] for i in items])
    all_ids = {e["event_id"] for e in events}
    w.start()
    try:
        w.wait_until(lambda: w.stats() is not None, 180, "the web view")
        index_catalogue(w, items, kafka_bootstrap)

        async def scenario() -> dict[str, float]:
            ledger = Ledger()
            recs, dlq = await open_readers(kafka_bootstrap, w)
            producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, linger_ms=5)
            await producer.start()
            t = {"sent": time.time()}
            try:
                await send_events(producer, w.topic("behaviour"), events, ledger)
                deadline = time.monotonic() + 240
                while len(ledger.served) < 0.4 * N_EVENTS:  # kill once ~40 % are served
                    assert time.monotonic() < deadline and w.proc.poll() is None, w.log_tail()
                    await drain(recs, dlq, ledger)
                t["kill"] = time.time()
                w.kill()
                t["restart"] = time.time()
                w.start()
                ledger.first_answer_after[t["restart"]] = 0.0
                served_at_kill = len(ledger.served)
                while ledger.accounted() != all_ids:
                    assert time.monotonic() < deadline and w.proc.poll() is None, \
                        f"{len(all_ids - ledger.accounted())} events unaccounted; {w.log_tail()}"
                    if "web" not in t and w.stats() is not None:
                        t["web"] = time.time()
                    await drain(recs, dlq, ledger)
                t["done"] = time.time()
                t["first_after_restart"] = ledger.first_answer_after[t["restart"]]
                t["served_at_kill"] = served_at_kill
                t["answers"] = ledger.answers
                t["dead"] = len(ledger.dead)
                return t
            finally:
                await producer.stop()
                await recs.stop()
                await dlq.stop()

        t = asyncio.run(scenario())
    finally:
        w.stop()
    recovery = t["first_after_restart"] - t["restart"]
    print(f"\nSIGKILL mid-stream: {N_EVENTS} events, {N_USERS} users; killed after {t['served_at_kill']} served; "
          f"restart -> web view {t.get('web', float('nan')) - t['restart']:.1f} s, -> first recommendation "
          f"{recovery:.1f} s; all {N_EVENTS} accounted for ({t['dead']} dead-lettered, {t['answers']} lists) "
          f"{t['done'] - t['sent']:.1f} s after the first send")
    # Generous (the goal is 10 s on a quiet machine): without static membership it was the dead member's 60 s session.
    assert recovery < 45, f"the restarted worker took {recovery:.1f} s to serve again"
    vectors = item_vectors(w, [i["item_id"] for i in items])
    assert_states_match_offline_recomputation(w, events, vectors)


def non_loopback_address() -> str | None:
    """An address of this host that is not loopback (the interface of the default route), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))  # UDP: picks the outgoing interface, sends nothing
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") or address == "0.0.0.0" else address


def listening_addresses(port: int) -> set[str]:
    """Local IPv4/IPv6 addresses with a socket in LISTEN state on port (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            host_hex, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:  # 0A = LISTEN
                raw = bytes.fromhex(host_hex)
                # /proc prints each 32-bit word in host (little-endian) order
                words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
                found.add(socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, words))
    return found


def http_status(url: str, token: str | None = None) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_web_view_listens_on_loopback_only_hides_faust_table_views_and_asks_for_the_token(kafka_bootstrap, tmp_path):
    data = tmp_path / "not" / "created" / "yet"  # a missing data dir is created by the worker
    w = Worker(worker_env(kafka_bootstrap, data, STREAM_APP_WEB_TOKEN="s3cret-token"), tmp_path)
    w.start()
    try:
        w.wait_until(lambda: w.stats() is not None, 180, "the web view")
        port = int(w.env["STREAM_APP_WEB_PORT"])
        assert listening_addresses(port) == {"127.0.0.1"}
        if (address := non_loopback_address()) is not None:
            with pytest.raises(OSError):
                socket.create_connection((address, port), timeout=2).close()
        assert data.is_dir() and (data / "faust").is_dir()
        # Faust's raw table and cluster-routing views are off by default.
        for path in ("/table/", "/table/user-state/", "/table/user-state/someone/", "/router/"):
            assert http_status(w.web + path) == 404, path
        # A user's page needs the token (loopback too, once a token is set); the counters do not.
        user_page = f"{w.web}/users/someone/"
        w.wait_until(lambda: http_status(user_page, "s3cret-token") == 200, 60, "the user page")
        assert http_status(user_page) == 401
        assert http_status(user_page, "wrong-token") == 401
        assert http_status(f"{w.web}/dashboard/") == 401
        assert http_status(f"{w.web}/dashboard/", "s3cret-token") == 200
        assert http_status(f"{w.web}/stats/") == 200
    finally:
        w.stop()
    assert "s3cret-token" not in w.log_text()


def kafka_script(action: str, env: dict[str, str]) -> None:
    done = subprocess.run([str(REPO / "scripts" / "kafka.sh"), action], env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def log_records(text: str) -> list[str]:
    """The worker log's records (Faust's format starts each with '[<date>'); tracebacks belong to their record."""
    return [line for line in text.splitlines() if line.startswith("[20")]


@dataclass
class PrivateBroker:
    env: dict[str, str]  # for scripts/kafka.sh
    plaintext: str  # bootstrap of the PLAINTEXT listener
    sasl: str  # bootstrap of the SASL_PLAINTEXT listener
    password: str  # of user "svc"

    def settings(self, password: str | None = None, **overrides) -> dict[str, str]:
        return {"STREAM_APP_KAFKA_BOOTSTRAP": self.sasl, "STREAM_APP_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "STREAM_APP_KAFKA_SASL_USERNAME": "svc",
                "STREAM_APP_KAFKA_SASL_PASSWORD": self.password if password is None else password, **overrides}


@pytest.fixture(scope="module")
def private_broker(tmp_path_factory) -> PrivateBroker:
    """A broker of this module's own (its tests stop it), with a SASL/PLAIN listener beside the PLAINTEXT one."""
    port, sasl_port = free_port_pair(), free_port()
    broker = PrivateBroker(
        {**os.environ, "STREAM_APP_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}",
         "STREAM_APP_KAFKA_DIR": str(tmp_path_factory.mktemp("kafka")), "KAFKA_SASL_PORT": str(sasl_port)},
        f"127.0.0.1:{port}", f"127.0.0.1:{sasl_port}", "pw-" + uuid.uuid4().hex[:8])
    broker.env["KAFKA_SASL_USERS"] = f"svc:{broker.password}"
    kafka_script("start", broker.env)
    yield broker
    kafka_script("stop", broker.env)


def test_kafka_clients_log_in_with_sasl_from_the_settings(private_broker):
    """Admin, producer and consumer built from client_kwargs(Settings) talk SASL; a wrong password is refused."""
    from stream_app.kafka_security import client_kwargs

    good = Settings(**{k.removeprefix("STREAM_APP_").lower(): v for k, v in private_broker.settings().items()})
    topic = f"sasl-{uuid.uuid4().hex[:8]}"

    async def round_trip() -> bytes:
        admin = AIOKafkaAdminClient(**client_kwargs(good))
        await admin.start()
        try:
            await admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
        finally:
            await admin.close()
        producer = AIOKafkaProducer(**client_kwargs(good))
        consumer = AIOKafkaConsumer(topic, **client_kwargs(good), auto_offset_reset="earliest", group_id=None)
        await producer.start()
        await consumer.start()
        try:
            await producer.send_and_wait(topic, b"hello over SASL")
            async with asyncio.timeout(60):
                return (await consumer.getone()).value
        finally:
            await producer.stop()
            await consumer.stop()

    async def refused(settings: Settings) -> BaseException:
        producer = AIOKafkaProducer(**client_kwargs(settings), request_timeout_ms=5000)
        try:
            with pytest.raises(Exception) as info:
                await producer.start()
            return info.value
        finally:
            await producer.stop()

    assert asyncio.run(round_trip()) == b"hello over SASL"
    error = asyncio.run(refused(good.model_copy(update={"kafka_sasl_password": SecretStr("wrong")})))
    assert type(error).__module__.startswith("aiokafka"), repr(error)


def test_broker_restarted_mid_stream_loses_nothing_and_logs_the_outage_briefly(private_broker, tmp_path):
    """The broker goes away while a worker (talking SASL, configured by settings only) is busy, and comes back."""
    bootstrap, kenv = private_broker.plaintext, private_broker.env  # the test's own clients use PLAINTEXT
    w = Worker(worker_env(bootstrap, tmp_path / "data", **private_broker.settings()), tmp_path)
    items = load_catalogue()[:30]
    n_events, outage_s = 1000, 12.0
    events = make_events(n_events, n_events // 10, [i["item_id"] for i in items])
    try:
        w.start()
        w.wait_until(lambda: w.stats() is not None, 180, "the web view")
        index_catalogue(w, items, bootstrap)

        async def until(ledger: Ledger, done, what: str, timeout: float = 180) -> None:
            recs, dlq = await open_readers(bootstrap, w)
            try:
                deadline = time.monotonic() + timeout
                while not done():
                    assert time.monotonic() < deadline and w.proc.poll() is None, f"{what}; {w.log_tail()}"
                    await drain(recs, dlq, ledger)
            finally:
                await recs.stop()
                await dlq.stop()

        async def send_all(ledger: Ledger) -> None:
            producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
            await producer.start()
            try:
                await send_events(producer, w.topic("behaviour"), events, ledger)
            finally:
                await producer.stop()

        ledger = Ledger()
        asyncio.run(send_all(ledger))
        asyncio.run(until(ledger, lambda: len(ledger.served) >= 0.25 * n_events, "a quarter served"))
        log_at_stop = len(w.log_text())
        t_stop = time.monotonic()
        kafka_script("stop", kenv)
        time.sleep(max(0.0, outage_s - (time.monotonic() - t_stop)))
        assert w.proc.poll() is None, w.log_tail()
        down_s = time.monotonic() - t_stop
        kafka_script("start", kenv)
        t_up = time.monotonic()
        outage_log = w.log_text()[log_at_stop:]
        served_before = len(ledger.served)
        ledger.first_answer_after[time.time()] = 0.0
        all_ids = {e["event_id"] for e in events}
        asyncio.run(until(ledger, lambda: ledger.accounted() == all_ids, "all events accounted for"))
        back_s = next(iter(ledger.first_answer_after.values())) - next(iter(ledger.first_answer_after))
    finally:
        w.stop()
    assert private_broker.password not in w.log_text()
    records = log_records(outage_log)
    suppressed = sum(int(m) for m in re.findall(r"\[(\d+) more like this", outage_log))
    print(f"\nbroker restart: {n_events} events; broker down {down_s:.1f} s after {served_before} served; "
          f"first recommendation {back_s:.1f} s after the broker was back; all {n_events} accounted for "
          f"({len(ledger.dead)} dead-lettered); {len(records)} log records while it was down "
          f"({suppressed} identical ones folded into them)")
    assert not ledger.dead
    # Each kind of connection error once per STREAM_APP_LOG_REPEAT_INTERVAL_S (10 s) instead of thousands of lines.
    assert len(records) < 100, "\n".join(records[:200])

