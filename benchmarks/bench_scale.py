"""End-to-end throughput with 1 and 2 workers on the real broker, measured side by side in one run.

    STREAM_APP_KAFKA_BOOTSTRAP=127.0.0.1:9092 .venv/bin/python benchmarks/bench_scale.py --workers 1 2 --events 4000

For each worker count: fresh topics (4 partitions), N `stream-app worker` processes (own data dir and web port),
the sample catalogue, then a burst of known-item events from many users produced as fast as possible; events/s =
events / (last recommendation consumed - first event produced), every event accounted for by `event_ids`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from stream_app.sample_data import load_catalogue


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(url: str) -> dict | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return json.loads(r.read())
    except OSError:
        return None


def wait(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


async def burst(bootstrap: str, env: dict[str, str], events: list[dict]) -> tuple[float, int]:
    consumer = AIOKafkaConsumer(env["STREAM_APP_RECOMMENDATIONS_TOPIC"], bootstrap_servers=bootstrap,
                                auto_offset_reset="earliest", group_id=None)
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
    await consumer.start()
    await producer.start()
    try:
        waiting = {e["event_id"] for e in events}
        t0 = time.perf_counter()
        for e in events:
            await producer.send(env["STREAM_APP_BEHAVIOUR_TOPIC"], json.dumps(e).encode(), key=e["user_id"].encode())
        await producer.flush()
        recs = 0
        async with asyncio.timeout(600):
            while waiting:
                for msgs in (await consumer.getmany(timeout_ms=500)).values():
                    for m in msgs:
                        recs += 1
                        waiting -= set(json.loads(m.value)["event_ids"])
        return time.perf_counter() - t0, recs
    finally:
        await producer.stop()
        await consumer.stop()


def run(n_workers: int, n_events: int, n_users: int, bootstrap: str, tmp: Path) -> dict:
    run_id = uuid.uuid4().hex[:8]
    env = {**os.environ, "STREAM_APP_KAFKA_BOOTSTRAP": bootstrap, "STREAM_APP_APP_ID": f"bench-{run_id}",
           "STREAM_APP_TOPIC_PARTITIONS": "4", "STREAM_APP_WEB_HOST": "127.0.0.1"}
    for name in ("items", "behaviour", "recommendations", "dlq", "items_dlq", "item_vectors"):
        env[f"STREAM_APP_{name.upper()}_TOPIC"] = f"bench-{name}-{run_id}"
    procs, webs = [], []
    try:
        for k in range(n_workers):
            port, data = free_port(), tmp / f"{run_id}-{k}"
            data.mkdir()
            wenv = {**env, "STREAM_APP_DATA_DIR": str(data), "STREAM_APP_WEB_PORT": str(port)}
            with open(data / "worker.log", "ab") as log:
                procs.append(subprocess.Popen([sys.executable, "-m", "stream_app.cli", "worker", "--loglevel", "warn"],
                                              env=wenv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
            webs.append(f"http://127.0.0.1:{port}")
            if k == 0:
                wait(lambda: get_json(f"{webs[0]}/replicas/") is not None, 300, "first worker")
        catalogue = load_catalogue()

        async def load() -> None:
            p = AIOKafkaProducer(bootstrap_servers=bootstrap)
            await p.start()
            for i in catalogue:
                await p.send(env["STREAM_APP_ITEMS_TOPIC"], json.dumps(i).encode(), key=i["item_id"].encode())
            await p.stop()

        asyncio.run(load())
        for w in webs:
            wait(lambda: (get_json(f"{w}/replicas/") or {}).get("catalogue_items") == len(catalogue)
                 and (get_json(f"{w}/replicas/") or {}).get("ready"), 600, "catalogue")
        wait(lambda: all(len((get_json(f"{w}/replicas/") or {}).get("behaviour_partitions", [])) > 0 for w in webs)
             and sum(len(get_json(f"{w}/replicas/")["behaviour_partitions"]) for w in webs) == 4, 300, "assignment")
        rng = random.Random(0)
        ids = [i["item_id"] for i in catalogue]
        events = [{"event_id": f"b{k}", "user_id": f"u{rng.randrange(n_users)}", "type": "view",
                   "item_id": rng.choice(ids), "ts": 1767225600 + k} for k in range(n_events)]
        before = [(get_json(f"{w}/replicas/") or {})["signal"]["events_counted"] for w in webs]
        seconds, recs = asyncio.run(burst(bootstrap, env, events))
        # Signal staleness at the end of the burst: how long after the last list each worker's counters hold it all.
        done = time.perf_counter()
        behind = []
        for w, b in zip(webs, before):
            wait(lambda: (get_json(f"{w}/replicas/") or {})["signal"]["events_counted"] >= b + n_events, 120, "signal")
            behind.append(time.perf_counter() - done)
        return {"workers": n_workers, "events": n_events, "seconds": seconds, "events_per_s": n_events / seconds,
                "recommendations": recs, "signal_behind_s": behind}
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--events", type=int, default=4000)
    ap.add_argument("--users", type=int, default=400)
    args = ap.parse_args()
    bootstrap = os.environ.get("STREAM_APP_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.workers:
            results.append(run(n, args.events, args.users, bootstrap, Path(tmp)))
            r = results[-1]
            print(f"{r['workers']} worker(s): {r['events']:,} known-item events in {r['seconds']:.1f} s = "
                  f"{r['events_per_s']:,.0f} events/s ({r['recommendations']:,} recommendation messages); every "
                  f"worker's counters held all events {max(r['signal_behind_s']):.2f} s after the last list", flush=True)
    print(f"cores: {os.cpu_count()}; load average at the end: {os.getloadavg()}")


if __name__ == "__main__":
    main()
