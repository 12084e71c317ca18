"""run_batches' promises, with Faust's take_events ack semantics reproduced: an offset is acked only after its
message was served or dead-lettered; a cancelled batch is never acked; a failing DLQ send is retried."""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import pytest
from faust.types.tuples import Message

import stream_app.stream.app as agent
from stream_app.core.events import EventError
from stream_app.stream.resilience import RetryPolicy


@dataclass
class FakeEvent:
    message: Message


def event(offset: int, value: bytes | None) -> FakeEvent:
    msg = Message("behaviour", 0, offset, 1767225600.0, 0, None, b"u", value, None)
    msg.incref()  # the stream's own reference, as Faust's conductor takes it
    return FakeEvent(msg)


class FakeStream:
    """take_events as Faust 0.15 has it: yield a batch, ack all of it in `finally` (also when the generator is
    closed after the consumer of the batch failed or was cancelled). Acks go to `consumer` (Faust's, to run its
    commit bookkeeping; None: the message only counts its references)."""

    def __init__(self, batches: list[list[FakeEvent]], consumer=None) -> None:
        self.batches = batches
        self.consumer = consumer
        self.gen = None

    def take_events(self, max_: int, within: float):
        async def gen():
            for batch in self.batches:
                try:
                    yield list(batch)
                finally:
                    for e in batch:
                        e.message.ack(self.consumer)

        self.gen = gen()
        return self.gen


class FakeTopic:
    """Records what was delivered; the first `failures` sends raise (as a broker refusing a record would)."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.delivered: list[tuple[bytes | None, dict]] = []

    def as_future_message(self, key=None, value=None):
        fut = PendingSend()
        fut.key, fut.value = key, value
        return fut

    async def publish_message(self, fut):
        if self.failures:  # refused by the broker: the future fails, as Faust's _on_published makes it
            self.failures -= 1
            fut.set_exception(RuntimeError("MessageSizeTooLargeError"))
        else:
            self.delivered.append((fut.key, fut.value))
            fut.set_result(None)
        return fut


class PendingSend(asyncio.Future):
    """Stands for Faust's FutureMessage: an asyncio future that carries the message."""


@pytest.fixture(autouse=True)
def fast_policy(monkeypatch):
    monkeypatch.setattr(agent, "policy", RetryPolicy(retries=1, split_retries=0, backoff_s=0.001, backoff_max_s=0.002))


def parse(e: FakeEvent) -> bytes:
    if e.message.value in (None, b"bad"):
        raise EventError(f"bad message at {e.message.offset}")
    return e.message.value


def test_offsets_are_acked_only_after_serving_or_dead_lettering_and_a_failed_dlq_send_is_retried():
    batches = [[event(0, b"a"), event(1, b"bad"), event(2, None)], [event(3, b"b")]]
    dlq = FakeTopic(failures=4)  # two bad messages' first attempts, and more: the 3rd attempt drops the copy
    served: list[tuple[int, bool]] = []

    async def process(rows):
        served.extend((e.message.offset, e.message.acked) for e, _ in rows)
        return []

    asyncio.run(agent.run_batches(FakeStream(batches), parse, process, dlq))
    assert served == [(0, False), (3, False)]  # processed before being acked
    assert [json.loads(json.dumps(v))["offset"] for _, v in dlq.delivered] == [1, 2]  # each once, in order
    first = dlq.delivered[0][1]
    assert first["reason"] == "bad message at 1" and first["value_b64"] is None  # sent without the copy
    assert all(e.message.acked for b in batches for e in b)


def test_a_batch_cancelled_half_way_is_never_acked():
    done, cut = [event(0, b"a")], [event(1, b"b"), event(2, b"c")]
    stream = FakeStream([done, cut])

    async def process(rows):
        if rows[0][0].message.offset == 1:
            raise asyncio.CancelledError  # the worker is stopping in the middle of this batch
        return []

    async def scenario():
        with pytest.raises(asyncio.CancelledError):
            await agent.run_batches(stream, parse, process, FakeTopic())
        await stream.gen.aclose()  # what the event loop does to the abandoned generator: its `finally` acks

    asyncio.run(scenario())
    assert done[0].message.acked
    assert not any(e.message.acked for e in cut)  # not committed: delivered again after the restart


def test_a_failure_in_processing_dead_letters_only_the_event_that_fails_alone():
    batch = [event(i, b"boom" if i == 5 else b"ok") for i in range(8)]
    dlq = FakeTopic()
    processed: list[int] = []

    async def process(rows):
        if any(v == b"boom" for _, v in rows):
            raise ValueError("the encoder cannot take this one")
        processed.extend(e.message.offset for e, _ in rows)
        return [(e, "unknown item") for e, _ in rows if e.message.offset == 7]  # a per-event rejection

    asyncio.run(agent.run_batches(FakeStream([batch]), parse, process, dlq))
    assert sorted(processed) == [0, 1, 2, 3, 4, 6, 7]
    reasons = {v["offset"]: v["reason"] for _, v in dlq.delivered}
    assert reasons == {5: "processing failed: ValueError: the encoder cannot take this one", 7: "unknown item"}
    assert all(e.message.acked for e in batch)


def test_plan_user_skips_redeliveries_and_a_forget_drops_what_came_before():
    from stream_app.core.events import BehaviourEvent
    from stream_app.core.interest import new_state, remember_events

    def row(event_id: str, kind: str = "view"):
        return event(0, b"x"), BehaviourEvent(event_id, "u", kind, "sku-1" if kind != "forget" else None, None, 1.0)

    stored = remember_events(new_state(4), ["old-1", "old-2"], cap=8)
    plan = agent.plan_user([row("old-1"), row("new-1"), row("new-1"), row("new-2")], stored)
    assert [b.event_id for _, b in plan.apply] == ["new-1", "new-2"]
    assert [b.event_id for _, b in plan.duplicates] == ["old-1", "new-1"] and not plan.forgotten
    assert [b.event_id for _, b in plan.served()] == ["old-1", "new-1", "new-1", "new-2"]

    plan = agent.plan_user([row("a"), row("f", "forget"), row("old-1"), row("b")], stored)
    assert plan.forgotten and [b.event_id for _, b in plan.apply] == ["old-1", "b"]  # after a forget, all is new
    assert [b.event_id for _, b in plan.served()] == ["old-1", "b"]  # the forget itself gets no list


class TooLargeTopic(FakeTopic):
    """A producer that refuses every value encoded larger than `limit` bytes, as aiokafka does (wrapped by Faust)."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.attempts = 0

    async def publish_message(self, fut):
        self.attempts += 1
        if len(json.dumps(fut.value)) > self.limit:
            from aiokafka.errors import MessageSizeTooLargeError
            from faust.exceptions import ProducerSendError

            try:
                raise MessageSizeTooLargeError("The message is too large")
            except MessageSizeTooLargeError as exc:
                raise ProducerSendError(f"Error while sending: {exc!r}") from exc
        return await super().publish_message(fut)


def test_a_value_too_large_is_not_retried_forever():
    """No retry can send a value over the size limit: with a fallback (a DLQ record without the copy) it is used
    at once; for a recommendation (raise_too_large) send_reliably raises instead of blocking the agent for good."""
    big = {"value_text": "x" * 5000}
    dlq = TooLargeTopic(limit=1000)
    asyncio.run(agent.send_reliably(dlq, b"k", big, "a dead letter", fallback=lambda: {"value_text": None}))
    assert dlq.delivered == [(b"k", {"value_text": None})] and dlq.attempts == 2
    recs = TooLargeTopic(limit=1000)
    with pytest.raises(Exception) as raised:
        asyncio.run(agent.send_reliably(recs, "u", big, "a recommendation", raise_too_large=True))
    assert agent.too_large(raised.value) and recs.attempts == 1 and recs.delivered == []
    assert not agent.too_large(RuntimeError("broker down"))


def item_event(offset: int, obj: dict) -> tuple[FakeEvent, object]:
    from stream_app.core.events import parse_item

    value = json.dumps(obj).encode()
    return FakeEvent(Message("items", 0, offset, 1767225600.0, 0, None, obj["item_id"].encode(), value, None)), \
        parse_item(value)


@pytest.mark.parametrize("titles, stored, dead", [
    (["v1", "v2"], "v2", []),  # the last decides, the earlier is superseded
    (["v1", "BAD"], "v1", [1]),  # the last cannot be indexed: dead-lettered, the one before it is applied
    (["BAD", "v2"], "v2", []),  # superseded, never tried
    (["BAD", "BAD", "v3", "BAD"], "v3", [3]),
])
def test_an_items_batch_ends_as_if_its_messages_came_one_by_one(monkeypatch, titles, stored, dead):
    store: dict[str, str] = {}

    async def publish(pipeline, items, send):
        if any(item.title == "BAD" for item, _ in items):
            raise ValueError("the encoder cannot encode this one")
        store.update((item.item_id, item.title) for item, _ in items)

    monkeypatch.setattr(agent, "publish_items", publish)
    monkeypatch.setattr(agent, "item_fingerprints", {})
    rejected = asyncio.run(agent.handle_items_batch(
        [item_event(n, {"item_id": "x", "title": title}) for n, title in enumerate(titles)]))
    assert store == {"x": stored}
    assert [e.message.offset for e, _ in rejected] == dead


def test_a_hole_is_sought_back_and_the_events_after_it_are_served_in_order_after_the_re_read(monkeypatch):
    """Faust skipped offset 2 (stream_app.stream.offsets): the events after it wait for the re-read instead of
    being served before it (that applied one user's events out of order: a SIGKILL test in CI found it); records
    fetched before the seek, and the same offset twice in one batch, are served once, in offset order. If the
    seek fails, the events past the hole are still left to a re-read (serving them let Faust commit past the
    hole: a review found it); the next batch seeks again."""
    from stream_app.stream.offsets import OffsetGuard

    monkeypatch.setattr(agent, "offset_guard", OffsetGuard())
    sought: list[int] = []

    async def start_offsets(tps):
        return {tp: 0 for tp in tps}

    async def reread(tp, offset, why):  # the re-read comes, or not, as the batches below say
        sought.append(offset)

    monkeypatch.setattr(agent, "start_offsets", start_offsets)
    monkeypatch.setattr(agent, "reread", reread)
    batches = [[event(0, b"a"), event(1, b"b")],
               [event(3, b"d"), event(4, b"e")],  # 2 skipped
               [event(5, b"f")],  # fetched before the seek took effect
               [event(6, b"g"), event(2, b"c"), event(3, b"d"), event(4, b"e"), event(5, b"f"), event(6, b"g")],
               [event(8, b"i")],  # 7 skipped, and this time the seek fails
               [event(9, b"j")],  # the next batch seeks again, and this time it works
               [event(7, b"h"), event(8, b"i"), event(9, b"j")]]
    served: list[int] = []

    async def process(rows):
        served.extend(e.message.offset for e, _ in rows)
        return []

    asyncio.run(agent.run_batches(FakeStream(batches[:4]), parse, process, FakeTopic()))
    assert sought == [2, 2] and served == [0, 1, 2, 3, 4, 5, 6]
    asyncio.run(agent.run_batches(FakeStream(batches[4:5]), parse, process, FakeTopic()))
    assert sought == [2, 2, 7] and served == [0, 1, 2, 3, 4, 5, 6]
    asyncio.run(agent.run_batches(FakeStream(batches[5:]), parse, process, FakeTopic()))
    assert sought == [2, 2, 7, 7] and served == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
    assert all(e.message.acked for b in batches for e in b)


def test_events_left_to_the_re_read_never_count_toward_faust_s_commits(monkeypatch):
    """run_batches on Faust's own ack and commit bookkeeping (Consumer.ack, _add_gap, _new_offset; private, so this
    test is what notices a Faust that changes them). The measured takeover: committed 147, 147-150 served, 151
    skipped (Faust took it for a gap), 152-160 cut and sought back. Acking the cut events would let Faust commit
    161 (its head check misses a one-offset hole at the committed offset), and a crash would lose 151-160: the
    commit must stay at 151 until the re-read is served. The same for a partition never committed (start 0)."""
    from faust.types import TP
    from faust.types.tuples import ConsumerMessage

    from stream_app.stream.offsets import OffsetGuard

    consumer = agent.app.consumer
    a, b, c = TP("behaviour", 0), TP("behaviour", 1), TP("behaviour", 2)
    sought: list[tuple[int, int]] = []

    async def seek_wait(partitions):
        sought.extend((tp.partition, offset) for tp, offset in partitions.items())
        if c in partitions:
            raise asyncio.TimeoutError  # done or not: the wait timed out

    async def start_offsets(tps):
        return {tp: {a: 147, b: 0, c: 151}[tp] for tp in tps}

    monkeypatch.setattr(agent, "offset_guard", OffsetGuard())
    monkeypatch.setattr(agent, "start_offsets", start_offsets)
    monkeypatch.setattr(consumer, "seek_wait", seek_wait)
    # the conductor names the acking topics once the app has started (subscribed topics); this app has not
    monkeypatch.setattr(agent.app.topics, "acks_enabled_for", lambda topic: True)
    monkeypatch.setitem(consumer._committed_offset, a, 147)
    monkeypatch.setitem(consumer._committed_offset, b, None)
    monkeypatch.setitem(consumer._committed_offset, c, 151)

    def events(tp: TP, offsets) -> list[FakeEvent]:
        out = []
        for offset in offsets:
            msg = ConsumerMessage(tp.topic, tp.partition, offset, 0.0, 0, None, b"u", b"v", None, tp=tp)
            msg.incref()
            out.append(FakeEvent(msg))
        return out

    served: list[tuple[int, int]] = []

    async def process(rows):
        served.extend((e.message.partition, e.message.offset) for e, _ in rows)
        return []

    def run(*batches) -> tuple:
        asyncio.run(agent.run_batches(FakeStream(list(batches), consumer), parse, process, FakeTopic()))
        return consumer._new_offset(a), consumer._new_offset(b)

    try:
        assert run(events(a, range(147, 151))) == (151, None)
        consumer._committed_offset[a] = 151  # as Faust's commit records it
        asyncio.run(consumer._add_gap(a, 151, 152))  # as Faust's fetch loop does when 152 follows 150
        assert run(events(a, range(152, 161)), events(b, range(3, 10))) == (None, None)  # both cut
        assert sought == [(0, 151), (1, 0)]
        assert run(events(a, range(151, 161)) + events(b, range(0, 10))) == (161, 10)  # the re-read
        assert served == [(0, o) for o in range(147, 161)] + [(1, o) for o in range(10)]
        asyncio.run(consumer._add_gap(c, 151, 152))
        run(events(c, range(152, 161)))  # its seek fails: still left to a re-read, not committed past
        assert sought[-1] == (2, 151) and consumer._new_offset(c) is None and (2, 152) not in served
        agent.pass_over({a: [(161, 163)]})  # offsets taken as absent (OffsetGuard, after MAX_SEEKS)
        consumer._committed_offset[a] = 161
        events(a, [163])[0].message.ack(consumer)
        assert consumer._new_offset(a) == 164  # committed past them
    finally:
        for table in (consumer._gap, consumer._acked, consumer._acked_index):
            for tp in (a, b, c):
                table.pop(tp, None)


def test_a_hole_retention_deleted_is_passed_over_to_the_log_start(monkeypatch):
    """A seek below the log start would be reset there by the consumer, and the re-read would never bring the hole:
    reread() asks for the log start first and, past the hole, passes over to it and seeks there."""
    from faust.types import TP

    from stream_app.stream.offsets import OffsetGuard

    tp = TP("behaviour", 0)
    guard = OffsetGuard()
    guard.admit({tp: range(100, 140)}, {tp: 100})
    assert guard.admit({tp: range(145, 150)}, {}).seeks == {tp: 140}
    sought, passed = [], []

    async def earliest_offsets(*tps):
        return {tp: 143}

    async def seek_back(tp_, offset, why):
        sought.append(offset)

    monkeypatch.setattr(agent, "offset_guard", guard)
    monkeypatch.setattr(agent.app.consumer, "earliest_offsets", earliest_offsets)
    monkeypatch.setattr(agent, "seek_back", seek_back)
    monkeypatch.setattr(agent, "pass_over", passed.append)
    asyncio.run(agent.reread(tp, 140, "skipped"))
    assert sought == [143] and passed == [{tp: [(140, 143)]}] and guard.next[tp] == 143
    asyncio.run(agent.reread(tp, 143, "skipped"))  # not below the log start: sought back as it is
    assert sought == [143, 143] and passed[1:] == []
    guard.assigned([tp])  # reassigned while the broker answered: the guard no longer waits for 143
    asyncio.run(agent.reread(tp, 143, "skipped"))
    assert sought == [143, 143]


def test_a_partition_waiting_for_its_re_read_too_long_makes_health_fail(monkeypatch):
    """The guard seeks back for as long as a re-read takes and serves nothing of the partition meanwhile (a review
    asked for it to be visible): waiting longer than STREAM_APP_AGENT_STUCK_S is a /health problem, and the
    problem ends with the wait."""
    from faust.types import TP

    from stream_app.stream.metrics import Metrics
    from stream_app.stream.offsets import OffsetGuard

    tp = TP("behaviour", 3)
    guard, metrics = OffsetGuard(), Metrics()
    metrics.ready = True
    monkeypatch.setattr(agent, "offset_guard", guard)
    monkeypatch.setattr(agent.pipeline, "metrics", metrics)
    monkeypatch.setattr(agent, "waiting_calls", {})
    monkeypatch.setattr(agent, "settings", agent.settings.model_copy(update={"agent_stuck_s": 0.001}))
    guard.admit({tp: [5, 6]}, {tp: 3})
    agent.note_waiting()
    time.sleep(0.01)
    assert metrics.health()["problems"] == ["partition stuck: behaviour[3] waits to read offset 3 again running for 0s"]
    guard.admit({tp: range(3, 7)}, {})
    agent.note_waiting()
    assert metrics.health()["problems"] == [] and agent.waiting_calls == {}


def test_start_offsets_are_asked_for_at_the_assignment_and_a_batch_waits_for_that_answer(monkeypatch):
    """The input partitions' start offsets are asked for when they are assigned (the first batch waited ~1.5 s for
    them otherwise); a batch's lookup waits for that answer instead of asking again, and an assignment that comes
    while an earlier answer is on its way cancels it (a review found them waiting on each other)."""
    from faust.types import TP

    from stream_app.stream.offsets import OffsetGuard

    tp, changelog = TP(agent.settings.behaviour_topic, 0), TP("some-table-changelog", 0)
    asked: list[list] = []

    class Admin:
        async def get(self, timeout_s=None):
            return object()

    async def group_offsets(admin, group):
        asked.append(group)
        await asyncio.sleep(0.05)
        return {(tp.topic, 0): 100 + len(asked)}

    async def earliest_offsets(*tps):
        assert changelog not in tps  # only the input topics' partitions
        return {t: 0 for t in tps}

    monkeypatch.setattr(agent, "offset_guard", OffsetGuard())
    monkeypatch.setattr(agent, "broker_admin", Admin())
    monkeypatch.setattr(agent, "group_offsets", group_offsets)
    monkeypatch.setattr(agent.app.consumer, "earliest_offsets", earliest_offsets)
    monkeypatch.setattr(agent, "known_starts", {})
    monkeypatch.setattr(agent, "prefetch", None)

    async def scenario():
        await agent._partitions_assigned(agent.app, {tp, changelog})
        await asyncio.sleep(0)  # the first answer is on its way ...
        await agent._partitions_assigned(agent.app, {tp, changelog})  # ... when the partitions are assigned again
        return await agent.start_offsets([tp])

    assert asyncio.run(scenario()) == {tp: 102} and len(asked) == 2  # the second answer; not asked a third time


def test_the_admin_client_is_not_kept_once_closed(monkeypatch):
    """A start still under way when the worker closes the admin client (a background lookup at shutdown) closes
    the new client instead of keeping it; after close() get() refuses."""
    import aiokafka.admin

    from stream_app.adapters.kafka_admin import LazyAdmin

    closed: list[bool] = []

    class Client:
        def __init__(self, **kwargs):
            pass

        async def start(self):
            await asyncio.sleep(0.02)

        async def close(self):
            closed.append(True)

    monkeypatch.setattr(aiokafka.admin, "AIOKafkaAdminClient", Client)
    admin = LazyAdmin(agent.settings)

    async def scenario():
        starting = asyncio.ensure_future(admin.get())
        await asyncio.sleep(0)
        await admin.close()
        with pytest.raises(RuntimeError):
            await starting
        with pytest.raises(RuntimeError):
            await admin.get()

    asyncio.run(scenario())
    assert closed == [True] and admin.client is None
