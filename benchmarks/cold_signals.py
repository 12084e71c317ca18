"""Cold-item probes: candidate signals for targets whose item had < 5 earlier interactions, on validation only.

    .venv/bin/python benchmarks/cold_signals.py            # ML-100K, ~4 minutes after the embeddings are cached

Records the default model's ranking inputs on the validation targets of both modes (tuning.record), then prints,
for each probe, the validation HR@10 hits it wins or loses against the defaults (with the cold-item boosts off, as
when these probes were measured) over all targets and over the cold-item targets (the README's "Offline evaluation" quotes these tables). None of these is in the product: none
wins a cold hit without losing hits over all targets. Probes:

- new arrivals: an item's interaction count while it is younger than W days in the stream (first seen by the
  counters), added to the blend with weight w (scaled by its max over the pool) and as a candidate source;
- evidence shrinkage: counter scores divided by (max over the pool + s) instead of the max;
- cold propensity: the cold-item boosts scaled per user by the share of their last L items that were cold when
  taken;
- projected text: ridge regression from text vectors to co-occurrence eigenvectors of the training data (future
  data included: an upper bound), ranking only the cold items: top-10 counts against the counts and raw text;
- new releases: items whose release year (in the title, ML-100K's only date) is the query's year or the one
  before, ordered by the text affinity: the text part again for them, and their best 50 added to the pool;
- item2vec: skip-gram with negative sampling trained online in stream order (one SGD step per event, each of the
  user's last L items predicting the new one), the user as the recency-weighted mean of their last 10 items;
- session kNN: the users who last took the user's 20 most recent items (up to M per item, kept like a counter),
  the K with the most overlap, each scoring their last 50 items by overlap / sqrt(lengths).
The last two are added to the blend like a counter (divided by their max over the pool, their best 50 items added
to the pool), at weights 0.1-1.
- learned blend: a linear score over the pool on 15 features (blend_features: the co-occurrence, sequence and
  popularity parts, the text part at temperature T and 0.1, cold(j), its products with co-occurrence, sequence and
  the wide text part, co-occurrence x sequence, counter presence and square roots, log(1 + n(j))), fitted by
  maximising the listwise softmax likelihood of the target (Adam from the default weights), scored out of fold
  (users split in two at random) and in sample.
"""

from __future__ import annotations

import argparse
import collections
import math
import re
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone

import numpy as np

from stream_app.core.collab import CollabParams
from stream_app.core.interest import InterestParams
from stream_app.core.ranking import RankParams
from stream_app.offline.datasets import Interactions, load_dataset
from stream_app.offline.protocol import COLD_THRESHOLD, Query, leave_one_out, queries_for
from stream_app.offline.replay import item_embeddings
from stream_app.offline.tuning import MODES, Recorded, blend_scores, record, score_metrics
from stream_app.settings import Settings

DAY = 86400.0
FRESH_POOL = 200
SIGNAL_POOL = 50  # a probe signal's best items added to the candidate pool


def hits(rec: Recorded, score: np.ndarray) -> tuple[float, float]:
    """(hits, cold hits) at HR@10 of a score matrix."""
    m = score_metrics(rec, score)
    return m["hits"], m["cold hits"]


def widen_pool(rec: Recorded, values: np.ndarray, size: int) -> np.ndarray:
    """The recorded pool plus each query's `size` best non-excluded items by `values` (-inf: never a candidate),
    as candidate_pool takes each counter's best items."""
    open_values = np.where(rec.excluded, -np.inf, values)
    kth = -np.sort(-open_values, axis=1)[:, size - 1 : size]
    return rec.pool | (np.isfinite(open_values) & (open_values >= kth))


def with_new_arrivals(rec: Recorded, rp: RankParams, fresh: np.ndarray, weight: float) -> tuple[Recorded, RankParams]:
    """The blend plus `weight` x new-arrival counts scaled by their max over the pool, and their best FRESH_POOL
    non-excluded items added to the pool: the popularity part does exactly that with pop = fresh (the defaults
    keep popularity at 0, so nothing else changes)."""
    if rp.pop_weight:
        raise ValueError("the new-arrivals probe reuses the popularity part: run it with blend_pop_weight = 0")
    pool = widen_pool(rec, np.where(fresh > 0, fresh, -np.inf), FRESH_POOL)
    return replace(rec, pool=pool, pop=fresh), replace(rp, pop_weight=weight)


def with_shrinkage(rec: Recorded, rp: RankParams, shrink: float) -> np.ndarray:
    """The blend with each counter score over (its max in the pool + shrink), times (1 + shrink), instead of over
    its max: counts from a young stream weigh less against the text (main() runs the probes with the cold boosts at 0)."""
    def shrunk(x: np.ndarray) -> np.ndarray:
        return x / (np.where(rec.pool, x, 0.0).max(axis=1, keepdims=True) + shrink) * (1.0 + shrink)

    rest = blend_scores(rec, replace(rp, cooc_weight=0.0, seq_weight=0.0))  # text (and popularity) parts
    return rest + rp.cooc_weight * shrunk(rec.cooc) + rp.seq_weight * shrunk(rec.seq)


def with_propensity(rec: Recorded, share: np.ndarray, cold_support: float) -> Recorded:
    """Scale each query's cold(j) = exp(-n(j)/cold_support) by the user's share p: exp(-n'/S) = p exp(-n/S) with
    n' = n - S ln p (p = 0: n' = inf, no boost)."""
    with np.errstate(divide="ignore"):
        return replace(rec, support=rec.support - cold_support * np.log(share)[:, None])


def item_ages(data: Interactions, mode: str) -> np.ndarray:
    """(queries, items) seconds since each item was first seen by the counters, at each validation query's clock
    (the latest applied timestamp before it); inf for items not seen yet anywhere in the replay (their count is 0)."""
    queries, applied = queries_for(data, leave_one_out(data), "valid", mode)
    stamps = np.maximum.accumulate(np.where(applied, data.timestamps, -np.inf))
    clock = np.array([stamps[q.pos - 1] if q.pos > 0 else -np.inf for q in queries])
    born = np.full(data.n_items, np.inf)
    for pos in np.flatnonzero(applied)[::-1]:
        born[data.items[pos]] = stamps[pos]
    return clock[:, None] - born[None, :]


def propensity(data: Interactions, mode: str, last: int) -> np.ndarray:
    """Per validation query: the share of the user's last `last` applied items that were cold when taken."""
    queries, applied = queries_for(data, leave_one_out(data), "valid", mode)
    seen = np.zeros(data.n_items)
    flags: dict[int, list[bool]] = collections.defaultdict(list)
    out, q = [], 0
    for pos in range(len(data.items) + 1):
        while q < len(queries) and queries[q].pos == pos:
            f = flags[queries[q].user][-last:]
            out.append(float(np.mean(f)) if f else 0.0)
            q += 1
        if pos < len(data.items) and applied[pos]:
            i = data.items[pos]
            flags[int(data.users[pos])].append(bool(seen[i] < COLD_THRESHOLD))
            seen[i] += 1
    return np.array(out)


def projected_text(data: Interactions, emb: np.ndarray, factors: int, lam: float) -> np.ndarray:
    """Unit item vectors: text regressed onto the top co-occurrence eigenvectors (items with >= 20 interactions)."""
    targets = leave_one_out(data)
    train = np.ones(len(data.items), bool)
    train[targets.valid_pos] = train[targets.test_pos] = False
    taken = np.zeros((data.n_users, data.n_items))
    taken[data.users[train], data.items[train]] = 1.0
    count = taken.sum(axis=0)
    co = taken.T @ taken
    np.fill_diagonal(co, 0.0)
    norm = np.sqrt(np.maximum(count, 1.0))
    warm = count >= 20
    values, vectors = np.linalg.eigh((co / norm[:, None] / norm[None, :])[np.ix_(warm, warm)])
    top = np.argsort(-values)[:factors]
    y = vectors[:, top] * np.sqrt(np.maximum(values[top], 0.0))
    x = emb[warm].astype(np.float64)
    w = np.linalg.solve(x.T @ x + lam * np.eye(x.shape[1]), x.T @ y)
    p = emb.astype(np.float64) @ w
    return p / np.linalg.norm(p, axis=1, keepdims=True).clip(1e-12)


def with_signal(rec: Recorded, rp: RankParams, signal: np.ndarray, weight: float) -> np.ndarray:
    """The blend plus `weight` x a probe signal divided by its max over the pool, its best SIGNAL_POOL
    non-excluded items added to the pool (as candidate_pool does for the counters)."""
    pool = widen_pool(rec, np.where(signal > 0, signal, -np.inf), SIGNAL_POOL)
    open_signal = np.where(rec.excluded, 0.0, signal)
    top = np.where(pool, open_signal, 0.0).max(axis=1, keepdims=True)
    scaled = np.divide(open_signal, top, out=np.zeros_like(open_signal), where=top > 0)
    return blend_scores(replace(rec, pool=pool), rp) + weight * scaled  # -inf outside the pool


def with_new_releases(rec: Recorded, rp: RankParams, fresh: np.ndarray, weight: float) -> np.ndarray:
    """The blend plus `weight` x the text part for items released this year or last (fresh: (queries, items) bool),
    their best SIGNAL_POOL non-excluded items by text affinity added to the pool."""
    pool = widen_pool(rec, np.where(fresh, rec.text, -np.inf), SIGNAL_POOL)
    top = np.where(pool, rec.text, -np.inf).max(axis=1, keepdims=True)
    affinity = np.exp(np.minimum((rec.text - top) / rp.text_temperature, 50.0))
    return blend_scores(replace(rec, pool=pool), rp) + weight * fresh * affinity  # -inf outside the pool


def release_fresh(data: Interactions, mode: str, lag: int) -> np.ndarray:
    """(queries, items) bool: the item's release year (from "(YYYY)" in its text) >= the query's year - lag."""
    years = np.array([int(m.group(1)) if (m := re.search(r"\((\d{4})\)", t)) else 0 for t in data.item_texts])
    queries, _ = queries_for(data, leave_one_out(data), "valid", mode)
    now = np.array([datetime.fromtimestamp(q.now, timezone.utc).year for q in queries])
    return years[None, :] >= (now - lag)[:, None]


def replay_queries(data: Interactions, queries: list[Query], applied: np.ndarray,
                   observe: Callable[[int, int, int], None], answer: Callable[[Query], np.ndarray],
                   dtype: type = np.float64) -> np.ndarray:
    """(queries, items) scores of a probe replayed in global order: observe(user, item, position) for each applied
    event, answer(query) right before its position (queries sorted by position)."""
    out = np.zeros((len(queries), data.n_items), dtype)
    q = 0
    for pos in range(len(data.items) + 1):
        while q < len(queries) and queries[q].pos == pos:
            out[q] = answer(queries[q])
            q += 1
        if pos < len(data.items) and applied[pos]:
            observe(int(data.users[pos]), int(data.items[pos]), pos)
    return out


def replay_probe(data: Interactions, mode: str, observe: Callable[[int, int], None],
                 answer: Callable[[Query], np.ndarray]) -> np.ndarray:
    """(validation queries, items) scores of a probe replayed in the mode's order: observe(user, item) for each
    applied event, answer(query) right before its position."""
    queries, applied = queries_for(data, leave_one_out(data), "valid", mode)
    return replay_queries(data, queries, applied, lambda user, item, _pos: observe(user, item), answer)


def item2vec(data: Interactions, mode: str, dim: int, lr: float, window: int, negatives: int = 5,
             seed: int = 0) -> np.ndarray:
    """Online skip-gram with negative sampling: per event, each of the user's last `window` items predicts the new
    item against `negatives` items drawn uniformly from those seen so far (one SGD step); a query scores items by
    sigmoid(output vector . u), u the mean of the user's last 10 input vectors weighted 0.8 per step back."""
    rng = np.random.default_rng(seed)
    inner = (rng.random((data.n_items, dim)) - 0.5) / dim
    outer = np.zeros((data.n_items, dim))
    history: list[list[int]] = [[] for _ in range(data.n_users)]
    seen: list[int] = []
    known = np.zeros(data.n_items, bool)
    label = np.zeros(negatives + 1)
    label[0] = 1.0

    def observe(user: int, item: int) -> None:
        if not known[item]:
            known[item] = True
            seen.append(item)
        context = history[user][-window:]
        if context:
            rows = np.concatenate([[item], np.asarray(seen)[rng.integers(0, len(seen), negatives)]])
            for i in context:
                grad = lr * (label - 1.0 / (1.0 + np.exp(-(outer[rows] @ inner[i]))))
                step = grad @ outer[rows]
                outer[rows] += np.outer(grad, inner[i])
                inner[i] += step
        history[user].append(item)

    def answer(query: Query) -> np.ndarray:
        mine = history[query.user][-10:]
        if not mine:
            return np.zeros(data.n_items)
        weights = 0.8 ** np.arange(len(mine))[::-1]
        user = (inner[mine] * weights[:, None]).sum(axis=0) / weights.sum()
        return 1.0 / (1.0 + np.exp(-(outer @ user)))  # the model's probability: positive, so it scales like a count

    return replay_probe(data, mode, observe, answer)


def session_knn(data: Interactions, mode: str, takers_per_item: int, neighbours: int, recent: int = 20,
                their_last: int = 50) -> np.ndarray:
    """Session kNN: candidate neighbours are the last `takers_per_item` users of each of the user's `recent` latest
    items; the `neighbours` with the largest overlap o score their last `their_last` items by
    o / sqrt(recent' x their_last'), summed (primes: the lengths actually held)."""
    takers = [collections.deque(maxlen=takers_per_item) for _ in range(data.n_items)]
    history: list[list[int]] = [[] for _ in range(data.n_users)]

    def observe(user: int, item: int) -> None:
        takers[item].append(user)
        history[user].append(item)

    def answer(query: Query) -> np.ndarray:
        out = np.zeros(data.n_items)
        mine = history[query.user][-recent:]
        overlap = collections.Counter(v for i in mine for v in set(takers[i]) if v != query.user)
        for v, o in overlap.most_common(neighbours):
            theirs = history[v][-their_last:]
            out[theirs] += o / math.sqrt(len(mine) * len(theirs))
        return out

    return replay_probe(data, mode, observe, answer)


def blend_features(rec: Recorded, rp: RankParams) -> np.ndarray:
    """(queries, items, 15) float32 features of the learned-blend probe (see the module docstring)."""
    def scaled(x: np.ndarray) -> np.ndarray:
        top = np.where(rec.pool, x, 0.0).max(axis=1, keepdims=True)
        return np.divide(x, top, out=np.zeros_like(x), where=top > 0)

    top = np.where(rec.pool, rec.text, -np.inf).max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    text, wide_text = (np.exp(np.minimum((rec.text - top) / t, 50.0)) for t in (rp.text_temperature, 0.1))
    cooc, seq, pop = scaled(rec.cooc), scaled(rec.seq), scaled(rec.pop)
    cold = np.exp(-rec.support / rp.cold_support)
    parts = [text, wide_text, cooc, seq, pop, cold, cold * cooc, cold * seq, cold * wide_text, np.sqrt(cooc),
             np.sqrt(seq), cooc * seq, np.log1p(rec.support) / 6.0, (cooc > 0) * 1.0, (seq > 0) * 1.0]
    return np.stack(parts, axis=-1).astype(np.float32)


def fit_listwise(x: np.ndarray, pool: np.ndarray, targets: np.ndarray, rp: RankParams, steps: int = 400,
                 lr: float = 0.05, l2: float = 1e-3) -> np.ndarray:
    """Weights w maximising the mean over queries (those whose target is in the pool) of
    log softmax_{j in pool}(w . x_j)[target] - l2/2 |w|^2, by Adam from the default blend's weights (its score
    exactly while the cold-item boosts are 0, as main() sets them)."""
    q = np.flatnonzero(pool[np.arange(len(targets)), targets])
    if not len(q):
        raise ValueError("no query has its target in the pool: nothing to fit")
    xq, in_pool, rows, tq = x[q], pool[q], np.arange(len(q)), targets[q]
    w = np.zeros(x.shape[-1])
    w[[0, 2, 3, 4]] = rp.text_weight, rp.cooc_weight, rp.seq_weight, rp.pop_weight
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t in range(1, steps + 1):
        z = np.where(in_pool, xq @ w, -np.inf)
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        grad = (np.einsum("qn,qnf->f", p, xq) - xq[rows, tq].sum(axis=0)) / len(q) + l2 * w
        m, v = 0.9 * m + 0.1 * grad, 0.999 * v + 0.001 * grad * grad
        w -= lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    return w


def learned_blend(rec: Recorded, rp: RankParams, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(out-of-fold scores, in-sample scores, in-sample weights) of the learned blend: users split in two at random,
    each half scored by the weights fitted on the other; in sample, fitted and scored on all."""
    x = blend_features(rec, rp)
    fold = np.random.default_rng(seed).integers(0, 2, len(rec.targets))
    out_of_fold = np.full(rec.text.shape, -np.inf)
    for k in (0, 1):
        w = fit_listwise(x[fold != k], rec.pool[fold != k], rec.targets[fold != k], rp)
        out_of_fold[fold == k] = np.where(rec.pool[fold == k], x[fold == k] @ w, -np.inf)
    w = fit_listwise(x, rec.pool, rec.targets, rp)
    return out_of_fold, np.where(rec.pool, x @ w, -np.inf), w


def cold_top10(rec: Recorded, score: np.ndarray) -> int:
    """Cold-item targets ranked in the top 10 among the non-excluded items with < COLD_THRESHOLD interactions."""
    n = 0
    for qi in np.flatnonzero(rec.cold):
        s = np.where((rec.support[qi] < COLD_THRESHOLD) & ~rec.excluded[qi], score[qi], -np.inf)
        t = s[rec.targets[qi]]
        n += bool(np.isfinite(t) and t > 0 and (s > t).sum() + ((s == t).sum() - 1) / 2 < 10)
    return n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    args = ap.parse_args()
    settings = Settings()
    data = load_dataset(args.dataset)
    emb = item_embeddings(data, settings)
    ip, cp, rp = (InterestParams.from_settings(settings), CollabParams.from_settings(settings),
                  RankParams.from_settings(settings))
    # the probes were written and measured against the blend without the cold-item boosts (the defaults until
    # they were chosen on every cold-item event of the stream, benchmarks/cold_prequential.py): they stay so
    rp = replace(rp, cold_collab_weight=0.0, cold_text_weight=0.0)
    recs = {mode: record(data, emb, mode, ip, cp, rp) for mode in MODES}
    base = {mode: hits(r, blend_scores(r, rp)) for mode, r in recs.items()}
    print("validation targets, defaults: " + ", ".join(
        f"{m} {h:.0f} hits, {c:.0f} of {int(recs[m].cold.sum())} cold" for m, (h, c) in base.items()))

    def row(label: str, per_mode: dict[str, tuple[float, float]]) -> None:
        cells = "  ".join(f"{m} {h - base[m][0]:+3.0f} / {c - base[m][1]:+2.0f}" for m, (h, c) in per_mode.items())
        print(f"  {label:38s} {cells}")

    print("\nnew arrivals (hits / cold hits against the defaults)")
    ages = {mode: item_ages(data, mode) for mode in MODES}
    for days in (3, 7, 14, 30):
        for weight in (0.05, 0.1, 0.2, 0.5):
            per = {}
            for mode, rec in recs.items():
                age = ages[mode]
                fresh = np.where((age >= 0) & (age < days * DAY), rec.pop, 0.0)
                per[mode] = hits(rec, blend_scores(*with_new_arrivals(rec, rp, fresh, weight)))
            row(f"W={days} days, weight {weight}", per)

    print("\nevidence shrinkage (counter score / (max over the pool + s))")
    for shrink in (0.1, 0.3, 1.0, 3.0, 10.0):
        for text_weight in (0.05, 0.1, 0.2):
            rp_ = replace(rp, text_weight=text_weight)
            row(f"s={shrink}, text weight {text_weight}",
                {mode: hits(rec, with_shrinkage(rec, rp_, shrink)) for mode, rec in recs.items()})

    print("\ncold propensity (cold boosts x share of the user's last L items that were cold when taken)")
    for last in (5, 20):
        scaled = {mode: with_propensity(rec, propensity(data, mode, last), rp.cold_support)
                  for mode, rec in recs.items()}
        for collab_weight in (1.0, 2.0, 4.0, 8.0):
            for text_weight in (0.0, 0.5):
                rp_ = replace(rp, cold_collab_weight=collab_weight, cold_text_weight=text_weight)
                row(f"L={last}, collab {collab_weight}, text {text_weight}",
                    {mode: hits(rec, blend_scores(rec, rp_)) for mode, rec in scaled.items()})

    print("\nprojected text, ranking only the items with < 5 interactions (cold targets in its top 10)")
    for mode, rec in recs.items():
        print(f"  {mode}: counts (co-occurrence) {cold_top10(rec, rec.cooc)}, raw text {cold_top10(rec, rec.text + 10)}"
              f" of {int(rec.cold.sum())}")
    # per cold query: the user's last 10 items before it (the ones the replay applied, hence excluded)
    histories = [data.items[pos].tolist() for pos in data.user_positions()]
    recent = {}
    for mode, rec in recs.items():
        queries, _ = queries_for(data, leave_one_out(data), "valid", mode)
        recent[mode] = {qi: [i for i in histories[queries[qi].user] if rec.excluded[qi, i]][-10:]
                        for qi in np.flatnonzero(rec.cold)}
    for factors in (16, 32, 64):
        for lam in (0.1, 1.0, 10.0):
            proj = projected_text(data, emb, factors, lam)
            counts = {}
            for mode, rec in recs.items():
                score = np.zeros_like(rec.text)
                for qi, mine in recent[mode].items():
                    score[qi] = proj @ proj[mine].mean(axis=0) + 10.0
                counts[mode] = cold_top10(rec, score)
            print(f"  {factors} factors, ridge {lam}: " + ", ".join(f"{m} {c}" for m, c in counts.items()))

    print("\nnew releases (released this year or the year before, by the text affinity)")
    for lag in (0, 1):
        fresh = {mode: release_fresh(data, mode, lag) for mode in MODES}
        for weight in (0.05, 0.1, 0.2, 0.5):
            row(f"year - {lag} or later, weight {weight}",
                {mode: hits(rec, with_new_releases(rec, rp, fresh[mode], weight)) for mode, rec in recs.items()})

    probes = {
        "item2vec d32 lr 0.05 L5": lambda mode: item2vec(data, mode, dim=32, lr=0.05, window=5),
        "item2vec d64 lr 0.025 L5": lambda mode: item2vec(data, mode, dim=64, lr=0.025, window=5),
        "session kNN M100 K100": lambda mode: session_knn(data, mode, takers_per_item=100, neighbours=100),
        "session kNN M30 K30": lambda mode: session_knn(data, mode, takers_per_item=30, neighbours=30),
    }
    for name, probe in probes.items():
        signal = {mode: probe(mode) for mode in MODES}
        alone = {m: hits(rec, np.where(rec.excluded, -np.inf, signal[m])) for m, rec in recs.items()}
        print(f"\n{name}: alone " + ", ".join(f"{m} {h:.0f} hits, {c:.0f} cold" for m, (h, c) in alone.items())
              + "; cold targets in its top 10 of the cold items: "
              + ", ".join(f"{m} {cold_top10(rec, signal[m])}" for m, rec in recs.items()))
        for weight in (0.1, 0.3, 0.5, 1.0):
            row(f"weight {weight}", {m: hits(rec, with_signal(rec, rp, signal[m], weight)) for m, rec in recs.items()})

    print("\nlearned blend (listwise softmax on 15 features)")
    learned = {mode: learned_blend(rec, rp) for mode, rec in recs.items()}
    row("out of fold (2 folds over users)", {m: hits(recs[m], oof) for m, (oof, _, _) in learned.items()})
    row("in sample", {m: hits(recs[m], ins) for m, (_, ins, _) in learned.items()})
    for mode, (_, _, w) in learned.items():
        print(f"  {mode} in-sample weights: " + " ".join(f"{v:+.2f}" for v in w) + f" (cold(j): {w[5]:+.2f})")


if __name__ == "__main__":
    main()
