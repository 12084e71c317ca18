"""Terminal tools behind `stream-app produce`, `stream-app tail` and `stream-app explain` (output is for people)."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import IO, Any

from tqdm import tqdm


class ToolError(RuntimeError):
    """A one-line failure shown to the operator (exit code 1)."""


def out(line: str = "") -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# ---- produce ------------------------------------------------------------------------------------------------------
@dataclass
class ProduceReport:
    sent: dict[str, int] = field(default_factory=dict)
    skipped: list[tuple[int, str]] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self, source: str) -> str:
        total = sum(self.sent.values())
        per = ", ".join(f"{topic}: {n}" for topic, n in sorted(self.sent.items())) or "nothing"
        line = f"sent {total} message(s) from {source} in {self.seconds:.1f}s ({per})"
        if self.skipped:
            shown = "; ".join(f"line {n}: {why}" for n, why in self.skipped[:5])
            more = f" (+{len(self.skipped) - 5} more)" if len(self.skipped) > 5 else ""
            line += f"; skipped {len(self.skipped)} line(s): {shown}{more}"
        return line


def route(obj: dict[str, Any], topic: str | None, settings: Any) -> tuple[str, str | None]:
    """(topic, key) of one JSON object: behaviour events have a type and a user_id, catalogue items an item_id."""
    if topic is None:
        if "user_id" in obj and "type" in obj:
            topic = settings.behaviour_topic
        elif "item_id" in obj:
            topic = settings.items_topic
        else:
            raise ValueError("neither a behaviour event (type + user_id) nor an item (item_id); use --topic")
    if topic == settings.items_topic:
        key = obj.get("item_id")
    else:
        key = obj.get("user_id", obj.get("item_id"))
    return topic, key if isinstance(key, str) else None


def read_lines(path: str) -> tuple[IO[bytes], int | None]:
    if path == "-":
        return sys.stdin.buffer, None
    try:
        with open(path, "rb") as f:
            total = sum(1 for _ in f)
        return open(path, "rb"), total  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise ToolError(f"cannot read {path}: {exc.strerror}") from None


async def produce(path: str, topic: str | None, settings: Any, client_options: dict[str, Any]) -> ProduceReport:
    """Send each JSON line of a file (or stdin) to its topic, keyed by user_id / item_id, with a progress bar."""
    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    stream, total = read_lines(path)
    report = ProduceReport()
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, linger_ms=5, **client_options)
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        raise ToolError(f"cannot reach Kafka at STREAM_APP_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}: {exc}") from None
    t0 = time.perf_counter()
    pending = []
    try:
        with tqdm(total=total, unit="msg", desc="produce", disable=None, file=sys.stderr) as bar:
            for n, raw in enumerate(stream, 1):
                line = raw.strip()
                bar.update(1)
                if not line:
                    continue
                try:
                    obj = json.loads(line)
                    if not isinstance(obj, dict):
                        raise ValueError(f"a JSON {type(obj).__name__}, not an object")
                    name, key = route(obj, topic, settings)
                except ValueError as exc:
                    report.skipped.append((n, str(exc).splitlines()[0][:120]))
                    continue
                pending.append(await producer.send(name, line, key=key.encode() if key else None))
                report.sent[name] = report.sent.get(name, 0) + 1
                if len(pending) >= 1000:
                    await asyncio.gather(*pending)
                    pending.clear()
            await asyncio.gather(*pending)
            await producer.flush()
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
        await producer.stop()
    report.seconds = time.perf_counter() - t0
    return report


async def forget(user_id: str, settings: Any, client_options: dict[str, Any]) -> str:
    """Send a `forget` event for the user (keyed by user_id, so it reaches the owner's partition); its event_id."""
    import uuid

    from aiokafka import AIOKafkaProducer
    from aiokafka.errors import KafkaConnectionError

    event = {"event_id": f"forget-{uuid.uuid4().hex}", "user_id": user_id, "type": "forget", "ts": time.time()}
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, **client_options)
    try:
        await producer.start()
    except KafkaConnectionError as exc:
        raise ToolError(f"cannot reach Kafka at STREAM_APP_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}: {exc}") from None
    try:
        await producer.send_and_wait(settings.behaviour_topic, json.dumps(event, ensure_ascii=False).encode(),
                                     key=user_id.encode())
    finally:
        await producer.stop()
    return event["event_id"]


# ---- tail ---------------------------------------------------------------------------------------------------------
def clock(ts: float | None) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts)) if ts else "--:--:--"


def format_recommendation(rec: dict[str, Any], at: float | None) -> list[str]:
    head = (f"{clock(at)}  {rec.get('user_id')}  ← {rec.get('event_id')}  [{rec.get('strategy')}, "
            f"{rec.get('latency_ms', 0):.1f} ms]")
    lines = [head]
    for n, item in enumerate(rec.get("items", []), 1):
        lines.append(f"   {n:>2}. {item.get('title') or '(no title)'}  [{item.get('item_id')}]  {item.get('score', 0):.4g}")
    return lines


def format_dead_letter(rec: dict[str, Any], at: float | None) -> list[str]:
    value = rec.get("value_text")
    if value is None:
        value = f"(binary, base64 {str(rec.get('value_b64'))[:60]})"
    elif len(value) > 160:
        value = value[:160] + "…"
    return [f"{clock(at)}  {rec.get('topic')}[{rec.get('partition')}]@{rec.get('offset')}  key={rec.get('key')}",
            f"   reason: {rec.get('reason')}", f"   value:  {value}"]


async def tail(which: str, settings: Any, user: str | None, from_beginning: bool, count: int | None,
               idle_s: float | None, client_options: dict[str, Any]) -> int:
    """Print recommendations or dead letters as they arrive; returns how many were shown."""
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaConnectionError

    topics = [settings.recommendations_topic] if which == "recommendations" else [settings.dlq_topic,
                                                                               settings.items_dlq_topic]
    # No group: every partition is read, nothing is committed; "latest" starts at the end, as tail -f does.
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False, group_id=None,
                                auto_offset_reset="earliest" if from_beginning else "latest", **client_options)
    try:
        await consumer.start()
    except KafkaConnectionError as exc:
        raise ToolError(f"cannot reach Kafka at STREAM_APP_KAFKA_BOOTSTRAP={settings.kafka_bootstrap}: {exc}") from None
    shown = 0
    try:
        available = await consumer.topics()
        present = [t for t in topics if t in available]
        if not present:
            raise ToolError(f"no topic {' or '.join(topics)} on {settings.kafka_bootstrap} yet (a worker creates them)")
        consumer.subscribe(present)
        render = format_recommendation if which == "recommendations" else format_dead_letter
        last_seen = time.monotonic()
        while count is None or shown < count:
            batches = await consumer.getmany(timeout_ms=500)
            if not batches:
                if idle_s is not None and time.monotonic() - last_seen > idle_s:
                    break
                continue
            last_seen = time.monotonic()
            for msgs in batches.values():
                for msg in msgs:
                    try:
                        rec = json.loads(msg.value)
                    except ValueError:
                        continue
                    who = rec.get("user_id") if which == "recommendations" else rec.get("key")
                    if user is not None and who != user:
                        continue
                    for line in render(rec, msg.timestamp / 1000 if msg.timestamp else None):
                        out(line)
                    shown += 1
                    if count is not None and shown >= count:
                        break
                if count is not None and shown >= count:
                    break
    finally:
        await consumer.stop()
    return shown


# ---- explain ------------------------------------------------------------------------------------------------------
def fetch_user(settings: Any, user: str, headers: dict[str, str]) -> dict[str, Any]:
    url = f"http://{settings.web_host}:{settings.web_port}/users/{urllib.parse.quote(user, safe='')}/?format=json"
    request = urllib.request.Request(url, headers={"Accept": "application/json", **headers})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as exc:
        raise ToolError(f"{url} answered {exc.code} {exc.reason}") from None
    except OSError as exc:
        raise ToolError(f"no worker answers at http://{settings.web_host}:{settings.web_port} "
                        f"(STREAM_APP_WEB_HOST / STREAM_APP_WEB_PORT): {getattr(exc, 'reason', exc)}") from None


def format_explanation(data: dict[str, Any]) -> list[str]:
    lines = [f"user {data['user_id']}"]
    if not data.get("known") and "last_recommendation" not in data:
        return lines + ["  no state on this worker (unknown user, or another worker owns the partition)"]
    weights = data.get("usable_slot_weights", [])
    when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(data["last_ts"])) if data.get("last_ts") else "-"
    lines.append(f"  {data.get('events', 0)} events, last {when}; slot weights: "
                 + (", ".join(f"s{k + 1} {w:.2f}" for k, w in enumerate(weights)) or "none (popular items)"))
    if data.get("behaviours"):
        lines.append("")
        lines.append("  recent behaviour (newest first) and attention a_i per slot:")
        for b in data["behaviours"]:
            att = "  ".join(f"s{k + 1}{'*' if b['slot'] == k else ' '}{a:.2f}" for k, a in enumerate(b["attention"] or []))
            lines.append(f"    {att or '-':<{9 * max(len(weights), 1)}}  {b['title'] or b['item_id']}  [{b['item_id']}]")
        lines.append("    (* = the item's slot; " + data.get("attention_note", "") + ")")
    rec = data.get("last_recommendation")
    if rec:
        lines.append("")
        lines.append(f"  last list ({rec['strategy']}):")
        for n, item in enumerate(data.get("why", []), 1):
            p = item["parts"]
            text = ", ".join(f"s{k + 1} {v:.3f}" for k, v in enumerate(p["text_by_slot"])) or "-"
            lines.append(f"   {n:>2}. {item.get('title') or item['item_id']}  [{item['item_id']}]  score {item['score']:.4g}")
            lines.append(f"       text {text} | co-occurrence {p['cooc']:.3f} | popularity {p['popularity']:g}"
                         f" | because {item['because']}")
    return lines
