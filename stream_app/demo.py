"""`stream-app demo`: broker, model, worker, the sample catalogue and scripted users, with live recommendations."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import time
import urllib.request
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from stream_app.adapters.broker import kafka_command
from stream_app.adapters.kafka_security import client_kwargs
from stream_app.sample_data import load_catalogue, load_demo_behaviour
from stream_app.settings import Settings, get_settings
from stream_app.stream.process import spawn_worker, stop_process

log = logging.getLogger(__name__)


def web_stats(settings: Settings) -> dict[str, Any] | None:
    """The worker's /stats/ page as JSON, or None while it is not up."""
    try:
        with urllib.request.urlopen(f"http://{settings.web_host}:{settings.web_port}/stats/", timeout=2) as r:
            return json.loads(r.read())
    except OSError:
        return None


async def wait_for(predicate, timeout: float, what: str, proc: subprocess.Popen | None = None) -> None:
    """Poll predicate() until true; fail with `what` after timeout or when the worker process died."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the worker exited (code {proc.returncode}) while waiting for {what}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.25)


def start_worker(settings: Settings) -> subprocess.Popen:
    """Run `stream-app worker` as a child process (its log goes to data_dir/worker.log)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return spawn_worker(os.environ.copy(), settings.data_dir / "worker.log")


def print_recommendation(rec: dict[str, Any], catalogue: dict[str, dict]) -> None:
    titles = [f"{i['title'] or i['item_id']} ({catalogue.get(i['item_id'], {}).get('category', '?')})" for i in rec["items"][:5]]
    print(f"\n→ {rec['user_id']} after {rec['event_id']} [{rec['strategy']}, {rec['latency_ms']:.1f} ms]")
    for n, t in enumerate(titles, 1):
        print(f"   {n}. {t}")


async def play(settings: Settings, proc: subprocess.Popen) -> list[float]:
    """Load the catalogue, play the scripted users, print each recommendation; returns the latencies."""
    catalogue = load_catalogue()
    by_id = {item["item_id"]: item for item in catalogue}
    producer = AIOKafkaProducer(**client_kwargs(settings), linger_ms=5)
    consumer = AIOKafkaConsumer(**client_kwargs(settings), enable_auto_commit=False)
    await producer.start()
    await consumer.start()
    try:
        await consumer.topics()  # refreshes metadata; the worker declared the topic before it started
        parts = consumer.partitions_for_topic(settings.recommendations_topic) or range(settings.topic_partitions)
        tps = [TopicPartition(settings.recommendations_topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        await consumer.seek_to_end(*tps)

        print(f"Loading {len(catalogue)} catalogue items into topic '{settings.items_topic}' ...")
        before = web_stats(settings) or {}
        base = sum(before.get(k, 0) for k in ("items_indexed", "items_unchanged", "items_superseded"))
        for item in catalogue:
            await producer.send(settings.items_topic, json.dumps(item, ensure_ascii=False).encode(),
                                key=item["item_id"].encode())
        await producer.flush()
        t0 = time.monotonic()

        def indexed() -> bool:
            s = web_stats(settings) or {}
            return sum(s.get(k, 0) for k in ("items_indexed", "items_unchanged", "items_superseded")) - base >= len(catalogue)

        await wait_for(indexed, 300, "the catalogue to be indexed", proc)
        print(f"Catalogue indexed in {time.monotonic() - t0:.1f}s. Playing scripted users ...")

        script = load_demo_behaviour()
        shift = time.time() - max(e["ts"] for e in script)  # replay the script as if it happened just now
        latencies: list[float] = []
        for event in script:
            event = {**event, "ts": event["ts"] + shift}
            label = event.get("item_id") and by_id.get(event["item_id"], {}).get("title") or event.get("text")
            print(f"\n{event['user_id']}: {event['type']} {label}")
            await producer.send_and_wait(settings.behaviour_topic, json.dumps(event, ensure_ascii=False).encode(),
                                         key=event["user_id"].encode())
            try:
                msg = await asyncio.wait_for(consumer.getone(), timeout=30)
            except TimeoutError:
                print("   (no recommendation within 30s)")
                continue
            rec = json.loads(msg.value)
            latencies.append(rec["latency_ms"])
            print_recommendation(rec, by_id)
            await asyncio.sleep(0.2)
        return latencies
    finally:
        await consumer.stop()
        await producer.stop()


def run_demo(keep_running: bool = False) -> int:
    """The whole show; returns a process exit code."""
    settings = get_settings()
    if kafka_command("start") != 0:
        return 1
    from models.export import ensure_model

    print(f"Model folder: {ensure_model(settings)}")
    if web_stats(settings) is not None:
        print(f"A worker already answers on port {settings.web_port}; using it.")
        proc = None
    else:
        proc = start_worker(settings)
        print(f"Started a worker (pid {proc.pid}); log: {settings.data_dir / 'worker.log'}")
    try:
        asyncio.run(wait_for(lambda: web_stats(settings) is not None, 120, "the worker's web view", proc))
        latencies = asyncio.run(play(settings, proc))
        if latencies:
            p50, p95 = np.percentile(latencies, [50, 95])
            print(f"\n{len(latencies)} recommendations; event→recommendation latency p50 {p50:.1f} ms, p95 {p95:.1f} ms")
        url = f"http://{settings.web_host}:{settings.web_port}"
        print(f"Dashboard: {url}/dashboard  metrics: {url}/metrics  per user: {url}/users/alice")
        if keep_running and proc is not None:
            print("Worker keeps running (Ctrl-C to stop).")
            proc.wait()
        return 0 if latencies else 1
    finally:
        if proc is not None:
            stop_process(proc)
