"""Collaborative signals the stream carries itself: decayed item co-occurrence, directed sequence-transition and
popularity counters (pure Python, no I/O). How they are blended with the text lives in stream_app.core.ranking.

Counters. Every behaviour event (user, item, t) adds g = exp(-lambda (now - t)) to the item's popularity, to the
co-occurrence of the item with each of the user's last `window` items (both directions), and to the directed
transition prev -> item for each of the user's last `seq_window` items, weighted by distance d (1 = the item just
before): seq[prev][item] += g * seq_distance_decay^(d-1). Decay is kept exact
and O(1) per event by storing values scaled by exp(lambda (t - t_ref)) (growing weights instead of shrinking
counts); all stored values share one scale, which every score below normalises away, and the state is rescaled
when the growth factor gets large. Rows keep at most `max_neighbours` neighbours (pruned to the strongest when
they reach twice that), so memory is O(items * max_neighbours) and an event costs O(window + seq_window).

Scores for a user whose recent items are h_0 (newest), h_1, ...:
    cooc(j) = sum_k recency^k * c(h_k, j) / (n(h_k)^0.5 * n(j)^neighbour_pop_exponent)     (ItemKNN-style)
    seq(j)  = sum_k seq_recency^k * s(h_k, j) / (n(h_k)^0.5 * n(j)^seq_neighbour_pop_exponent)  (directed)
    pop(j)  = decayed interaction count of j
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from stream_app.core.defaults import setting_default as _default

if TYPE_CHECKING:
    from stream_app.settings import Settings

SECONDS_PER_HOUR = 3600.0
_LOG_RESCALE_AT = 200.0  # log growth factor above which stored values are rescaled to the current time



@dataclass(frozen=True)
class CollabParams:
    """Knobs of the collaborative counters (defaults: the Settings fields named in FIELDS, tuned on validation)."""

    window: int = field(default_factory=lambda: _default("collab_window"))
    cooc_half_life_hours: float = field(default_factory=lambda: _default("collab_cooc_half_life_hours"))
    pop_half_life_hours: float = field(default_factory=lambda: _default("collab_pop_half_life_hours"))
    max_neighbours: int = field(default_factory=lambda: _default("collab_max_neighbours"))
    query_items: int = field(default_factory=lambda: _default("collab_query_items"))
    recency: float = field(default_factory=lambda: _default("collab_recency"))
    neighbour_pop_exponent: float = field(default_factory=lambda: _default("collab_neighbour_pop_exponent"))
    seq_window: int = field(default_factory=lambda: _default("seq_window"))
    seq_distance_decay: float = field(default_factory=lambda: _default("seq_distance_decay"))
    seq_query_items: int = field(default_factory=lambda: _default("seq_query_items"))
    seq_recency: float = field(default_factory=lambda: _default("seq_recency"))
    seq_neighbour_pop_exponent: float = field(default_factory=lambda: _default("seq_neighbour_pop_exponent"))

    FIELDS = {
        "window": "collab_window",
        "cooc_half_life_hours": "collab_cooc_half_life_hours",
        "pop_half_life_hours": "collab_pop_half_life_hours",
        "max_neighbours": "collab_max_neighbours",
        "query_items": "collab_query_items",
        "recency": "collab_recency",
        "neighbour_pop_exponent": "collab_neighbour_pop_exponent",
        "seq_window": "seq_window",
        "seq_distance_decay": "seq_distance_decay",
        "seq_query_items": "seq_query_items",
        "seq_recency": "seq_recency",
        "seq_neighbour_pop_exponent": "seq_neighbour_pop_exponent",
    }

    def __post_init__(self) -> None:
        """Reject values that make the counters meaningless."""
        if min(self.window, self.query_items, self.max_neighbours, self.seq_window, self.seq_query_items) < 1:
            raise ValueError("window, query_items, max_neighbours, seq_window and seq_query_items must be >= 1")
        if self.cooc_half_life_hours < 0 or self.pop_half_life_hours < 0:
            raise ValueError("half-lives must be >= 0 (0 means no decay)")
        for name in ("recency", "seq_recency", "seq_distance_decay"):
            if not 0 < getattr(self, name) <= 1:
                raise ValueError(f"{name} must be in (0, 1], got {getattr(self, name)}")
        if self.neighbour_pop_exponent < 0 or self.seq_neighbour_pop_exponent < 0:
            raise ValueError("neighbour popularity exponents must be >= 0")

    @classmethod
    def from_settings(cls, settings: Settings) -> CollabParams:
        """Read the collab_* and seq_* settings."""
        return cls(**{f: getattr(settings, s) for f, s in cls.FIELDS.items()})


def _rate(half_life_hours: float) -> float:
    """Decay rate lambda per second for a half-life in hours (0 = no decay)."""
    return math.log(2.0) / (half_life_hours * SECONDS_PER_HOUR) if half_life_hours > 0 else 0.0


@dataclass(eq=False)
class CollabState:
    """Global counters, values scaled to reference time t_ref (see the module docstring); mutated in place."""

    pop: dict[str, float] = field(default_factory=dict)  # popularity, pop decay
    count: dict[str, float] = field(default_factory=dict)  # interaction count with the co-occurrence decay
    cooc: dict[str, dict[str, float]] = field(default_factory=dict)
    seq: dict[str, dict[str, float]] = field(default_factory=dict)  # seq[i][j]: i followed by j (directed)
    t_ref: float | None = None
    last_ts: float = -math.inf
    events: int = 0


def _rescale(state: CollabState, t: float, params: CollabParams) -> None:
    """Move the reference time to t, shrinking all stored values so growth factors restart at 1."""
    if state.t_ref is None:
        state.t_ref = t
        return
    f_pop = math.exp(-_rate(params.pop_half_life_hours) * (t - state.t_ref))
    f_co = math.exp(-_rate(params.cooc_half_life_hours) * (t - state.t_ref))
    state.pop = {k: v * f_pop for k, v in state.pop.items() if v * f_pop > 0}
    state.count = {k: v * f_co for k, v in state.count.items() if v * f_co > 0}
    cooc = {k: {j: c * f_co for j, c in row.items() if c * f_co > 0} for k, row in state.cooc.items()}
    state.cooc = {k: row for k, row in cooc.items() if row}
    seq = {k: {j: c * f_co for j, c in row.items() if c * f_co > 0} for k, row in state.seq.items()}
    state.seq = {k: row for k, row in seq.items() if row}
    state.t_ref = t


def _prune(row: dict[str, float], keep: int) -> dict[str, float]:
    """The `keep` strongest entries of a neighbour row."""
    return dict(heapq.nlargest(keep, row.items(), key=lambda kv: kv[1]))


def observe(state: CollabState, item_id: str, previous: Sequence[str], ts: float, params: CollabParams) -> None:
    """Count one interaction of a user with item_id at ts; previous = the user's earlier items, newest last."""
    ts = float(ts)
    if state.t_ref is None:
        state.t_ref = ts
    t = max(ts, state.last_ts)  # late events count as now, like the interest model
    state.last_ts = t
    log_co = _rate(params.cooc_half_life_hours) * (t - state.t_ref)
    log_pop = _rate(params.pop_half_life_hours) * (t - state.t_ref)
    if max(log_co, log_pop) > _LOG_RESCALE_AT:
        _rescale(state, t, params)
        log_co = log_pop = 0.0
    g_co, g_pop = math.exp(log_co), math.exp(log_pop)
    state.events += 1
    state.pop[item_id] = state.pop.get(item_id, 0.0) + g_pop
    state.count[item_id] = state.count.get(item_id, 0.0) + g_co
    cap = 2 * params.max_neighbours
    _count_transitions(state, item_id, previous, g_co, params, cap)
    window = previous[-params.window :]
    if not window:
        return
    cooc = state.cooc
    row = cooc.get(item_id)
    if row is None:
        row = cooc[item_id] = {}
    for other in window:
        if other == item_id:
            continue
        row[other] = row.get(other, 0.0) + g_co
        orow = cooc.get(other)
        if orow is None:
            orow = cooc[other] = {}
        orow[item_id] = orow.get(item_id, 0.0) + g_co
        if len(orow) >= cap:
            cooc[other] = _prune(orow, params.max_neighbours)
    if len(row) >= cap:
        cooc[item_id] = _prune(row, params.max_neighbours)


def _count_transitions(
    state: CollabState, item_id: str, previous: Sequence[str], g: float, params: CollabParams, cap: int
) -> None:
    """Directed transitions into item_id from the user's last seq_window items: seq[prev][item] += g * decay^(d-1).

    d = 1 for the item just before, 2 for the one before that, ... (O(seq_window) per event).
    """
    w = g
    seq = state.seq
    for d in range(1, min(params.seq_window, len(previous)) + 1):
        prev = previous[-d]
        if prev != item_id:
            row = seq.get(prev)
            if row is None:
                row = seq[prev] = {}
            row[item_id] = row.get(item_id, 0.0) + w
            if len(row) >= cap:
                seq[prev] = _prune(row, params.max_neighbours)
        w *= params.seq_distance_decay


def _neighbour_scores(
    rows: dict[str, dict[str, float]], count: dict[str, float], recent: Sequence[str], query_items: int,
    recency: float, beta: float,
) -> dict[str, float]:
    """sum_k recency^k * c(h_k, j) / (n(h_k)^0.5 * n(j)^beta) over the newest query_items recent items h_k."""
    acc: dict[str, float] = {}
    weight = 1.0
    for h in reversed(recent[-query_items:]):
        row = rows.get(h)
        n_h = count.get(h, 0.0)
        if row and n_h > 0:
            w = weight / math.sqrt(n_h)
            if acc:
                get = acc.get
                for j, c in row.items():
                    acc[j] = get(j, 0.0) + w * c
            else:  # the first row: the same values (0.0 + x == x), built in one comprehension
                acc = {j: w * c for j, c in row.items()}
        weight *= recency
    if beta:
        # a neighbour this process never counted (its user's history predates a restart) stays raw
        get = count.get
        acc = {j: v / n_j**beta if (n_j := get(j)) else v for j, v in acc.items()}
    return acc


def cooc_scores(state: CollabState, recent: Sequence[str], params: CollabParams) -> dict[str, float]:
    """ItemKNN-style score of every neighbour of the user's recent items (newest last), see the module docstring."""
    return _neighbour_scores(state.cooc, state.count, recent, params.query_items, params.recency,
                             params.neighbour_pop_exponent)


def seq_scores(state: CollabState, recent: Sequence[str], params: CollabParams) -> dict[str, float]:
    """Directed-transition score of every successor of the user's recent items (newest last)."""
    return _neighbour_scores(state.seq, state.count, recent, params.seq_query_items, params.seq_recency,
                             params.seq_neighbour_pop_exponent)


def strongest_source(
    rows: dict[str, dict[str, float]], recent: Sequence[str], item_id: str, query_items: int, recency: float,
    count: dict[str, float],
) -> str | None:
    """The recent item whose term contributes most to item_id's neighbour score (for "why this item")."""
    best, best_value, weight = None, 0.0, 1.0
    for h in reversed(recent[-query_items:]):
        n_h = count.get(h, 0.0)
        c = rows.get(h, {}).get(item_id, 0.0)
        if n_h > 0 and c > 0 and weight * c / math.sqrt(n_h) > best_value:
            best, best_value = h, weight * c / math.sqrt(n_h)
        weight *= recency
    return best


def explain_sources(state: CollabState, recent: Sequence[str], item_id: str, params: CollabParams) -> dict[str, str | None]:
    """Which recent item the co-occurrence and the sequence score of item_id come from (None: no contribution)."""
    return {
        "cooc_from": strongest_source(state.cooc, recent, item_id, params.query_items, params.recency, state.count),
        "seq_from": strongest_source(state.seq, recent, item_id, params.seq_query_items, params.seq_recency,
                                     state.count),
    }


def top_popular(state: CollabState, n: int) -> list[str]:
    """The n most popular items right now, ties by item id (decay shares one scale, so stored values order)."""
    if n <= 0:
        return []
    return [k for k, _ in heapq.nsmallest(n, state.pop.items(), key=lambda kv: (-kv[1], kv[0]))]


def support(state: CollabState, item_ids: Sequence[str], params: CollabParams) -> dict[str, float]:
    """Each item's interaction count, decayed to the counters' latest time (co-occurrence half-life; 0 if unseen):
    how much the counters know about it."""
    if state.t_ref is None:
        return {i: 0.0 for i in item_ids}
    f = math.exp(-_rate(params.cooc_half_life_hours) * (state.last_ts - state.t_ref))
    count = state.count
    return {i: count.get(i, 0.0) * f for i in item_ids}


def popularity(state: CollabState, item_ids: Sequence[str]) -> list[float]:
    """Decayed popularity of each item (common scale, 0 for unseen items)."""
    pop = state.pop
    return [pop.get(i, 0.0) for i in item_ids]
