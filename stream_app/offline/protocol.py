"""Evaluation protocol: leave-one-out split, queries per mode, cold-item targets (and every cold-item event), full-ranking
metrics, paired ratio intervals."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from stream_app.offline.datasets import Interactions

CUTOFFS = (10, 50)
METRICS = ("hr@10", "ndcg@10", "hr@50")
RATING_TYPES = {1: "view", 2: "view", 3: "click", 4: "cart", 5: "purchase"}
COLD_THRESHOLD = 5  # a cold-item target: its item had fewer than this many earlier interactions in the replay
BOOTSTRAP_ROUNDS = 2000


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


def ratio_interval(
    a: np.ndarray, b: np.ndarray, level: float = 0.95, rounds: int = BOOTSTRAP_ROUNDS, seed: int = 0,
) -> tuple[float, float, float]:
    """R = Σ a_i / Σ b_i over the same targets, and its paired percentile-bootstrap interval at `level`.

    a, b: one per-target metric (e.g. HR@10) of two models on the same n targets, 1-d. Each of `rounds` draws takes
    n targets with replacement, the same ones for both models, and computes R* = Σ a_i* / Σ b_i*. A draw with
    Σ b* = 0 < Σ a* has R* = inf; one where both are 0 says nothing and is dropped. Of the m draws kept, sorted,
    the interval is the ⌈m·p⌉-th for p = (1 − level)/2 and (1 + level)/2 (the inverted-CDF quantile: values that
    occur, no interpolation). Returns (R, low, high), with
    - (nan, nan, nan) for no targets, or when neither model scores anything;
    - (inf, nan, nan) when b scores nothing and a does: unbounded, and no draw can say by how much;
    - high = inf when some draws miss every target b scores (few of them).
    With a single target scored by both, every kept draw gives the same R: too few targets, not certainty.
    Seeded: the same inputs give the same interval (with the same NumPy: its generators' streams may change
    between versions). Memory is bounded: the draws are made in chunks of about a million indices.
    """
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.ndim != 1 or a.shape != b.shape:
        raise ValueError(f"paired metrics need the same targets as 1-d arrays, got {a.shape} and {b.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    total_a, total_b = float(a.sum()), float(b.sum())
    if a.size == 0 or total_b <= 0:
        return (math.inf if total_a > 0 else math.nan), math.nan, math.nan
    rng = np.random.default_rng(seed)
    chunk = max(1, (1 << 20) // a.size)
    sums_a, sums_b = [], []
    for start in range(0, rounds, chunk):
        draws = rng.integers(0, a.size, size=(min(chunk, rounds - start), a.size))
        sums_a.append(a[draws].sum(axis=1))
        sums_b.append(b[draws].sum(axis=1))
    num, den = np.concatenate(sums_a), np.concatenate(sums_b)
    keep = (den > 0) | (num > 0)
    samples = np.sort(np.where(den[keep] > 0, num[keep] / np.where(den[keep] > 0, den[keep], 1.0), np.inf))
    m = samples.size  # >= 1 unless every draw missed every scored target (then the interval is unknown)
    if m == 0:
        return total_a / total_b, math.nan, math.nan

    def order_statistic(p: float) -> float:
        k = math.ceil(round(m * p, 9))  # round: (1 - 0.95) / 2 * 2000 is 50.00000000000004 in floating point
        return float(samples[min(max(k, 1), m) - 1])

    return total_a / total_b, order_statistic((1.0 - level) / 2), order_statistic((1.0 + level) / 2)


@dataclass
class Result:
    """Per-query metric arrays and seconds spent, per model."""

    metrics: dict[str, dict[str, list[float]]]
    seconds: dict[str, float]

    def summary(self, mask: np.ndarray | None = None) -> dict[str, dict[str, float]]:
        """Mean metrics (over the queries where mask is true, default all) and seconds of the whole run per model."""
        def mean(values: list[float]) -> float:
            arr = np.asarray(values, np.float64) if mask is None else np.asarray(values, np.float64)[mask]
            return float(arr.mean()) if arr.size else 0.0

        return {
            name: {**{m: mean(v[m]) for m in METRICS}, "seconds": round(self.seconds[name], 3)}
            for name, v in self.metrics.items()
        }

    def versus(
        self, reference: str, metric: str = "hr@10", mask: np.ndarray | None = None,
    ) -> dict[str, tuple[float, float, float]]:
        """Per other model: `reference`'s metric over that model's on the same targets (mask: which), as
        ratio_interval's (R, low, high) of a 95% paired bootstrap."""
        def values(name: str) -> np.ndarray:
            arr = np.asarray(self.metrics[name][metric], np.float64)
            return arr if mask is None else arr[mask]

        return {name: ratio_interval(values(reference), values(name)) for name in self.metrics if name != reference}


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




def cold_event_queries(data: Interactions, threshold: int = COLD_THRESHOLD, min_history: int = 2) -> list[Query]:
    """Every cold-item event of the stream as a target (prequential): a query right before each event whose item
    had fewer than `threshold` earlier events and whose user had at least `min_history` (the test targets have at
    least 2), in global order, with every event replayed (as in streaming mode, where other users' held-out events
    count before later queries too); the leave-one-out validation and test targets are left out as targets, so
    these are disjoint from the targets `stream-app eval` reports. The cold-item boosts are chosen on them
    (tuning's cold stage)."""
    targets = leave_one_out(data)
    held_out = set(targets.valid_pos.tolist()) | set(targets.test_pos.tolist())
    item_seen = np.zeros(data.n_items, np.int64)
    user_seen = np.zeros(data.n_users, np.int64)
    queries = []
    for pos, (user, item) in enumerate(zip(data.users.tolist(), data.items.tolist())):
        if item_seen[item] < threshold and user_seen[user] >= min_history and pos not in held_out:
            queries.append(Query(pos, user, item, float(data.timestamps[pos])))
        item_seen[item] += 1
        user_seen[user] += 1
    return queries


def cold_mask(data: Interactions, queries: list[Query], applied: np.ndarray, threshold: int = COLD_THRESHOLD) -> np.ndarray:
    """Per query: its target item had fewer than `threshold` interactions applied to the replay before the query
    (standard mode: all replayed training events; streaming: the events earlier in global order)."""
    positions = np.flatnonzero(applied)
    items = data.items[positions]
    order = np.argsort(items, kind="stable")
    items, positions = items[order], positions[order]  # grouped by item, positions ascending within each item
    starts = np.searchsorted(items, np.arange(data.n_items + 1))
    out = np.zeros(len(queries), bool)
    for n, q in enumerate(queries):
        mine = positions[starts[q.item] : starts[q.item + 1]]
        out[n] = int(np.searchsorted(mine, q.pos)) < threshold
    return out
