"""Turn per-interest-slot search hits into one top-k list (pure; no I/O).

An item's score is the MAX over slots of slot_weight * similarity, not the weighted sum: an item is as good as
its best match to one interest; a sum would reward items that happen to make several slots' truncated hit lists
(an artefact of the per-slot limit: rank limit+1 in a second slot adds nothing), and mixes unrelated interests.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Mapping, Sequence

import numpy as np


def _as_set(exclude: Collection[str]) -> Collection[str]:
    """exclude as something with O(1) membership."""
    return exclude if isinstance(exclude, (set, frozenset, dict)) else set(exclude)


def _top_k(scores: Mapping[str, float], k: int) -> list[tuple[str, float]]:
    """The k best (id, score) pairs: score descending, then item id ascending (stable, deterministic)."""
    if k <= 0:
        return []
    return heapq.nsmallest(k, scores.items(), key=lambda kv: (-kv[1], kv[0]))


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
