"""The collaborative signal as every worker keeps it: the collab counters plus, per user, the recent items that the
co-occurrence counter pairs a new item with; folded from the whole behaviour stream and saved as JSON snapshots.

Pure (no Kafka, no I/O): stream_app.stream.replica feeds it from a consumer of every partition of `behaviour`, so
each worker's counters are built from all users' events, not only those of its own partitions, and saves and loads
its snapshots.

Counting rule (the same as the offline evaluator's replay.Default.observe): an event with an item id that is not a
dislike adds to the counters with the user's earlier items (newest last, deduplicated, dislikes included) as
`previous`; then the item becomes the user's newest recent item. Events without an item id (searches) do not
count. An event id the user sent among their last SEEN_EVENTS events is a redelivery and is skipped (the user-state table dedupes the same way).
A `forget` event drops the user's window and remembered ids; the aggregate counts stay (they hold no user id).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from stream_app.core import collab
from stream_app.core.defaults import setting_default as _default
from stream_app.core.collab import CollabParams, CollabState
from stream_app.core.events import FORGET, BehaviourEvent
from stream_app.core.interest import event_digest

SNAPSHOT_VERSION = 1
SEEN_EVENTS = 32  # event-id digests remembered per user for the signal's own dedupe (8 bytes each on disk)


@dataclass(eq=False)
class SignalState:
    """Counters, each user's recent items (at most `window`, newest last) and the stream positions they reflect."""

    collab: CollabState = field(default_factory=CollabState)
    recent: OrderedDict[str, list[str]] = field(default_factory=OrderedDict)  # least recently active user first
    seen: OrderedDict[str, list[int]] = field(default_factory=OrderedDict)  # user -> last event-id digests, LRU
    positions: dict[int, int] = field(default_factory=dict)  # behaviour partition -> next offset to read
    max_users: int = field(default_factory=lambda: _default("signal_max_users"))


def count_events(state: SignalState, events: Iterable[BehaviourEvent], params: CollabParams) -> int:
    """Fold events (each user's in stream order) into the counters; returns how many were counted."""
    counted = 0
    for e in events:
        if e.type == FORGET:
            state.recent.pop(e.user_id, None)
            state.seen.pop(e.user_id, None)
            continue
        digest = event_digest(e.event_id)
        seen = state.seen.get(e.user_id)
        if seen is None:
            seen = state.seen[e.user_id] = []
        else:
            state.seen.move_to_end(e.user_id)
        if digest in seen:
            continue
        seen.append(digest)
        del seen[:-SEEN_EVENTS]
        while len(state.seen) > state.max_users:  # the least recently active user is forgotten
            user, _ = state.seen.popitem(last=False)
            state.recent.pop(user, None)
        if not e.item_id:
            continue
        previous = state.recent.get(e.user_id)
        if previous is None:
            previous = state.recent[e.user_id] = []
        else:
            state.recent.move_to_end(e.user_id)
        if e.type != "dislike":
            collab.observe(state.collab, e.item_id, previous, e.ts, params)
            counted += 1
        if e.item_id in previous:
            previous.remove(e.item_id)
        previous.append(e.item_id)
        del previous[: -max(params.window, params.seq_window)]  # what co-occurrence and sequence counting read
    return counted


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


_SCALARS = {"t_ref", "last_ts", "events"}  # CollabState's non-counter fields; every other field is a counter map


def to_json(state: SignalState) -> dict[str, Any]:
    """A JSON-able snapshot (no pickle: plain dicts, lists and numbers); every counter map of CollabState is saved."""
    c = state.collab
    counters = {f.name: getattr(c, f.name) for f in fields(CollabState) if f.name not in _SCALARS}
    return {
        "version": SNAPSHOT_VERSION,
        "collab": {**counters, "t_ref": c.t_ref, "last_ts": _finite_or_none(c.last_ts), "events": c.events},
        "recent": state.recent,
        "seen": state.seen,
        "positions": {str(p): o for p, o in state.positions.items()},
    }


def _counter_map(raw: Mapping[str, Any]) -> dict[str, Any]:
    """item -> float, or item -> {item -> float} (neighbour rows), as read from JSON."""
    return {str(k): {str(j): float(x) for j, x in v.items()} if isinstance(v, Mapping) else float(v)
            for k, v in raw.items()}


def from_json(doc: Mapping[str, Any], max_users: int) -> SignalState:
    """The state a snapshot describes; raises ValueError for anything else (a counter map it lacks starts empty)."""
    if not isinstance(doc, Mapping) or doc.get("version") != SNAPSHOT_VERSION:
        raise ValueError(f"not a version-{SNAPSHOT_VERSION} signal snapshot")
    try:
        c = doc["collab"]
        last_ts = c["last_ts"]
        counters = {f.name: _counter_map(c[f.name]) for f in fields(CollabState) if f.name not in _SCALARS
                    and f.name in c}
        collab_state = CollabState(**counters, t_ref=None if c["t_ref"] is None else float(c["t_ref"]),
                                   last_ts=-math.inf if last_ts is None else float(last_ts), events=int(c["events"]))
        recent = OrderedDict((str(u), [str(i) for i in items]) for u, items in doc["recent"].items())
        seen = OrderedDict((str(u), [int(d) for d in ds]) for u, ds in doc["seen"].items())
        positions = {int(p): int(o) for p, o in doc["positions"].items()}
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ValueError(f"malformed signal snapshot: {exc!r}") from exc
    return SignalState(collab_state, recent, seen, positions, max_users)
