"""OffsetGuard: a hole in the offsets an agent sees (a message Faust skipped) is named for a seek back."""

from __future__ import annotations

from stream_app.stream.offsets import OffsetGuard


def seeks(guard: OffsetGuard, offsets, starts) -> dict:
    """admit()'s seeks, checking that each sought partition is cut at the same offset."""
    admission = guard.admit(offsets, starts)
    assert admission.cut == admission.seeks
    return admission.seeks


def test_the_takeover_seen_with_two_workers_is_caught_and_healed():
    """Measured: assigned at committed offset 147, the agent got 147-150, then 152-182; 151 was never delivered."""
    guard = OffsetGuard()
    guard.assigned(["p1"])
    assert seeks(guard, {"p1": range(147, 151)}, {"p1": 147}) == {}
    assert seeks(guard, {"p1": range(152, 183)}, {"p1": 151}) == {"p1": 151}  # 152-182 wait for the re-read
    # after the seek: records fetched before it may still come first; they wait too, and are sought back again
    # without counting a try (they continue past the highest offset seen: they are not the re-read)
    assert seeks(guard, {"p1": range(183, 190)}, {}) == {"p1": 151}
    assert guard.seeks["p1"] == (151, 1)
    assert seeks(guard, {"p1": range(151, 190)}, {}) == {}
    assert seeks(guard, {"p1": [190, 191]}, {}) == {}


def test_what_follows_a_hole_is_cut_and_redeliveries_below_it_are_served():
    guard = OffsetGuard()
    admission = guard.admit({"p": [3, 4, 6, 7], "q": [0, 1]}, {"p": 3, "q": 0})
    assert (admission.cut, admission.seeks, admission.absent) == ({"p": 5}, {"p": 5}, {})
    assert guard.next == {"p": 5, "q": 2}
    assert guard.admit({"p": [3, 4, 5, 6, 7, 8]}, {}).cut == {}  # re-read from before the hole: all served
    assert guard.next["p"] == 9


def test_a_first_batch_past_the_committed_offset_and_a_hole_inside_a_batch_are_caught():
    guard = OffsetGuard()
    assert seeks(guard, {"p0": [12, 13]}, {"p0": 10}) == {"p0": 10}
    guard.assigned(["p0"])
    assert seeks(guard, {"p0": [20, 21, 23]}, {"p0": 20}) == {"p0": 22}


def test_redeliveries_below_the_expected_offset_change_nothing_and_partitions_are_independent():
    guard = OffsetGuard()
    assert seeks(guard, {"a": [5, 6], "b": [0]}, {"a": 5, "b": 0}) == {}
    assert seeks(guard, {"a": [3, 4, 5, 6, 7]}, {}) == {}  # 3-6 again (a seek or a redelivery), then 7
    assert seeks(guard, {"b": [1]}, {}) == {}
    guard.assigned(["a"])  # reassigned: starts again from the committed offset (or the first seen)
    assert seeks(guard, {"a": [40]}, {"a": None}) == {}


def test_an_offset_still_missing_after_max_seeks_is_passed_over():
    """A real gap (a compacted topic, a retention that deleted offsets while the group was away) must not make the
    agent seek forever: after MAX_SEEKS seeks back to the same offset, each of which read the partition again from
    the hole, it is taken as absent; the offsets passed over are named (the consumer's commits must pass them)."""
    from stream_app.stream.offsets import MAX_SEEKS

    guard = OffsetGuard()
    assert seeks(guard, {"p": [100]}, {"p": 100}) == {}
    for _ in range(MAX_SEEKS):
        assert seeks(guard, {"p": [105, 106]}, {}) == {"p": 101}  # 101-104 were compacted away
    admission = guard.admit({"p": [105, 106, 108]}, {})
    assert admission.absent == {"p": [(101, 105)]}
    assert admission.seeks == {"p": 107}  # a second hole, after the one passed over, is a hole of its own
    for _ in range(MAX_SEEKS - 1):
        assert seeks(guard, {"p": [108, 109]}, {}) == {"p": 107}
    admission = guard.admit({"p": [108, 109]}, {})
    assert (admission.cut, admission.absent) == ({}, {"p": [(107, 108)]})
    assert seeks(guard, {"p": [110]}, {}) == {}
    for _ in range(MAX_SEEKS):  # a hole inside a batch, passed over: the rest of the batch is served
        assert seeks(guard, {"p": [111, 113, 114]}, {}) == {"p": 112}
    admission = guard.admit({"p": [111, 113, 114]}, {})
    assert (admission.cut, admission.absent, guard.next["p"]) == ({}, {"p": [(112, 113)]}, 115)


def test_records_fetched_before_the_seek_never_use_up_its_tries():
    """However many batches continue past the highest offset seen (records fetched before the seek took effect, or
    a re-read Faust dropped under them), the missing message is not passed over: nothing shows it absent, and the
    records after it were handed to the agent and cut, so they exist and come back only with a re-read. (A review
    found that counting them after a bound lost the message.) What was cut is kept as a few runs of offsets."""
    guard = OffsetGuard()
    assert seeks(guard, {"p": [10, 11]}, {"p": 9}) == {"p": 9}
    for first in range(12, 12 + 10 * 500, 10):
        assert seeks(guard, {"p": range(first, first + 10)}, {}) == {"p": 9}
    assert guard.seeks["p"] == (9, 1) and guard.handed["p"] == [(10, 5012)]
    assert seeks(guard, {"p": range(9, 50)}, {}) == {}  # the re-read
    assert guard.next["p"] == 50 and guard.handed["p"] == [(50, 5012)]
    assert seeks(guard, {"p": range(50, 5012)}, {}) == {}
    assert guard.handed == {}


def test_an_offset_handed_and_cut_is_never_passed_over_but_one_deleted_by_retention_is():
    """143 was handed to the agent (in 141-199, cut at the hole 140), then the re-read keeps coming without it:
    however many counted tries, it is never passed over (it exists; a Faust drop, not the topic, lost it). When
    the app finds the log start past it (retention deleted it meanwhile), the guard passes over to the log start."""
    from stream_app.stream.offsets import MAX_SEEKS

    guard = OffsetGuard()
    assert seeks(guard, {"p": range(100, 140)}, {"p": 100}) == {}
    assert seeks(guard, {"p": range(141, 200)}, {}) == {"p": 140}
    assert seeks(guard, {"p": [140, 141, 142] + list(range(151, 160))}, {}) == {"p": 143}
    for _ in range(3 * MAX_SEEKS):
        assert seeks(guard, {"p": range(151, 200)}, {}) == {"p": 143}
    assert guard.truncated("p", 100) == []
    assert guard.truncated("p", 170) == [(143, 170)]
    assert guard.next["p"] == 170 and guard.seeks["p"] == (170, 1) and guard.handed["p"] == [(170, 200)]
    assert seeks(guard, {"p": range(170, 201)}, {}) == {}


def test_a_first_batch_past_the_log_start_of_an_uncommitted_partition_is_a_hole():
    """Its previous owner died before its first commit: the app gives the log start as the partition's start
    (app.start_offsets), so a first batch past it is a hole and is sought back."""
    guard = OffsetGuard()
    assert seeks(guard, {"p0": [14, 15]}, {"p0": 0}) == {"p0": 0}
    assert seeks(guard, {"p0": range(0, 16)}, {"p0": 0}) == {}


def test_an_unknown_start_is_the_first_batch_s_first_offset():
    """The broker did not say where the partition starts (and Faust had no committed offset to stand in): the first
    batch's first offset is taken, so holes inside it and between later batches are caught. (Waiting for a start
    known later, as a first version did, missed the holes between batches until then, and took an offset committed
    meanwhile for a hole: a review found both.)"""
    guard = OffsetGuard()
    assert seeks(guard, {"p0": [14, 15]}, {}) == {}
    assert seeks(guard, {"p0": [17, 18]}, {"p0": 0}) == {"p0": 16}  # a start known later changes nothing
    guard.assigned(["p0"])
    assert seeks(guard, {"p0": [14, 16]}, {}) == {"p0": 15}


def test_records_fetched_and_never_delivered_are_sought_back_once_the_position_stays_past_them():
    """Measured with two workers and a SIGKILL (about 1 takeover in 10 under load): the taken-over partition had no
    committed offset; Faust dropped the records it had fetched while its flow was stopped and its seek to the
    committed offsets left the position at the end (14), so nothing, not even a later hole, reached the agent."""
    guard = OffsetGuard()
    guard.assigned(["p0", "p2"])
    starts = {"p0": 0, "p2": 4}
    assert guard.idle({"p0": 14, "p2": 4}, starts).seeks == {}  # first sighting: delivery may be on its way
    assert guard.idle({"p0": 14, "p2": 4}, starts).seeks == {"p0": 0}  # unchanged: fetched and never delivered
    assert seeks(guard, {"p0": range(0, 14)}, starts) == {}  # the re-read arrives
    assert guard.idle({"p0": 14, "p2": 4}, starts).seeks == {}
    assert guard.idle({"p0": 14, "p2": 4}, starts).seeks == {}


def test_idle_seeks_back_only_a_position_seen_twice_in_a_row_past_the_next_offset():
    """The app passes the positions of quiet partitions only (agent waiting on its stream since the previous
    check, records past Faust's read offset never handed over); idle() still notes a first sighting only, starts
    over when a batch moved the expected offset or the partition was left out, and seeks on the second one."""
    guard = OffsetGuard()
    assert seeks(guard, {"p": [0, 1]}, {"p": 0}) == {}
    assert guard.idle({"p": 5}, {"p": 0}).seeks == {}  # 2-4 fetched, on their way to the agent
    assert seeks(guard, {"p": [2, 3]}, {}) == {}  # a batch came: the next idle() sighting starts again
    assert guard.idle({"p": 5}, {}).seeks == {}
    assert seeks(guard, {"p": [4]}, {}) == {}
    assert guard.idle({"p": 5}, {}).seeks == {} and guard.idle({"p": 5}, {}).seeks == {}  # all delivered
    assert guard.idle({"p": 9}, {}).seeks == {}  # new records fetched: first sighting
    assert guard.idle({"p": 12}, {}).seeks == {}  # the position moved: still a first sighting
    assert guard.idle({}, {}).seeks == {}  # p's agent took a batch since (p left out): p starts over
    assert guard.idle({"p": 12}, {}).seeks == {}
    assert guard.idle({"p": 12}, {}).seeks == {"p": 5}  # the agent stayed idle and 5-11 never came: sought back


def test_an_empty_topic_past_the_expected_offset_is_passed_over_after_max_seeks():
    """A retention that deleted everything the group had not read: the position (the log start) stays past the
    committed offset however often the agent seeks back, and nothing comes; after MAX_SEEKS it is passed over."""
    from stream_app.stream.offsets import MAX_SEEKS

    guard = OffsetGuard()
    for _ in range(MAX_SEEKS):
        assert guard.idle({"p": 50}, {"p": 10}).seeks == {}
        assert guard.idle({"p": 50}, {"p": 10}).seeks == {"p": 10}
    assert guard.idle({"p": 50}, {"p": 10}).seeks == {}
    passed = guard.idle({"p": 50}, {"p": 10})
    assert (passed.seeks, passed.absent) == ({}, {"p": [(10, 50)]})  # the commits must pass them too
    assert guard.next["p"] == 50


def test_an_agent_is_idle_only_once_it_takes_from_its_stream_and_between_batches():
    """The idle mark the timer compares (stream.app.reread_undelivered): None while the agent waits for its
    start-up (Faust fills its buffer meanwhile; found by a review: those records would have been sought back) or
    is on a batch; the number of batches taken otherwise, so that the same mark twice means none in between."""
    from stream_app.stream.metrics import Metrics

    m = Metrics()
    assert m.agent_idle_mark("app.process_behaviour") is None
    with m.agent_running("app.process_behaviour"):
        assert m.agent_idle_mark("app.process_behaviour") is None  # start-up waits
        m.agent_consuming("app.process_behaviour")
        assert m.agent_idle_mark("app.process_behaviour") == 0
        m.agent_batch_started("app.process_behaviour")
        assert m.agent_idle_mark("app.process_behaviour") is None
        m.agent_batch_ended("app.process_behaviour")
        assert m.agent_idle_mark("app.process_behaviour") == 1
