"""The Faust app in one place: topics, the user-state table, the two agents and the web view pages.

Agents stay thin: they parse, route bad input to a dead-letter topic, and hand batches to stream_app.pipeline.
Run it with `stream-app worker` (or `faust -A stream_app.app worker`).
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import faust
from faust.streams import _current_event
from faust.types import EventT

from stream_app.events import BehaviourEvent, EventError, dead_letter, parse_behaviour, parse_item
from stream_app.interest import UserState, decode_state, encode_state, new_state
from stream_app.pipeline import Pipeline, UnknownItem, item_fingerprint
from stream_app.replica import Replicas, publish_items, register_replica_pages
from stream_app.settings import get_settings
from stream_app.web import register_pages

log = logging.getLogger(__name__)
settings = get_settings()

app = faust.App(
    settings.app_id,
    broker=f"kafka://{settings.kafka_bootstrap}",
    store=settings.table_store,
    datadir=str(settings.data_dir / "faust"),
    topic_partitions=settings.topic_partitions,
    consumer_auto_offset_reset="earliest",
    web_port=settings.web_port,
    web_host=settings.web_host,
    producer_linger_ms=1,
    table_standby_replicas=settings.table_standby_replicas,
)

# Inputs are read as raw bytes so that a malformed message can be forwarded to the DLQ exactly as it came.
items_topic = app.topic(settings.items_topic, key_type=bytes, value_type=bytes, value_serializer="raw",
                        partitions=settings.topic_partitions)
behaviour_topic = app.topic(settings.behaviour_topic, key_type=bytes, value_type=bytes, value_serializer="raw",
                            partitions=settings.topic_partitions)
recommendations_topic = app.topic(settings.recommendations_topic, key_type=str, key_serializer="raw",
                                  value_serializer="json", partitions=settings.topic_partitions)
behaviour_dlq = app.topic(settings.dlq_topic, key_serializer="raw", value_serializer="json", partitions=1)
items_dlq = app.topic(settings.items_dlq_topic, key_serializer="raw", value_serializer="json", partitions=1)
# Encoded items for every worker's embedded store (compacted; written by index_items, read by stream_app.replica).
item_vectors_topic = app.topic(settings.item_vectors_topic, key_type=bytes, value_type=bytes, value_serializer="raw",
                               partitions=settings.topic_partitions)

def raw_table(name: str, help: str) -> faust.Table:
    """A table of str keys and bytes values stored as they are (Faust would otherwise JSON-encode both)."""
    table = app.Table(name, key_type=str, value_type=bytes, partitions=settings.topic_partitions, help=help)
    # Faust derives the store's codecs from these attributes, read when the store opens. The changelog topic was
    # already made by app.Table() with a JSON key codec (from key_type=str): recovery then failed on every raw key
    # ("Error in recovery Expecting value"), so its schema gets the raw codecs too.
    table.key_serializer = "raw"
    table.value_serializer = "raw"
    changelog = table.changelog_topic
    changelog.key_serializer = changelog.schema.key_serializer = "raw"
    changelog.value_serializer = changelog.schema.value_serializer = "raw"
    return table


# Both co-partitioned with their source topic, so they scale out with its partitions.
user_state = raw_table("user-state", "user_id -> packed interest state (stream_app.interest.encode_state)")
item_fingerprints = raw_table("item-fingerprints", "item_id -> fingerprint of what was indexed (skips unchanged re-sends)")

pipeline = Pipeline(settings)
replicas = Replicas(settings, pipeline)


@contextmanager
def event_context(event: EventT) -> Iterator[None]:
    """Make `event` the current one, so table reads/writes go to its partition (batches mix partitions)."""
    token = _current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        _current_event.reset(token)


async def send_dead_letter(topic: faust.TopicT, event: EventT, reason: str) -> None:
    """Forward a bad message to a DLQ with its reason and source position; the worker carries on."""
    msg = event.message
    raw = msg.value if isinstance(msg.value, (bytes, type(None))) else str(msg.value).encode()
    await topic.send(key=msg.key, value=dead_letter(raw, msg.key, reason, msg.topic, msg.partition, msg.offset))
    pipeline.metrics.dead_letters += 1
    log.warning("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason)


async def run_batches(stream: faust.StreamT, handle: Callable[[list[EventT]], Awaitable[None]],
                      dlq: faust.TopicT) -> None:
    """Feed the stream to handle() in batches; a batch that fails unexpectedly is dead-lettered, the agent goes on."""
    async for events in stream.take_events(settings.batch_size, within=settings.batch_timeout_s):
        try:
            await handle(events)
        except Exception as exc:  # noqa: BLE001 - an unexpected failure must not stop the agent
            log.exception("batch of %d from %s failed; dead-lettering it", len(events), events[0].message.topic)
            for event in events:
                await send_dead_letter(dlq, event, f"processing failed: {type(exc).__name__}: {exc}")


@app.agent(items_topic)
async def index_items(stream: faust.StreamT) -> None:
    """Catalogue events: encode new or changed items in batches, upsert them, delete deleted ones."""
    await pipeline.start()
    await run_batches(stream, handle_items_batch, items_dlq)


async def handle_items_batch(events: list[EventT]) -> None:
    """Parse, skip unchanged items, index the rest in one encoder batch and one store call."""
    parsed = []
    for event in events:
        try:
            parsed.append((event, parse_item(event.message.value)))
        except EventError as exc:
            await send_dead_letter(items_dlq, event, str(exc))
    changed = []  # (event, item, fingerprint or None for a deletion)
    for event, item in parsed:
        if item.deleted:
            changed.append((event, item, None))
            continue
        fp = item_fingerprint(item).encode()
        with event_context(event):
            unchanged = item_fingerprints.get(item.item_id) == fp
        if unchanged:
            pipeline.metrics.items_unchanged += 1
        else:
            changed.append((event, item, fp))
    if not changed:
        return
    await publish_items(pipeline, [(item, fp.decode() if fp else None) for _, item, fp in changed],
                        None if settings.qdrant_url else send_item_vector)
    # Only after the store took them, so a crash in between re-indexes on replay instead of skipping.
    for event, item, fp in changed:
        with event_context(event):
            if fp is None:
                item_fingerprints.pop(item.item_id, None)
            else:
                item_fingerprints[item.item_id] = fp


async def send_item_vector(key: bytes, value: bytes | None) -> Awaitable[Any]:
    """Publish one encoded item (or a tombstone) to item-vectors; returns the broker's acknowledgement."""
    return await app.producer.send(item_vectors_topic.get_topic_name(), key, value, None, None, None)


@app.task
async def run_replicas() -> None:
    """This worker's whole-catalogue replica and whole-stream signal feed (stream_app.replica)."""
    await replicas.run()


@app.agent(behaviour_topic)
async def process_behaviour(stream: faust.StreamT) -> None:
    """Behaviour events: update each user's interest and push one recommendation per user per batch."""
    await pipeline.start()
    await replicas.ready()  # never serve from a partial catalogue or signal
    await run_batches(stream, handle_behaviour_batch, behaviour_dlq)


def load_state(user_id: str, raw: bytes | None) -> UserState:
    """The user's stored state, or a fresh one (also when the stored bytes are unreadable, which is logged)."""
    if raw:
        try:
            return decode_state(raw)
        except ValueError as exc:
            log.error("user %r: unreadable state (%s); starting afresh", user_id, exc)
    return new_state(pipeline.dim)


async def handle_behaviour_batch(events: list[EventT]) -> None:
    """Parse, vectorise (batched), update states in the table, recommend (batched), send."""
    pipeline.metrics.batches += 1
    parsed: list[tuple[EventT, BehaviourEvent]] = []
    for event in events:
        try:
            parsed.append((event, parse_behaviour(event.message.value)))
        except EventError as exc:
            await send_dead_letter(behaviour_dlq, event, str(exc))
    if not parsed:
        return
    vectors = await pipeline.event_vectors([b for _, b in parsed])
    by_user: dict[str, list[tuple[EventT, BehaviourEvent, Any]]] = defaultdict(list)
    for (event, behaviour), vec in zip(parsed, vectors):
        if isinstance(vec, UnknownItem):
            await send_dead_letter(behaviour_dlq, event, str(vec))
            continue
        by_user[behaviour.user_id].append((event, behaviour, vec))

    states = {}
    for user_id, rows in by_user.items():
        last_event = rows[-1][0]
        with event_context(last_event):
            raw = user_state.get(user_id)
        state = load_state(user_id, raw)
        state = pipeline.update_state(state, [b for _, b, _ in rows], [v for _, _, v in rows])
        with event_context(last_event):
            user_state[user_id] = encode_state(state)
        states[user_id] = state
    if not states:  # every event was dead-lettered above
        return

    recommendations = await pipeline.recommend(states, now=max(s.last_ts for s in states.values()))
    sent_at = time.time()
    for user_id, rec in recommendations.items():
        last_event, last_behaviour, _ = by_user[user_id][-1]
        latency_ms = (sent_at - last_event.message.timestamp) * 1000.0
        pipeline.metrics.latencies_ms.append(latency_ms)
        pipeline.metrics.recommendations += 1
        await recommendations_topic.send(key=user_id, value={
            "user_id": user_id,
            "event_id": last_behaviour.event_id,
            "event_ids": [b.event_id for _, b, _ in by_user[user_id]],
            "items": rec.items,
            "strategy": rec.strategy,
            "slot_weights": rec.slot_weights,
            "generated_at": sent_at,
            "latency_ms": round(latency_ms, 3),
        })


register_pages(app, pipeline, user_state, settings)
register_replica_pages(app, replicas)


async def declare_topics() -> None:
    """Create the input, output and DLQ topics with the configured partitions before the worker subscribes.

    Faust ignores a source topic that does not exist yet when it subscribes, so a fresh broker must have them first.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    wanted = {t.get_topic_name(): t.partitions or settings.topic_partitions
              for t in (items_topic, behaviour_topic, recommendations_topic, behaviour_dlq, items_dlq, item_vectors_topic)}
    configs = {item_vectors_topic.get_topic_name(): {"cleanup.policy": "compact"}}
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        missing = [NewTopic(name, num_partitions=n, replication_factor=1, topic_configs=configs.get(name, {}))
                   for name, n in wanted.items() if name not in existing]
        if missing:
            await admin.create_topics(missing)
            log.info("created topics %s", [t.name for t in missing])
    finally:
        await admin.close()
