"""OffsetGuard: a hole in the offsets an agent sees (a message Faust skipped) is named for a seek back."""

from __future__ import annotations

from stream_app.stream.offsets import OffsetGuard


def test_the_takeover_seen_with_two_workers_is_caught_and_healed():
    """Measured: assigned at committed offset 147, the agent got 147-150, then 152-182; 151 was never delivered."""
    guard = OffsetGuard()
    guard.assigned(["p1"])
    assert guard.check({"p1": range(147, 151)}, {"p1": 147}) == {}
    assert guard.check({"p1": range(152, 183)}, {"p1": 151}) == {"p1": 151}
    # after the seek: the in-flight records may still come first; then 151 and the redeliveries
    assert guard.check({"p1": range(183, 190)}, {}) == {"p1": 151}
    assert guard.check({"p1": range(151, 190)}, {}) == {}
    assert guard.check({"p1": [190, 191]}, {}) == {}


def test_a_first_batch_past_the_committed_offset_and_a_hole_inside_a_batch_are_caught():
    guard = OffsetGuard()
    assert guard.check({"p0": [12, 13]}, {"p0": 10}) == {"p0": 10}
    guard.assigned(["p0"])
    assert guard.check({"p0": [20, 21, 23]}, {"p0": 20}) == {"p0": 22}


def test_redeliveries_below_the_expected_offset_change_nothing_and_partitions_are_independent():
    guard = OffsetGuard()
    assert guard.check({"a": [5, 6], "b": [0]}, {"a": 5, "b": 0}) == {}
    assert guard.check({"a": [3, 4, 5, 6, 7]}, {}) == {}  # 3-6 again (a seek or a redelivery), then 7
    assert guard.check({"b": [1]}, {}) == {}
    guard.assigned(["a"])  # reassigned: starts again from the committed offset (or the first seen)
    assert guard.check({"a": [40]}, {"a": None}) == {}


def test_an_offset_still_missing_after_max_seeks_is_passed_over():
    """A real gap (a compacted topic, a retention that deleted offsets while the group was away) must not make the
    agent seek forever: after MAX_SEEKS seeks back to the same offset it is taken as absent."""
    from stream_app.stream.offsets import MAX_SEEKS

    guard = OffsetGuard()
    assert guard.check({"p": [100]}, {"p": 100}) == {}
    for _ in range(MAX_SEEKS):
        assert guard.check({"p": [105, 106]}, {}) == {"p": 101}  # 101-104 were compacted away
    assert guard.check({"p": [105, 106]}, {}) == {}
    assert guard.check({"p": [107]}, {}) == {}
