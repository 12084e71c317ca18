"""Merging per-slot hits: max of weighted similarity, exclusion, dedupe, deterministic tie-break; popularity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.core.ranking import merge_slot_hits, popular_items


def test_scores_by_max_weighted_similarity_and_dedupes():
    hits = [
        [("a", 0.9), ("b", 0.8), ("c", 0.1)],
        [("b", 0.95), ("d", 0.7), ("a", 0.2)],
    ]
    out = merge_slot_hits(hits, np.array([0.6, 0.4]), exclude=(), k=10)
    expected = {"a": 0.54, "b": max(0.48, 0.38), "c": 0.06, "d": 0.28}
    assert [i for i, _ in out] == ["a", "b", "d", "c"]
    for item_id, score in out:
        assert score == pytest.approx(expected[item_id])
    assert len({i for i, _ in out}) == len(out)


def test_excludes_consumed_and_truncates_to_k():
    hits = [[("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6)]]
    assert merge_slot_hits(hits, np.array([1.0]), exclude={"a", "c"}, k=1) == [("b", 0.8)]
    assert merge_slot_hits(hits, np.array([1.0]), exclude=["b"], k=2) == [("a", 0.9), ("c", 0.7)]
    assert merge_slot_hits(hits, np.array([1.0]), exclude=(), k=0) == []
    assert merge_slot_hits([], np.zeros(0), exclude=(), k=5) == []


def test_ties_break_by_item_id():
    hits = [[("z", 0.5), ("m", 0.5)], [("a", 1.0)]]
    out = merge_slot_hits(hits, np.array([1.0, 0.5]), exclude=(), k=3)
    assert [i for i, _ in out] == ["a", "m", "z"]


def test_duplicate_within_one_slot_keeps_best():
    out = merge_slot_hits([[("a", 0.2), ("a", 0.7)]], np.array([1.0]), exclude=(), k=5)
    assert out == [("a", 0.7)]


def test_rejects_mismatched_or_non_finite_input():
    with pytest.raises(ValueError):
        merge_slot_hits([[("a", 1.0)]], np.array([0.5, 0.5]), exclude=(), k=3)
    with pytest.raises(ValueError):
        merge_slot_hits([[("a", float("nan"))]], np.array([1.0]), exclude=(), k=3)
    with pytest.raises(ValueError):
        merge_slot_hits([[("a", 1.0)]], np.array([np.inf]), exclude=(), k=3)


hit_lists = st.lists(
    st.lists(st.tuples(st.sampled_from("abcdefghij"), st.floats(-1, 1, allow_nan=False)), max_size=8),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(hits=hit_lists, data=st.data(), k=st.integers(0, 12))
def test_merge_matches_brute_force(hits, data, k):
    weights = np.array(data.draw(st.lists(st.floats(0, 1), min_size=len(hits), max_size=len(hits))))
    exclude = set(data.draw(st.lists(st.sampled_from("abcdefghij"), max_size=4)))
    out = merge_slot_hits(hits, weights, exclude, k)
    best: dict[str, float] = {}
    for w, slot in zip(weights, hits):
        for item_id, sim in slot:
            if item_id not in exclude:
                best[item_id] = max(best.get(item_id, -np.inf), w * sim)
    expected = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    assert out == expected
    assert not exclude & {i for i, _ in out}


def test_popular_items_fallback():
    counts = {"a": 3.0, "b": 10.0, "c": 3.0, "d": 0.0, "e": 7.5}
    assert popular_items(counts, exclude={"b"}, k=3) == [("e", 7.5), ("a", 3.0), ("c", 3.0)]
    assert popular_items(counts, exclude=(), k=10) == [("b", 10.0), ("e", 7.5), ("a", 3.0), ("c", 3.0)]
    assert popular_items({}, exclude=(), k=3) == []
    with pytest.raises(ValueError):
        popular_items({"a": float("inf")}, exclude=(), k=1)
