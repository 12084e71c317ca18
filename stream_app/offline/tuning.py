"""Tuning without test targets (`stream-app eval --tune`): coordinate search of the default's parameters and of the
baselines' standard knobs on validation targets (each user's second-to-last interaction); the cold-item boosts are
also scored on the stream's cold-item events (protocol.cold_event_queries, which leaves every leave-one-out target
out). It prints every grid and the chosen values; the reported runs use the values written in Settings (and
ITEMKNN_LAST)."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from stream_app.core import collab
from stream_app.core.collab import CollabParams
from stream_app.core.interest import POSITIVE_TYPES, InterestParams, default_type_weights, interest_vectors
from stream_app.offline.baselines import ItemKNN
from stream_app.offline.datasets import Interactions
from stream_app.offline.protocol import (METRICS, Query, cold_event_queries, cold_mask, event_types, leave_one_out,
                                        queries_for, rank_metrics)
from stream_app.offline.replay import Default, InterestReplay, Replay, replay
from stream_app.core.ranking import RankParams, text_affinity
from stream_app.settings import Settings

MODES = ("standard", "streaming")
BLEND_TOLERANCE = 0.01  # blend weights: keep the overall validation NDCG@10 within 1% of the best
# Counter stages: a setting within 0.2% of the best mean validation NDCG@10 is a tie (a difference of about one
# hit); ties go to the first in the grid, which lists the cheaper settings (smaller windows) first.
COLLAB_TOLERANCE = 0.002
COLD_TARGET_RATIO = 2.0  # cold-item boosts: the default's HR@10 on cold-item events at least this x item-knn's


def choose_cold(rows: list[tuple[float, float]], baseline_hr: float, ratio: float = COLD_TARGET_RATIO) -> int | None:
    """Index of the cold-item boost setting to keep: rows are (mean validation NDCG@10, HR@10 on the stream's
    cold-item events); among the rows whose cold-event HR@10 is at least `ratio` x the baseline's (item-knn on the
    same events), the best validation NDCG@10, the first on ties; None when no row reaches it (a row with no
    cold-event hit never does, even against a baseline with none). With None the current setting stays: on another
    dataset, ML-100K's defaults then remain until a setting of the grid reaches the ratio there.

    The product's requirement on little-known items (the default at least 2x item-knn on cold-item targets) is the
    constraint, and the overall accuracy pays as little for it as the grid allows."""
    ok = [k for k, (_, hr) in enumerate(rows) if hr > 0 and hr >= ratio * baseline_hr]
    return max(ok, key=lambda k: (rows[k][0], -k)) if ok else None


def first_within(scores: list[float], tolerance: float) -> int:
    """Index of the first score within `tolerance` (relative) of the best: ties go to the earlier candidate."""
    top = max(scores)
    return next(k for k, score in enumerate(scores) if score >= top * (1 - tolerance))


@dataclass
class Recorded:
    """Per validation query: every item's signals, the ranking function's candidate pool, exclusions, target."""

    text: np.ndarray
    cooc: np.ndarray
    seq: np.ndarray
    pop: np.ndarray
    support: np.ndarray
    pool: np.ndarray  # bool: the item is in the query's candidate pool
    targets: np.ndarray
    excluded: np.ndarray
    cold: np.ndarray  # bool per query: a cold-item target (protocol.cold_mask)
    slotted: np.ndarray | None = None  # bool per query: the user had an interest slot (None: every query did)


class Recorder(Default):
    """The default model, recording the ranking function's inputs per query so blend weights can be searched
    without replaying again (the pool does not depend on the weights)."""

    name = "recorder"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rows: list[tuple[np.ndarray, ...]] = []

    def scores(self, ctx: Replay, user: int, now: float) -> np.ndarray:
        pool, vecs, weights, cooc, seq = self.inputs(ctx, user, now)
        n = ctx.emb.shape[0]
        text = text_affinity(ctx.emb, vecs, weights)[0] if len(weights) else np.zeros(n)
        arrays = []
        for d in (cooc, seq):
            a = np.zeros(n)
            if d:
                a[[self.index[k] for k in d]] = list(d.values())
            arrays.append(a)
        pop = np.fromiter((self.collab.pop.get(i, 0.0) for i in ctx.data.item_ids), np.float64, n)
        known = collab.support(self.collab, ctx.data.item_ids, self.cparams)
        support = np.fromiter((known[i] for i in ctx.data.item_ids), np.float64, n)
        in_pool = np.zeros(n, bool)
        in_pool[[self.index[i] for i in pool]] = True
        self.rows.append((text, *arrays, pop, support, in_pool, len(weights) > 0))
        return np.zeros(n)


class TextRecorder(InterestReplay):
    """The default's interest model alone, recording its text affinity over all items per query."""

    name = "text-recorder"

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.rows: list[tuple[np.ndarray, ...]] = []

    def scores(self, ctx: Replay, user: int, now: float) -> np.ndarray:
        vecs, weights = interest_vectors(self.states[user], now, self.params)
        text = text_affinity(ctx.emb, vecs, weights)[0] if len(weights) else np.zeros(ctx.emb.shape[0])
        zeros = np.zeros_like(text)
        self.rows.append((text, zeros, zeros, zeros, zeros, np.ones(text.shape, bool), len(weights) > 0))
        return text


def record(data: Interactions, emb: np.ndarray, mode: str, ip: InterestParams, cp: CollabParams | None,
           rp: RankParams) -> Recorded:
    """Replay the validation split of a mode with the default model (its text part alone when cp is None)."""
    queries, applied = queries_for(data, leave_one_out(data), "valid", mode)
    return record_queries(data, emb, queries, applied, cold_mask(data, queries, applied), ip, cp, rp,
                          desc=f"tune {mode}")


def record_queries(data: Interactions, emb: np.ndarray, queries: list[Query], applied: np.ndarray, cold: np.ndarray,
                   ip: InterestParams, cp: CollabParams | None, rp: RankParams, desc: str = "record") -> Recorded:
    """Replay `applied` events, recording the default model's ranking inputs at each query (sorted by position);
    cold: which queries are cold-item targets."""
    ctx = Replay(data, emb, event_types(data))
    rec = TextRecorder(data.n_users, emb.shape[1], ip) if cp is None else Recorder(data, emb, ip, cp, rp)
    excluded = np.zeros((len(queries), data.n_items), bool)
    order = iter(range(len(queries)))

    def mark(query: Query) -> None:
        excluded[next(order), ctx.history[query.user]] = True

    replay(ctx, [rec], queries, applied, on_query=mark, desc=desc, progress=False)
    text, cooc, seq, pop, support, pool, slotted = (np.stack(x) for x in zip(*rec.rows))
    return Recorded(text, cooc, seq, pop, support, pool, np.array([q.item for q in queries]), excluded,
                    np.asarray(cold, bool), slotted)


def pool_scaled(rec: Recorded, x: np.ndarray) -> np.ndarray:
    """(queries, items) x divided by its max over each query's pool (zeros where nothing there is positive), as
    ranking.rank normalises a counter signal."""
    top = np.where(rec.pool, x, 0.0).max(axis=1, keepdims=True)
    return np.divide(x, top, out=np.zeros_like(x), where=top > 0)


def blend_scores(rec: Recorded, rp: RankParams) -> np.ndarray:
    """(queries, items) scores of ranking.rank's blend with rp's weights on recorded inputs (maxes over the pool),
    -inf outside each query's pool."""
    cold = np.exp(-rec.support / rp.cold_support)
    score = (1.0 + rp.cold_collab_weight * cold) * (rp.cooc_weight * pool_scaled(rec, rec.cooc)
                                                    + rp.seq_weight * pool_scaled(rec, rec.seq)) \
        + rp.pop_weight * pool_scaled(rec, rec.pop)
    top = np.where(rec.pool, rec.text, -np.inf).max(axis=1, keepdims=True)
    top = np.where(np.isfinite(top), top, 0.0)
    weight = rp.text_weight + rp.cold_text_weight * cold
    if rec.slotted is not None:  # as rank(): no interest slot, no text part
        weight = np.where(rec.slotted[:, None], weight, 0.0)
    score = score + weight * np.exp(np.minimum((rec.text - top) / rp.text_temperature, 50.0))
    return np.where(rec.pool, score, -np.inf)


def score_metrics(rec: Recorded, score: np.ndarray) -> dict[str, float]:
    """Mean validation metrics of a (queries, items) score matrix, plus HR@10 hits over all and cold-item targets."""
    m = rank_metrics(score, rec.targets, rec.excluded)
    out = {k: float(v.mean()) for k, v in m.items() if k in METRICS}
    out["cold hr@10"] = float(m["hr@10"][rec.cold].mean()) if rec.cold.any() else 0.0
    out["hits"] = float(m["hr@10"].sum())
    out["cold hits"] = float(m["hr@10"][rec.cold].sum())
    return out


def blend_metrics(rec: Recorded, rp: RankParams) -> dict[str, float]:
    """Mean validation metrics of ranking.rank's blend with rp's weights on recorded inputs."""
    return score_metrics(rec, blend_scores(rec, rp))


def record_cold_events(data: Interactions, emb: np.ndarray, queries: list[Query], ip: InterestParams,
                       cp: CollabParams, rp: RankParams) -> Recorded:
    """The default's ranking inputs at protocol.cold_event_queries' queries (every event replayed; all cold)."""
    return record_queries(data, emb, queries, np.ones(len(data.items), bool), np.ones(len(queries), bool), ip, cp,
                          rp, desc="cold events")


def score_cold_grid(recs: dict[str, Recorded], events: Recorded, rp: RankParams,
                    grid: list[tuple[float, float, float]]) -> list[tuple[RankParams, float, dict, np.ndarray]]:
    """Each (cold_collab_weight, cold_text_weight, cold_support) of grid on rp: (its params, the mean validation
    NDCG@10 over recs' modes, each mode's validation metrics, HR@10 per cold-item event)."""
    rows = []
    for w_collab, w_text, support in grid:
        rp_ = replace(rp, cold_collab_weight=w_collab, cold_text_weight=w_text, cold_support=support)
        per = {mode: blend_metrics(r, rp_) for mode, r in recs.items()}
        hits = rank_metrics(blend_scores(events, rp_), events.targets, events.excluded)["hr@10"]
        rows.append((rp_, float(np.mean([v["ndcg@10"] for v in per.values()])), per, hits))
    return rows


def tune(data: Interactions, emb: np.ndarray, settings: Settings, stages: str = "all", out=sys.stdout) -> None:
    """Coordinate search on validation targets only; prints every grid and the chosen values.

    stages: "all" or a comma-separated subset of interest, weights, cooc, beta, half_life, seq, blend, cold, item-knn.
    The interest model is tuned on its own text ranking (standard mode only: a user's own events before a target
    are the same in both modes); the counters and the blend on the default's mean validation NDCG@10 over both modes.
    """
    run = set(TUNE_GRID) if stages == "all" else {s.strip() for s in stages.split(",")}
    unknown = run - set(TUNE_GRID)
    if unknown:
        raise ValueError(f"unknown tuning stages {sorted(unknown)}; choose from {sorted(TUNE_GRID)}")
    ip = InterestParams.from_settings(settings)
    cp = CollabParams.from_settings(settings)
    rp = RankParams.from_settings(settings)
    text_only = replace(rp, text_weight=1.0, cooc_weight=0.0, seq_weight=0.0, pop_weight=0.0)

    def table(title: str, header: str) -> None:
        print(f"\n### {title}\n\n| setting | {header} |\n|---|---|---|---|---|", file=out)

    def both(ip_: InterestParams, cp_: CollabParams) -> dict[str, dict[str, float]]:
        return {mode: blend_metrics(record(data, emb, mode, ip_, cp_, rp), rp) for mode in MODES}

    def interest_stage(title: str, candidates: list[InterestParams], label: Callable[[InterestParams], str]) -> None:
        nonlocal ip
        table(title + " (text ranking alone, validation)", "NDCG@10 | HR@10 | HR@50 | -")
        best: tuple[float, InterestParams] | None = None
        for ip_ in candidates:
            m = blend_metrics(record(data, emb, "standard", ip_, None, rp), text_only)
            print(f"| {label(ip_)} | {m['ndcg@10']:.4f} | {m['hr@10']:.4f} | {m['hr@50']:.4f} | |", file=out, flush=True)
            if best is None or m["ndcg@10"] > best[0]:
                best = (m["ndcg@10"], ip_)
        if best is not None:
            ip = best[1]
        print(f"\nchosen: {label(ip)}", file=out, flush=True)

    def collab_stage(title: str, candidates: list[CollabParams], label: Callable[[CollabParams], str]) -> None:
        nonlocal cp
        table(title + " (default model, validation)", "std NDCG@10 | std HR@10 | stream NDCG@10 | stream HR@10")
        scored: list[tuple[float, CollabParams]] = []
        for cp_ in candidates:
            per = both(ip, cp_)
            scored.append((float(np.mean([v["ndcg@10"] for v in per.values()])), cp_))
            print(f"| {label(cp_)} | {per['standard']['ndcg@10']:.4f} | {per['standard']['hr@10']:.4f} | "
                  f"{per['streaming']['ndcg@10']:.4f} | {per['streaming']['hr@10']:.4f} |", file=out, flush=True)
        if scored:
            cp = scored[first_within([score for score, _ in scored], COLLAB_TOLERANCE)][1]
        print(f"\nchosen (the first in the grid within {COLLAB_TOLERANCE:.1%} of the best mean NDCG@10): {label(cp)}",
              file=out, flush=True)

    def blend_stage(title: str, grid: dict[str, list[float]]) -> None:
        """Best mean validation NDCG@10 over both modes; among settings within BLEND_TOLERANCE of it, the best
        cold-item validation HR@10 (both on validation targets only)."""
        nonlocal rp
        recs = {mode: record(data, emb, mode, ip, cp, rp) for mode in MODES}
        rows = []
        for values in itertools.product(*grid.values()):
            rp_ = replace(rp, **dict(zip(grid, values)))
            per = {mode: blend_metrics(r, rp_) for mode, r in recs.items()}
            ndcg = float(np.mean([v["ndcg@10"] for v in per.values()]))
            cold = float(np.mean([v["cold hr@10"] for v in per.values()]))
            rows.append((ndcg, cold, values, per, rp_))
        rows.sort(key=lambda r: -r[0])
        near = [r for r in rows if r[0] >= rows[0][0] * (1 - BLEND_TOLERANCE)]
        chosen = max(near, key=lambda r: (r[1], r[0]))
        n_cold = {mode: int(r.cold.sum()) for mode, r in recs.items()}
        print(f"\n### {title} ({len(rows)} settings, top 12 by NDCG@10, validation; cold-item targets: {n_cold})\n\n"
              f"| {' | '.join(grid)} | std NDCG@10 | std HR@10 | stream NDCG@10 | stream HR@10 | cold HR@10 |\n"
              f"|{'---|' * (len(grid) + 5)}", file=out)
        for _, cold, values, per, _ in rows[:12]:
            print(f"| {' | '.join(str(v) for v in values)} | {per['standard']['ndcg@10']:.4f} | {per['standard']['hr@10']:.4f} | "
                  f"{per['streaming']['ndcg@10']:.4f} | {per['streaming']['hr@10']:.4f} | {cold:.4f} |", file=out)
        rp = chosen[4]
        print(f"\nchosen (within {BLEND_TOLERANCE:.0%} of the best NDCG@10, best cold HR@10 = {chosen[1]:.4f}, "
              f"NDCG@10 {chosen[0]:.4f}): {dict(zip(grid, chosen[2]))}", file=out, flush=True)

    def cold_stage(grid: list[tuple[float, float, float]]) -> None:
        """The cold-item boosts (cold_collab_weight, cold_text_weight, cold_support), scored on the validation
        targets of both modes (hits against the current setting, mean NDCG@10) and on every cold-item event of
        the stream (protocol.cold_event_queries: thousands of targets, disjoint from the validation and test
        targets, where the 10 and 61 cold validation targets are too few to tell). Chosen: choose_cold's rule."""
        nonlocal rp
        queries = cold_event_queries(data)
        if not queries:
            print("\n### cold-item boosts\n\nno cold-item events: the current setting stays", file=out, flush=True)
            return
        recs = {mode: record(data, emb, mode, ip, cp, rp) for mode in MODES}
        events = record_cold_events(data, emb, queries, ip, cp, rp)
        every = np.ones(len(data.items), bool)
        knn = ItemKNN(data.n_items, data.n_users)
        knn_hr = float(np.mean(replay(Replay(data, emb, event_types(data)), [knn], queries, every,
                                      desc="tune cold events item-knn", progress=False).metrics[knn.name]["hr@10"]))
        base = {mode: blend_metrics(r, rp) for mode, r in recs.items()}
        n_cold = {mode: int(r.cold.sum()) for mode, r in recs.items()}
        print(f"\n### cold-item boosts (validation: hits against the current setting, cold-item targets {n_cold}; "
              f"{len(queries)} cold-item events: HR@10, item-knn {knn_hr:.4f})\n\n"
              "| cold_collab_weight | cold_text_weight | cold_support | std hits | std cold hits | stream hits | "
              "stream cold hits | mean NDCG@10 | cold-event HR@10 | ÷ item-knn |\n|---|---|---|---|---|---|---|---|---|---|",
              file=out)
        rows = []
        for rp_, ndcg, per, event_hits in score_cold_grid(recs, events, rp, grid):
            hr = float(event_hits.mean())
            d = {mode: (per[mode]["hits"] - base[mode]["hits"], per[mode]["cold hits"] - base[mode]["cold hits"])
                 for mode in MODES}
            print(f"| {rp_.cold_collab_weight} | {rp_.cold_text_weight} | {rp_.cold_support} | {d['standard'][0]:+.0f} | "
                  f"{d['standard'][1]:+.0f} | {d['streaming'][0]:+.0f} | {d['streaming'][1]:+.0f} | {ndcg:.4f} | "
                  f"{hr:.4f} | {hr / knn_hr if knn_hr else float('inf'):.2f} |", file=out, flush=True)
            rows.append((ndcg, hr, rp_))
        chosen = choose_cold([(n, h) for n, h, _ in rows], knn_hr)
        if chosen is not None:
            rp = rows[chosen][2]
        print(f"\nchosen (the best mean validation NDCG@10 among the settings whose cold-event HR@10 is at least "
              f"{COLD_TARGET_RATIO:g}x item-knn's{'' if chosen is not None else ': none, the current setting stays'}): "
              f"cold_collab_weight={rp.cold_collab_weight} cold_text_weight={rp.cold_text_weight} "
              f"cold_support={rp.cold_support}", file=out, flush=True)

    def itemknn_stage(lasts: list[int]) -> None:
        table("item-knn: last N distinct items scored (validation)", "std NDCG@10 | std HR@10 | stream NDCG@10 | stream HR@10")
        per_mode = {}
        for mode in MODES:
            queries, applied = queries_for(data, leave_one_out(data), "valid", mode)
            models = [ItemKNN(data.n_items, data.n_users, last) for last in lasts]
            per_mode[mode] = replay(Replay(data, emb, event_types(data)), models, queries, applied,
                                    desc=f"tune item-knn {mode}", progress=False).summary()
        best = None
        for last in lasts:
            name = ItemKNN(1, 1, last).name
            s, t = per_mode["standard"][name], per_mode["streaming"][name]
            print(f"| last={last} | {s['ndcg@10']:.4f} | {s['hr@10']:.4f} | {t['ndcg@10']:.4f} | {t['hr@10']:.4f} |",
                  file=out, flush=True)
            score = (s["ndcg@10"] + t["ndcg@10"]) / 2
            if best is None or score > best[0]:
                best = (score, last)
        print(f"\nchosen: item-knn last={best[1] if best else None} (write it to baselines.ITEMKNN_LAST)", file=out)

    g = TUNE_GRID
    if "interest" in run:
        interest_stage("interest model", [replace(ip, temperature=t, decay_per_hour=d, max_slots=k, slot_threshold=th)
                                          for t, d, k, th in g["interest"]],
                       lambda i: f"temperature={i.temperature} decay_per_hour={i.decay_per_hour} "
                                 f"max_slots={i.max_slots} slot_threshold={i.slot_threshold}")
    if "weights" in run:
        interest_stage("event weights (rating 1-2 view, 3 click, 4 cart, 5 purchase)",
                       [replace(ip, type_weights=w) for w in g["weights"]],
                       lambda i: ",".join(f"{k}:{v:g}" for k, v in i.type_weights.items()
                                          if k in ("view", "click", "cart", "purchase")))
    if "cooc" in run:
        collab_stage("co-occurrence window / query items / recency",
                     [replace(cp, window=w, query_items=q, recency=r) for w, q, r in g["cooc"]],
                     lambda c: f"window={c.window} query_items={c.query_items} recency={c.recency}")
    if "beta" in run:
        collab_stage("neighbour popularity exponent", [replace(cp, neighbour_pop_exponent=b) for b in g["beta"]],
                     lambda c: f"neighbour_pop_exponent={c.neighbour_pop_exponent}")
    if "half_life" in run:
        collab_stage("decay half-lives (hours; 0 = none)",
                     [replace(cp, cooc_half_life_hours=a, pop_half_life_hours=b) for a, b in g["half_life"]],
                     lambda c: f"cooc={c.cooc_half_life_hours} pop={c.pop_half_life_hours}")
    if "seq" in run:
        collab_stage("sequence window / distance decay / query items / recency",
                     [replace(cp, seq_window=w, seq_distance_decay=d, seq_query_items=q, seq_recency=r)
                      for w, d, q, r in g["seq"]],
                     lambda c: f"seq_window={c.seq_window} seq_distance_decay={c.seq_distance_decay} "
                               f"seq_query_items={c.seq_query_items} seq_recency={c.seq_recency}")
    if "blend" in run:
        blend_stage("blend weights", g["blend"])
    if "cold" in run:
        cold_stage(g["cold"])
    if "item-knn" in run:
        itemknn_stage(g["item-knn"])
    print(f"\nbest interest params: {ip}\nbest collab params: {cp}\nbest rank params: {rp}", file=out, flush=True)


# Search spaces (candidates, not defaults: the defaults live in Settings). text_weight stays > 0 by design:
# without it a catalogue or user with no counters yet would get no ranking.
TUNE_GRID: dict[str, list] = {
    "interest": [(t, d, k, th) for t in (0.05, 0.2, 1.0) for d in (0.0, 0.01, 0.1)
                 for k, th in ((1, 0.35), (3, 0.85), (3, 0.9))],
    "weights": [
        {t: 1.0 for t in POSITIVE_TYPES},
        dict(default_type_weights()),  # the product's (Settings' weight_*)
        {"view": 1.0, "click": 1.2, "search": 1.5, "review": 2.0, "cart": 1.5, "purchase": 2.0},
    ],
    "cooc": [(10, 10, 0.8), (20, 10, 0.7), (20, 20, 0.9), (50, 20, 0.9), (50, 50, 0.95)],
    "beta": [0.25, 0.5, 0.75],
    "half_life": [(0.0, 0.0), (0.0, 168.0), (720.0, 0.0), (720.0, 168.0)],
    "seq": [(w, d, q, r) for w, d in ((2, 0.5), (3, 0.5), (5, 0.5), (5, 0.8), (10, 0.7))
            for q, r in ((3, 0.5), (5, 0.7), (5, 0.9))],
    "blend": {
        "text_weight": [0.01, 0.02, 0.05],
        "seq_weight": [0.15, 0.3, 0.5, 1.0],
        "pop_weight": [0.0, 0.1, 0.2, 0.3],
        "text_temperature": [0.02, 0.05],
    },
    # (cold_collab_weight, cold_text_weight, cold_support); no boost first
    "cold": [(0.0, 0.0, 5.0)] + [(c, t, s) for s in (3.0, 5.0, 10.0) for c in (0.0, 0.1, 0.3, 0.5, 1.0, 2.0)
                                 for t in (0.0, 0.1, 0.2, 0.5, 1.0) if c or t],
    "item-knn": [1, 2, 3, 5, 10, 20, 50],
}
