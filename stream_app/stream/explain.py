"""Why a user gets what they get: attention of each interest slot over the user's recent items, and the parts of each
recommended item's score (pure numpy over what the state, the counters and the store hold; no I/O).

What the attention shown is. The state keeps, per slot, the attention-weighted running sum D_k and the ids of the
recent items, not each event's score s_i (its type and age are folded into the sums). So the weights shown are
recomputed from the slot's current interest u_k = D_k / |D_k| and the recent items' stored vectors e_j:

    a_jk = exp(<e_j, u_k> / tau) / sum_{j'} exp(<e_j', u_k> / tau)      over the recent items j shown

i.e. the dynamic-attention softmax of the seed with the slot's interest as the query, without the type weight
log w(type_j) and the age decay (which the state no longer holds per event). An item's slot is the slot with the
highest cosine, as `interest.choose_slot` would join it.

Score parts of a recommended item j (the blend of stream_app.core.ranking.rank): text affinity per slot w_k <e_j, u_k>
(the blend uses the max over slots), co-occurrence contributions per recent item h at recency rank r,
recency^r * c(h, j) / (sqrt(n(h)) * n(j)^beta) (they sum to collab.cooc_scores' value), and popularity n(j).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stream_app.core.collab import CollabParams, CollabState


def attention_weights(item_vectors: np.ndarray, slot_vectors: np.ndarray, temperature: float) -> np.ndarray:
    """(n_items, n_slots) softmax over the items, per slot, of cosine / temperature (see the module docstring)."""
    items = np.asarray(item_vectors, np.float64)
    slots = np.asarray(slot_vectors, np.float64)
    if items.size == 0 or slots.size == 0:
        return np.zeros((items.shape[0] if items.ndim == 2 else 0, slots.shape[0] if slots.ndim == 2 else 0))
    items = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
    slots = slots / np.maximum(np.linalg.norm(slots, axis=1, keepdims=True), 1e-12)
    logits = items @ slots.T / temperature
    logits -= logits.max(axis=0, keepdims=True)
    w = np.exp(logits)
    return w / w.sum(axis=0, keepdims=True)


def cooc_contributions(state: CollabState, recent: Sequence[str], item_id: str,
                       params: CollabParams) -> list[tuple[str, float]]:
    """Each recent item's share of item_id's co-occurrence score (collab.cooc_scores' terms), largest first."""
    out: dict[str, float] = {}
    weight = 1.0
    n_j = state.count.get(item_id)
    damp = n_j ** params.neighbour_pop_exponent if n_j and params.neighbour_pop_exponent else 1.0
    for h in reversed(recent[-params.query_items:]):
        row = state.cooc.get(h)
        n_h = state.count.get(h, 0.0)
        if row and n_h > 0 and item_id in row:
            out[h] = out.get(h, 0.0) + weight / math.sqrt(n_h) * row[item_id] / damp
        weight *= params.recency
    return sorted(out.items(), key=lambda kv: -kv[1])


def score_parts(item_vector: np.ndarray | None, slot_vectors: np.ndarray, slot_weights: np.ndarray,
                recent_vectors: Mapping[str, np.ndarray], contributions: list[tuple[str, float]],
                popularity: float) -> dict[str, Any]:
    """Text affinity per slot, co-occurrence by recent item, popularity, and the recent item it is most like."""
    parts: dict[str, Any] = {"text_by_slot": [], "text": None, "cooc": round(sum(c for _, c in contributions), 6),
                             "cooc_from": [{"item_id": h, "contribution": round(c, 6)} for h, c in contributions[:5]],
                             "popularity": round(float(popularity), 3), "most_similar_recent": None}
    if item_vector is None:
        return parts
    e = np.asarray(item_vector, np.float64)
    e = e / max(float(np.linalg.norm(e)), 1e-12)
    if len(slot_weights):
        cos = np.asarray(slot_vectors, np.float64) @ e
        by_slot = [round(float(w * c), 4) for w, c in zip(slot_weights, cos)]
        parts["text_by_slot"] = by_slot
        parts["text"] = max(by_slot)
        parts["text_slot"] = int(np.argmax(by_slot))
    if recent_vectors:
        ids = list(recent_vectors)
        mat = np.stack([np.asarray(recent_vectors[i], np.float64) for i in ids])
        mat /= np.maximum(np.linalg.norm(mat, axis=1, keepdims=True), 1e-12)
        sims = mat @ e
        best = int(np.argmax(sims))
        parts["most_similar_recent"] = {"item_id": ids[best], "cosine": round(float(sims[best]), 4)}
    return parts


def because(parts: Mapping[str, Any], titles: Mapping[str, str], support: float | None = None,
            cold_support: float | None = None) -> str:
    """One human line: the recent item behind the strongest signal ("because you viewed X"); an item the counters
    know little about (support below `cold_support`, where rank's cold-item boosts lift it) says so too."""
    def name(item_id: str) -> str:
        return titles.get(item_id) or item_id

    if parts.get("cooc_from"):
        reason = f"people who interacted with “{name(parts['cooc_from'][0]['item_id'])}” also chose it"
    elif similar := parts.get("most_similar_recent"):
        reason = f"it is like “{name(similar['item_id'])}” (cosine {similar['cosine']:.2f})"
    elif parts.get("popularity"):
        reason = "popular right now"
    else:
        reason = "closest to your interest"
    if support is not None and cold_support is not None and support < cold_support:
        seen = "no interactions yet" if support < 0.5 else \
            f"about {support:.0f} interaction{'s' * (support >= 1.5)} so far"
        reason = f"{reason}; little known: {seen}"
    return reason
