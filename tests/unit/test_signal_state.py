"""The whole-stream signal: counting rule (same as the evaluator's), snapshot round trip, item-vectors records."""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest

from stream_app.core import collab
from stream_app.core.collab import CollabParams, CollabState
from stream_app.core.events import BehaviourEvent
from stream_app.core.interest import InterestParams, apply_event, consumed_items, new_state
from stream_app.stream.replica import decode_item_vector, encode_item_vector
from stream_app.core.signal_state import SignalState, count_events, to_json
from stream_app.stream.replica import load_signal_snapshot, save_signal_snapshot
from stream_app.adapters.vectorstore import ItemRecord

TYPES = ["view", "click", "cart", "purchase", "dislike", "search"]


def stream(n: int, seed: int = 0) -> list[BehaviourEvent]:
    rng = random.Random(seed)
    out = []
    for k in range(n):
        kind = rng.choice(TYPES)
        item = None if kind == "search" else f"i{rng.randrange(40)}"
        out.append(BehaviourEvent(f"e{k}", f"u{rng.randrange(12)}", kind, item, "q" if item is None else None,
                                  1767225600.0 + 7 * k))
    return out


def test_counts_like_the_group_path_with_the_users_interest_history():
    """The feed's per-user windows give observe() the same `previous` as consumed_items() of the interest state."""
    params = CollabParams(window=5)
    events = stream(400)
    feed = SignalState()
    count_events(feed, events, params)

    ref, states, iparams = CollabState(), {}, InterestParams(recent_items=100)
    vec = np.ones(4, np.float32) / 2
    for e in events:
        state = states.get(e.user_id) or new_state(4)
        if e.item_id and e.type != "dislike":
            collab.observe(ref, e.item_id, consumed_items(state), e.ts, params)
        states[e.user_id] = apply_event(state, vec, e.type, e.ts, e.item_id, iparams)
    assert feed.collab.pop == ref.pop and feed.collab.count == ref.count and feed.collab.cooc == ref.cooc
    assert feed.collab.events == ref.events == sum(1 for e in events if e.item_id and e.type != "dislike")


def test_order_across_users_does_not_change_undecayed_counters():
    """Two workers read partitions interleaved differently; each user's own order is kept (one partition per user)."""
    params = CollabParams(window=5)
    events = stream(600, seed=1)
    a, b = SignalState(), SignalState()
    count_events(a, events, params)
    by_user: dict[str, list[BehaviourEvent]] = {}
    for e in events:
        by_user.setdefault(e.user_id, []).append(e)
    count_events(b, [e for u in sorted(by_user, reverse=True) for e in by_user[u]], params)
    assert a.collab.events == b.collab.events and a.collab.pop.keys() == b.collab.pop.keys()
    for i in a.collab.pop:
        assert math.isclose(a.collab.pop[i], b.collab.pop[i], rel_tol=1e-12)
    assert {i: set(r) for i, r in a.collab.cooc.items()} == {i: set(r) for i, r in b.collab.cooc.items()}


def test_snapshot_round_trip_and_resume(tmp_path):
    params = CollabParams(window=4, cooc_half_life_hours=1.0, pop_half_life_hours=2.0)
    events = stream(300, seed=2)
    whole = SignalState()
    count_events(whole, events, params)
    part = SignalState(positions={0: 150})
    count_events(part, events[:150], params)
    path = tmp_path / "s.json.gz"
    save_signal_snapshot(part, path)
    resumed = load_signal_snapshot(path, max_users=1000)
    assert resumed.positions == {0: 150} and resumed.recent == part.recent
    count_events(resumed, events[150:], params)
    assert resumed.collab.events == whole.collab.events
    for i, v in whole.collab.pop.items():
        assert math.isclose(resumed.collab.pop[i], v, rel_tol=1e-9)
    for i, row in whole.collab.cooc.items():
        assert all(math.isclose(resumed.collab.cooc[i][j], c, rel_tol=1e-9) for j, c in row.items())
    again = load_signal_snapshot(path, max_users=1000)  # every counter map survives the round trip exactly
    assert to_json(again) == to_json(load_signal_snapshot(path, max_users=1000))
    assert again.collab.cooc == part.collab.cooc and again.seen == part.seen
    assert load_signal_snapshot(tmp_path / "none.json.gz", 10).collab.events == 0
    (tmp_path / "bad.json.gz").write_bytes(b"nope")
    with pytest.raises(ValueError):
        load_signal_snapshot(tmp_path / "bad.json.gz", 10)


def test_user_windows_are_bounded():
    s = SignalState(max_users=3)
    count_events(s, stream(200, seed=3), CollabParams(window=2, seq_window=2))  # the window is the larger of the two
    assert len(s.seen) == 3 and set(s.recent) <= set(s.seen) and all(len(w) <= 2 for w in s.recent.values())


def test_item_vector_record_round_trip_and_rejects_garbage():
    vec = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    rec = decode_item_vector(encode_item_vector(ItemRecord("手机-1", vec, {"title": "华为", "tags": ["a"]}), "fp"))
    assert rec.item_id == "手机-1" and rec.payload == {"title": "华为", "tags": ["a"]}
    assert np.array_equal(rec.vector, vec)
    for bad in [b"{", b"null", json.dumps({"v": 1, "item_id": "x", "dim": 3, "vector": "AAAA", "payload": {}}).encode(),
                json.dumps({"v": 2}).encode()]:
        with pytest.raises(ValueError):
            decode_item_vector(bad)


def test_redeliveries_are_counted_once_and_forget_drops_the_users_window():
    params = CollabParams(window=5)
    e1 = BehaviourEvent("a1", "u", "view", "i1", None, 1767225600.0)
    e2 = BehaviourEvent("a2", "u", "view", "i2", None, 1767225660.0)
    s = SignalState()
    assert count_events(s, [e1, e2, e2, e1], params) == 2
    assert s.collab.pop == {"i1": 1.0, "i2": 1.0} and s.recent["u"] == ["i1", "i2"]
    count_events(s, [BehaviourEvent("a3", "u", "forget", None, None, 1767225700.0)], params)
    assert "u" not in s.recent and "u" not in s.seen and s.collab.pop == {"i1": 1.0, "i2": 1.0}
