"""Cold items with enough targets to tell: every cold-item event of the stream as a target (prequential).

    .venv/bin/python benchmarks/cold_prequential.py                # ML-100K: 7,213 targets, 1-2 minutes on 2 cores
    .venv/bin/python benchmarks/cold_prequential.py --trade-off    # + the cold-item boosts' trade-off, ~6 minutes

The evaluator's cold-item protocol (`stream-app eval --protocol cold-items`) has one target per user, the last
event, and on ML-100K only 78 (streaming) or 12 (standard) of them are cold: too few to tell the models apart
(the default / item-knn HR@10 ratio's 95% interval is 0.72-4.54 in streaming mode). This replays the whole stream
once in global time order, like the streaming mode, and ranks right before every event whose item had fewer than
`--threshold` interactions and whose user had at least `--min-history` events (protocol.cold_event_queries; the
leave-one-out validation and test targets are left out, so these targets are disjoint from the ones
`stream-app eval` reports; the cold-item boosts, `--tune cold`, are chosen on them): the list the stream would
have pushed just before the user took a little-known item. Same models, ranking function, metrics and exclusions as `stream-app eval`;
settings come from the environment as everywhere (STREAM_APP_BLEND_COLD_* to try the cold-item boosts).

--trade-off: the cold-item boosts (blend_cold_collab_weight, blend_cold_text_weight, blend_cold_support) over the
tuner's grid (`stream-app eval --tune cold` chooses among them), each scored on the recorded inputs of the
validation targets of both modes (mean NDCG@10) and of these cold-item events; prints the settings on the
Pareto front of the two (no other setting of the grid is as good on both and better on one), with the cold-event
HR@10 over item-knn's and its 95% paired-bootstrap interval. Since the boosts are chosen on these events, the
default's ratio here is in sample; the last lines estimate it out of sample: users split in two (by id parity),
tuning.choose_cold applied to one half's events and the chosen setting measured on the other half's.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np

from stream_app.core.collab import CollabParams
from stream_app.core.interest import InterestParams
from stream_app.core.ranking import RankParams
from stream_app.offline.cli import VERSUS, build_models, markdown_table, versus
from stream_app.offline.datasets import Interactions, load_dataset
from stream_app.offline.baselines import ItemKNN
from stream_app.offline.protocol import COLD_THRESHOLD, Query, Result, cold_event_queries, event_types, ratio_interval
from stream_app.offline.replay import Replay, item_embeddings, replay
from stream_app.offline.tuning import MODES, TUNE_GRID, choose_cold, record, record_cold_events, score_cold_grid
from stream_app.settings import Settings


def models_table(data: Interactions, emb: np.ndarray, settings: Settings, queries: list[Query],
                 threshold: int, min_history: int) -> Result:
    """Replay the stream once with every model, print their table on the cold-item events, return the result."""
    ctx = Replay(data, emb, event_types(data))
    result = replay(ctx, build_models(data, emb.shape[1], settings, emb), queries, np.ones(len(data.items), bool),
                    desc="cold events")
    run = {"targets": len(queries), "threshold": threshold, "models": result.summary(), VERSUS: versus(result)}
    table = markdown_table(data.name, "streaming", "cold-items", run).split("\n", 1)[1]
    print(f"**{data.name}, every cold-item event of the stream** ({len(queries)} targets: items with fewer than "
          f"{threshold} earlier interactions, users with at least {min_history} earlier events, the leave-one-out "
          f"targets left out; full ranking; cold-item boosts: collab {settings.blend_cold_collab_weight}, text "
          f"{settings.blend_cold_text_weight}, support {settings.blend_cold_support})\n{table}", flush=True)
    return result


def trade_off(data: Interactions, emb: np.ndarray, settings: Settings, queries: list[Query],
              itemknn_hits: np.ndarray) -> None:
    """The cold-item boosts' Pareto front between validation NDCG@10 and hits on the cold-item events."""
    ip, cp, rp = (InterestParams.from_settings(settings), CollabParams.from_settings(settings),
                  RankParams.from_settings(settings))
    valid = {mode: record(data, emb, mode, ip, cp, rp) for mode in MODES}
    events = record_cold_events(data, emb, queries, ip, cp, rp)
    grid = TUNE_GRID["cold"]
    rows = [((p.cold_collab_weight, p.cold_text_weight, p.cold_support), ndcg, per, hits) for p, ndcg, per, hits in
            score_cold_grid(valid, events, rp, [(rp.cold_collab_weight, rp.cold_text_weight, rp.cold_support), *grid])]
    current = rows[0]

    def dominates(o: tuple, r: tuple) -> bool:
        return o[1] >= r[1] and o[3].sum() >= r[3].sum() and (o[1] > r[1] or o[3].sum() > r[3].sum())

    front, seen = [], set()
    for r in rows:  # the current setting first: of equal scores the first is kept
        if (r[1], r[3].sum()) not in seen and not any(dominates(o, r) for o in rows):
            seen.add((r[1], r[3].sum()))
            front.append(r)
    front.sort(key=lambda r: -r[1])
    print(f"\n**cold-item boosts: validation (both modes) against the {len(queries)} cold-item events** (the Pareto "
          f"front of {len(grid)} settings; hits against the current setting, "
          f"collab {rp.cold_collab_weight} text {rp.cold_text_weight} support {rp.cold_support})\n\n"
          "| collab | text | support | validation NDCG@10 | std hits | stream hits | cold-event HR@10 | "
          "÷ item-knn (95% CI) |\n|---:|---:|---:|---:|---:|---:|---:|---:|")
    for (w_collab, w_text, support), ndcg, per, hits in front:
        delta = {mode: per[mode]["hits"] - current[2][mode]["hits"] for mode in MODES}
        r, low, high = ratio_interval(hits, itemknn_hits)
        print(f"| {w_collab} | {w_text} | {support} | {ndcg:.4f} ({ndcg / current[1] - 1:+.1%}) | "
              f"{delta['standard']:+.0f} | {delta['streaming']:+.0f} | {hits.mean():.4f} | "
              f"{r:.2f} ({low:.2f}–{high:.2f}) |", flush=True)

    half = np.array([q.user % 2 for q in queries])
    for k in (0, 1):
        mine, other = half == k, half != k
        pick = choose_cold([(ndcg, float(hits[mine].mean())) for _, ndcg, _, hits in rows[1:]],
                           float(itemknn_hits[mine].mean()))
        if pick is None:
            print(f"\nchosen on the {int(mine.sum())} events of users with id parity {k}: none reaches 2x", flush=True)
            continue
        setting, _, _, hits = rows[1:][pick]
        r, low, high = ratio_interval(hits[other], itemknn_hits[other])
        print(f"\nchosen on the {int(mine.sum())} events of users with id parity {k}: collab {setting[0]} text "
              f"{setting[1]} support {setting[2]}; on the other {int(other.sum())}: HR@10 {hits[other].mean():.4f}, "
              f"{r:.2f}x item-knn ({low:.2f}–{high:.2f})", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--threshold", type=int, default=COLD_THRESHOLD, help="cold: fewer earlier interactions than this")
    ap.add_argument("--min-history", type=int, default=2, help="users with at least this many earlier events")
    ap.add_argument("--trade-off", action="store_true", help="also the cold-item boosts' trade-off (a grid)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    data = load_dataset(args.dataset)
    emb = item_embeddings(data, settings)
    queries = cold_event_queries(data, args.threshold, args.min_history)
    t0, c0 = time.perf_counter(), time.process_time()
    result = models_table(data, emb, settings, queries, args.threshold, args.min_history)
    if args.trade_off:
        trade_off(data, emb, settings, queries, np.asarray(result.metrics[ItemKNN(1, 1).name]["hr@10"]))
    print(f"\n{time.perf_counter() - t0:.0f}s wall, {time.process_time() - c0:.0f}s CPU")


if __name__ == "__main__":
    main()
