"""Collaborative counters: exact decay, hand-computed co-occurrence and directed-sequence scores, pruning."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stream_app.core import collab
from stream_app.core.collab import CollabParams, CollabState
from stream_app.settings import Settings

HOUR = 3600.0


def popularity(state: CollabState, ids: list[str]) -> np.ndarray:
    return np.array([state.pop.get(i, 0.0) for i in ids])


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
    assert max(got, key=got.get) == "c"


def test_window_limits_pairs() -> None:
    p = CollabParams(window=1)
    s = feed(p, [("u", "a", 1), ("u", "b", 2), ("u", "c", 3)])
    assert set(s.cooc["c"]) == {"b"} and set(s.cooc["a"]) == {"b"}


def test_decay_is_exact_and_survives_rescaling() -> None:
    p = CollabParams(pop_half_life_hours=1.0, cooc_half_life_hours=2.0)
    events = [("u", "a", 0.0), ("v", "b", 1 * HOUR), ("w", "a", 3 * HOUR)]
    s = feed(p, events)
    pop = popularity(s, ["a", "b"])
    # relative decayed counts at any time: a = 2^-3 + 1, b = 2^-2
    assert pop[0] / pop[1] == pytest.approx((2**-3 + 1) / 2**-2)
    # a year later with a 1 h half-life the growth factor would overflow: the state rescales, ratios survive
    late = feed(p, [*events, ("x", "b", 24 * 365 * HOUR), ("y", "c", 24 * 365 * HOUR + 1 * HOUR)])
    assert late.t_ref > 0
    pop = popularity(late, ["b", "c"])
    assert np.isfinite(pop).all() and pop[0] / pop[1] == pytest.approx(0.5)


def test_no_decay_counts_plainly() -> None:
    s = feed(CollabParams(), [("u", "a", 0), ("v", "a", 1e9), ("w", "b", 2e9)])
    assert popularity(s, ["a", "b", "z"]).tolist() == [2.0, 1.0, 0.0]
    assert collab.top_popular(s, 1) == ["a"]


def test_rows_are_pruned_to_the_strongest_neighbours() -> None:
    p = CollabParams(window=50, max_neighbours=3)
    events = [("u", f"x{k}", k) for k in range(10)] + [("v", "x9", 20), ("v", "x8", 21)]
    s = feed(p, events)
    assert all(len(row) < 2 * p.max_neighbours for row in s.cooc.values())
    assert "x8" in s.cooc["x9"]  # co-occurred twice: survives pruning


def test_directed_transitions_hand_computed() -> None:
    """seq[prev][item] += decay^(d-1) for the user's last seq_window items; never backwards."""
    p = CollabParams(seq_window=2, seq_distance_decay=0.5, seq_query_items=2, seq_recency=0.5,
                     seq_neighbour_pop_exponent=0.5)
    s = feed(p, [("u", "a", 1), ("u", "b", 2), ("u", "c", 3), ("v", "a", 4), ("v", "c", 5)])
    # u: a->b 1; b->c 1, a->c 0.5 (distance 2); v: a->c 1.   Nothing points backwards.
    assert s.seq == {"a": {"b": 1.0, "c": 1.5}, "b": {"c": 1.0}}
    # counts: a 2, b 1, c 2. A user whose recent items are [b, a] (a newest):
    got = collab.seq_scores(s, ["b", "a"], p)
    assert got["c"] == pytest.approx((1.5 / math.sqrt(2) + 0.5 * 1.0 / math.sqrt(1)) / math.sqrt(2))
    assert got["b"] == pytest.approx((1.0 / math.sqrt(2)) / math.sqrt(1))
    assert "a" not in got  # nobody moved to a
    assert collab.explain_sources(s, ["b", "a"], "c", p) == {"cooc_from": "a", "seq_from": "a"}
    assert collab.explain_sources(s, ["b", "a"], "zz", p) == {"cooc_from": None, "seq_from": None}


def test_seq_window_bounds_the_work_per_event() -> None:
    p = CollabParams(seq_window=1)
    s = feed(p, [("u", f"x{k}", k) for k in range(6)])
    assert all(len(row) == 1 for row in s.seq.values())  # only the item just before
    assert s.seq["x4"] == {"x5": 1.0}


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
    ranked = collab.cooc_scores(state, ["old-2", "new"], p)
    assert max(ranked, key=ranked.get) in {"old-1", "old-2"}
