"""The one ranking function: a user's candidate pool, exclusions and blend (pure; no I/O).

The stream (Pipeline.recommend) and the evaluator's default model both call `candidate_pool` then `rank`; what
the evaluator measures is what the stream sends. Inputs, for one user:
- text hits: the user's interest-slot search hits merged by merge_slot_hits (Qdrant, or exact numpy search
  offline), excluded items already dropped, the best `text_pool` of them;
- cooc / seq: stream_app.core.collab's co-occurrence and directed-sequence scores (dicts over neighbours);
- popular: items by popularity, best first (long enough to leave `pool` after the user's exclusions);
- exclusions: the user's exclusion set (interest.exclusions), however long the history.
Pool = the best `text_pool` non-excluded text hits, then the best `pool` non-excluded items of each counter signal
(co-occurrence, sequence, popularity), in that order, deduplicated. Every normaliser below is a max over the pool, which holds each signal's best non-excluded
item, so a score never depends on which other candidates happened to be fetched. For pool item j:

    score(j) = (text_weight + cold_text_weight * cold(j)) * exp((text(j) - max text) / text_temperature)
             + (1 + cold_collab_weight * cold(j)) * (cooc_weight * cooc(j) / max cooc + seq_weight * seq(j) / max seq)
             + pop_weight * pop(j) / max pop,        cold(j) = exp(-n(j) / cold_support)

with text(j) = max_s w_s <e_j, v_s> recomputed from the item's stored vector (so the store's float rounding
never reaches the score) and n(j) the item's (decayed) interaction count, collab.support: an item the counters
know little about (a new item) leans on its text (cold_text_weight) and on its few counts (cold_collab_weight:
a count from one or two users weighs more than the ItemKNN damping alone gives it). Their defaults are the least
overall cost at which ML-100K's cold-item events rank at least 2x as well as with item-knn (README, Offline
evaluation). Ties break by item id. `rank` returns each item's parts for "why this item".

An item's score is the MAX over slots of slot_weight * similarity, not the weighted sum: an item is as good as
its best match to one interest; a sum would reward items that happen to make several slots' truncated hit lists
(an artefact of the per-slot limit: rank limit+1 in a second slot adds nothing), and mixes unrelated interests.
"""

from __future__ import annotations

import heapq
import math
from itertools import repeat
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from stream_app.core.defaults import setting_default as _default

if TYPE_CHECKING:
    from stream_app.settings import Settings



@dataclass(frozen=True)
class RankParams:
    """Pool size and blend weights (defaults: the Settings fields named in FIELDS)."""

    pool: int = field(default_factory=lambda: _default("rank_pool"))
    text_pool: int = field(default_factory=lambda: _default("rank_text_pool"))
    text_weight: float = field(default_factory=lambda: _default("blend_text_weight"))
    cooc_weight: float = field(default_factory=lambda: _default("blend_cooc_weight"))
    seq_weight: float = field(default_factory=lambda: _default("blend_seq_weight"))
    pop_weight: float = field(default_factory=lambda: _default("blend_pop_weight"))
    text_temperature: float = field(default_factory=lambda: _default("blend_text_temperature"))
    cold_text_weight: float = field(default_factory=lambda: _default("blend_cold_text_weight"))
    cold_collab_weight: float = field(default_factory=lambda: _default("blend_cold_collab_weight"))
    cold_support: float = field(default_factory=lambda: _default("blend_cold_support"))

    FIELDS = {
        "pool": "rank_pool",
        "text_pool": "rank_text_pool",
        "text_weight": "blend_text_weight",
        "cooc_weight": "blend_cooc_weight",
        "seq_weight": "blend_seq_weight",
        "pop_weight": "blend_pop_weight",
        "text_temperature": "blend_text_temperature",
        "cold_text_weight": "blend_cold_text_weight",
        "cold_collab_weight": "blend_cold_collab_weight",
        "cold_support": "blend_cold_support",
    }

    def __post_init__(self) -> None:
        """Reject values that make the blend meaningless."""
        if self.pool < 1 or self.text_pool < 1:
            raise ValueError(f"pool and text_pool must be >= 1, got {self.pool}, {self.text_pool}")
        if not self.text_temperature > 0:
            raise ValueError(f"text_temperature must be > 0, got {self.text_temperature}")
        if not self.cold_support > 0:
            raise ValueError(f"cold_support must be > 0, got {self.cold_support}")
        if min(self.text_weight, self.cooc_weight, self.seq_weight, self.pop_weight, self.cold_text_weight,
               self.cold_collab_weight) < 0:
            raise ValueError("blend weights must be >= 0")

    @classmethod
    def from_settings(cls, settings: Settings) -> RankParams:
        """Read rank_pool and the blend_* settings."""
        return cls(**{f: getattr(settings, s) for f, s in cls.FIELDS.items()})


@dataclass(frozen=True)
class Ranked:
    """One recommended item: its score and the parts it is the sum of (for "why this item")."""

    item_id: str
    score: float
    text: float  # (text_weight + cold_text_weight * cold) * exp(...) part; 0 without interest slots
    slot: int  # the interest slot the text affinity comes from (-1: the user has no slot)
    cooc: float  # cooc_weight * normalised co-occurrence part (x (1 + cold_collab_weight * cold))
    seq: float  # seq_weight * normalised sequence part (x the same cold factor)
    pop: float  # pop_weight * normalised popularity part


def _as_set(exclude: Collection[str]) -> Collection[str]:
    """exclude as something with O(1) membership."""
    if isinstance(exclude, (set, frozenset, dict)) or not hasattr(exclude, "__iter__"):
        return exclude  # already O(1) membership (e.g. interest.Exclusions, which hashes ids)
    return set(exclude)


_NUMPY_TOP_K_FROM = 256  # below this many scores a heap is cheaper than building arrays


def _top_k(scores: Mapping[str, float], k: int) -> list[tuple[str, float]]:
    """The k best (id, score) pairs: score descending, then item id ascending (stable, deterministic).

    Large inputs: numpy finds the k-th best value, and only the ids scoring at least that much are sorted by the
    full key (the same pairs and order as sorting everything).
    """
    if k <= 0:
        return []
    n = len(scores)
    if n < _NUMPY_TOP_K_FROM or k >= n:
        return heapq.nsmallest(k, scores.items(), key=lambda kv: (-kv[1], kv[0]))
    values = np.fromiter(scores.values(), np.float64, n)
    kth = values[np.argpartition(-values, k - 1)[k - 1]]
    keys = list(scores)
    best = [(keys[r], scores[keys[r]]) for r in np.flatnonzero(values >= kth).tolist()]
    return sorted(best, key=lambda kv: (-kv[1], kv[0]))[:k]


def merge_slot_hits(
    hits_per_slot: Sequence[Sequence[tuple[str, float]]],
    slot_weights: np.ndarray,
    exclude: Collection[str],
    k: int,
) -> list[tuple[str, float]]:
    """Merge per-slot (item_id, similarity) lists into the top k by max(slot_weight * similarity), deduped."""
    weights = np.asarray(slot_weights, dtype=np.float64).reshape(-1)
    if weights.shape[0] != len(hits_per_slot):
        raise ValueError(f"{len(hits_per_slot)} hit lists but {weights.shape[0]} slot weights")
    if not np.isfinite(weights).all():
        raise ValueError("slot weights must be finite")
    excluded = _as_set(exclude)
    best: dict[str, float] = {}
    for weight, hits in zip(weights.tolist(), hits_per_slot):
        for item_id, similarity in hits:
            if item_id in excluded:
                continue
            score = weight * float(similarity)
            if not math.isfinite(score):
                raise ValueError(f"non-finite similarity {similarity!r} for item {item_id!r}")
            previous = best.get(item_id)
            if previous is None or score > previous:
                best[item_id] = score
    return _top_k(best, k)


def popular_items(counts: Mapping[str, float], exclude: Collection[str], k: int) -> list[tuple[str, float]]:
    """Cold-start fallback: the k items with the highest positive count, excluding consumed ones."""
    excluded = _as_set(exclude)
    scores: dict[str, float] = {}
    for item_id, count in counts.items():
        value = float(count)
        if not math.isfinite(value):
            raise ValueError(f"non-finite count {count!r} for item {item_id!r}")
        if value > 0 and item_id not in excluded:
            scores[item_id] = value
    return _top_k(scores, k)


def _best_unexcluded(scores: Mapping[str, float], exclude: Collection[str], n: int) -> list[str]:
    """The n best positive-scored ids not excluded (score descending, then id).

    At most len(exclude) of the best n + len(exclude) can be excluded, so only those are tested (exact, and
    O(len(scores)) heap work instead of a membership test per neighbour).
    """
    if n <= 0:
        return []
    out: list[str] = []
    for item_id, value in _top_k(scores, n + len(exclude)):
        if value <= 0 or len(out) == n:
            break
        if item_id not in exclude:
            out.append(item_id)
    return out


def candidate_pool(
    text_hits: Mapping[str, float],
    cooc: Mapping[str, float],
    seq: Mapping[str, float],
    popular: Sequence[str],
    exclude: Collection[str],
    params: RankParams,
) -> list[str]:
    """The user's candidates: the best params.text_pool non-excluded text hits, then the best params.pool
    non-excluded items of each counter signal, deduplicated, in order."""
    n = params.pool
    text = [i for i, _ in _top_k(text_hits, params.text_pool + len(exclude)) if i not in exclude][:params.text_pool]
    pop: list[str] = []
    for item_id in popular:
        if len(pop) == n:
            break
        if item_id not in exclude:
            pop.append(item_id)
    pool = dict.fromkeys(text)
    for part in (_best_unexcluded(cooc, exclude, n), _best_unexcluded(seq, exclude, n), pop):
        pool.update(dict.fromkeys(part))
    return list(pool)


class VectorTable(Mapping[str, np.ndarray]):
    """Item vectors as one (n, dim) float32 matrix plus an id -> row index: rank() gathers a user's candidates
    with one fancy-index instead of stacking a vector per item (the stream builds one per batch, the evaluator one
    for the whole catalogue). A Mapping, so rank() also takes a plain dict of vectors."""

    def __init__(self, ids: Sequence[str], matrix: np.ndarray) -> None:
        self.matrix = np.ascontiguousarray(matrix, dtype=np.float32).reshape(len(ids), -1)
        self.row = {item_id: r for r, item_id in enumerate(ids)}

    @classmethod
    def of(cls, vectors: Mapping[str, np.ndarray], dim: int) -> VectorTable:
        """A table of a mapping's vectors (dim: the width of an empty one)."""
        ids = list(vectors)
        matrix = np.stack([np.asarray(vectors[i], np.float32).reshape(-1) for i in ids]) if ids \
            else np.zeros((0, dim), np.float32)
        return cls(ids, matrix)

    def __getitem__(self, item_id: str) -> np.ndarray:
        return self.matrix[self.row[item_id]]

    def __contains__(self, item_id: object) -> bool:
        return item_id in self.row

    def __iter__(self):
        return iter(self.row)

    def __len__(self) -> int:
        return len(self.row)

    def rows(self, item_ids: Sequence[str]) -> np.ndarray:
        """The vectors of these ids (all present), as a (len(item_ids), dim) matrix."""
        return self.matrix[np.fromiter(map(self.row.__getitem__, item_ids), np.int64, len(item_ids))]


def text_affinity(item_vectors: np.ndarray, slot_vectors: np.ndarray, slot_weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item, max over slots of slot_weight * cosine and the slot reaching it (zeros and -1 without slots)."""
    item_vectors = np.asarray(item_vectors, dtype=np.float32).reshape(-1, np.asarray(slot_vectors).shape[-1])
    n = item_vectors.shape[0]
    if len(slot_weights) == 0 or n == 0:
        return np.zeros(n, dtype=np.float64), np.full(n, -1, dtype=np.int64)
    sims = (item_vectors @ np.asarray(slot_vectors, dtype=np.float32).T).astype(np.float64)
    weighted = sims * np.asarray(slot_weights, dtype=np.float64)[None, :]
    return weighted.max(axis=1), weighted.argmax(axis=1)


def _lookup(values: Mapping[str, float], items: Sequence[str]) -> np.ndarray:
    """values[i] (0 when absent) for each item, as float64 (map() keeps the lookups in C)."""
    return np.fromiter(map(values.get, items, repeat(0.0)), np.float64, len(items))


def _scaled(x: np.ndarray) -> np.ndarray:
    """x / max(x), zeros when nothing is positive."""
    top = float(x.max()) if x.size else 0.0
    return x / top if top > 0 else np.zeros_like(x)


def rank(
    pool: Sequence[str],
    vectors: Mapping[str, np.ndarray],
    slot_vectors: np.ndarray,
    slot_weights: np.ndarray,
    cooc: Mapping[str, float],
    seq: Mapping[str, float],
    pop: Mapping[str, float],
    support: Mapping[str, float],
    params: RankParams,
    k: int,
) -> list[Ranked]:
    """The user's top k of the pool by the blend (module docstring); pool items without a vector (not in the
    catalogue any more) are dropped first."""
    items = [i for i in pool if i in vectors]
    if not items or k <= 0:
        return []
    dim = np.asarray(slot_vectors).shape[-1] if len(slot_weights) else len(np.asarray(vectors[items[0]]).reshape(-1))
    if not len(slot_weights):
        mat = np.zeros((len(items), dim), np.float32)
    elif isinstance(vectors, VectorTable):
        mat = vectors.rows(items)
    else:
        mat = np.stack([np.asarray(vectors[i], np.float32).reshape(-1) for i in items])
    text, slot = text_affinity(mat, np.asarray(slot_vectors).reshape(-1, dim), slot_weights)
    parts_cooc = params.cooc_weight * _scaled(_lookup(cooc, items))
    parts_seq = params.seq_weight * _scaled(_lookup(seq, items))
    parts_pop = params.pop_weight * _scaled(_lookup(pop, items))
    text_weight = params.text_weight
    if params.cold_text_weight or params.cold_collab_weight:  # items the counters know little about
        n = _lookup(support, items)
        cold = np.exp(-n / params.cold_support)
        text_weight = text_weight + params.cold_text_weight * cold
        parts_cooc = parts_cooc * (1.0 + params.cold_collab_weight * cold)
        parts_seq = parts_seq * (1.0 + params.cold_collab_weight * cold)
    if len(slot_weights):
        parts_text = text_weight * np.exp((text - text.max()) / params.text_temperature)
    else:  # no interest slot, no text affinity: without this the cold text boost alone would order the list
        parts_text = np.zeros(len(items))
    score = parts_text + parts_cooc + parts_seq + parts_pop
    # Score descending, ties by item id: only the items scoring at least the k-th best need the full key.
    kth = score[np.argpartition(-score, min(k, len(items)) - 1)[min(k, len(items)) - 1]]
    order = sorted(np.flatnonzero(score >= kth).tolist(), key=lambda r: (-score[r], items[r]))[:k]
    return [Ranked(items[r], float(score[r]), float(parts_text[r]), int(slot[r]), float(parts_cooc[r]),
                   float(parts_seq[r]), float(parts_pop[r])) for r in order]
