"""The Faust app in one place: topics, the user-state table, the two agents and the web view pages.

Agents stay thin: they parse, route bad input to a dead-letter topic, and hand batches to stream_app.stream.pipeline.
Run it with `stream-app worker` (or `faust -A stream_app.stream.app worker`).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import faust
from aiokafka.errors import MessageSizeTooLargeError, RecordTooLargeError
from faust.agents import current_agent
from faust.serializers import codecs
from faust.streams import _current_event
from faust.types import EventT

from stream_app.core.events import (DLQ_KEY_CHARS, FORGET, BehaviourEvent, EventError, ItemEvent, MessageMeta,
                               dead_letter, parse_behaviour, parse_item, split_by_event_ids)
from stream_app.core.interest import UserState, decode_state, encode_state, event_digest, new_state, remember_events
from stream_app.adapters.kafka_admin import LazyAdmin, group_offsets
from stream_app.adapters.kafka_security import client_kwargs, faust_credentials
from stream_app.stream.offsets import IDLE_CHECK_S, OffsetGuard
from stream_app.stream.logfilter import install_connection_error_filter, install_malformed_request_filter
from stream_app.stream.pipeline import Pipeline, UnknownItem, item_fingerprint
from stream_app.stream.replica import Replicas, publish_items, register_replica_pages
from stream_app.stream.resilience import Failed, RateLimitedLog, RetryPolicy, process_resilient
from stream_app.settings import get_settings
from stream_app.stream.web import register_pages
from stream_app.stream.webauth import warn_if_exposed

log = logging.getLogger(__name__)
settings = get_settings()
install_connection_error_filter(settings.log_repeat_interval_s)
install_malformed_request_filter()
# Faust creates <data_dir>/faust but not its parents; a fresh deployment's data dir may not exist yet.
settings.data_dir.mkdir(parents=True, exist_ok=True)
warn_if_exposed(settings)

app = faust.App(
    settings.app_id,
    broker=f"kafka://{settings.kafka_bootstrap}",
    broker_credentials=faust_credentials(settings),
    store=settings.table_store,
    datadir=str(settings.data_dir / "faust"),
    topic_partitions=settings.topic_partitions,
    consumer_auto_offset_reset="earliest",
    # Static membership: a restarted worker with the same id takes its partitions back without waiting for the
    # dead one's session to expire (a SIGKILLed worker used to wait ~60 s).
    consumer_group_instance_id=settings.group_instance_id(),
    broker_session_timeout=settings.kafka_session_timeout_s,
    broker_heartbeat_interval=settings.kafka_session_timeout_s / 4,
    # aiokafka refreshes metadata only this often (default 5 min) and does not retry a topic the broker did not
    # know yet: a group assigned while a just-created topic was missing from it (a freshly started, loaded broker
    # answers "not found" for seconds) stayed without those partitions until the next refresh.
    consumer_metadata_max_age_ms=int(settings.kafka_metadata_max_age_s * 1000),
    web_port=settings.web_port,
    web_host=settings.web_host,
    web_bind=settings.web_bind,
    # Faust's own /table/ (raw table rows) and /router/ (cluster layout) views; table_route does not need them.
    web_tables_enabled=settings.web_debug_views,
    web_router_enabled=settings.web_debug_views,
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
# Encoded items for every worker's embedded store (compacted; written by index_items, read by stream_app.stream.replica).
item_vectors_topic = app.topic(settings.item_vectors_topic_name(), key_type=bytes, value_type=bytes, value_serializer="raw",
                               partitions=settings.topic_partitions)

def raw_table(name: str, help: str) -> faust.Table:
    """A table of str keys and bytes values stored as they are (Faust would otherwise JSON-encode both)."""
    # RocksDB per partition: bounded memtables (two of table_write_buffer_mb) and read cache (see Settings).
    options = {"write_buffer_size": settings.table_write_buffer_mb << 20, "max_write_buffer_number": 2,
               "block_cache_size": settings.table_block_cache_mb << 20}
    table = app.Table(name, key_type=str, value_type=bytes, partitions=settings.topic_partitions, help=help,
                      options=options)
    # Faust derives the store's codecs from these attributes, read when the store opens.
    table.key_serializer = "raw"
    table.value_serializer = "raw"
    # The changelog topic was made (with JSON keys) when the table was registered; a restore read the raw keys
    # as JSON and never finished. Make it again with the raw codecs (Faust clones it only when the worker starts).
    table.changelog_topic = table._new_changelog_topic()
    return table


# Both co-partitioned with their source topic, so they scale out with its partitions.
user_state = raw_table("user-state", "user_id -> packed interest state (stream_app.core.interest.encode_state)")
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


class _WithholdFailedSendContents(logging.Filter):
    """Faust logs a failed send with the whole message (key and value: a user's id and text) at WARNING; keep the
    line, drop the contents. The send itself is retried by send_reliably, which logs topic-level facts only."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str) and record.msg.startswith("_on_published error"):
            record.msg, record.args = "a send to Kafka failed (message contents withheld from the log)", ()
        return True


logging.getLogger("faust.topics").addFilter(_WithholdFailedSendContents())

policy = RetryPolicy(retries=settings.batch_retries, backoff_s=settings.retry_backoff_s,
                     backoff_max_s=settings.retry_backoff_max_s)
_send_log = RateLimitedLog(log)


def meta_of(event: EventT) -> MessageMeta:
    """The key and broker timestamp of an event's message, for the checks parse_* make beyond the value."""
    return MessageMeta(key=event.message.key, timestamp=event.message.timestamp)


async def publish(topic: faust.TopicT, key: Any, value: Any) -> Awaitable[Any]:
    """Hand a message to the producer; the returned future resolves when the broker has it (or fails).

    Topic.send would return the producer's own future and leave Faust's FutureMessage, which receives the same
    error, unawaited (asyncio then logs "exception was never retrieved"); awaiting the FutureMessage consumes it.
    """
    fut = topic.as_future_message(key=key, value=value)
    await topic.publish_message(fut)
    return fut


def too_large(exc: BaseException | None) -> bool:
    """A send failure no retry can fix: the message is over the producer's or the broker's size limit (aiokafka's
    error, possibly wrapped in Faust's ProducerSendError)."""
    while exc is not None:
        if isinstance(exc, (MessageSizeTooLargeError, RecordTooLargeError)):
            return True
        exc = exc.__cause__
    return False


async def send_reliably(topic: faust.TopicT, key: Any, value: Any, what: str,
                        fallback: Callable[[], Any] | None = None, raise_too_large: bool = False) -> None:
    """Send and wait until the broker has it, retrying with backoff for as long as it takes.

    After three failed attempts, or at once when the value is too large to send, the value is replaced by
    fallback() when given (a DLQ record without the copied value, the smallest record there is). An outage blocks
    the agent here, so no offset moves past the message (/health reports the agent stuck after
    STREAM_APP_AGENT_STUCK_S). With raise_too_large, a value too large to send is not retried: it raises (the
    caller dead-letters what produced it), since no retry can ever send it; without it (DLQ records, whose
    fallback is a few KB) such a send keeps being retried rather than lose the record.
    """
    attempt = 0
    while True:
        try:
            await (await publish(topic, key, value))
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - retried; the agent must not die on a send
            attempt += 1
            if too_large(exc) and fallback is None and raise_too_large:
                raise
            if (attempt == 3 or too_large(exc)) and fallback is not None:
                value, fallback = fallback(), None
            _send_log.warning("sending %s failed (%s: %.200s); retrying (attempt %d)", what, type(exc).__name__, exc,
                              attempt)
            await asyncio.sleep(policy.delay(attempt))


async def send_dead_letter(topic: faust.TopicT, event: EventT, reason: str) -> None:
    """Forward a bad message to a DLQ with its reason and source position; the worker carries on.

    Logged without key or value (they may hold a user's id or text): topic, partition, offset and reason only.
    """
    msg = event.message
    raw = msg.value if isinstance(msg.value, (bytes, type(None))) else str(msg.value).encode("utf-8", "replace")
    key = msg.key[:DLQ_KEY_CHARS] if isinstance(msg.key, bytes) else None
    record = dead_letter(raw, msg.key, reason, msg.topic, msg.partition, msg.offset)
    await send_reliably(topic, key, record, "a dead letter",
                        fallback=lambda: dead_letter(raw, msg.key, reason, msg.topic, msg.partition, msg.offset,
                                                     copy_value=False))
    pipeline.metrics.dead_letter(msg.topic, msg.partition, msg.offset, msg.key, reason)
    log.warning("dead-lettered %s[%d]@%d: %s", msg.topic, msg.partition, msg.offset, reason[:200])


def hold(events: Sequence[EventT]) -> None:
    """Keep these events from being acked: take_events acks a batch when its generator closes, even when the
    agent was cancelled in the middle of it; one extra reference keeps their offsets uncommitted (redelivered)."""
    for event in events:
        event.message.incref()


Parsed = TypeVar("Parsed")


async def run_batches(stream: faust.StreamT, parse: Callable[[EventT], Parsed],
                      process: Callable[[list[tuple[EventT, Parsed]]], Awaitable[list[tuple[EventT, str]]]],
                      dlq: faust.TopicT, within: float | None = None) -> None:
    """Feed the stream to process() in batches; every event is served or dead-lettered before its offset is acked.

    Each message is judged alone by parse() (EventError -> DLQ with its own reason). process() returns the events
    it gave up on, with their reasons; if it raises (a bug), the batch is bisected so only the events that fail on
    their own are dead-lettered. Nothing but cancellation leaves this loop.
    """
    agent = getattr(current_agent(), "name", "?")
    pipeline.metrics.agent_consuming(agent)
    async for events in stream.take_events(settings.batch_size, within=within or settings.batch_timeout_s):
        pipeline.metrics.agent_batch_started(agent)
        try:
            good: list[tuple[EventT, Parsed]] = []
            for event in await admitted(events):
                try:
                    good.append((event, parse(event)))
                except EventError as exc:
                    await send_dead_letter(dlq, event, str(exc))
            outcome = await process_resilient(lambda sub: _as_results(process, sub), good, policy,
                                              f"batch from {events[0].message.topic}")
            for result in outcome:
                rejected = [(result.item[0], result.reason)] if isinstance(result, Failed) else result
                for event, reason in rejected:
                    await send_dead_letter(dlq, event, reason)
            pipeline.metrics.agent_batch_ended(agent)
        except BaseException:  # cancelled (worker stopping) mid-batch: leave the batch to be redelivered
            pipeline.metrics.agent_batch_ended(agent, done=False)
            hold(events)
            raise


offset_guard = OffsetGuard()
OFFSET_REQUEST_TIMEOUT_S = 10.0  # a committed-offset, log-start, position or seek request to the broker
known_starts: dict[Any, int] = {}  # partition -> where its agent starts, for the current assignment
broker_admin = LazyAdmin(settings)  # the worker's one admin client: committed offsets here and in the web sampler


assignments = 0  # assignments so far: start offsets asked for under an earlier one are not kept
prefetch: asyncio.Future | None = None  # the current assignment's start offsets, asked for when it came


@app.on_partitions_assigned.connect
async def _partitions_assigned(sender: faust.App, assigned: set[Any], **kwargs: Any) -> None:
    """Every partition starts afresh (Faust seeks each to its committed offset); the start offsets of the input
    partitions are asked for now, in the background, so that a partition's first batch does not wait for them
    (measured in the README's demo when they were asked for at the first batch: three lists of 45 took
    1526-1531 ms, against a p95 of 35 ms since)."""
    global assignments, prefetch
    assignments += 1
    offset_guard.assigned(set(assigned) | offset_guard.partitions())  # revoked ones are forgotten too
    known_starts.clear()
    note_waiting()
    if prefetch is not None:
        prefetch.cancel()  # asked for under the previous assignment: its answer would not be kept
    inputs = [tp for tp in assigned if tp.topic in (settings.items_topic, settings.behaviour_topic)]
    prefetch = asyncio.ensure_future(ask_start_offsets(inputs)) if inputs else None


@app.on_before_shutdown.connect
async def _close_admin(sender: faust.App, **kwargs: Any) -> None:
    await broker_admin.close()


async def start_offsets(tps: Iterable[Any]) -> dict[Any, int]:
    """Where each partition's agent starts for the current assignment: the group's committed offset as the broker
    has it (not Faust's own record, empty from a rebalance until its seek to the committed offsets is done), or
    the log start where none is committed or retention has removed it (the auto offset reset is "earliest").
    The answer asked for when the partitions were assigned is waited for (it is bounded by its requests'
    timeouts) rather than asked again. Faust's record of the committed offset, once its seek has set it, is taken
    where it is higher (this worker committed since the answer) or where the broker did not answer (a review
    found that a first batch then hid a hole at the start); partitions with neither are left out (unknown). The
    broker's answers are kept until the next assignment."""
    tps = list(tps)
    if prefetch is not None and not prefetch.done() and any(tp not in known_starts for tp in tps):
        await asyncio.wait({prefetch})
    await ask_start_offsets([tp for tp in tps if tp not in known_starts])
    starts = {tp: known_starts[tp] for tp in tps if tp in known_starts}
    faust_committed = getattr(app.consumer, "_committed_offset", {})  # private: Faust's record, None until known
    for tp in tps:
        if faust_committed.get(tp) is not None and faust_committed[tp] > starts.get(tp, -1):
            starts[tp] = faust_committed[tp]
    return starts


async def ask_start_offsets(tps: list[Any]) -> None:
    """Ask the broker where each of tps starts (start_offsets) and keep the answers, unless the partitions were
    assigned again meanwhile; a broker that does not answer leaves them unknown (asked again next time)."""
    if not tps:
        return
    asked_under = assignments
    try:
        committed = await asyncio.wait_for(group_offsets(await broker_admin.get(OFFSET_REQUEST_TIMEOUT_S),
                                                         app.conf.id),
                                           OFFSET_REQUEST_TIMEOUT_S)
        log_starts = await asyncio.wait_for(app.consumer.earliest_offsets(*tps), OFFSET_REQUEST_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - broker unreachable: left unknown, asked again next time
        log.debug("start offsets unavailable: %s", exc)
        return
    if asked_under == assignments:
        for tp in tps:
            if tp in log_starts:
                known_starts[tp] = max(committed.get((tp.topic, tp.partition), 0), log_starts[tp])


async def seek_back(tp: Any, offset: int, why: str) -> None:
    """Seek tp back to offset, on the consumer's own thread (Faust's seek_wait; it also resets Faust's read
    offset, so the re-read records are delivered). First the consumer's commits are held below offset until the
    message there is acked (commit_gaps), also if the seek then fails: it may have been done before its wait
    timed out (the cut events wait for a re-read either way; the next batch or the idle check seeks again)."""
    log.warning("offsets of %s[%d] %s from %d: seeking back to re-read them", tp.topic, tp.partition, why, offset)
    if (gaps := commit_gaps(tp)) is not None:
        gaps.chop(offset, 2**63)
    try:
        await asyncio.wait_for(app.consumer.seek_wait({tp: offset}), OFFSET_REQUEST_TIMEOUT_S)
    except Exception as exc:  # noqa: BLE001 - e.g. the partition was revoked meanwhile: its new owner starts
        # from the committed offset
        log.warning("seek of %s[%d] back to %d failed: %s", tp.topic, tp.partition, offset, exc)
        return
    pipeline.metrics.count("seeks_back")


def commit_gaps(tp: Any) -> Any:
    """Faust's record of the offsets it took for gaps in tp (Consumer._gap, private: an IntervalTree per partition,
    faust-streaming 0.15), or None if this Faust has none or tp is no longer assigned (the record is created on
    demand, and Faust clears it only when it revokes tp). Its commits count these offsets as acked: a skipped
    message's offset is among them (Faust took it for a compaction gap), so the agent takes it out when it seeks
    back there, and the commits stop below it until the message, read again, is acked."""
    gaps = getattr(app.consumer, "_gap", None)
    if gaps is None:
        return None
    if tp not in gaps:
        try:
            if tp not in app.consumer.assignment():
                return None
        except Exception:  # noqa: BLE001 - the consumer is not started (or stopping): nothing to hold
            return None
    return gaps[tp]


def pass_over(absent: dict[Any, list[tuple[int, int]]]) -> None:
    """Offsets taken as absent from their topic (OffsetGuard) are put in Faust's gap record, so that its commits
    pass them too (no message there will ever be acked)."""
    for tp, ranges in absent.items():
        if (gaps := commit_gaps(tp)) is not None:
            for begin, end in ranges:
                gaps.addi(begin, end)
            gaps.merge_overlaps()


async def reread(tp: Any, offset: int, why: str) -> None:
    """Seek tp back to offset for the offset guard; if retention has deleted it meanwhile (the log start is past
    it: the consumer would reset such a seek to the log start, and the re-read would never bring it), pass over
    to the log start and seek there. Nothing is done if the guard no longer waits for offset (the partition was
    reassigned, or the agent moved on, while the broker answered)."""
    if offset_guard.next.get(tp) != offset:
        return
    try:
        log_start = (await asyncio.wait_for(app.consumer.earliest_offsets(tp), OFFSET_REQUEST_TIMEOUT_S)).get(tp)
    except Exception as exc:  # noqa: BLE001 - the broker did not answer: seek to the offset; the next try asks again
        log.debug("log start of %s unavailable: %s", tp, exc)
        log_start = None
    if offset_guard.next.get(tp) != offset:
        return
    if log_start is not None and log_start > offset:
        pass_over({tp: offset_guard.truncated(tp, log_start)})
        offset = log_start
    await seek_back(tp, offset, why)


def leave_to_the_re_read(message: Any) -> None:
    """A message cut from its batch (its offset is past a hole) is taken out of Faust's ack bookkeeping: marked
    acked, take_events' ack of it does nothing, so its offset never counts toward a commit (Faust would commit
    past a one-offset hole at its committed offset, or any hole of a partition never committed); the copy the
    re-read brings is acked when served. (Consumer._unacked_messages, private, lists the messages a rebalance
    waits for.)"""
    message.acked = True
    unacked = getattr(app.consumer, "_unacked_messages", None)
    if unacked is not None:
        unacked.discard(message)
    app.sensors.on_message_out(message.tp, message.offset, message)  # as a final ack tells them


waiting_calls: dict[Any, int] = {}  # partition -> its Metrics call id while the offset guard waits for a re-read


def note_waiting() -> None:
    """A partition that waits for a re-read (its seek back pending) is noted like a call in flight: waiting longer
    than STREAM_APP_AGENT_STUCK_S makes /health answer 503 (the guard seeks back for as long as it takes, and
    serves nothing of that partition meanwhile)."""
    waiting = offset_guard.waiting()
    for tp in set(waiting_calls) - set(waiting):
        pipeline.metrics.call_ended(waiting_calls.pop(tp))
    for tp, offset in waiting.items():
        if tp not in waiting_calls:
            waiting_calls[tp] = pipeline.metrics.call_started(
                "partition", f"{tp.topic}[{tp.partition}] waits to read offset {offset} again", settings.agent_stuck_s)


async def admitted(events: Sequence[EventT]) -> list[EventT]:
    """The events of a batch to serve now (stream_app.stream.offsets): a partition with a hole is sought back to
    it, and its events at or past the hole are left to the re-read; each offset is served once, and each
    partition's events in offset order (in the batch's places of that partition). The cut events are left to the
    re-read even if the seek fails (the partition was revoked, or the broker did not answer): its next reader
    starts at the hole, or the next batch seeks again."""
    seen: dict[Any, list[int]] = defaultdict(list)
    for event in events:
        seen[event.message.tp].append(event.message.offset)
    starts = await start_offsets(offset_guard.without_next(seen))
    admission = offset_guard.admit(seen, starts)
    pass_over(admission.absent)
    for tp, offset in admission.seeks.items():
        await reread(tp, offset, "skipped")
    note_waiting()
    cut = admission.cut
    kept: dict[Any, dict[int, EventT]] = defaultdict(dict)
    for event in events:
        message = event.message
        if message.offset < cut.get(message.tp, message.offset + 1):
            kept[message.tp].setdefault(message.offset, event)
        else:
            leave_to_the_re_read(message)
    in_order = {tp: iter(sorted(by_offset.items())) for tp, by_offset in kept.items()}
    served = []
    for event in events:
        tp = event.message.tp
        if tp in in_order and (nxt := next(in_order[tp], None)) is not None:
            served.append(nxt[1])
    return served


idle_marks: dict[str, int | None] = {}  # agent -> its idle mark (Metrics.agent_idle_mark) at the last check


@app.timer(max(IDLE_CHECK_S, 4 * max(settings.batch_timeout_s, settings.items_batch_timeout_s)))
async def reread_undelivered() -> None:
    """Seek back the partitions whose records were fetched and never delivered (stream_app.stream.offsets: Faust
    drops them and leaves a partition without a committed offset past them).

    Only partitions whose agent has been waiting on its stream since the previous check, and whose records past
    Faust's read offset were never handed to the stream, or whose seek back is pending (records cut from a batch
    and left to a re-read that has not come: the seek failed), are looked at: records in the stream's buffer
    would have been taken, and seeking back under them would make Faust take them for a gap and ack them
    unserved."""
    if app.rebalancing or not app.consumer.flow_active:
        idle_marks.clear()
        return
    agent_of = {settings.items_topic: index_items.name, settings.behaviour_topic: process_behaviour.name}
    quiet = set()
    for agent in agent_of.values():
        mark = pipeline.metrics.agent_idle_mark(agent)
        if mark is not None and idle_marks.get(agent) == mark:
            quiet.add(agent)
        idle_marks[agent] = mark
    positions: dict[Any, int] = {}
    try:
        for tp in app.consumer.assignment():
            if agent_of.get(tp.topic) in quiet:
                position = await asyncio.wait_for(app.consumer.position(tp), OFFSET_REQUEST_TIMEOUT_S)
                handed = app.consumer._read_offset.get(tp)  # the last offset Faust handed to the stream (private)
                # records handed and left to a re-read whose seek failed look delivered: a pending seek counts too
                if position is not None and (handed is None or handed < position - 1 or tp in offset_guard.seeks):
                    positions[tp] = position
    except Exception as exc:  # noqa: BLE001 - revoked meanwhile or the broker unreachable: the next tick retries
        log.debug("positions unavailable: %s", exc)
        positions = {}
    starts = await start_offsets(offset_guard.without_next(positions))
    if app.rebalancing:  # a rebalance began while the broker answered: the positions are stale
        return
    admission = offset_guard.idle(positions, starts)
    pass_over(admission.absent)
    for tp, offset in admission.seeks.items():
        await reread(tp, offset, f"fetched (position {positions[tp]}) and never delivered")
    note_waiting()


async def _as_results(process: Callable[[list[Any]], Awaitable[list[tuple[EventT, str]]]],
                      batch: list[Any]) -> list[list[tuple[EventT, str]]]:
    """process() as one result per item (for process_resilient): the rejections, given once, then nothing."""
    rejected = await process(batch)
    return [rejected] + [[] for _ in batch[1:]]


@app.agent(items_topic)
async def index_items(stream: faust.StreamT) -> None:
    """Catalogue events: encode new or changed items in batches, upsert them, delete deleted ones."""
    with pipeline.metrics.agent_running("index_items"):  # crashes count against /health
        await pipeline.start()
        await run_batches(stream, lambda e: parse_item(e.message.value, meta_of(e)), handle_items_batch, items_dlq,
                          within=settings.items_batch_timeout_s)


async def handle_items_batch(parsed: list[tuple[EventT, ItemEvent]]) -> list[tuple[EventT, str]]:
    """Index each item's last message of the batch unless it is unchanged (encoder + store, retried and bisected),
    then record fingerprints.

    The result is as if the batch's messages had come one by one: the last message for an item decides, and an
    earlier one is superseded, never compared with the stored fingerprint on its own (a deletion followed by the
    unchanged item leaves the item in place; an edit followed by the original leaves the original). If the last
    one cannot be indexed it is dead-lettered and the one before it is tried, as one by one it would have been
    applied first. Items are keyed by item_id, so one item's messages keep their order within a partition.
    """
    versions: dict[str, list[tuple[EventT, ItemEvent]]] = {}
    for event, item in parsed:
        versions.setdefault(item.item_id, []).append((event, item))
    pipeline.metrics.count("items_superseded", len(parsed) - len(versions))

    async def index(rows: list[tuple[EventT, ItemEvent, bytes | None]]) -> list[None]:
        # Encoded once; written to the shared server store, or published to item-vectors for every worker's
        # embedded store (stream_app.stream.replica). Idempotent: safe to retry on any subset.
        await publish_items(pipeline, [(item, fp.decode() if fp else None) for _, item, fp in rows],
                            None if settings.qdrant_url else send_item_vector)
        return [None] * len(rows)

    rejected = []
    while versions:
        changed = []  # (event, item, fingerprint or None for a deletion)
        for event, item in (messages[-1] for messages in versions.values()):
            if item.deleted:
                changed.append((event, item, None))
                continue
            fp = item_fingerprint(item).encode()
            with event_context(event):
                unchanged = item_fingerprints.get(item.item_id) == fp
            if unchanged:
                pipeline.metrics.count("items_unchanged")
            else:
                changed.append((event, item, fp))
        outcome = await process_resilient(index, changed, policy, "indexing items") if changed else []
        earlier: dict[str, list[tuple[EventT, ItemEvent]]] = {}
        # Only after the store took them, so a crash in between re-indexes on replay instead of skipping.
        for (event, item, fp), result in zip(changed, outcome):
            if isinstance(result, Failed):
                rejected.append((event, result.reason))
                if len(versions[item.item_id]) > 1:  # fall back to the message before it
                    earlier[item.item_id] = versions[item.item_id][:-1]
                continue
            with event_context(event):
                if fp is None:
                    item_fingerprints.pop(item.item_id, None)
                else:
                    item_fingerprints[item.item_id] = fp
        versions = earlier
    return rejected


async def send_item_vector(key: bytes, value: bytes | None) -> Awaitable[Any]:
    """Publish one encoded item (or a tombstone) to item-vectors; returns the broker's acknowledgement."""
    return await app.producer.send(item_vectors_topic.get_topic_name(), key, value, None, None, None)


@app.task
async def run_replicas() -> None:
    """This worker's whole-catalogue replica and whole-stream signal feed (stream_app.stream.replica)."""
    await replicas.run()


@app.agent(behaviour_topic)
async def process_behaviour(stream: faust.StreamT) -> None:
    """Behaviour events: update each user's interest and push one recommendation per user per batch."""
    with pipeline.metrics.agent_running("process_behaviour"):  # crashes count against /health
        await pipeline.start()
        await replicas.ready()  # never serve from a partial catalogue or signal
        await run_batches(stream, lambda e: parse_behaviour(e.message.value, meta_of(e)), handle_behaviour_batch,
                          behaviour_dlq)


def load_state(raw: bytes | None) -> UserState | None:
    """The user's stored state; None when there is none (or it is unreadable, which is logged without the id)."""
    if raw:
        try:
            return decode_state(raw)
        except ValueError as exc:
            log.error("unreadable user state (%s); starting afresh", exc)
    return None


@dataclass
class UserBatch:
    """One user's events of a batch, in arrival order, and what becomes of them."""

    rows: list[tuple[EventT, BehaviourEvent]]
    stored: UserState | None  # the state as the table had it
    apply: list[tuple[EventT, BehaviourEvent]] = field(default_factory=list)  # new events after the last forget
    forgotten: bool = False  # a forget event came in this batch: the stored state goes
    duplicates: list[tuple[EventT, BehaviourEvent]] = field(default_factory=list)  # already applied before
    state: UserState | None = None  # the new state (None: none, or deleted)

    def served(self) -> list[tuple[EventT, BehaviourEvent]]:
        """The events the user's list answers (applied or redelivered), in arrival order."""
        keep = {id(e) for e, _ in self.apply} | {id(e) for e, _ in self.duplicates}
        return [(e, b) for e, b in self.rows if id(e) in keep]


def plan_user(rows: list[tuple[EventT, BehaviourEvent]], stored: UserState | None) -> UserBatch:
    """Sort a user's events into new ones, redeliveries (already in the state's seen ids) and forgets."""
    plan = UserBatch(rows, stored)
    seen = set(stored.seen_events) if stored is not None else set()
    for event, behaviour in rows:
        digest = event_digest(behaviour.event_id)
        if behaviour.type == FORGET:
            plan.forgotten, plan.apply, seen = True, [], set()
        elif digest in seen:
            plan.duplicates.append((event, behaviour))
        else:
            seen.add(digest)
            plan.apply.append((event, behaviour))
    return plan


async def handle_behaviour_batch(parsed: list[tuple[EventT, BehaviourEvent]]) -> list[tuple[EventT, str]]:
    """Vectorise (batched), fold into new states, recommend (batched); only then write the table and send.

    A redelivered event (its id is in the user's state) is not applied again, but the user gets a list. A step
    that fails is retried, then bisected: an event whose vector cannot be made is dead-lettered, not applied,
    and not remembered (a redelivery tries again). Returns the (event, reason) pairs to dead-letter.
    """
    pipeline.metrics.count("batches")
    rejected: list[tuple[EventT, str]] = []
    rows_by_user: dict[str, list[tuple[EventT, BehaviourEvent]]] = defaultdict(list)
    for event, behaviour in parsed:
        rows_by_user[behaviour.user_id].append((event, behaviour))
    plans: dict[str, UserBatch] = {}
    for user_id, rows in rows_by_user.items():
        with event_context(rows[-1][0]):
            raw = user_state.get(user_id)
        plans[user_id] = plan_user(rows, load_state(raw))

    to_apply = [row for plan in plans.values() for row in plan.apply]

    async def vectorise(rows: list[tuple[EventT, BehaviourEvent]]) -> list[Any]:
        return await pipeline.event_vectors([b for _, b in rows])

    vectors: dict[int, Any] = {}
    for (event, _), vec in zip(to_apply, await process_resilient(vectorise, to_apply, policy, "event vectors")):
        if isinstance(vec, (UnknownItem, Failed)):
            rejected.append((event, vec.reason if isinstance(vec, Failed) else str(vec)))
        else:
            vectors[id(event)] = vec

    for user_id, plan in plans.items():
        good = [(e, b) for e, b in plan.apply if id(e) in vectors]
        plan.state = None if plan.forgotten else plan.stored
        if good:
            try:
                state = plan.state if plan.state is not None else new_state(pipeline.dim)
                state = pipeline.update_state(state, [b for _, b in good], [vectors[id(e)] for e, _ in good])
                plan.state = remember_events(state, [b.event_id for _, b in good], settings.dedupe_window)
            except ValueError as exc:  # e.g. a non-finite vector: this user's new events are given up, not applied
                rejected += [(e, f"processing failed: {exc}") for e, _ in good]
                good = []
        plan.apply = good

    # Recommend for every user with a state and a served event (applied, or redelivered: the list is re-sent).
    served = {u: p for u, p in plans.items() if p.state is not None and (p.apply or p.duplicates)}
    recs: dict[str, Any] = {}
    if served:
        now = max(p.state.last_ts for p in served.values())  # type: ignore[union-attr]

        async def recommend(users: list[str]) -> list[Any]:
            out = await pipeline.recommend({u: served[u].state for u in users}, now=now)
            return [out[u] for u in users]

        users = list(served)
        for user_id, rec in zip(users, await process_resilient(recommend, users, policy, "recommending")):
            if isinstance(rec, Failed):
                reason = f"applied to the user's state, but no recommendation was sent: {rec.reason}"
                rejected += [(e, reason) for e, _ in served[user_id].served()]
            else:
                recs[user_id] = rec

    # Commit: table writes (changelog) and sends, only now that every step succeeded.
    for user_id, plan in plans.items():
        pipeline.metrics.count("duplicates", len(plan.duplicates))
        last_event = plan.rows[-1][0]
        with event_context(last_event):
            if plan.state is None and plan.forgotten:
                user_state.pop(user_id, None)  # a tombstone in the changelog: a restore does not bring it back
            elif plan.apply:
                user_state[user_id] = encode_state(plan.state)  # type: ignore[arg-type]
        if plan.forgotten:
            pipeline.forget_user(user_id)
            pipeline.metrics.count("forgotten")
            log.info("forgot a user (%d event(s) after the forget kept)", len(plan.apply))
            log.debug("forgot user %r", user_id)
    return rejected + await send_recommendations(recs, plans)


# Of the producer's max_request_size (Faust's default: 1,000,000 bytes), what one recommendation record may take;
# the rest is left to the record's key, headers and batch framing.
RECORD_SHARE = 0.9


def encoded_records(record: dict[str, Any]) -> list[tuple[list[str], bytes]]:
    """A recommendation record encoded once, as the topic would encode it (Faust's json codec; bytes are sent as
    they are), with the event ids it answers; split by event_ids (events.split_by_event_ids) only when one
    message cannot hold it, the rare case where the parts are encoded again."""
    limit = RECORD_SHARE * app.conf.producer_max_request_size
    encoded = codecs.dumps("json", record)
    if len(encoded) <= limit:
        return [(record["event_ids"], encoded)]
    parts = split_by_event_ids(record, lambda part: len(codecs.dumps("json", part)) <= limit)
    return [(part["event_ids"], codecs.dumps("json", part)) for part in parts]


async def send_recommendations(recs: dict[str, Any], plans: dict[str, UserBatch]) -> list[tuple[EventT, str]]:
    """Send each user's list and wait until the broker has them all (failed sends are retried). A list whose
    `event_ids` would not fit one message goes as several records with the same items, each with part of the ids
    (encoded_records). Returns the events whose list is too large to send even so (dead-lettered by the
    caller, with the reason): they were applied to the state, but no list answers them."""
    sent_at = time.time()
    pending = []
    too_big: list[tuple[EventT, str]] = []
    for user_id, rec in recs.items():
        rows = plans[user_id].served()
        last_event, last_behaviour = rows[-1]
        latency_ms = (sent_at - last_event.message.timestamp) * 1000.0
        pipeline.metrics.observe_latency(latency_ms)
        record = {
            "user_id": user_id,
            "event_id": last_behaviour.event_id,
            "event_ids": [b.event_id for _, b in rows],
            "items": rec.items,
            "strategy": rec.strategy,
            "slot_weights": rec.slot_weights,
            "generated_at": sent_at,
            "latency_ms": round(latency_ms, 3),
        }
        for ids, part in encoded_records(record):
            try:
                pending.append((user_id, ids, part, await publish(recommendations_topic, user_id, part)))
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - retried below
                pending.append((user_id, ids, part, None))
    unsent: set[str] = set()
    for user_id, ids, part, fut in pending:
        try:
            if fut is None:
                raise RuntimeError("not sent")
            await fut
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - the list is sent again until the broker has it
            try:
                await send_reliably(recommendations_topic, user_id, part, "a recommendation", raise_too_large=True)
            except Exception as exc:  # noqa: BLE001 - only a record too large to send ever gets here
                unsent.add(user_id)
                reason = (f"applied to the user's state, but its recommendation could not be sent: {len(part)} bytes, "
                          f"over the producer's limit ({type(exc).__name__})")
                answered = set(ids)
                too_big += [(e, reason) for e, b in plans[user_id].served() if b.event_id in answered]
    pipeline.metrics.count("recommendations", len(recs) - len(unsent))
    return too_big


register_pages(app, pipeline, user_state, settings, broker_admin, inputs=(items_topic, behaviour_topic))
register_replica_pages(app, replicas)


async def declare_topics() -> None:
    """Create the input, output and DLQ topics with the configured partitions before the worker subscribes.

    Faust ignores a source topic that does not exist yet when it subscribes, so a fresh broker must have them first.
    Existing topics (and the tables' changelogs) must have the configured partitions: StartupError otherwise.
    """
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    from stream_app.stream.startup import check_partitions

    wanted = {t.get_topic_name(): t.partitions or settings.topic_partitions
              for t in (items_topic, behaviour_topic, recommendations_topic, behaviour_dlq, items_dlq, item_vectors_topic)}
    configs = {item_vectors_topic.get_topic_name(): {"cleanup.policy": "compact"}}
    changelogs = {t.changelog_topic.get_topic_name(): settings.topic_partitions for t in app.tables.values()}
    admin = AIOKafkaAdminClient(**client_kwargs(settings))
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        present = [name for name in {**wanted, **changelogs} if name in existing]
        found = {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(present)} if present else {}
        check_partitions({**wanted, **changelogs}, found, settings)
        missing = [NewTopic(name, num_partitions=n, replication_factor=1, topic_configs=configs.get(name, {}))
                   for name, n in wanted.items() if name not in existing]
        if missing:
            await admin.create_topics(missing)
            log.info("created topics %s", [t.name for t in missing])
    finally:
        await admin.close()
