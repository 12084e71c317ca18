"""The replay: one global time-ordered pass over interactions, folding each applied event into every model and
answering each query right before its position; the product default model; item embeddings (cached)."""

from __future__ import annotations

import hashlib
import logging
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stream_app.core import collab
from stream_app.core.collab import CollabParams, CollabState
from stream_app.core.interest import (
    DISLIKE, InterestParams, UserState, apply_event, consumed_items, exclusions, interest_vectors, new_state,
)
from stream_app.offline.datasets import Interactions
from stream_app.offline.protocol import CUTOFFS, METRICS, Query, Result, rank_metrics
from stream_app.core.ranking import Ranked, RankParams, VectorTable, candidate_pool, merge_slot_hits, rank
from stream_app.settings import Settings

log = logging.getLogger(__name__)

DEFAULT_NAME = "blend"


@dataclass
class Replay:
    """What the replay knows so far: embeddings, event types and each user's applied items in order."""

    data: Interactions
    emb: np.ndarray
    types: list[str]
    history: list[list[int]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.history = [[] for _ in range(self.data.n_users)]


class Model(ABC):
    """A recommender in the replay: observe() each applied event, scores() over all items for a query."""

    name = "model"

    @abstractmethod
    def observe(self, ctx: Replay, pos: int) -> None:
        """Take the replayed event at position pos into account."""

    @abstractmethod
    def scores(self, ctx: Replay, user: int, now: float) -> np.ndarray:
        """A score for every item for this user now (higher is better; -inf = not ranked)."""


class InterestReplay(Model):
    """Keeps each user's stream_app.core.interest state, folding events with apply_event exactly as the stream does."""

    def __init__(self, n_users: int, dim: int, params: InterestParams) -> None:
        self.params = params
        self.states: list[UserState] = [new_state(dim) for _ in range(n_users)]

    def observe(self, ctx: Replay, pos: int) -> None:
        u, i = int(ctx.data.users[pos]), int(ctx.data.items[pos])
        self.states[u] = apply_event(
            self.states[u], ctx.emb[i], ctx.types[pos], float(ctx.data.timestamps[pos]), ctx.data.item_ids[i], self.params
        )


class Default(InterestReplay):
    """The product default: exactly the stream's ranking (stream_app.core.ranking.candidate_pool + rank) over the
    user's interest state, exclusion set and the collab counters; exact numpy search stands in for the store."""

    name = DEFAULT_NAME

    def __init__(self, data: Interactions, emb: np.ndarray, params: InterestParams, cparams: CollabParams,
                 rparams: RankParams) -> None:
        super().__init__(data.n_users, emb.shape[1], params)
        self.cparams, self.rparams = cparams, rparams
        self.collab = CollabState()
        self.index = {iid: i for i, iid in enumerate(data.item_ids)}
        self.vectors = VectorTable(data.item_ids, emb)

    def observe(self, ctx: Replay, pos: int) -> None:
        u, i = int(ctx.data.users[pos]), int(ctx.data.items[pos])
        if ctx.types[pos] != DISLIKE:  # as Pipeline.update_state
            collab.observe(self.collab, ctx.data.item_ids[i], consumed_items(self.states[u]),
                           float(ctx.data.timestamps[pos]), self.cparams)
        super().observe(ctx, pos)

    def ranked(self, ctx: Replay, user: int, now: float, k: int) -> list[Ranked]:
        """The user's top k now, as Pipeline.recommend computes it."""
        pool, vecs, weights, cooc, seq = self.inputs(ctx, user, now)
        known = collab.support(self.collab, pool, self.cparams)
        return rank(pool, self.vectors, vecs, weights, cooc, seq, self.collab.pop, known, self.rparams, k)

    def inputs(self, ctx: Replay, user: int, now: float):
        """The ranking function's inputs for this user now: pool, slot vectors and weights, cooc and seq scores."""
        state = self.states[user]
        vecs, weights = interest_vectors(state, now, self.params)
        excluded = exclusions(state)
        recent = consumed_items(state)
        rp = self.rparams
        limit = min(rp.text_pool + len(excluded), ctx.emb.shape[0])
        hits = []
        for sims in (ctx.emb @ vecs.T).T if len(weights) else ():
            top = np.argpartition(-sims, limit - 1)[:limit]
            hits.append([(ctx.data.item_ids[j], float(sims[j])) for j in top])
        text_hits = dict(merge_slot_hits(hits, weights, excluded, rp.text_pool))
        popular = collab.top_popular(self.collab, rp.pool + len(excluded))
        cooc = collab.cooc_scores(self.collab, recent, self.cparams)
        seq = collab.seq_scores(self.collab, recent, self.cparams)
        pool = candidate_pool(text_hits, cooc, seq, popular, excluded, rp)
        return pool, vecs, weights, cooc, seq

    def scores(self, ctx: Replay, user: int, now: float) -> np.ndarray:
        """The ranked list as scores: position p of the list scores K - p, everything else -inf (a miss)."""
        out = np.full(ctx.emb.shape[0], -np.inf)
        top = max(CUTOFFS)
        for p, r in enumerate(self.ranked(ctx, user, now, top)):
            out[self.index[r.item_id]] = float(top - p)
        return out


def replay(
    ctx: Replay,
    models: Sequence[Model],
    queries: Sequence[Query],
    applied: np.ndarray,
    on_query: Callable[[Query], None] | None = None,
    desc: str = "replay",
    progress: bool = True,
) -> Result:
    """One global time-ordered pass: answer each query before its position, fold each applied event into all models."""
    data = ctx.data
    n = len(data.items)
    metrics = {m.name: {k: [] for k in METRICS} for m in models}
    seconds = {m.name: 0.0 for m in models}
    q = 0

    def answer(query: Query) -> None:
        excluded = np.zeros((1, data.n_items), bool)
        excluded[0, ctx.history[query.user]] = True
        for m in models:
            t0 = time.perf_counter()
            s = m.scores(ctx, query.user, query.now)
            seconds[m.name] += time.perf_counter() - t0
            row = rank_metrics(s[None, :], np.array([query.item]), excluded)
            for k in METRICS:
                metrics[m.name][k].append(float(row[k][0]))
        if on_query is not None:
            on_query(query)

    # disable=None: no bar when stderr is not a terminal (no thousands of \r updates in log files)
    with tqdm(total=n, desc=desc, unit="ev", unit_scale=True, disable=None if progress else True, leave=False,
              file=sys.stderr) as bar:
        for pos in range(n):
            while q < len(queries) and queries[q].pos == pos:
                answer(queries[q])
                q += 1
            if applied[pos]:
                for m in models:
                    t0 = time.perf_counter()
                    m.observe(ctx, pos)
                    seconds[m.name] += time.perf_counter() - t0
                ctx.history[int(data.users[pos])].append(int(data.items[pos]))
            if pos % 2048 == 2047:
                bar.update(2048)
        bar.update(n - bar.n)
    for query in queries[q:]:
        answer(query)
    return Result(metrics, seconds)


def model_fingerprint(model_dir: Path, int8: bool) -> str:
    """sha256 over the model folder's manifest (which lists its files' sha256) and the graph choice."""
    h = hashlib.sha256((model_dir / "manifest.json").read_bytes())
    h.update(b"int8" if int8 else b"fp32")
    return h.hexdigest()


def item_embeddings(data: Interactions, settings: Settings) -> np.ndarray:
    """(n_items, dim) float32 unit vectors of the item texts, cached under data_dir/eval-cache by dataset+model."""
    from stream_app.adapters.encoder import load_encoder  # noqa: PLC0415 - onnxruntime only when embeddings are needed

    encoder = load_encoder(settings)
    model_dir = settings.resolved_model_dir()
    key = hashlib.sha256()
    key.update(model_fingerprint(model_dir, encoder.int8).encode())
    key.update("\n".join(data.item_texts).encode("utf-8"))
    path = Path(settings.data_dir) / "eval-cache" / f"{data.name}-{encoder.manifest.name}-{key.hexdigest()[:16]}.npy"
    if path.exists():
        return np.load(path)
    t0 = time.perf_counter()
    emb = encoder.encode(list(data.item_texts), kind="passage").astype(np.float32)
    log.info("encoded %d item texts with %s in %.1fs", len(emb), encoder.manifest.name, time.perf_counter() - t0)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".part.npy")
    np.save(tmp, emb)
    tmp.replace(path)
    return emb
