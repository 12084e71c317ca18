"""Collaborative signals the stream carries itself: decayed item co-occurrence and popularity counters, and the
re-ranking blend of text affinity with them (pure Python/numpy, no I/O).

Counters. Every behaviour event (user, item, t) adds exp(-lambda (now - t)) to the item's popularity, and to the
co-occurrence of the item with each of the user's last `window` items (both directions). Decay is kept exact
and O(1) per event by storing values scaled by exp(lambda (t - t_ref)) (growing weights instead of shrinking
counts); all stored values share one scale, which every score below normalises away, and the state is rescaled
when the growth factor gets large. Rows keep at most `max_neighbours` neighbours (pruned to the strongest when
they reach twice that), so memory is O(items * max_neighbours).

Scores for a user whose recent items are h_0 (newest), h_1, ...:
    cooc(j) = sum_k recency^k * c(h_k, j) / (n(h_k)^0.5 * n(j)^neighbour_pop_exponent)     (ItemKNN-style)
    pop(j)  = decayed interaction count of j
Blend of a candidate pool that contains the best item of each signal (so the normalisers do not depend on the
pool: the stream adds the top co-occurring and top popular items to its Qdrant hits):
    score(j) = text_weight * exp((text(j) - max text) / text_temperature)
             + cooc_weight * cooc(j) / max cooc + pop_weight * pop(j) / max pop
where text(j) = max_s w_s <e_j, v_s>, the score ranking.merge_slot_hits gives the Qdrant hits of the user's slots.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from stream_app.settings import Settings

SECONDS_PER_HOUR = 3600.0
_LOG_RESCALE_AT = 200.0  # log growth factor above which stored values are rescaled to the current time


@dataclass(frozen=True)
class CollabParams:
    """Knobs of the collaborative counters and of the re-ranking blend (defaults: tuned on ML-100K validation)."""

    window: int = 20
    cooc_half_life_hours: float = 0.0
    pop_half_life_hours: float = 0.0
    max_neighbours: int = 300
    query_items: int = 20
    recency: float = 0.9
    neighbour_pop_exponent: float = 0.5
    text_weight: float = 0.005
    cooc_weight: float = 1.0
    pop_weight: float = 0.0
    text_temperature: float = 0.05

    def __post_init__(self) -> None:
        """Reject values that make the counters or the blend meaningless."""
        if self.window < 1 or self.query_items < 1 or self.max_neighbours < 1:
            raise ValueError("window, query_items and max_neighbours must be >= 1")
        if self.cooc_half_life_hours < 0 or self.pop_half_life_hours < 0:
            raise ValueError("half-lives must be >= 0 (0 means no decay)")
        if not 0 < self.recency <= 1:
            raise ValueError(f"recency must be in (0, 1], got {self.recency}")
        if not self.text_temperature > 0:
            raise ValueError(f"text_temperature must be > 0, got {self.text_temperature}")
        if min(self.text_weight, self.cooc_weight, self.pop_weight) < 0:
            raise ValueError("blend weights must be >= 0")

    @classmethod
    def from_settings(cls, settings: Settings) -> CollabParams:
        """Read the collab_* and blend_* settings; a field the settings do not define yet keeps its default here."""
        names = {
            "window": "collab_window",
            "cooc_half_life_hours": "collab_cooc_half_life_hours",
            "pop_half_life_hours": "collab_pop_half_life_hours",
            "max_neighbours": "collab_max_neighbours",
            "query_items": "collab_query_items",
            "recency": "collab_recency",
            "neighbour_pop_exponent": "collab_neighbour_pop_exponent",
            "text_weight": "blend_text_weight",
            "cooc_weight": "blend_cooc_weight",
            "pop_weight": "blend_pop_weight",
            "text_temperature": "blend_text_temperature",
        }
        return cls(**{f: getattr(settings, s) for f, s in names.items() if hasattr(settings, s)})


def _rate(half_life_hours: float) -> float:
    """Decay rate lambda per second for a half-life in hours (0 = no decay)."""
    return math.log(2.0) / (half_life_hours * SECONDS_PER_HOUR) if half_life_hours > 0 else 0.0


@dataclass(eq=False)
class CollabState:
    """Global counters, values scaled to reference time t_ref (see the module docstring); mutated in place."""

    pop: dict[str, float] = field(default_factory=dict)  # popularity, pop decay
    count: dict[str, float] = field(default_factory=dict)  # interaction count with the co-occurrence decay
    cooc: dict[str, dict[str, float]] = field(default_factory=dict)
    t_ref: float | None = None
    last_ts: float = -math.inf
    events: int = 0


def _rescale(state: CollabState, t: float, params: CollabParams) -> None:
    """Move the reference time to t, shrinking all stored values so growth factors restart at 1."""
    assert state.t_ref is not None
    f_pop = math.exp(-_rate(params.pop_half_life_hours) * (t - state.t_ref))
    f_co = math.exp(-_rate(params.cooc_half_life_hours) * (t - state.t_ref))
    state.pop = {k: v * f_pop for k, v in state.pop.items() if v * f_pop > 0}
    state.count = {k: v * f_co for k, v in state.count.items() if v * f_co > 0}
    cooc = {k: {j: c * f_co for j, c in row.items() if c * f_co > 0} for k, row in state.cooc.items()}
    state.cooc = {k: row for k, row in cooc.items() if row}
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
    window = previous[-params.window :]
    if not window:
        return
    cooc = state.cooc
    row = cooc.get(item_id)
    if row is None:
        row = cooc[item_id] = {}
    cap = 2 * params.max_neighbours
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


def cooc_scores(state: CollabState, recent: Sequence[str], params: CollabParams) -> dict[str, float]:
    """ItemKNN-style score of every neighbour of the user's recent items (newest last), see the module docstring."""
    acc: dict[str, float] = {}
    weight = 1.0
    count = state.count
    for h in reversed(recent[-params.query_items :]):
        row = state.cooc.get(h)
        n_h = count.get(h, 0.0)
        if row and n_h > 0:
            w = weight / math.sqrt(n_h)
            for j, c in row.items():
                acc[j] = acc.get(j, 0.0) + w * c
        weight *= params.recency
    beta = params.neighbour_pop_exponent
    if beta:
        for j in acc:
            n_j = count.get(j)
            if n_j:  # a neighbour this process never counted (its user's history predates a restart) stays raw
                acc[j] /= n_j**beta
    return acc


def popularity(state: CollabState, item_ids: Iterable[str]) -> np.ndarray:
    """Decayed popularity of each item (common scale, 0 for unseen items)."""
    pop = state.pop
    return np.fromiter((pop.get(i, 0.0) for i in item_ids), dtype=np.float64)


def top_popular(state: CollabState, n: int) -> list[str]:
    """The n most popular items right now (decay shares one scale, so stored values order correctly)."""
    return [k for k, _ in heapq.nlargest(n, state.pop.items(), key=lambda kv: kv[1])]


def top_cooc(state: CollabState, recent: Sequence[str], params: CollabParams, n: int) -> list[str]:
    """The n items that co-occur most with the user's recent items (the stream adds them to its candidate pool)."""
    scores = cooc_scores(state, recent, params)
    return [k for k, _ in heapq.nlargest(n, scores.items(), key=lambda kv: kv[1])]


def text_affinity(item_vectors: np.ndarray, slot_vectors: np.ndarray, slot_weights: np.ndarray) -> np.ndarray:
    """Per item, max over slots of slot_weight * cosine: the score ranking.merge_slot_hits gives (zeros without interest)."""
    item_vectors = np.asarray(item_vectors, dtype=np.float32)
    if len(slot_weights) == 0:
        return np.zeros(item_vectors.shape[0], dtype=np.float64)
    sims = (item_vectors @ np.asarray(slot_vectors, dtype=np.float32).T).astype(np.float64)
    return (sims * np.asarray(slot_weights, dtype=np.float64)[None, :]).max(axis=1)


def _scaled(x: np.ndarray) -> np.ndarray:
    """x / max(x), zeros when nothing is positive."""
    top = float(x.max()) if x.size else 0.0
    return x / top if top > 0 else np.zeros_like(x)


def blend(text: np.ndarray, cooc: np.ndarray, pop: np.ndarray, params: CollabParams) -> np.ndarray:
    """Re-ranking score of a candidate pool from its text affinity, co-occurrence and popularity arrays."""
    text = np.asarray(text, dtype=np.float64)
    score = params.cooc_weight * _scaled(np.asarray(cooc, dtype=np.float64))
    score += params.pop_weight * _scaled(np.asarray(pop, dtype=np.float64))
    if text.size and params.text_weight:
        score += params.text_weight * np.exp((text - text.max()) / params.text_temperature)
    return score


def rerank(
    candidates: Sequence[str],
    text: np.ndarray,
    state: CollabState,
    recent: Sequence[str],
    params: CollabParams,
    exclude: Collection[str],
    k: int,
) -> list[tuple[str, float]]:
    """Top k (item_id, blended score) of a candidate pool with its text affinities, skipping excluded ids."""
    co = cooc_scores(state, recent, params)
    cooc = np.fromiter((co.get(c, 0.0) for c in candidates), dtype=np.float64, count=len(candidates))
    score = blend(text, cooc, popularity(state, candidates), params)
    order = np.argsort(-score, kind="stable")
    out: list[tuple[str, float]] = []
    for i in order:
        if candidates[i] not in exclude:
            out.append((candidates[i], float(score[i])))
            if len(out) == k:
                break
    return out
