"""Pipeline benchmark on the real broker: `stream-app bench pipeline [--items N --users M --events E --rate R]`.

What it does, in one run (nothing is asserted; it prints numbers and optionally writes them as JSON):
1. the served encoder alone (this process, same settings as the worker) on the same item titles and event texts,
   before the worker starts and again after it stopped (the ratios use the mean: shared cores drift);
2. a `stream-app worker` subprocess on private topics and a fresh data dir, then
   - catalogue ingestion: N items produced at once, timed until the worker reports them all indexed;
   - a burst of E known-item events (view/click/cart/purchase) from M users, produced as fast as possible;
   - a burst of T free-text events (reviews and searches);
   - a fixed offered rate R events/s of known-item events for S seconds;
   every event is accounted for by the `event_ids` of the recommendations consumed (or a DLQ record);
   latency = the recommendation's generated_at minus the time this process sent the event;
3. `--naive` (on by default): the same worker restarted with batch size 1 and no item cache — each event encoded
   alone, one search per event — on the same catalogue, for side-by-side ratios.
Worker peak RSS (worker + store child, VmHWM), encoder texts/s and batch sizes and vector-search times come from
/proc and the worker's /stats/ page; the consumer group's lag is read from the broker at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from benchmarks import workload
from stream_app.stream.process import WorkerProcess, private_env, start_worker

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------
# The worker process
# ---------------------------------------------------------------------------------------------


def peak_rss_mb(w: WorkerProcess) -> dict[str, float]:
    """Peak resident memory (VmHWM) of the worker and of each of its child processes (the store), in MB."""
    out = {"worker": _vm_hwm_mb(w.proc.pid)}
    for pid in _children(w.proc.pid):
        out[f"child {pid}"] = _vm_hwm_mb(pid)
    return out


def _vm_hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def py_spy() -> str:
    """The py-spy executable: on PATH, or beside this interpreter (a venv that was not activated)."""
    beside = Path(sys.executable).with_name("py-spy")
    found = shutil.which("py-spy") or (str(beside) if beside.exists() else None)
    if found is None:
        raise SystemExit("--profile needs py-spy: pip install -e '.[profile]'")
    return found


class Profiler:
    """py-spy sampling the worker (and its store child) during one phase, when --profile DIR is given."""

    def __init__(self, directory: Path | None, pid: int, name: str) -> None:
        self.path = directory / f"{name.replace(' ', '-').replace('/', '_')}.txt" if directory else None
        self.proc: subprocess.Popen | None = None
        if self.path is not None:
            self.proc = subprocess.Popen([py_spy(), "record", "--pid", str(pid), "--rate", "100", "--format", "raw",
                                          "--subprocesses", "--nonblocking", "--output", str(self.path)],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _function(frame: str) -> str:
    """A py-spy frame "name (file.py:line)" without its line number, so a function's lines add up."""
    head, sep, tail = frame.rpartition(":")
    return f"{head})" if sep and tail.rstrip(")").isdigit() else frame


def top_frames(path: Path, n: int = 15) -> list[tuple[float, float, str]]:
    """(self %, inclusive %, function) of the n functions with most self time in a py-spy raw (collapsed) profile."""
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = [_function(f) for f in stack.split(";")]
        c = int(count)
        total += c
        own[frames[-1]] = own.get(frames[-1], 0) + c
        for f in set(frames):
            incl[f] = incl.get(f, 0) + c
    ranked = sorted(own.items(), key=lambda kv: -kv[1])[:n]
    return [(100 * c / total, 100 * incl[f] / total, f) for f, c in ranked] if total else []


# ---------------------------------------------------------------------------------------------
# Kafka side: produce, collect recommendations, lag
# ---------------------------------------------------------------------------------------------


def _bar(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="ev", file=sys.stderr, disable=not sys.stderr.isatty(), leave=False,
                dynamic_ncols=True)


class Collector:
    """Consumes `recommendations` and the DLQ in the background: event_id -> (generated_at, received_at)."""

    def __init__(self, bootstrap: str, recs_topic: str, dlq_topic: str) -> None:
        self.bootstrap = bootstrap
        self.topics = (recs_topic, dlq_topic)
        self.recs_topic = recs_topic
        self.served: dict[str, tuple[float, float]] = {}
        self.dead: dict[str, str] = {}
        self._task: asyncio.Task | None = None
        self._consumer: Any = None

    async def start(self) -> None:
        from aiokafka import AIOKafkaConsumer

        self._consumer = AIOKafkaConsumer(*self.topics, bootstrap_servers=self.bootstrap,
                                          auto_offset_reset="earliest", group_id=None, enable_auto_commit=False,
                                          max_partition_fetch_bytes=8 << 20, fetch_max_wait_ms=20)
        await self._consumer.start()
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        async for msg in self._consumer:
            now = time.time()
            value = json.loads(msg.value)
            if msg.topic == self.recs_topic:
                for event_id in value.get("event_ids", [value.get("event_id")]):
                    self.served.setdefault(event_id, (float(value["generated_at"]), now))
            else:
                self.dead[_dead_event_id(value) or f"?{len(self.dead)}"] = str(value.get("reason"))

    def seen(self, event_id: str) -> bool:
        return event_id in self.served or event_id in self.dead

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - shutting down
                pass
        if self._consumer is not None:
            await self._consumer.stop()


def _dead_event_id(record: dict) -> str | None:
    """The event_id of the message a DLQ record carries (its text copy, else its base64 copy), if readable."""
    import base64

    try:
        text = record.get("value_text") or base64.b64decode(record.get("value_b64") or "").decode()
        return str(json.loads(text)["event_id"])
    except (ValueError, KeyError, TypeError):
        return None


async def _producer(bootstrap: str) -> Any:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, max_batch_size=1 << 20,
                                max_request_size=8 << 20)
    await producer.start()
    return producer


def _encode(event: dict) -> bytes:
    return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()


async def produce_burst(producer: Any, topic: str, events: list[dict], key: str) -> dict[str, float]:
    """Send all events as fast as the producer takes them; returns event_id -> send time (epoch s)."""
    sent: dict[str, float] = {}
    futures = []
    for e in events:
        sent[e.get("event_id", e.get("item_id"))] = time.time()
        futures.append(await producer.send(topic, _encode(e), key=str(e[key]).encode()))
    await producer.flush()
    await asyncio.gather(*futures)
    return sent


async def produce_at_rate(producer: Any, topic: str, events: list[dict], rate: float) -> dict[str, float]:
    """Send events at `rate` per second, in 10 ms ticks; returns event_id -> send time."""
    sent: dict[str, float] = {}
    start = time.monotonic()
    i = 0
    while i < len(events):
        due = min(len(events), int((time.monotonic() - start) * rate) + 1)
        while i < due:
            e = events[i]
            sent[e["event_id"]] = time.time()
            await producer.send(topic, _encode(e), key=e["user_id"].encode())
            i += 1
        await asyncio.sleep(0.01)
    await producer.flush()
    return sent


async def wait_accounted(collector: Collector, sent: dict[str, float], desc: str, stall_s: float) -> list[str]:
    """Wait until every sent event_id is served or dead-lettered (or nothing moved for stall_s); the missing ids."""
    pending = set(sent)
    bar = _bar(len(pending), desc)
    last_progress = time.monotonic()
    while pending:
        done = {e for e in pending if collector.seen(e)}
        if done:
            pending -= done
            bar.update(len(done))
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > stall_s:
            break
        await asyncio.sleep(0.05)
    bar.close()
    return sorted(pending)


async def group_lag(bootstrap: str, group: str, topics: list[str]) -> dict[str, int]:
    """Per topic: log end offset minus the group's committed offset, summed over partitions."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await admin.start()
    await consumer.start()
    try:
        committed = await admin.list_consumer_group_offsets(group)
        parts = [tp for tp in committed if tp.topic in topics]
        ends = await consumer.end_offsets(parts) if parts else {}
        lag = {t: 0 for t in topics}
        for tp in parts:
            lag[tp.topic] += max(0, ends[tp] - committed[tp].offset)
        return lag
    finally:
        await consumer.stop()
        await admin.close()


# ---------------------------------------------------------------------------------------------
# Phases
# ---------------------------------------------------------------------------------------------


@dataclass
class Phase:
    """One measured burst or rate phase."""

    name: str
    events: int
    seconds: float
    missing: int
    dead_lettered: int
    latencies_ms: np.ndarray = field(repr=False)
    worker: dict[str, Any] = field(default_factory=dict)

    @property
    def per_s(self) -> float:
        return (self.events - self.missing) / self.seconds if self.seconds > 0 else 0.0

    def pct(self, q: float) -> float | None:
        return float(np.percentile(self.latencies_ms, q)) if len(self.latencies_ms) else None

    def as_dict(self) -> dict[str, Any]:
        return {"events": self.events, "seconds": round(self.seconds, 3), "events_per_s": round(self.per_s, 1),
                "missing": self.missing, "dead_lettered": self.dead_lettered,
                "latency_ms": {f"p{q}": _r(self.pct(q)) for q in (50, 95, 99)}}


def _r(x: float | None, nd: int = 1) -> float | None:
    return None if x is None else round(x, nd)


async def run_phase(name: str, producer: Any, collector: Collector, topic: str, events: list[dict],
                    rate: float | None, stall_s: float) -> Phase:
    """Produce events (a burst, or at `rate`), wait until all are accounted for, measure throughput and latency."""
    t0 = time.time()
    if rate:
        sent = await produce_at_rate(producer, topic, events, rate)
    else:
        sent = await produce_burst(producer, topic, events, key="user_id")
    missing = await wait_accounted(collector, sent, name, stall_s)
    served = [collector.served[e] for e in sent if e in collector.served]
    last = max((received for _, received in served), default=time.time())
    latencies = np.array([(collector.served[e][0] - t) * 1e3 for e, t in sent.items() if e in collector.served])
    dead = sum(1 for e in sent if e in collector.dead)
    return Phase(name, len(events), last - t0, len(missing), dead, latencies)


async def ingest(producer: Any, w: WorkerProcess, items: list[dict], stall_s: float) -> tuple[float, dict, dict]:
    """Produce the catalogue, wait until the worker has indexed it; (seconds, stats before, stats after)."""
    before = w.stats() or {}
    base = before.get("items_indexed", 0) + before.get("items_unchanged", 0)
    bar = _bar(len(items), "ingest")
    t0 = time.time()
    await produce_burst(producer, w.topic("items"), items, key="item_id")
    done, last_change, t_done = 0, time.monotonic(), time.time()
    while done < len(items):
        await asyncio.sleep(0.25)
        stats = w.stats() or {}
        now_done = stats.get("items_indexed", 0) + stats.get("items_unchanged", 0) - base
        if now_done > done:
            bar.update(now_done - done)
            done, last_change, t_done = now_done, time.monotonic(), time.time()
        elif time.monotonic() - last_change > stall_s or w.proc.poll() is not None:
            break
    bar.close()
    return t_done - t0, before, w.stats() or {}


def encoder_rates(settings: Any, titles: list[str], texts: list[tuple[str, str]], min_seconds: float) -> dict:
    """The served encoder alone on the same texts: titles/s (passages) and free texts/s (reviews and queries)."""
    from stream_app.adapters.encoder import load_encoder

    enc = load_encoder(settings)
    enc.encode(titles[:8])

    def rate(fn, n: int) -> float:
        best = 0.0
        for _ in range(2):  # best of two: shared cores make single runs noisy
            t0, done = time.perf_counter(), 0
            while done == 0 or time.perf_counter() - t0 < min_seconds:
                fn()
                done += n
            best = max(best, done / (time.perf_counter() - t0))
        return best

    reviews = [t for kind, t in texts if kind == "passage"]
    queries = [t for kind, t in texts if kind == "query"]

    def encode_texts() -> None:
        enc.encode(reviews, kind="passage")
        enc.encode(queries, kind="query")

    out = {"model": enc.manifest.name, "graph": "int8" if enc.int8 else "fp32", "provider": enc.provider,
           "titles_per_s": rate(lambda: enc.encode(titles, kind="passage"), len(titles)),
           "texts_per_s": rate(encode_texts, len(texts))}
    del enc
    return out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores visible)"
    except OSError:
        pass
    return platform.processor() or "unknown"


def stats_delta(before: dict, after: dict) -> dict[str, Any]:
    """Worker encoder figures between two /stats/ snapshots."""
    texts = after.get("encoded_texts", 0) - before.get("encoded_texts", 0)
    calls = after.get("encoder_calls", 0) - before.get("encoder_calls", 0)
    secs = after.get("encoder_s", 0.0) - before.get("encoder_s", 0.0)
    return {"texts": texts, "calls": calls, "texts_per_s": _r(texts / secs if secs > 0 else None),
            "mean_batch": _r(texts / calls if calls else None)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    from stream_app.settings import Settings

    settings = Settings()
    bootstrap = settings.kafka_bootstrap
    rng_users = args.users
    t_gen = time.perf_counter()
    cat = workload.catalogue(args.items)
    users = workload.Users(cat, rng_users)
    known = workload.known_item_events(users, args.events, "k", seed=1)
    texts = workload.text_events(users, args.text_events, "t", seed=2)
    rated = workload.known_item_events(users, int(args.rate * args.rate_seconds), "r", seed=3)
    log.info("workload generated in %.1f s", time.perf_counter() - t_gen)

    # 1. The served encoder alone, on the same texts (before the worker starts: nothing else competes).
    sample = [i["title"] for i in cat.items[: min(len(cat.items), 2048)]]
    text_sample = [("query" if e["type"] == "search" else "passage", e["text"]) for e in texts[:1024]]
    print("measuring the served encoder alone ...", file=sys.stderr)
    enc_before = encoder_rates(settings, sample, text_sample, args.encoder_seconds)
    enc = dict(enc_before)

    data = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    env = private_env("bench", bootstrap, data)
    result: dict[str, Any] = {
        "cpu": cpu_name(), "sizes": {"items": args.items, "users": args.users, "events": args.events,
                                     "text_events": args.text_events, "rate": args.rate,
                                     "rate_seconds": args.rate_seconds, "naive_events": args.naive_events},
        "encoder": {k: _r(v) if isinstance(v, float) else v for k, v in enc.items()},
    }
    producer = await _producer(bootstrap)
    collector: Collector | None = None
    w = start_worker(env, data, timeout=300)
    try:
        collector = Collector(bootstrap, env["STREAM_APP_RECOMMENDATIONS_TOPIC"], env["STREAM_APP_DLQ_TOPIC"])
        await collector.start()
        # 2a. Catalogue ingestion.
        profiler = Profiler(args.profile, w.proc.pid, "ingest")
        seconds, before, after = await ingest(producer, w, cat.items, args.stall_seconds)
        profiler.stop()
        indexed = after.get("items_indexed", 0) - before.get("items_indexed", 0)
        result["ingest"] = {"items": len(cat.items), "indexed": indexed, "seconds": round(seconds, 2),
                            "items_per_s": _r(indexed / seconds if seconds > 0 else 0.0),
                            "worker_encoder": stats_delta(before, after)}
        # 2b-d. Known-item burst, free-text burst, offered rate.
        topic = w.topic("behaviour")
        phases = {}
        for name, events, rate in (("known-item burst", known, None), ("free-text burst", texts, None),
                                   (f"offered {args.rate:g}/s", rated, args.rate)):
            s0 = w.stats() or {}
            profiler = Profiler(args.profile, w.proc.pid, name)
            phases[name] = await run_phase(name, producer, collector, topic, events, rate, args.stall_seconds)
            profiler.stop()
            s1 = w.stats() or {}
            phases[name].worker = {**stats_delta(s0, s1), "search_ms_p50": _r(s1.get("search_ms_p50"), 2),
                                   "search_ms_p99": _r(s1.get("search_ms_p99"), 2),
                                   "batches": s1.get("batches", 0) - s0.get("batches", 0)}
        result["phases"] = {k: {**p.as_dict(), "worker": p.worker} for k, p in phases.items()}
        result["peak_rss_mb"] = _r(sum(peak_rss_mb(w).values()))
        result["peak_rss_detail_mb"] = {k: _r(v) for k, v in peak_rss_mb(w).items()}
        final = w.stats() or {}
        result["search_ms"] = {"p50": _r(final.get("search_ms_p50"), 2), "p99": _r(final.get("search_ms_p99"), 2)}
        # Every event was answered; the worker commits offsets every few seconds (Faust's commit_interval):
        # wait for that commit, up to a bound, and report whatever lag is left.
        lag_topics = [env["STREAM_APP_BEHAVIOUR_TOPIC"], env["STREAM_APP_ITEMS_TOPIC"]]
        deadline = time.monotonic() + 20.0
        while True:
            result["consumer_lag"] = await group_lag(bootstrap, env["STREAM_APP_APP_ID"], lag_topics)
            if not sum(result["consumer_lag"].values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
        w.stop(timeout=60)

        # 3. Naive: the same worker, batch size 1, no item cache, on the same catalogue (fresh users).
        if args.naive:
            naive_env = {**env, "STREAM_APP_BATCH_SIZE": "1", "STREAM_APP_ITEM_CACHE_SIZE": "0"}
            w = start_worker(naive_env, data, timeout=300, log_name="worker-naive.log")
            n_known = workload.known_item_events(users, min(args.naive_events, args.events), "nk", seed=1,
                                                 user_offset=args.users)
            n_text = workload.text_events(users, min(args.naive_events // 4 or 1, args.text_events), "nt", seed=2,
                                          user_offset=args.users)
            nk = await run_phase("naive known-item", producer, collector, topic, n_known, None, args.stall_seconds)
            nt = await run_phase("naive free-text", producer, collector, topic, n_text, None, args.stall_seconds)
            result["naive"] = {"known-item burst": nk.as_dict(), "free-text burst": nt.as_dict()}
            w.stop(timeout=60)
    finally:
        w.stop(timeout=60)
        if collector is not None:
            await collector.stop()
        await producer.stop()
        if not args.keep_data:
            subprocess.call(["rm", "-rf", str(data)])
        else:
            result["data_dir"] = str(data)

    # The encoder alone again, after the worker: shared cores drift, so the ratios use the mean of both runs.
    print("measuring the served encoder alone again ...", file=sys.stderr)
    enc_after = encoder_rates(settings, sample, text_sample, args.encoder_seconds)
    for key in ("titles_per_s", "texts_per_s"):
        enc[key] = (enc_before[key] + enc_after[key]) / 2
        result["encoder"][key] = _r(enc[key])
        result["encoder"][f"{key}_before_after"] = [_r(enc_before[key]), _r(enc_after[key])]
    known_p, text_p, rate_p = (result["phases"][k] for k in result["phases"])
    result.update({
        "items_per_s": result["ingest"]["items_per_s"],
        "events_per_s": known_p["events_per_s"],
        "text_events_per_s": text_p["events_per_s"],
        "latency_ms": rate_p["latency_ms"],
        "naive_events_per_s": result.get("naive", {}).get("known-item burst", {}).get("events_per_s"),
        "naive_text_events_per_s": result.get("naive", {}).get("free-text burst", {}).get("events_per_s"),
    })
    result["ratios"] = {
        "ingest_vs_encoder": _r(result["items_per_s"] / enc["titles_per_s"], 3),
        "text_events_vs_encoder": _r(result["text_events_per_s"] / enc["texts_per_s"], 3),
        "events_vs_naive": _r(result["events_per_s"] / result["naive_events_per_s"], 2)
        if result["naive_events_per_s"] else None,
        "text_events_vs_naive": _r(result["text_events_per_s"] / result["naive_text_events_per_s"], 2)
        if result["naive_text_events_per_s"] else None,
    }
    return result


def summary(r: dict[str, Any]) -> str:
    """The one-screen report."""
    e, s, ratios = r["encoder"], r["sizes"], r["ratios"]
    lines = [
        f"pipeline benchmark — {r['cpu']}",
        f"sizes: {s['items']:,} items, {s['users']:,} users, {s['events']:,} known-item + {s['text_events']:,} "
        f"free-text events, {s['rate']:g}/s for {s['rate_seconds']:g} s",
        f"encoder alone (mean of before/after the worker): {e['model']} {e['graph']} ({e['provider']}): "
        f"{e['titles_per_s']} titles/s {e['titles_per_s_before_after']}, "
        f"{e['texts_per_s']} review/search texts/s {e['texts_per_s_before_after']}",
        "",
        f"{'phase':<24}{'events':>8}{'per s':>10}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}{'missing':>9}"
        f"{'enc/s':>8}{'batch':>7}",
    ]
    ing = r["ingest"]
    lines.append(f"{'catalogue ingestion':<24}{ing['items']:>8}{ing['items_per_s']:>10}{'':>30}"
                 f"{ing['items'] - ing['indexed']:>9}{ing['worker_encoder']['texts_per_s'] or '':>8}"
                 f"{ing['worker_encoder']['mean_batch'] or '':>7}")
    for name, p in {**r["phases"], **{f"naive {k}": v for k, v in r.get("naive", {}).items()}}.items():
        lat = p["latency_ms"]
        worker = p.get("worker", {})
        lines.append(f"{name:<24}{p['events']:>8}{p['events_per_s']:>10}{lat['p50'] or '':>10}{lat['p95'] or '':>10}"
                     f"{lat['p99'] or '':>10}{p['missing']:>9}{worker.get('texts_per_s') or '':>8}"
                     f"{worker.get('mean_batch') or '':>7}")
    lines += [
        "",
        f"ingestion / encoder alone: {ratios['ingest_vs_encoder']}   free-text events / encoder alone: "
        f"{ratios['text_events_vs_encoder']}",
        f"vs naive (batch 1, no cache): known-item x{ratios['events_vs_naive']}, free-text x{ratios['text_events_vs_naive']}",
        f"vector search per batch: p50 {r['search_ms']['p50']} ms, p99 {r['search_ms']['p99']} ms   "
        f"worker peak RSS {r['peak_rss_mb']} MB {r['peak_rss_detail_mb']}",
        f"consumer lag at the end: {r['consumer_lag']}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="stream-app bench pipeline", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=100_000, help="catalogue size N")
    parser.add_argument("--users", type=int, default=10_000, help="users M")
    parser.add_argument("--events", type=int, default=20_000, help="known-item events in the burst")
    parser.add_argument("--text-events", type=int, default=3_000, help="free-text events (reviews, searches)")
    parser.add_argument("--rate", type=float, default=1_000, help="offered events/s of the rate phase")
    parser.add_argument("--rate-seconds", type=float, default=10, help="length of the rate phase")
    parser.add_argument("--naive", action=argparse.BooleanOptionalAction, default=True,
                        help="also run the per-event implementation (batch 1, no cache) for ratios")
    parser.add_argument("--naive-events", type=int, default=2_000, help="known-item events of the naive run")
    parser.add_argument("--encoder-seconds", type=float, default=3, help="minimum timing of each encoder rate")
    parser.add_argument("--stall-seconds", type=float, default=120, help="give up a phase after this long idle")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--profile", type=Path, help="sample the worker with py-spy per phase into this folder")
    parser.add_argument("--keep-data", action="store_true", help="keep the worker's data dir and logs")
    args = parser.parse_args(argv)
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    logging.basicConfig(level=logging.WARNING)
    result = asyncio.run(run(args))
    print(summary(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, ensure_ascii=False))
    if args.profile:
        for path in sorted(args.profile.glob("*.txt")):
            print(f"\nprofile {path.name}: self% incl% frame")
            for own, incl, frame in top_frames(path):
                print(f"  {own:5.1f} {incl:5.1f}  {frame[:150]}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
