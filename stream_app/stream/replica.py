"""What every worker keeps whole, whatever partitions the consumer group gives it: the catalogue and the signal.

Scale-out splits `items` and `behaviour` between the workers of the group. Two things must nevertheless be whole
on every worker, so each worker also runs two readers of its own, outside the group (no group id, every partition
assigned, positions kept in its data dir so a restart resumes where it stopped):

* Catalogue. The `index_items` agent (one writer per item: the owner of its `items` partition) validates, skips
  unchanged re-sends and encodes each item once. With a Qdrant server it upserts there (all workers share it).
  With the embedded store it publishes the encoded record to the compacted `item-vectors` topic (key item_id;
  value JSON with the vector as base64 float32; a deletion is a tombstone), and every worker's catalogue reader
  (Replicas.catalogue, a TopicReader) applies that topic to its own store. Compaction keeps the latest record per
  item, so a new worker reads about one record per live item, not the catalogue's whole history, and never encodes.
* Signal. The signal reader (Replicas.signal_reader) reads every partition of `behaviour` and folds the events
  into the collaborative counters (stream_app.core.signal_state) of this worker, so they are built from the whole
  stream; it snapshots counters, per-user windows and positions to the data dir every
  `signal_snapshot_interval_s`, and a restart replays only the tail after the snapshot.

The behaviour agent waits for `Replicas.ready` (both readers have reached the end offsets the topics had when the
worker started) before it serves, so a new or restarted worker never recommends from a partial catalogue.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from stream_app.core import signal_state
from stream_app.core.events import FORGET, EventError, ItemEvent, MessageMeta, parse_behaviour
from stream_app.adapters.kafka_security import client_kwargs
from stream_app.adapters.vectorstore import ItemRecord

if TYPE_CHECKING:
    from stream_app.stream.pipeline import Pipeline
    from stream_app.settings import Settings

log = logging.getLogger(__name__)

ITEM_VECTOR_VERSION = 1
Send = Callable[[bytes, bytes | None], Awaitable[Awaitable[Any]]]  # (key, value or None = tombstone) -> its ack


# ---- the item-vectors record ------------------------------------------------------------------------------------
def encode_item_vector(record: ItemRecord, fingerprint: str) -> bytes:
    """One encoded item as the `item-vectors` topic carries it (JSON; the vector as base64 little-endian float32)."""
    vec = np.ascontiguousarray(record.vector, dtype="<f4")
    return json.dumps({"v": ITEM_VECTOR_VERSION, "item_id": record.item_id, "dim": int(vec.shape[0]),
                       "vector": base64.b64encode(vec.tobytes()).decode("ascii"), "payload": record.payload,
                       "fingerprint": fingerprint}, ensure_ascii=False).encode()


def decode_item_vector(raw: bytes) -> ItemRecord:
    """The ItemRecord in an `item-vectors` value; ValueError when it is not one."""
    try:
        doc = json.loads(raw)
        if doc.get("v") != ITEM_VECTOR_VERSION:
            raise ValueError(f"unknown item-vectors version {doc.get('v')!r}")
        vec = np.frombuffer(base64.b64decode(doc["vector"], validate=True), dtype="<f4").astype(np.float32)
        if vec.shape[0] != int(doc["dim"]) or not np.isfinite(vec).all():
            raise ValueError("vector does not match its dim or is not finite")
        if not isinstance(doc["item_id"], str) or not isinstance(doc["payload"], dict):
            raise ValueError("item_id must be a string and payload an object")
        return ItemRecord(doc["item_id"], vec, doc["payload"])
    except (KeyError, TypeError, AttributeError, UnicodeDecodeError, json.JSONDecodeError, base64.binascii.Error) as exc:
        raise ValueError(f"not an item-vectors record: {exc!r}") from exc


async def publish_items(pipeline: Pipeline, items: Sequence[tuple[ItemEvent, str | None]], send: Send | None) -> None:
    """Index changed items once, for every worker: (item, fingerprint or None for a deletion), in stream order.

    With a Qdrant server (send is None) the store is shared: upsert/delete there directly. Otherwise encode the
    upserts in one batch and publish records and tombstones to `item-vectors`; every worker's catalogue reader
    (Replicas.catalogue; this one's included) applies them to its own embedded store.
    """
    if send is None:
        await pipeline.index_items([item for item, _ in items])
        pipeline.metrics.count("items_encoded", sum(1 for item, _ in items if not item.deleted))
        return
    latest: dict[str, tuple[ItemEvent, str | None]] = {}
    for item, fp in items:  # the last message for an id wins within a batch
        latest.pop(item.item_id, None)
        latest[item.item_id] = (item, fp)
    upserts = [(item, fp) for item, fp in latest.values() if not item.deleted]
    vectors = await pipeline.encode([item.document() for item, _ in upserts], kind="passage")
    encoded = {item.item_id: encode_item_vector(ItemRecord(item.item_id, vec, item.payload()), fp or "")
               for (item, fp), vec in zip(upserts, vectors)}
    acks = [await send(item_id.encode(), None if item.deleted else encoded[item_id])
            for item_id, (item, _) in latest.items()]
    await asyncio.gather(*acks)  # on the broker before the caller records the fingerprints
    pipeline.metrics.count("items_encoded", len(upserts))


async def apply_item_records(pipeline: Pipeline, messages: Sequence[ConsumerRecord]) -> None:
    """Apply `item-vectors` messages (per partition in offset order) to this worker's store and vector cache."""
    if pipeline.store is None:
        raise RuntimeError("Pipeline.start() first")
    latest: dict[str, ItemRecord | None] = {}
    for msg in messages:
        try:
            item_id = msg.key.decode() if msg.key is not None else None
            record = None if msg.value is None else decode_item_vector(msg.value)
            if item_id is None or (record is not None and record.item_id != item_id):
                raise ValueError("key and item_id differ")
        except (ValueError, UnicodeDecodeError) as exc:  # one bad record costs that record
            log.error("skipping %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, exc)
            continue
        latest.pop(item_id, None)
        latest[item_id] = record
    await pipeline.store_records([i for i, r in latest.items() if r is None],
                                 [r for r in latest.values() if r is not None])


# ---- reading a whole topic outside the group ----------------------------------------------------------------------
def save_signal_snapshot(state: signal_state.SignalState, path: Path) -> int:
    """Write the signal's snapshot atomically (gzip JSON of signal_state.to_json, then rename); returns its size
    in bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    data = gzip.compress(json.dumps(signal_state.to_json(state), separators=(",", ":")).encode(), compresslevel=3)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return len(data)


def load_signal_snapshot(path: Path, max_users: int) -> signal_state.SignalState:
    """The saved signal, or an empty one when there is no snapshot; ValueError when it cannot be read."""
    if not path.exists():
        return signal_state.SignalState(max_users=max_users)
    try:
        doc = json.loads(gzip.decompress(path.read_bytes()))
    except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"unreadable signal snapshot {path}: {exc}") from exc
    return signal_state.from_json(doc, max_users)


class TopicReader:
    """Reads every partition of one topic without a consumer group, from given positions, in batches.

    `caught_up` is set once the positions reach the end offsets the topic had when reading started.
    """

    def __init__(self, settings: Settings, topic: str, name: str) -> None:
        self.settings = settings
        self.topic = topic
        self.name = name
        self.caught_up = asyncio.Event()
        self.positions: dict[int, int] = {}
        self.lag: dict[int, int] = {}
        self.records = 0
        self._consumer: AIOKafkaConsumer | None = None

    async def run(self, start: dict[int, int], apply: Callable[[list[ConsumerRecord]], Awaitable[None]],
                  after_batch: Callable[[], Awaitable[None]] | None = None) -> None:
        """Read forever (until cancelled), calling apply(records) then after_batch() per non-empty batch."""
        consumer = AIOKafkaConsumer(**client_kwargs(self.settings), group_id=None,
                                    enable_auto_commit=False, auto_offset_reset="earliest",
                                    client_id=f"{self.settings.app_id}-{self.name}-replica")
        await consumer.start()
        self._consumer = consumer
        try:
            tps = await self._partitions(consumer)
            consumer.assign(tps)
            for tp in tps:
                if tp.partition in start:
                    consumer.seek(tp, start[tp.partition])
                else:
                    await consumer.seek_to_beginning(tp)
            target = await consumer.end_offsets(tps)
            self.positions = {tp.partition: await consumer.position(tp) for tp in tps}
            log.info("%s replica: %s from %s, catching up to %s", self.name, self.topic, self.positions,
                     {tp.partition: o for tp, o in target.items()})
            while True:
                if not self.caught_up.is_set() and all(self.positions[tp.partition] >= target[tp] for tp in tps):
                    self.caught_up.set()
                    log.info("%s replica caught up (%d records read)", self.name, self.records)
                batches = await consumer.getmany(timeout_ms=200, max_records=2000)
                records = [m for tp in sorted(batches) for m in batches[tp]]
                if records:
                    await apply(records)
                    self.records += len(records)
                for tp in tps:
                    self.positions[tp.partition] = await consumer.position(tp)
                    high = consumer.highwater(tp)
                    if high is not None:
                        self.lag[tp.partition] = max(high - self.positions[tp.partition], 0)
                if records and after_batch is not None:
                    await after_batch()
        finally:
            self._consumer = None
            await consumer.stop()

    async def _partitions(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        """The topic's partitions (waiting for the topic to exist: declare_topics creates it)."""
        from aiokafka.admin import AIOKafkaAdminClient

        admin = AIOKafkaAdminClient(**client_kwargs(self.settings))
        await admin.start()
        try:
            while True:
                described = await admin.describe_topics([self.topic])
                parts = sorted(p["partition"] for t in described if t.get("error_code") == 0 for p in t["partitions"])
                if parts:
                    return [TopicPartition(self.topic, p) for p in parts]
                log.warning("%s replica: topic %s not found yet; retrying", self.name, self.topic)
                await asyncio.sleep(1.0)
        finally:
            await admin.close()

    def stats(self) -> dict[str, Any]:
        return {"topic": self.topic, "caught_up": self.caught_up.is_set(), "records_read": self.records,
                "positions": {str(p): o for p, o in sorted(self.positions.items())},
                "lag": sum(self.lag.values())}


def read_positions(path: Path) -> dict[int, int]:
    """Saved positions, {} when there are none or they cannot be read (then the topic is read from the start)."""
    try:
        return {int(p): int(o) for p, o in json.loads(path.read_text())["positions"].items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.error("unreadable positions %s (%s); reading the topic from the start", path, exc)
        return {}


def write_positions(path: Path, topic: str, positions: dict[int, int]) -> None:
    """Save positions atomically (write, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as f:
        json.dump({"topic": topic, "positions": {str(p): o for p, o in positions.items()}}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


# ---- the two replicas of a worker ------------------------------------------------------------------------------
class Replicas:
    """This worker's catalogue replica (embedded store only) and signal feed, and the gate the behaviour agent awaits."""

    def __init__(self, settings: Settings, pipeline: Pipeline) -> None:
        self.settings = settings
        self.pipeline = pipeline
        self.dir = Path(settings.data_dir) / "replica"
        self.embedded = not settings.qdrant_url
        self.catalogue = TopicReader(settings, settings.item_vectors_topic_name(), "catalogue")
        self.signal_reader = TopicReader(settings, settings.behaviour_topic, "signal")
        self.signal = signal_state.SignalState(max_users=settings.signal_max_users)
        self.snapshot_bytes = 0
        self.snapshot_at: float | None = None
        self.snapshot_ms: float | None = None
        self.counted = 0
        self.skipped = 0
        self.started = False  # the pipeline (encoder, store) is open

    @property
    def catalogue_positions_path(self) -> Path:
        return self.dir / f"{self.settings.item_vectors_topic_name()}.positions.json"

    @property
    def signal_snapshot_path(self) -> Path:
        return self.dir / f"{self.settings.behaviour_topic}.signal.json.gz"

    async def ready(self) -> None:
        """Return once both replicas have caught up with their topics (as of this worker's start)."""
        if self.embedded:
            await self.catalogue.caught_up.wait()
        await self.signal_reader.caught_up.wait()

    async def run(self) -> None:
        """Run both readers until cancelled (the worker stops); the signal is snapshotted on the way out."""
        await self.pipeline.start()
        self.started = True
        try:
            self.signal = load_signal_snapshot(self.signal_snapshot_path, self.settings.signal_max_users)
        except ValueError as exc:
            log.error("%s; rebuilding the signal from the whole topic", exc)
        self.pipeline.collab = self.signal.collab
        log.info("signal: %d events counted in the snapshot, resuming at %s", self.signal.collab.events,
                 self.signal.positions)
        readers = [self._supervised("signal", self._run_signal)]
        if self.embedded:
            readers.append(self._supervised("catalogue", self._run_catalogue))
        else:
            self.catalogue.caught_up.set()  # the shared server store is the catalogue
        await asyncio.gather(*readers)

    async def _supervised(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Keep a reader running: after an unexpected error it resumes from its last applied positions (the
        catalogue's upserts are idempotent; the signal skips each user's redelivered event ids)."""
        delay = 1.0
        while True:
            try:
                await run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a replica must outlive a failed batch or a broker hiccup
                log.exception("%s replica failed; restarting it in %.0f s", name, delay)
                await asyncio.sleep(delay)
                delay = min(2 * delay, 30.0)

    async def _run_catalogue(self) -> None:
        store = self.pipeline.store
        if store is None:
            raise RuntimeError("Pipeline.start() first")
        start = read_positions(self.catalogue_positions_path)
        if start and await store.count() == 0:
            log.warning("catalogue positions without a store (data dir reset?): re-reading %s from the start",
                        self.catalogue.topic)
            start = {}

        async def apply(records: list[ConsumerRecord]) -> None:
            await apply_item_records(self.pipeline, records)

        async def save() -> None:  # after the store took the batch: a crash in between re-applies (idempotent)
            write_positions(self.catalogue_positions_path, self.catalogue.topic, self.catalogue.positions)

        await self.catalogue.run(start, apply, save)

    async def _run_signal(self) -> None:
        if self.embedded:  # events are counted only for items the catalogue holds, as the group path did
            await self.catalogue.caught_up.wait()
        last_save = time.monotonic()

        async def apply(records: list[ConsumerRecord]) -> None:
            events = []
            for msg in records:
                try:  # the agent's own checks (key = user_id, clock skew against the broker timestamp)
                    events.append(parse_behaviour(msg.value, MessageMeta(msg.key, msg.timestamp / 1000.0)))
                except EventError:  # the behaviour agent dead-letters it; the signal skips it
                    self.skipped += 1
            for e in events:
                if e.type == FORGET:  # every worker drops what it keeps of the user, not only the owner
                    self.pipeline.forget_user(e.user_id)
            known = await self.pipeline.item_vectors_for(sorted({e.item_id for e in events if e.item_id}))
            usable = [e for e in events if not e.item_id or e.item_id in known]
            self.skipped += len(events) - len(usable)
            self.counted += signal_state.count_events(self.signal, usable, self.pipeline.cparams)

        async def after_batch() -> None:
            nonlocal last_save
            self.signal.positions = dict(self.signal_reader.positions)
            if time.monotonic() - last_save >= self.settings.signal_snapshot_interval_s:
                # Off the event loop (seconds for a large state). The feed is the state's only writer and waits
                # here, so nothing mutates it meanwhile; recommend() only reads it.
                await asyncio.get_running_loop().run_in_executor(None, self.save_signal)
                last_save = time.monotonic()

        try:
            await self.signal_reader.run(self.signal.positions, apply, after_batch)
        finally:
            if self.signal_reader.positions:  # only those whose records were applied (see TopicReader.run)
                self.signal.positions = dict(self.signal_reader.positions)
            self.save_signal()

    def save_signal(self) -> None:
        """Snapshot counters, windows and positions (synchronously: also runs while the worker shuts down)."""
        t0 = time.perf_counter()
        self.snapshot_bytes = save_signal_snapshot(self.signal, self.signal_snapshot_path)
        self.snapshot_ms = round((time.perf_counter() - t0) * 1000, 2)
        self.snapshot_at = time.time()

    def stats(self) -> dict[str, Any]:
        """For the /replicas/ page: both readers' positions and lag, catalogue size, signal counts."""
        c = self.signal.collab
        return {
            "ready": self.signal_reader.caught_up.is_set() and self.catalogue.caught_up.is_set(),
            "catalogue": {**self.catalogue.stats(), "mode": "replica" if self.embedded else "shared server"},
            "signal": {**self.signal_reader.stats(), "events_counted": c.events, "counted_since_start": self.counted,
                       "skipped": self.skipped, "items": len(c.pop), "cooc_rows": len(c.cooc),
                       "users": len(self.signal.seen), "snapshot_bytes": self.snapshot_bytes,
                       "snapshot_ms": self.snapshot_ms, "snapshot_at": self.snapshot_at},
        }


def counters_json(state: signal_state.SignalState, top: int) -> dict[str, Any]:
    """Every counter map (popularity, counts, neighbour rows) restricted to the `top` most popular items."""
    c = state.collab
    ids = sorted(c.pop, key=lambda i: (-c.pop[i], i))[:top]
    maps = signal_state.to_json(state)["collab"]
    out: dict[str, Any] = {"events": c.events, "items": len(c.pop)}
    for name, values in maps.items():
        if isinstance(values, dict):
            nested = any(isinstance(v, dict) for v in values.values())
            out[name] = {i: values.get(i, {} if nested else 0.0) for i in ids}
    return out


def register_replica_pages(app: Any, replicas: Replicas) -> None:
    """/replicas/ (both readers' state, JSON) and /replicas/counters/?top=N (the counters of the top N items)."""
    from faust.web import Request, Response, View

    @app.page("/replicas/")
    class ReplicaStats(View):
        async def get(self, request: Request) -> Response:
            store = replicas.pipeline.store
            count = await store.count() if store is not None and replicas.started else None
            owned = sorted(tp.partition for tp in app.assignor.assigned_actives()
                           if tp.topic == replicas.settings.behaviour_topic)
            return self.json({**replicas.stats(), "catalogue_items": count, "behaviour_partitions": owned})

    @app.page("/replicas/counters/")
    class ReplicaCounters(View):
        async def get(self, request: Request) -> Response:
            try:
                top = max(0, min(int(request.query.get("top", "100")), 100_000))
            except ValueError:
                return self.json({"error": "top must be an integer"}, status=400)
            return self.json(counters_json(replicas.signal, top))
