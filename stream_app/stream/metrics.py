"""The service's numbers in one object: counters, histograms with recent windows, the DLQ tail, agent health, the
online evaluation of sent lists, and a sampled time series for the dashboard.

One writer: everything is recorded here (agents and pipeline call these methods or bump the counters); the
dashboard's JSON (`Metrics.snapshot`, `Metrics.series`) and Prometheus' text exposition (`MetricsCollector`, read at
scrape time) are two views of the same values, never updated separately.

Online evaluation (what Gorse calls online evaluation): after a list is sent to a user, the user's *next* behaviour
event with an item is a trial; it is a hit when the item is in the list (HR@k, k = the list length). The same event
is scored against the most-popular list of that moment (the top-k popular items the user had not consumed, taken
when the list was sent), so the two rates compare like for like. Rolling over the last `window` trials per event
type; cumulative counts go to Prometheus.
"""

from __future__ import annotations

import bisect
import time
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from stream_app.settings import setting_default

LATENCY_BUCKETS_MS = (5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000)
ENCODER_BUCKETS_MS = (1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500)
SEARCH_BUCKETS_MS = (0.5, 1, 2, 5, 10, 25, 50, 100, 250, 1000)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


@dataclass
class Histogram:
    """Cumulative bucket counts (for Prometheus) plus a window of recent (time, value) pairs (for percentiles)."""

    buckets: Sequence[float]
    window: int = 10_000
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    n: int = 0
    recent: deque[tuple[float, float]] = field(default_factory=deque)

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.buckets) + 1)  # last one is +Inf
        self.recent = deque(maxlen=self.window)

    def observe(self, value: float, now: float | None = None) -> None:
        value = float(value)
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1
        self.recent.append((time.time() if now is None else now, value))

    def values_since(self, t: float) -> list[float]:
        """Values observed after time t (newest window only)."""
        out = []
        for ts, v in reversed(self.recent):
            if ts <= t:
                break
            out.append(v)
        return out

    def percentile(self, q: float) -> float | None:
        """q-th percentile (0..100) of the recent window, None when empty."""
        if not self.recent:
            return None
        return float(np.percentile(np.fromiter((v for _, v in self.recent), float, len(self.recent)), q))

    def family(self, name: str, doc: str) -> HistogramMetricFamily:
        cumulative, acc = [], 0
        for bound, count in zip([*map(floatToGoString, self.buckets), "+Inf"], self.counts):
            acc += count
            cumulative.append((bound, acc))
        return HistogramMetricFamily(name, doc, buckets=cumulative, sum_value=self.total)


@dataclass
class OnlineEval:
    """HR@k of the lists the service sent vs a most-popular list, from each user's next event (see module doc)."""

    k: int = field(default_factory=lambda: setting_default("top_k"))
    window: int = 1000
    max_pending: int = 100_000
    pending: OrderedDict[str, tuple[frozenset[str], frozenset[str]]] = field(default_factory=OrderedDict)
    rolling: dict[str, deque[tuple[bool, bool]]] = field(default_factory=dict)
    trials: dict[str, int] = field(default_factory=dict)
    hits_served: dict[str, int] = field(default_factory=dict)
    hits_popular: dict[str, int] = field(default_factory=dict)

    def list_sent(self, user_id: str, served: Iterable[str], popular: Iterable[str]) -> None:
        """Remember the list just sent to a user and the popular list of this moment (the user's next event judges)."""
        self.pending[user_id] = (frozenset(list(served)[: self.k]), frozenset(list(popular)[: self.k]))
        self.pending.move_to_end(user_id)
        while len(self.pending) > self.max_pending:
            self.pending.popitem(last=False)

    def next_event(self, user_id: str, event_type: str, item_id: str | None) -> None:
        """Score a user's event against the last list sent to them (once: later events wait for the next list)."""
        if not item_id:
            return
        lists = self.pending.pop(user_id, None)
        if lists is None:
            return
        served, popular = lists
        hit = (item_id in served, item_id in popular)
        self.rolling.setdefault(event_type, deque(maxlen=self.window)).append(hit)
        self.trials[event_type] = self.trials.get(event_type, 0) + 1
        self.hits_served[event_type] = self.hits_served.get(event_type, 0) + hit[0]
        self.hits_popular[event_type] = self.hits_popular.get(event_type, 0) + hit[1]

    def forget(self, user_id: str) -> None:
        self.pending.pop(user_id, None)

    def snapshot(self) -> dict[str, Any]:
        """Per event type (and "all"): rolling trials, HR@k of the served lists and of the popular list."""
        rows: dict[str, Any] = {}
        every: list[tuple[bool, bool]] = []
        for event_type, hits in sorted(self.rolling.items()):
            every.extend(hits)
            rows[event_type] = _rates(hits)
        rows["all"] = _rates(every)
        return {"k": self.k, "window": self.window, "by_type": rows}


def _rates(hits: Sequence[tuple[bool, bool]]) -> dict[str, Any]:
    n = len(hits)
    return {"trials": n,
            "hr_served": round(sum(h[0] for h in hits) / n, 4) if n else None,
            "hr_popular": round(sum(h[1] for h in hits) / n, 4) if n else None}


@dataclass
class AgentHealth:
    """Per agent: when it last finished a batch, and its crashes (an agent crash-loops while crashes outpace work)."""

    started_at: float | None = None
    last_batch_at: float | None = None
    batch_started_at: float | None = None  # set while the agent is on a batch
    batches_started: int = 0
    consuming: bool = False  # the agent has begun taking from its stream (after its start-up waits)
    crashes: deque[float] = field(default_factory=lambda: deque(maxlen=100))
    last_error: str = ""


class Metrics:
    """Counters, histograms, DLQ tail, agent health and online evaluation of one worker (see module doc)."""

    COUNTERS = ("events", "batches", "recommendations", "dead_letters", "duplicates", "forgotten", "items_indexed",
                "items_encoded", "items_deleted", "items_unchanged", "items_superseded", "encoded_texts", "encoder_calls",
                "encoder_s", "encoder_batch_max", "store_searches", "store_record_calls", "cache_hits", "seeks_back")

    def __init__(self, top_k: int = setting_default("top_k"), crash_window_s: float = 60.0,
                 store_stuck_s: float = setting_default("store_timeout_s"),
                 agent_stuck_s: float = setting_default("agent_stuck_s")) -> None:
        self.events = 0
        self.batches = 0
        self.recommendations = 0
        self.dead_letters = 0
        self.duplicates = 0  # redelivered events recognised by their event_id and not applied again
        self.forgotten = 0  # users deleted by a `forget` event
        self.items_indexed = 0  # written into this worker's store
        self.items_encoded = 0  # encoded by this worker (with several workers, each item by one of them)
        self.items_deleted = 0
        self.items_unchanged = 0
        self.items_superseded = 0  # a later message for the same item came in the same batch
        # Throughput counters of the pipeline (the pipeline benchmark reads them from /stats/).
        self.encoded_texts = 0
        self.encoder_calls = 0
        self.encoder_s = 0.0
        self.encoder_batch_max = 0
        self.store_searches = 0
        self.store_record_calls = 0
        self.cache_hits = 0
        self.seeks_back = 0  # seeks back to offsets Faust skipped or fetched and never delivered (stream.offsets)
        self.started_at = time.time()
        self.latency_ms = Histogram(LATENCY_BUCKETS_MS)
        self.encoder_ms = Histogram(ENCODER_BUCKETS_MS, window=2000)
        self.encoder_batch = Histogram(BATCH_BUCKETS, window=2000)
        self.search_ms = Histogram(SEARCH_BUCKETS_MS, window=2000)
        self.dead_letter_log: deque[dict[str, Any]] = deque(maxlen=50)
        self.dead_letters_by_topic: dict[str, int] = {}
        self.online = OnlineEval(k=top_k)
        self.agents: dict[str, AgentHealth] = {}
        self.startup_error: str = ""
        self.ready = False
        self.crash_window_s = crash_window_s
        self.agent_stuck_s = agent_stuck_s
        self.store_stuck_s = store_stuck_s
        self._calls: dict[int, tuple[str, float, float]] = {}  # id -> (what, started, stuck after s)
        self._call_ids = 0
        # State gauges, refreshed by the sampler (they describe the stores, so they survive restarts).
        self.catalogue_size: int | None = None
        self.users: int | None = None
        self.lag: dict[str, int] = {}
        self.series: deque[dict[str, Any]] = deque(maxlen=180)
        self._last_sample: dict[str, Any] | None = None

    # ---- recording ------------------------------------------------------------------------------------------
    def count(self, counter: str, n: int = 1) -> None:
        """Add n to one of COUNTERS: the one way the agents, the pipeline and the replicas move a counter."""
        if counter not in self.COUNTERS:
            raise ValueError(f"unknown counter {counter!r}; one of {self.COUNTERS}")
        setattr(self, counter, getattr(self, counter) + n)

    def started(self) -> None:
        """The pipeline (encoder and store) is up: the worker may serve."""
        self.ready = True
        self.startup_error = ""

    def start_failed(self, reason: str) -> None:
        """The pipeline could not start: /health answers 503 with this reason until it does."""
        self.startup_error = reason

    def observe_catalogue_size(self, points: int) -> None:
        """The catalogue's size: the vector store's point count."""
        self.catalogue_size = points

    def observe_users(self, users: int | None) -> None:
        """The user-state table's size (RocksDB's key estimate; None when unknown)."""
        self.users = users

    def observe_lag(self, lag: dict[str, int]) -> None:
        """Consumer lag per input partition ("topic:partition" -> messages behind)."""
        self.lag = lag

    def observe_latency(self, ms: float) -> None:
        self.latency_ms.observe(ms)

    def observe_encoder(self, batch_size: int, seconds: float) -> None:
        """One hop to the encoder thread: `batch_size` texts in `seconds`."""
        self.encoder_batch.observe(batch_size)
        self.encoder_ms.observe(seconds * 1000.0)
        self.encoded_texts += batch_size
        self.encoder_calls += 1
        self.encoder_s += seconds
        self.encoder_batch_max = max(self.encoder_batch_max, batch_size)

    def observe_search(self, ms: float) -> None:
        self.search_ms.observe(ms)

    def dead_letter(self, topic: str, partition: int, offset: int, key: bytes | str | None, reason: str) -> None:
        """Count a dead-lettered message and keep it in the tail the dashboard shows."""
        self.dead_letters += 1
        self.dead_letters_by_topic[topic] = self.dead_letters_by_topic.get(topic, 0) + 1
        if isinstance(key, bytes):
            key = key.decode("utf-8", "replace")
        self.dead_letter_log.append({"at": time.time(), "topic": topic, "partition": partition, "offset": offset,
                                     "key": key, "reason": reason[:500]})

    @contextmanager
    def agent_running(self, name: str) -> Iterator[None]:
        """Wrap an agent's body: records its start and any crash (the exception goes on to Faust's supervisor)."""
        name = short_name(name)
        health = self.agents.setdefault(name, AgentHealth())
        health.started_at, health.consuming = time.time(), False
        try:
            yield
        except Exception as exc:
            self.agent_crashed(name, exc)
            raise

    def forget_user(self, user_id: str) -> None:
        """Drop what the metrics hold about a user: the list awaiting its next event, their dead letters' keys."""
        self.online.forget(user_id)
        kept = [r for r in self.dead_letter_log if r["key"] != user_id]
        self.dead_letter_log.clear()
        self.dead_letter_log.extend(kept)

    def agent_batch_started(self, name: str) -> None:
        """The agent took a batch: until agent_batch_ended, /health watches how long it stays on it."""
        health = self.agents.setdefault(short_name(name), AgentHealth())
        health.batch_started_at = time.time()
        health.batches_started += 1

    def agent_batch_ended(self, name: str, done: bool = True) -> None:
        """The agent left its batch: served (done) or interrupted (cancelled, to be redelivered)."""
        health = self.agents.setdefault(short_name(name), AgentHealth())
        health.batch_started_at = None
        if done:
            health.last_batch_at = time.time()

    def agent_consuming(self, name: str) -> None:
        """The agent has begun taking from its stream (its start-up waits, e.g. for the encoder, are over)."""
        self.agents.setdefault(short_name(name), AgentHealth()).consuming = True

    def agent_idle_mark(self, name: str) -> int | None:
        """While the agent takes from its stream and has no batch in hand: how many batches it has taken, so that
        a caller seeing the same mark twice knows it took none in between. None otherwise (not started, still in
        its start-up waits, or on a batch)."""
        health = self.agents.get(short_name(name))
        if health is None or not health.consuming or health.batch_started_at is not None:
            return None
        return health.batches_started

    def agent_crashed(self, name: str, exc: BaseException) -> None:
        health = self.agents.setdefault(short_name(name), AgentHealth())
        health.crashes.append(time.time())
        health.last_error = f"{type(exc).__name__}: {exc}"[:300]

    @contextmanager
    def store_call(self, what: str) -> Iterator[None]:
        """Track a vector-store call in flight (a call older than store_stuck_s makes the worker unhealthy)."""
        call_id = self.call_started("vector store", what, self.store_stuck_s)
        try:
            yield
        finally:
            self.call_ended(call_id)

    def call_started(self, component: str, what: str, stuck_after_s: float) -> int:
        """Note a call to `component` in flight (any thread may call this); while it runs longer than
        `stuck_after_s` (its caller's deadline) the worker is unhealthy. Returns the id call_ended() takes."""
        self._call_ids += 1
        call_id = self._call_ids
        self._calls[call_id] = (f"{component} stuck: {what}", time.monotonic(), stuck_after_s)
        return call_id

    def call_ended(self, call_id: int) -> None:
        self._calls.pop(call_id, None)

    # ---- reading --------------------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        """{"ok": bool, "problems": [...], "agents": {...}}: not ok while nothing can be served."""
        now = time.time()
        problems: list[str] = []
        if self.startup_error:
            problems.append(self.startup_error)
        elif not self.ready:
            problems.append("starting: the encoder and the vector store are not ready yet")
        agents = {}
        for name, h in sorted(self.agents.items()):
            recent = [t for t in h.crashes if now - t < self.crash_window_s]
            looping = bool(recent) and (h.last_batch_at is None or h.last_batch_at < recent[-1])
            on_batch = None if h.batch_started_at is None else now - h.batch_started_at
            stuck = on_batch is not None and on_batch > self.agent_stuck_s
            agents[name] = {"status": "crash-looping" if looping else "stuck" if stuck else "ok",
                            "crashes": len(h.crashes), "crashes_recent": len(recent), "last_error": h.last_error,
                            "last_batch_s_ago": None if h.last_batch_at is None else round(now - h.last_batch_at, 1),
                            "on_batch_s": None if on_batch is None else round(on_batch, 1)}
            if looping:
                problems.append(f"agent {name} is crash-looping ({len(recent)} crashes in {self.crash_window_s:.0f}s;"
                                f" last: {h.last_error})")
            if stuck:
                problems.append(f"agent {name} has been on one batch for {on_batch:.0f}s (a step that does not "
                                "finish, or sends the broker does not take)")
        mono = time.monotonic()
        for what, t0, stuck_after_s in list(self._calls.values()):
            if mono - t0 > stuck_after_s:
                problems.append(f"{what} running for {mono - t0:.0f}s")
                break
        return {"ok": not problems, "problems": problems, "agents": agents}

    def snapshot(self) -> dict[str, Any]:
        """Counters, latency percentiles, uptime and state sizes (the /stats/ page)."""
        return {
            **{name: getattr(self, name) for name in self.COUNTERS},
            "latency_ms_p50": self.latency_ms.percentile(50),
            "latency_ms_p95": self.latency_ms.percentile(95),
            "latency_ms_p99": self.latency_ms.percentile(99),
            "search_ms_p50": self.search_ms.percentile(50),
            "search_ms_p99": self.search_ms.percentile(99),
            "uptime_s": round(time.time() - self.started_at, 1),
            "catalogue_size": self.catalogue_size,
            "users": self.users,
        }

    def sample(self, now: float | None = None) -> dict[str, Any]:
        """Append one point of the dashboard's time series: rates since the previous point and interval stats."""
        now = time.time() if now is None else now
        counts = {name: getattr(self, name) for name in ("events", "recommendations", "dead_letters", "items_indexed")}
        prev = self._last_sample
        point: dict[str, Any] = {"t": round(now, 3)}
        since = prev["t"] if prev else self.started_at
        dt = max(now - since, 1e-6)
        for name, value in counts.items():
            point[f"{name}_per_s"] = round((value - (prev["counts"][name] if prev else 0)) / dt, 3)
        lat = self.latency_ms.values_since(since)
        point["latency_p50_ms"] = _pct(lat, 50)
        point["latency_p99_ms"] = _pct(lat, 99)
        enc = self.encoder_ms.values_since(since)
        sizes = self.encoder_batch.values_since(since)
        point["encoder_ms"] = _mean(enc)
        point["encoder_batch"] = _mean(sizes)
        point["search_ms"] = _mean(self.search_ms.values_since(since))
        point["lag"] = dict(self.lag)
        self._last_sample = {"t": now, "counts": counts}
        self.series.append(point)
        return point


def _pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)), 3) if values else None


def _mean(values: list[float]) -> float | None:
    return round(float(sum(values) / len(values)), 3) if values else None


class MetricsCollector(Collector):
    """Prometheus view of a Metrics object, read at scrape time (register on a CollectorRegistry)."""

    def __init__(self, metrics: Metrics, prefix: str = "stream_app") -> None:
        self.metrics = metrics
        self.prefix = prefix

    def collect(self) -> Iterator[Any]:
        m, p = self.metrics, self.prefix
        docs = {"events": "behaviour events applied to user state", "batches": "behaviour batches handled",
                "recommendations": "recommendation lists sent", "dead_letters": "messages sent to a dead-letter topic",
                "duplicates": "redelivered events recognised by event_id and not applied again",
                "forgotten": "users deleted by a forget event",
                "encoded_texts": "texts encoded", "encoder_calls": "hops to the encoder thread",
                "encoder_s": "seconds spent encoding", "encoder_batch_max": "largest encoder call (texts)",
                "store_searches": "batched vector-store searches", "store_record_calls": "vector-store record reads",
                "cache_hits": "item records served from the in-memory cache",
                "items_indexed": "catalogue items written into this worker's store",
                "items_encoded": "catalogue items encoded by this worker", "items_deleted": "catalogue items deleted",
                "items_unchanged": "catalogue re-sends skipped as unchanged",
                "items_superseded": "catalogue messages replaced by a later one for the same item in the same batch",
                "seeks_back": "seeks back to re-read offsets the consumer skipped or fetched and never delivered"}
        for name in Metrics.COUNTERS:
            yield CounterMetricFamily(f"{p}_{name}", docs[name], value=getattr(m, name))
        by_topic = CounterMetricFamily(f"{p}_dead_letters_by_topic", "dead-lettered messages per source topic",
                                       labels=["topic"])
        for topic, n in sorted(m.dead_letters_by_topic.items()):
            by_topic.add_metric([topic], n)
        yield by_topic
        yield m.latency_ms.family(f"{p}_latency_ms", "event -> recommendation latency (ms, from the broker timestamp)")
        yield m.encoder_ms.family(f"{p}_encoder_ms", "encoder call time per batch (ms)")
        yield m.encoder_batch.family(f"{p}_encoder_batch_size", "texts per encoder call")
        yield m.search_ms.family(f"{p}_search_ms", "vector-store search time per batched call (ms)")
        yield GaugeMetricFamily(f"{p}_uptime_seconds", "seconds since the worker started",
                                value=time.time() - m.started_at)
        if m.catalogue_size is not None:
            yield GaugeMetricFamily(f"{p}_catalogue_items", "items in the vector store", value=m.catalogue_size)
        if m.users is not None:
            yield GaugeMetricFamily(f"{p}_users", "users in the user-state table (this worker's partitions)",
                                    value=m.users)
        lag = GaugeMetricFamily(f"{p}_consumer_lag", "messages behind the end of each assigned input partition",
                                labels=["partition"])
        for tp, n in sorted(m.lag.items()):
            lag.add_metric([tp], n)
        yield lag
        health = m.health()
        yield GaugeMetricFamily(f"{p}_healthy", "1 when the worker can serve, 0 otherwise", value=int(health["ok"]))
        crashes = CounterMetricFamily(f"{p}_agent_crashes", "agent crashes", labels=["agent"])
        for name, h in sorted(m.agents.items()):
            crashes.add_metric([name], len(h.crashes))
        yield crashes
        k = m.online.k
        trials = CounterMetricFamily(f"{p}_online_trials", f"next events scored against the last list (HR@{k})",
                                     labels=["event_type"])
        hits = CounterMetricFamily(f"{p}_online_hits", f"next events found in the list (HR@{k}), served vs popular",
                                   labels=["event_type", "list"])
        rate = GaugeMetricFamily(f"{p}_online_hit_rate", f"rolling HR@{k} over the last {m.online.window} trials",
                                 labels=["event_type", "list"])
        for event_type, n in sorted(m.online.trials.items()):
            trials.add_metric([event_type], n)
            hits.add_metric([event_type, "served"], m.online.hits_served.get(event_type, 0))
            hits.add_metric([event_type, "popular"], m.online.hits_popular.get(event_type, 0))
        for event_type, row in m.online.snapshot()["by_type"].items():
            if row["trials"]:
                rate.add_metric([event_type, "served"], row["hr_served"])
                rate.add_metric([event_type, "popular"], row["hr_popular"])
        yield trials
        yield hits
        yield rate


def short_name(name: str) -> str:
    """An agent's name without its module path (stream_app.stream.app.index_items -> index_items)."""
    return str(name).rsplit(".", 1)[-1]
