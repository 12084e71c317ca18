"""Collaborative counters and the re-ranking blend: exact decay, hand-computed scores, pruning, exclusion."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_app.core import collab
from stream_app.core.collab import CollabParams, CollabState
from stream_app.settings import Settings

HOUR = 3600.0


def feed(params: CollabParams, events: list[tuple[str, str, float]]) -> CollabState:
    """Counters after (user, item, ts) events, each user's previous items as the window (newest last)."""
    state, seen = CollabState(), {}
    for user, item, ts in events:
        collab.observe(state, item, seen.setdefault(user, []), ts, params)
        seen[user].append(item)
    return state


def test_cooc_scores_hand_computed() -> None:
    p = CollabParams(window=5, query_items=5, recency=0.5, neighbour_pop_exponent=0.5)
    s = feed(p, [("u", "a", 1), ("u", "b", 2), ("v", "a", 3), ("v", "c", 4), ("w", "b", 5), ("w", "c", 6)])
    # counts: a 2, b 2, c 2; pairs a-b 1, a-c 1, b-c 1
    got = collab.cooc_scores(s, ["a", "b"], p)  # newest b (weight 1), then a (weight 0.5)
    assert got["c"] == pytest.approx((1 / math.sqrt(2) + 0.5 / math.sqrt(2)) / math.sqrt(2))
    assert got["a"] == pytest.approx((1 / math.sqrt(2)) / math.sqrt(2))
    assert collab.top_cooc(s, ["a", "b"], p, 1) == ["c"]


def test_window_limits_pairs() -> None:
    p = CollabParams(window=1)
    s = feed(p, [("u", "a", 1), ("u", "b", 2), ("u", "c", 3)])
    assert set(s.cooc["c"]) == {"b"} and set(s.cooc["a"]) == {"b"}


def test_decay_is_exact_and_survives_rescaling() -> None:
    p = CollabParams(pop_half_life_hours=1.0, cooc_half_life_hours=2.0)
    events = [("u", "a", 0.0), ("v", "b", 1 * HOUR), ("w", "a", 3 * HOUR)]
    s = feed(p, events)
    pop = collab.popularity(s, ["a", "b"])
    # relative decayed counts at any time: a = 2^-3 + 1, b = 2^-2
    assert pop[0] / pop[1] == pytest.approx((2**-3 + 1) / 2**-2)
    # a year later with a 1 h half-life the growth factor would overflow: the state rescales, ratios survive
    late = feed(p, [*events, ("x", "b", 24 * 365 * HOUR), ("y", "c", 24 * 365 * HOUR + 1 * HOUR)])
    assert late.t_ref > 0
    pop = collab.popularity(late, ["b", "c"])
    assert np.isfinite(pop).all() and pop[0] / pop[1] == pytest.approx(0.5)


def test_no_decay_counts_plainly() -> None:
    s = feed(CollabParams(), [("u", "a", 0), ("v", "a", 1e9), ("w", "b", 2e9)])
    assert collab.popularity(s, ["a", "b", "z"]).tolist() == [2.0, 1.0, 0.0]
    assert collab.top_popular(s, 1) == ["a"]


def test_rows_are_pruned_to_the_strongest_neighbours() -> None:
    p = CollabParams(window=50, max_neighbours=3)
    events = [("u", f"x{k}", k) for k in range(10)] + [("v", "x9", 20), ("v", "x8", 21)]
    s = feed(p, events)
    assert all(len(row) < 2 * p.max_neighbours for row in s.cooc.values())
    assert "x8" in s.cooc["x9"]  # co-occurred twice: survives pruning


def test_blend_and_rerank() -> None:
    p = CollabParams(text_weight=1.0, cooc_weight=1.0, pop_weight=0.5, text_temperature=0.1)
    text = np.array([0.9, 0.8, 0.9])
    cooc = np.array([0.0, 2.0, 1.0])
    pop = np.array([4.0, 0.0, 2.0])
    got = collab.blend(text, cooc, pop, p)
    expect = np.exp((text - 0.9) / 0.1) + cooc / 2.0 + 0.5 * pop / 4.0
    assert got == pytest.approx(expect)
    assert collab.blend(text, np.zeros(3), np.zeros(3), p) == pytest.approx(np.exp((text - 0.9) / 0.1))

    s = feed(p, [("u", "a", 1), ("u", "b", 2), ("v", "a", 3), ("v", "c", 4)])
    ranked = collab.rerank(["a", "b", "c"], np.array([0.5, 0.5, 0.5]), s, ["a"], p, exclude={"a"}, k=5)
    assert [i for i, _ in ranked] in (["b", "c"], ["c", "b"]) and len(ranked) == 2


def test_text_affinity_matches_merge_slot_hits() -> None:
    from stream_app.core.ranking import merge_slot_hits

    rng = np.random.default_rng(1)
    items = rng.normal(size=(20, 8)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    slots, weights = items[:2] * 1.0, np.array([0.7, 0.3])
    aff = collab.text_affinity(items, slots, weights)
    ids = [str(i) for i in range(20)]
    hits = [[(ids[j], float(items[j] @ v)) for j in range(20)] for v in slots]
    merged = dict(merge_slot_hits(hits, weights, set(), 20))
    assert [merged[i] for i in ids] == pytest.approx(aff.tolist(), abs=1e-6)
    assert collab.text_affinity(items, np.zeros((0, 8)), np.zeros(0)).tolist() == [0.0] * 20


def test_params_validate_and_read_settings() -> None:
    with pytest.raises(ValueError):
        CollabParams(recency=0.0)
    with pytest.raises(ValueError):
        CollabParams(window=0)
    assert isinstance(CollabParams.from_settings(Settings()), CollabParams)


def test_history_older_than_the_counters_is_scored_without_error():
    """After a restart the counters are empty but users' recent items (from the state table) are not."""
    p = CollabParams()
    state = CollabState()
    collab.observe(state, "new", ["old-1", "old-2"], 1767225600.0, p)  # old-* were never counted by this process
    scores = collab.cooc_scores(state, ["new"], p)  # neighbours without a count used to raise KeyError
    assert set(scores) == {"old-1", "old-2"} and min(scores.values()) > 0
    assert collab.top_cooc(state, ["old-2", "new"], p, 5)[0] in {"old-1", "old-2"}
