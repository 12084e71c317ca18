"""Cold-item specialists: collaborative scores that rank little-known items by the user's whole history.

    .venv/bin/python -m benchmarks.cold_specialists      # ~3 minutes on 2 cores after the embeddings are cached

The blend's co-occurrence part asks the user's last 20 items (recency 0.9, neighbours damped by n(j)^0.5) which
items were taken near them; an item taken by one to four users has few such links, so the blend ranks it low.
Two scores look further, each replayed in stream order (only events applied before a query count):

- *long-history co-occurrence*: the same counters (collab.cooc_scores, rows pruned as in the stream) queried with
  the user's last 100 items, recency 1, and neighbours damped by n(j)^1 (a count of one from a one-user item weighs
  as much as that user's whole row), so little-known items score high;
- *taker similarity* (user-kNN over full profiles): for item j with takers T_j,
  s(j) = sum over v in T_j of cos(P_u, P_v)^2 / n(j)^0.5, P the binary item sets of all applied events. The
  stream could not serve it as it is: a worker holds only its partitions' users, and the takers' profiles would
  have to be replicated to every worker.

Prints each alone on the validation targets of both modes (hits) and the 7,213 cold-item events (HR@10 over the
whole catalogue, consumed items excluded), then two ways to use it:
- blended: the default blend (cold-item boosts on) plus w · cold(j) · s(j) / max over the pool, cold(j) =
  exp(−n(j) / cold_support) as the boosts, with its 50 best cold-weighted items added to the pool;
- one reserved place: the blend's top 9, then the specialist's best item with fewer than 5 interactions.
Against these, the cold-item boosts' own trade-off (benchmarks/cold_prequential.py --trade-off).

Nothing here is in the product: see README, Offline evaluation (what was tried) for the outcome.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from benchmarks.cold_signals import replay_queries, widen_pool
from stream_app.core import collab
from stream_app.core.collab import CollabParams
from stream_app.core.interest import InterestParams
from stream_app.core.ranking import RankParams
from stream_app.offline.baselines import ItemKNN
from stream_app.offline.datasets import Interactions, load_dataset
from stream_app.offline.protocol import (COLD_THRESHOLD, Query, cold_event_queries, event_types, leave_one_out,
                                        queries_for, rank_metrics)
from stream_app.offline.replay import Replay, item_embeddings, replay
from stream_app.offline.tuning import MODES, Recorded, blend_scores, pool_scaled, record, record_cold_events
from stream_app.settings import Settings

SIGNAL_POOL = 50  # the specialist's best cold-weighted items added to the pool


def long_history_cooc(data: Interactions, queries: list[Query], applied: np.ndarray, cp: CollabParams,
                      query_items: int = 100, recency: float = 1.0, exponent: float = 1.0) -> np.ndarray:
    """collab.cooc_scores from the user's last `query_items` items, with `recency` and neighbour damping
    n(j)^`exponent`, on the stream's own counters."""
    state = collab.CollabState()
    long = replace(cp, query_items=query_items, recency=recency, neighbour_pop_exponent=exponent)
    index = {item_id: n for n, item_id in enumerate(data.item_ids)}
    history: list[list[str]] = [[] for _ in range(data.n_users)]

    def observe(user: int, item: int, pos: int) -> None:
        item_id = data.item_ids[item]
        collab.observe(state, item_id, history[user], float(data.timestamps[pos]), cp)
        history[user].append(item_id)

    def answer(query: Query) -> np.ndarray:
        row = np.zeros(data.n_items, np.float32)
        scores = collab.cooc_scores(state, history[query.user], long)
        if scores:
            row[[index[k] for k in scores]] = list(scores.values())
        return row

    return replay_queries(data, queries, applied, observe, answer, np.float32)


def taker_similarity(data: Interactions, queries: list[Query], applied: np.ndarray, power: float = 2.0,
                     damping: float = 0.5) -> np.ndarray:
    """sum over the item's takers v of cos(P_u, P_v)^power, divided by n(j)^damping (dense user x item sets)."""
    taken = np.zeros((data.n_users, data.n_items), np.float32)
    sizes = np.zeros(data.n_users, np.float32)  # items per user (row sums of taken)
    takers = np.zeros(data.n_items, np.float32)  # users per item (column sums)

    def observe(user: int, item: int, pos: int) -> None:
        if not taken[user, item]:
            taken[user, item] = 1.0
            sizes[user] += 1.0
            takers[item] += 1.0

    def answer(query: Query) -> np.ndarray:
        user = query.user
        cosine = (taken @ taken[user]) / np.sqrt(np.maximum(sizes, 1.0) * max(sizes[user], 1.0))
        cosine[user] = 0.0
        return (cosine ** power @ taken) / np.maximum(takers, 1.0) ** damping

    return replay_queries(data, queries, applied, observe, answer, np.float32)


def blended(rec: Recorded, signal: np.ndarray, rp: RankParams, weight: float) -> np.ndarray:
    """The default blend + weight · cold(j) · signal / its max over the pool, its best cold-weighted items added."""
    cold = np.exp(-rec.support / rp.cold_support)
    widened = replace(rec, pool=widen_pool(rec, np.where(signal > 0, signal * cold, -np.inf), SIGNAL_POOL))
    return blend_scores(widened, rp) + weight * cold * pool_scaled(widened, np.where(rec.excluded, 0.0, signal))


def reserved_place_hits(rec: Recorded, signal: np.ndarray, rp: RankParams) -> np.ndarray:
    """HR@10 per query of: the blend's top 9, then the signal's best non-excluded item with < COLD_THRESHOLD
    interactions not among them (the blend's 10th when there is none)."""
    score = np.where(rec.excluded, -np.inf, blend_scores(rec, rp))
    cold = np.where(~rec.excluded & (rec.support < COLD_THRESHOLD) & (signal > 0), signal, -np.inf)
    out = np.zeros(len(rec.targets))
    for q, target in enumerate(rec.targets):
        order = [i for i in np.argsort(-score[q], kind="stable")[:10] if np.isfinite(score[q, i])]
        first = order[:9]
        extra = [i for i in np.argsort(-cold[q], kind="stable")[:10] if np.isfinite(cold[q, i]) and i not in first]
        shown = first + (extra[:1] or order[9:10])
        out[q] = float(target in shown)
    return out


def main() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    data = load_dataset("ml-100k")
    emb = item_embeddings(data, settings)
    ip, cp, rp = (InterestParams.from_settings(settings), CollabParams.from_settings(settings),
                  RankParams.from_settings(settings))
    cold_queries = cold_event_queries(data)
    valid = {mode: record(data, emb, mode, ip, cp, rp) for mode in MODES}
    events = record_cold_events(data, emb, cold_queries, ip, cp, rp)
    inputs = {mode: queries_for(data, leave_one_out(data), "valid", mode) for mode in MODES}
    inputs["events"] = (cold_queries, np.ones(len(data.items), bool))
    recs = {**valid, "events": events}
    itemknn = ItemKNN(data.n_items, data.n_users)
    knn = replay(Replay(data, emb, event_types(data)), [itemknn], cold_queries, inputs["events"][1],
                 desc="item-knn", progress=False)
    knn_hr10 = float(np.mean(knn.metrics[itemknn.name]["hr@10"]))

    def hr10(rec: Recorded, score: np.ndarray) -> np.ndarray:
        return rank_metrics(score, rec.targets, rec.excluded)["hr@10"]

    def row(label: str, per_query: dict[str, np.ndarray], ndcg: float | None = None) -> None:
        hits = " / ".join(f"{per_query[mode].sum():.0f}" for mode in MODES)
        cold = " / ".join(f"{per_query[mode][valid[mode].cold].sum():.0f}" for mode in MODES)
        e = per_query["events"].mean()
        print(f"| {label} | {'' if ndcg is None else f'{ndcg:.4f}'} | {hits} | {cold} | {e:.4f} | "
              f"{e / knn_hr10:.2f} |", flush=True)

    def ndcg10(scores: dict[str, np.ndarray]) -> float:
        return float(np.mean([rank_metrics(scores[m], valid[m].targets, valid[m].excluded)["ndcg@10"].mean()
                              for m in MODES]))

    print(f"**cold-item specialists** (validation targets of both modes; the {len(events.targets)} cold-item events; "
          f"{itemknn.name} on them: {knn_hr10:.4f})\n\n| model | validation NDCG@10 | std / stream hits | "
          "std / stream cold hits | cold-event HR@10 | ÷ item-knn |\n|---|---:|---:|---:|---:|---:|")
    default = {key: blend_scores(rec, rp) for key, rec in recs.items()}
    row("default blend", {key: hr10(recs[key], s) for key, s in default.items()}, ndcg10(default))
    specialists = {
        "long-history co-occurrence (100 items, recency 1, n(j)^1)":
            lambda queries, applied: long_history_cooc(data, queries, applied, cp),
        "taker similarity (cos^2, n(j)^0.5)": lambda queries, applied: taker_similarity(data, queries, applied),
    }
    for name, specialist in specialists.items():
        signal = {key: specialist(*inputs[key]) for key in recs}
        alone = {key: np.where(recs[key].excluded, -np.inf, s) for key, s in signal.items()}
        row(f"{name}, alone", {key: hr10(recs[key], s) for key, s in alone.items()}, ndcg10(alone))
        for weight in (0.3, 1.0):
            scores = {key: blended(recs[key], signal[key], rp, weight) for key in recs}
            row(f"{name}, blended, w {weight}", {key: hr10(recs[key], s) for key, s in scores.items()},
                ndcg10(scores))
        row(f"{name}, one reserved place", {key: reserved_place_hits(recs[key], signal[key], rp) for key in recs})


if __name__ == "__main__":
    main()
