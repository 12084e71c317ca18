"""Baselines in their standard forms, replayed like the default: most-popular, ItemKNN (cosine, last items),
text-mean, and the seed's single-vector dynamic attention."""

from __future__ import annotations

import numpy as np

from stream_app.core.interest import POSITIVE_TYPES, InterestParams
from stream_app.offline.protocol import CUTOFFS
from stream_app.offline.replay import InterestReplay, Model, Replay
from stream_app.core.interest import interest_vectors
from stream_app.core.ranking import merge_slot_hits
from stream_app.settings import Settings

TEXT_MEAN_ITEMS = 10
ITEMKNN_MAX_ITEMS = 30_000  # dense co-occurrence matrix: 30k^2 float32 = 3.6 GB is the most we allow
ITEMKNN_LAST = 3  # tuned on ML-100K validation targets (stream-app eval --tune), see README


class MostPopular(Model):
    """Interaction counts so far."""

    name = "most-popular"

    def __init__(self, n_items: int) -> None:
        self.counts = np.zeros(n_items, np.float64)

    def observe(self, ctx: Replay, pos: int) -> None:
        self.counts[ctx.data.items[pos]] += 1.0

    def scores(self, ctx: Replay, user: int, now: float) -> np.ndarray:
        return self.counts.copy()


class ItemKNN(Model):
    """Standard ItemKNN: cosine similarity of items' binary user vectors (which users interacted with each item,
    from the replayed interactions), a user scored from their last `last` distinct items: sum_h sim(h, j).
    `last` is tuned on validation targets (`stream-app eval --tune item-knn`); ITEMKNN_LAST holds the chosen value."""

    name = "item-knn"

    def __init__(self, n_items: int, n_users: int, last: int = 0) -> None:
        self.last = last or ITEMKNN_LAST
        self.co = np.zeros((n_items, n_items), np.float32)
        self.counts = np.zeros(n_items, np.float64)
        self.seen: list[set[int]] = [set() for _ in range(n_users)]
        self.name = f"item-knn (cosine, last {self.last})"

    def observe(self, ctx: Replay, pos: int) -> None:
        u, i = int(ctx.data.users[pos]), int(ctx.data.items[pos])
        seen = self.seen[u]
        if i in seen:
            return  # binary: a repeated interaction adds nothing
        if seen:
            h = np.fromiter(seen, np.int64, len(seen))
            self.co[i, h] += 1.0
            self.co[h, i] += 1.0
        seen.add(i)
        self.counts[i] += 1.0

    def scores(self, ctx: Replay, user: int, now: float) -> np.ndarray:
        last = list(dict.fromkeys(reversed(ctx.history[user])))[: self.last]
        if not last:
            return np.zeros(self.co.shape[0])
        h = np.asarray(last, np.int64)
        norm = np.sqrt(np.maximum(self.counts, 1.0))
        return (self.co[h] / norm[h][:, None]).sum(axis=0) / norm


class TextMean(Model):
    """Cosine with the mean embedding of the user's last few items."""

    name = "text-mean"

    def __init__(self, last: int = TEXT_MEAN_ITEMS) -> None:
        self.last = last

    def observe(self, ctx: Replay, pos: int) -> None:
        pass

    def scores(self, ctx: Replay, user: int, now: float) -> np.ndarray:
        hist = ctx.history[user][-self.last :]
        if not hist:
            return np.zeros(ctx.emb.shape[0])
        return (ctx.emb @ ctx.emb[hist].mean(axis=0)).astype(np.float64)


class SeedAttention(InterestReplay):
    """The seed recommender: interest slots searched exactly (Qdrant stand-in) and merged by merge_slot_hits."""

    name = "seed-attention"

    def __init__(self, n_users: int, dim: int, params: InterestParams, index: dict[str, int]) -> None:
        super().__init__(n_users, dim, params)
        self.index = index

    def scores(self, ctx: Replay, user: int, now: float) -> np.ndarray:
        out = np.full(ctx.emb.shape[0], -np.inf)
        vecs, weights = interest_vectors(self.states[user], now, self.params)
        if len(weights) == 0:
            return out
        exclude = {ctx.data.item_ids[i] for i in ctx.history[user]}
        limit = min(max(CUTOFFS) + len(exclude), ctx.emb.shape[0])
        hits = []
        for sims in (ctx.emb @ vecs.T).T:
            top = np.argpartition(-sims, limit - 1)[:limit]
            hits.append([(ctx.data.item_ids[j], float(sims[j])) for j in top])
        for item_id, score in merge_slot_hits(hits, weights, exclude, max(CUTOFFS)):
            out[self.index[item_id]] = score
        return out


def seed_params(settings: Settings) -> InterestParams:
    """The seed's single-vector dynamic attention: one slot, no decay, equal event weights."""
    return InterestParams(
        temperature=settings.temperature,
        decay_per_hour=0.0,
        max_slots=1,
        slot_threshold=settings.slot_threshold,
        type_weights={t: 1.0 for t in POSITIVE_TYPES},
        dislike_weight=1.0,
        recent_items=settings.recent_items,
    )
