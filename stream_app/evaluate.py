"""Offline replay evaluation: interaction data replayed in-process (no Kafka) through the stream's own code.

Protocol
- Data: RecBole atomic files, `<name>.inter` (user_id:token, item_id:token, timestamp:float, rating optional) and
  `<name>.item` (its token/token_seq columns are the item text; ML-100K: "title (year). genres"). `ml-100k` is read
  from the recbole 1.2.1 wheel's example data (downloaded once with pip; recbole itself is never imported).
- Implicit feedback: every interaction counts as a positive event. When a rating column exists it only picks the
  event type whose weight the interest model applies (1-2 view, 3 click, 4 cart, 5 purchase).
- Order: each user's interactions sorted by timestamp, ties kept in file order (stable sort).
- Leave-one-out: a user's last interaction is the test target, the second-to-last the validation target; users
  with fewer than 3 interactions are not evaluated (they still feed the collaborative statistics).
- Full ranking: every item of the catalogue is scored; the items the user consumed before the target are
  excluded (a target the user already consumed is a miss, as the stream never re-recommends consumed items).
  Metrics HR@10, NDCG@10, HR@50 (one relevant item), averaged over users; ties in score are resolved as the
  expectation over a uniformly random order of the tied items.
- Modes. `standard`: every interaction except the held-out targets is replayed first, then each user gets one
  list (comparable to published leave-one-out numbers). `streaming`: one strict global time-ordered pass; each
  user's list is the one the stream would push right before the target event, built only from events earlier in
  the global order (interest state, co-occurrence and popularity alike): no future data anywhere.
- Models, all in the same replay: most-popular (counts so far), item-knn (co-occurrence of every pair of a
  user's items, cosine-normalised, learned from the replayed stream), text-mean (mean embedding of the last 10
  items), seed-attention (stream_app.core.interest with one slot, no decay, equal event weights, ranked through
  stream_app.core.ranking.merge_slot_hits) and the product default `blend` (stream_app.core.interest with the settings'
  parameters, re-ranked with stream_app.core.collab's co-occurrence and popularity counters and blend).
- Candidate search is exact numpy scoring over all item embeddings, standing in for Qdrant.
- Tuning (`--tune`) searches the default's parameters on validation targets only; the reported run uses the
  values in Settings.
"""

from __future__ import annotations

import argparse
from abc import ABC, abstractmethod
import hashlib
import itertools
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from tqdm import tqdm

from stream_app.core import collab
from stream_app.core.collab import CollabParams, CollabState
from stream_app.datasets import Interactions, load_dataset
from stream_app.core.interest import POSITIVE_TYPES, InterestParams, UserState, apply_event, consumed_items, interest_vectors, new_state
from stream_app.core.ranking import merge_slot_hits
from stream_app.settings import Settings

log = logging.getLogger(__name__)

CUTOFFS = (10, 50)
METRICS = ("hr@10", "ndcg@10", "hr@50")
RATING_TYPES = {1: "view", 2: "view", 3: "click", 4: "cart", 5: "purchase"}
DEFAULT_NAME = "blend"
TEXT_MEAN_ITEMS = 10
ITEMKNN_MAX_ITEMS = 30_000  # dense co-occurrence matrix: 30k^2 float32 = 3.6 GB is the most we allow
SASREC_ML100K = {"hr@10": 0.193, "ndcg@10": 0.095}  # offline-trained reference, standard leave-one-out


# --------------------------------------------------------------------------------------------------------------
# Split and metrics


@dataclass(frozen=True)
class Targets:
    """Leave-one-out targets: evaluated users and the global positions of their validation and test events."""

    users: np.ndarray
    valid_pos: np.ndarray
    test_pos: np.ndarray


def leave_one_out(data: Interactions) -> Targets:
    """Last interaction of each user (>= 3 interactions) is the test target, the one before it validation."""
    users, valid, test = [], [], []
    for u, pos in enumerate(data.user_positions()):
        if len(pos) >= 3:
            users.append(u)
            valid.append(int(pos[-2]))
            test.append(int(pos[-1]))
    return Targets(np.array(users, np.int64), np.array(valid, np.int64), np.array(test, np.int64))


def event_types(data: Interactions) -> list[str]:
    """Interest-model event type of each interaction: "view", or by rating when the data has ratings."""
    if data.ratings is None:
        return ["view"] * len(data.items)
    out = []
    for r in data.ratings.tolist():
        out.append("view" if math.isnan(r) else RATING_TYPES[min(5, max(1, int(round(r))))])
    return out


_DISCOUNT = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(max(CUTOFFS)) + 2.0))])


def rank_metrics(scores: np.ndarray, targets: np.ndarray, excluded: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query HR@k/NDCG@k of one target among all items, ties as a random order's expectation.

    scores (q, n) float, targets (q,) item index, excluded (q, n) bool (the target is a miss if excluded).
    """
    scores = np.where(excluded, -np.inf, np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf, posinf=np.inf, neginf=-np.inf))
    rows = np.arange(scores.shape[0])
    t = scores[rows, targets]
    greater = (scores > t[:, None]).sum(axis=1)
    ties = (scores == t[:, None]).sum(axis=1) - 1
    valid = np.isfinite(t)
    out: dict[str, np.ndarray] = {}
    for k in CUTOFFS:
        hit = np.clip(k - greater, 0, ties + 1) / (ties + 1)
        last = np.minimum(greater + ties, k - 1)
        ndcg = np.where(greater < k, (_DISCOUNT[np.maximum(last + 1, 0)] - _DISCOUNT[np.minimum(greater, k)]) / (ties + 1), 0.0)
        out[f"hr@{k}"] = np.where(valid, hit, 0.0)
        out[f"ndcg@{k}"] = np.where(valid, ndcg, 0.0)
    return out


# --------------------------------------------------------------------------------------------------------------
# Replay


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
    """Co-occurrence of every pair of a user's items (whole history), cosine-normalised; score = sum over history."""

    name = "item-knn"

    def __init__(self, n_items: int) -> None:
        self.co = np.zeros((n_items, n_items), np.float32)
        self.counts = np.zeros(n_items, np.float64)

    def observe(self, ctx: Replay, pos: int) -> None:
        u, i = ctx.data.users[pos], ctx.data.items[pos]
        hist = ctx.history[u]
        if hist:
            h = np.fromiter(hist, np.int64, len(hist))
            self.co[i, h] += 1.0
            self.co[h, i] += 1.0
            self.co[i, i] = 0.0
        self.counts[i] += 1.0

    def scores(self, ctx: Replay, user: int, now: float) -> np.ndarray:
        hist = ctx.history[user]
        if not hist:
            return np.zeros(self.co.shape[0])
        h = np.asarray(hist, np.int64)
        norm = np.sqrt(np.maximum(self.counts, 1.0))
        return ((1.0 / norm[h]) @ self.co[h]) / norm


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


class Blend(InterestReplay):
    """The product default: interest slots' text affinity re-ranked with collab co-occurrence and popularity."""

    name = DEFAULT_NAME

    def __init__(self, n_users: int, dim: int, params: InterestParams, cparams: CollabParams, index: dict[str, int]):
        super().__init__(n_users, dim, params)
        self.cparams = cparams
        self.collab = CollabState()
        self.index = index

    def observe(self, ctx: Replay, pos: int) -> None:
        u, i = int(ctx.data.users[pos]), int(ctx.data.items[pos])
        previous = consumed_items(self.states[u])
        collab.observe(self.collab, ctx.data.item_ids[i], previous, float(ctx.data.timestamps[pos]), self.cparams)
        super().observe(ctx, pos)

    def components(self, ctx: Replay, user: int, now: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Text affinity, co-occurrence and popularity of every item for this user now."""
        vecs, weights = interest_vectors(self.states[user], now, self.params)
        text = collab.text_affinity(ctx.emb, vecs, weights)
        co = collab.cooc_scores(self.collab, consumed_items(self.states[user]), self.cparams)
        cooc = np.zeros(ctx.emb.shape[0])
        if co:
            cooc[[self.index[k] for k in co]] = list(co.values())
        pop = collab.popularity(self.collab, ctx.data.item_ids)
        return text, cooc, pop

    def scores(self, ctx: Replay, user: int, now: float) -> np.ndarray:
        return collab.blend(*self.components(ctx, user, now), self.cparams)


@dataclass
class Result:
    """Per-query metric arrays and seconds spent, per model."""

    metrics: dict[str, dict[str, list[float]]]
    seconds: dict[str, float]

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean metrics and seconds per model."""
        return {
            name: {**{m: float(np.mean(v[m])) if v[m] else 0.0 for m in METRICS}, "seconds": round(self.seconds[name], 3)}
            for name, v in self.metrics.items()
        }


@dataclass(frozen=True)
class Query:
    """Rank for `user` right before global position `pos` (len(data) = after everything), target `item`."""

    pos: int
    user: int
    item: int
    now: float


def queries_for(data: Interactions, targets: Targets, split: str, mode: str) -> tuple[list[Query], np.ndarray]:
    """The queries of a split ("valid"/"test") in a mode, and which events the replay applies."""
    pos = targets.valid_pos if split == "valid" else targets.test_pos
    applied = np.ones(len(data.items), bool)
    if mode == "standard":
        applied[targets.test_pos] = False
        if split == "valid":
            applied[targets.valid_pos] = False
        at = np.full(len(pos), len(data.items))
    elif mode == "streaming":
        at = pos
    else:
        raise ValueError(f"mode must be standard or streaming, not {mode!r}")
    qs = [Query(int(a), int(u), int(data.items[p]), float(data.timestamps[p])) for a, u, p in zip(at, targets.users, pos)]
    qs.sort(key=lambda q: q.pos)
    return qs, applied


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


# --------------------------------------------------------------------------------------------------------------
# Models, embeddings, runs


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


def build_models(data: Interactions, dim: int, settings: Settings) -> list[Model]:
    """Baselines and the product default, fresh for one replay."""
    index = {iid: i for i, iid in enumerate(data.item_ids)}
    models: list[Model] = [MostPopular(data.n_items)]
    if data.n_items <= ITEMKNN_MAX_ITEMS:
        models.append(ItemKNN(data.n_items))
    else:
        log.warning("item-knn skipped: %d items is too many for its dense matrix", data.n_items)
    models += [
        TextMean(),
        SeedAttention(data.n_users, dim, seed_params(settings), index),
        Blend(data.n_users, dim, InterestParams.from_settings(settings), CollabParams.from_settings(settings), index),
    ]
    return models


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


def evaluate(
    data: Interactions, emb: np.ndarray, settings: Settings, mode: str, progress: bool = True
) -> dict[str, dict[str, float]]:
    """Test-target metrics of every model in one replay of a mode."""
    targets = leave_one_out(data)
    queries, applied = queries_for(data, targets, "test", mode)
    ctx = Replay(data, emb, event_types(data))
    models = build_models(data, emb.shape[1], settings)
    return replay(ctx, models, queries, applied, desc=mode, progress=progress).summary()


def markdown_table(dataset: str, mode: str, summary: dict[str, dict[str, float]]) -> str:
    """Results of one mode as a markdown table, best HR@10 bold-free and plain."""
    lines = [
        f"**{dataset}, {mode}** (leave-one-out test targets, full ranking)",
        "",
        "| model | HR@10 | NDCG@10 | HR@50 | seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, m in summary.items():
        label = f"{name} (default)" if name == DEFAULT_NAME else name
        lines.append(f"| {label} | {m['hr@10']:.4f} | {m['ndcg@10']:.4f} | {m['hr@50']:.4f} | {m['seconds']:.1f} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Tuning on validation targets


class Recorder(Blend):
    """The default model, recording per-query components (text, co-occurrence, popularity) for a blend grid."""

    name = "recorder"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def scores(self, ctx: Replay, user: int, now: float) -> np.ndarray:
        parts = self.components(ctx, user, now)
        self.rows.append(parts)
        return collab.blend(*parts, self.cparams)


@dataclass
class Recorded:
    """Components of every validation query of one mode, ready for vectorised blending."""

    text: np.ndarray
    cooc: np.ndarray
    pop: np.ndarray
    targets: np.ndarray
    excluded: np.ndarray


class TextRecorder(InterestReplay):
    """The default's interest model alone, recording its text affinity per query (no collab counters)."""

    name = "text-recorder"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rows: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def scores(self, ctx: Replay, user: int, now: float) -> np.ndarray:
        vecs, weights = interest_vectors(self.states[user], now, self.params)
        text = collab.text_affinity(ctx.emb, vecs, weights)
        zeros = np.zeros_like(text)
        self.rows.append((text, zeros, zeros))
        return text


def record(
    data: Interactions, emb: np.ndarray, mode: str, params: InterestParams, cparams: CollabParams | None
) -> Recorded:
    """Replay the validation split of a mode with the default model (text part alone when cparams is None)."""
    targets = leave_one_out(data)
    queries, applied = queries_for(data, targets, "valid", mode)
    ctx = Replay(data, emb, event_types(data))
    index = {iid: i for i, iid in enumerate(data.item_ids)}
    if cparams is None:
        rec: Recorder | TextRecorder = TextRecorder(data.n_users, emb.shape[1], params)
    else:
        rec = Recorder(data.n_users, emb.shape[1], params, cparams, index)
    excluded = np.zeros((len(queries), data.n_items), bool)
    order = iter(range(len(queries)))

    def mark(query: Query) -> None:
        excluded[next(order), ctx.history[query.user]] = True

    replay(ctx, [rec], queries, applied, on_query=mark, desc=f"tune {mode}", progress=False)
    text, cooc, pop = (np.stack(x) for x in zip(*rec.rows))
    return Recorded(text, cooc, pop, np.array([q.item for q in queries]), excluded)


def blend_metrics(rec: Recorded, cparams: CollabParams) -> dict[str, float]:
    """Mean validation metrics of the blend with cparams' weights on recorded components."""
    def scaled(x: np.ndarray) -> np.ndarray:
        top = x.max(axis=1, keepdims=True)
        return np.divide(x, top, out=np.zeros_like(x), where=top > 0)

    score = cparams.cooc_weight * scaled(rec.cooc) + cparams.pop_weight * scaled(rec.pop)
    if cparams.text_weight:
        score = score + cparams.text_weight * np.exp((rec.text - rec.text.max(axis=1, keepdims=True)) / cparams.text_temperature)
    m = rank_metrics(score, rec.targets, rec.excluded)
    return {k: float(v.mean()) for k, v in m.items() if k in METRICS}


def tune(data: Interactions, emb: np.ndarray, settings: Settings, out=sys.stdout) -> tuple[InterestParams, CollabParams]:
    """Coordinate search on validation targets only; prints every grid and the chosen values.

    The interest model is tuned on its own text ranking (standard mode only: a user's own events before a target
    are the same in both modes, so its validation lists are identical); the collab counters and the blend on the
    blend's mean validation NDCG@10 over both modes.
    """
    ip = InterestParams.from_settings(settings)
    cp = CollabParams.from_settings(settings)
    text_only = replace(cp, text_weight=1.0, cooc_weight=0.0, pop_weight=0.0)

    def table(title: str, header: str) -> None:
        print(f"\n### {title}\n\n| setting | {header} |\n|---|---|---|---|---|", file=out)

    def both(ip_: InterestParams, cp_: CollabParams) -> dict[str, dict[str, float]]:
        return {mode: blend_metrics(record(data, emb, mode, ip_, cp_), cp_) for mode in ("standard", "streaming")}

    def interest_stage(title: str, candidates: list[InterestParams], label: Callable[[InterestParams], str]) -> None:
        nonlocal ip
        table(title + " (text ranking alone, validation)", "NDCG@10 | HR@10 | HR@50 | -")
        best = None
        for ip_ in candidates:
            m = blend_metrics(record(data, emb, "standard", ip_, None), text_only)
            print(f"| {label(ip_)} | {m['ndcg@10']:.4f} | {m['hr@10']:.4f} | {m['hr@50']:.4f} | |", file=out, flush=True)
            if best is None or m["ndcg@10"] > best[0]:
                best = (m["ndcg@10"], ip_)
        assert best is not None
        ip = best[1]
        print(f"\nchosen: {label(ip)}", file=out, flush=True)

    def collab_stage(title: str, candidates: list[CollabParams], label: Callable[[CollabParams], str]) -> None:
        nonlocal cp
        table(title + " (blend, validation)", "std NDCG@10 | std HR@10 | stream NDCG@10 | stream HR@10")
        best = None
        for cp_ in candidates:
            per = both(ip, cp_)
            score = float(np.mean([v["ndcg@10"] for v in per.values()]))
            print(f"| {label(cp_)} | {per['standard']['ndcg@10']:.4f} | {per['standard']['hr@10']:.4f} | "
                  f"{per['streaming']['ndcg@10']:.4f} | {per['streaming']['hr@10']:.4f} |", file=out, flush=True)
            if best is None or score > best[0]:
                best = (score, cp_)
        assert best is not None
        cp = best[1]
        print(f"\nchosen: {label(cp)}", file=out, flush=True)

    def blend_stage(title: str, grid: dict[str, list[float]]) -> None:
        nonlocal cp
        recs = {mode: record(data, emb, mode, ip, cp) for mode in ("standard", "streaming")}
        rows = []
        for values in itertools.product(*grid.values()):
            cp_ = replace(cp, **dict(zip(grid, values)))
            per = {mode: blend_metrics(r, cp_) for mode, r in recs.items()}
            rows.append((float(np.mean([v["ndcg@10"] for v in per.values()])), values, per, cp_))
        rows.sort(key=lambda r: -r[0])
        print(f"\n### {title} ({len(rows)} settings, top 8, validation)\n\n"
              f"| {' | '.join(grid)} | std NDCG@10 | std HR@10 | stream NDCG@10 | stream HR@10 |\n|{'---|' * (len(grid) + 4)}", file=out)
        for _, values, per, _ in rows[:8]:
            print(f"| {' | '.join(str(v) for v in values)} | {per['standard']['ndcg@10']:.4f} | {per['standard']['hr@10']:.4f} | "
                  f"{per['streaming']['ndcg@10']:.4f} | {per['streaming']['hr@10']:.4f} |", file=out)
        cp = rows[0][3]
        print(f"\nchosen: {dict(zip(grid, (getattr(cp, g) for g in grid)))}", file=out, flush=True)

    interest_stage("interest model", [replace(ip, temperature=t, decay_per_hour=d, max_slots=k, slot_threshold=th)
                                      for t, d, k, th in TUNE_GRID["interest"]],
                   lambda i: f"temperature={i.temperature} decay_per_hour={i.decay_per_hour} max_slots={i.max_slots} "
                             f"slot_threshold={i.slot_threshold}")
    interest_stage("event weights (rating 1-2 view, 3 click, 4 cart, 5 purchase)",
                   [replace(ip, type_weights=w) for w in TUNE_GRID["weights"]],
                   lambda i: ",".join(f"{k}:{v:g}" for k, v in i.type_weights.items() if k in ("view", "click", "cart", "purchase")))
    collab_stage("co-occurrence window / query items / recency",
                 [replace(cp, window=w, query_items=q, recency=r) for w, q, r in TUNE_GRID["cooc"]],
                 lambda c: f"window={c.window} query_items={c.query_items} recency={c.recency}")
    collab_stage("neighbour popularity exponent", [replace(cp, neighbour_pop_exponent=b) for b in TUNE_GRID["beta"]],
                 lambda c: f"neighbour_pop_exponent={c.neighbour_pop_exponent}")
    collab_stage("decay half-lives (hours; 0 = none)",
                 [replace(cp, cooc_half_life_hours=a, pop_half_life_hours=b) for a, b in TUNE_GRID["half_life"]],
                 lambda c: f"cooc={c.cooc_half_life_hours} pop={c.pop_half_life_hours}")
    blend_stage("blend weights", TUNE_GRID["blend"])
    return ip, cp


# text_weight stays > 0 by design: without it a catalogue or user with no co-occurrence yet would get no ranking.
TUNE_GRID: dict[str, list] = {
    "interest": [(t, d, k, th) for t in (0.05, 0.2, 1.0) for d in (0.0, 0.01, 0.1)
                 for k, th in ((1, 0.35), (3, 0.85), (3, 0.9))],
    "weights": [
        {t: 1.0 for t in POSITIVE_TYPES},
        {"view": 1.0, "click": 1.5, "search": 1.5, "review": 2.0, "cart": 3.0, "purchase": 5.0},
        {"view": 1.0, "click": 1.2, "search": 1.5, "review": 2.0, "cart": 1.5, "purchase": 2.0},
    ],
    "cooc": [(10, 10, 0.8), (20, 20, 0.9), (20, 10, 0.7), (50, 20, 0.9), (50, 50, 0.95)],
    "beta": [0.25, 0.5, 0.75],
    "half_life": [(0.0, 0.0), (0.0, 168.0), (720.0, 0.0), (720.0, 168.0)],
    "blend": {
        "text_weight": [0.005, 0.01, 0.02, 0.05, 0.1],
        "pop_weight": [0.0, 0.02, 0.05, 0.1],
        "text_temperature": [0.01, 0.02, 0.05],
    },
}


# --------------------------------------------------------------------------------------------------------------
# CLI


def build_parser() -> argparse.ArgumentParser:
    """Arguments of `stream-app eval`."""
    p = argparse.ArgumentParser(prog="stream-app eval", description="Offline replay evaluation (leave-one-out, full ranking).")
    p.add_argument("--dataset", default="ml-100k", help="ml-100k, or a folder holding <name>.inter and <name>.item")
    p.add_argument("--mode", choices=["standard", "streaming", "both"], default="both")
    p.add_argument("--model", help="encoder model name (default: settings.model_name)")
    p.add_argument("--json", type=Path, help="write the results as JSON here")
    p.add_argument("--tune", action="store_true", help="search the default's parameters on validation targets")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def main(argv: list[str] | None = None) -> int:
    """`stream-app eval`: replay a dataset, print markdown tables, optionally write JSON; returns the exit code."""
    args = build_parser().parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings(model_name=args.model) if args.model else Settings()
    t0 = time.perf_counter()
    data = load_dataset(args.dataset)
    emb = item_embeddings(data, settings)
    log.info("dataset %s and %d embeddings ready in %.1fs", data.name, len(emb), time.perf_counter() - t0)
    if args.tune:
        ip, cp = tune(data, emb, settings)
        print(f"\nbest interest params: {ip}\nbest collab params: {cp}")
        return 0
    modes = ["standard", "streaming"] if args.mode == "both" else [args.mode]
    runs = []
    for mode in modes:
        t1 = time.perf_counter()
        summary = evaluate(data, emb, settings, mode, progress=not args.no_progress)
        print(markdown_table(data.name, mode, summary))
        print(f"\n{mode}: {time.perf_counter() - t1:.1f}s\n")
        runs.append({"dataset": data.name, "mode": mode, "default": DEFAULT_NAME, "models": summary})
    print(f"total {time.perf_counter() - t0:.1f}s (model {settings.model_name})")
    if args.json:
        out = runs[0] if len(runs) == 1 else {"dataset": data.name, "mode": "both", "default": DEFAULT_NAME, "runs": runs}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
