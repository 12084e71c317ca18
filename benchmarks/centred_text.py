"""Centred text vectors: does removing the encoder's common direction help the text where only text can?

    .venv/bin/python -m benchmarks.centred_text             # ~2 minutes after the embeddings are cached
    .venv/bin/python -m benchmarks.centred_text --blend     # + the blend on validation and cold events, ~6 min

multilingual-e5-small puts every pair of texts at cosine 0.68 or more (benchmarks/interest_slots.py): all its
vectors share a large common component (anisotropy). Subtracting the mean vector of a corpus and normalising
again (e - mu) / |e - mu| is the usual remedy (Mu & Viswanath, "All-but-the-Top", 2018). This prints, with mu
the dataset's own item mean, the sample catalogue's mean, or none (the product today):

- the default's text ranking alone on the validation targets (standard mode, as `stream-app eval --tune`'s
  interest stage scores it) with one interest slot and with the default slots;
- the sample catalogue: how well the cosine tells same- from different-category pairs (AUC) and each demo user's
  slots at the default threshold, raw and centred on the catalogue's own mean;
- every model on the stream's cold-item events (benchmarks/cold_prequential.py's table) with centred vectors;
- --blend: the default blend on the validation targets of both modes and on the cold-item events, raw against
  centred, over text weights, text temperatures and cold-item boosts (the centred cosines spread about 2x wider,
  so the text temperature that suits them is larger).

Nothing here is in the product: see README, Offline evaluation (what was tried) for the outcome.
"""

from __future__ import annotations

import argparse
import itertools
import logging
from dataclasses import replace

import numpy as np

from benchmarks.cold_prequential import models_table
from benchmarks.interest_slots import auc, pair_cosines
from stream_app.adapters.encoder import load_encoder
from stream_app.core.collab import CollabParams
from stream_app.core.events import parse_item
from stream_app.core.interest import InterestParams, apply_event, new_state
from stream_app.core.ranking import RankParams
from stream_app.offline.datasets import load_dataset
from stream_app.offline.protocol import COLD_THRESHOLD, cold_event_queries, rank_metrics
from stream_app.offline.replay import item_embeddings
from stream_app.offline.tuning import MODES, blend_metrics, blend_scores, record, record_cold_events
from stream_app.sample_data import load_catalogue, load_demo_behaviour
from stream_app.settings import Settings


def centred(vectors: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """(e - mean) / |e - mean| per row, float32."""
    shifted = np.asarray(vectors, np.float64) - mean
    return (shifted / np.maximum(np.linalg.norm(shifted, axis=1, keepdims=True), 1e-12)).astype(np.float32)


def text_alone(data, emb: np.ndarray, settings: Settings) -> None:
    """The default's text ranking alone (standard validation) per centring mean and slot count."""
    catalogue = load_encoder(settings).encode([parse_item(r).document() for r in load_catalogue()], kind="passage")
    means = {"none (the product)": np.zeros(emb.shape[1]), f"{data.name}'s item mean": emb.mean(0),
             "the sample catalogue's mean": catalogue.mean(0)}
    ip, rp = InterestParams.from_settings(settings), RankParams.from_settings(settings)
    text_only = replace(rp, text_weight=1.0, cooc_weight=0.0, seq_weight=0.0, pop_weight=0.0, cold_text_weight=0.0,
                        cold_collab_weight=0.0)
    own = emb.mean(0) / np.linalg.norm(emb.mean(0))
    print(f"**{data.name}: the default's text ranking alone, validation targets, standard mode**\n\n"
          "| centred on | cosine with the dataset's mean | slots | NDCG@10 | HR@10 | HR@50 |\n|---|---:|---|---:|---:|---:|")
    for name, mean in means.items():
        vectors = emb if not mean.any() else centred(emb, mean)
        cos = f"{float(mean @ own / np.linalg.norm(mean)):.3f}" if mean.any() else "–"
        for slots in sorted({1, ip.max_slots}):
            m = blend_metrics(record(data, vectors, "standard", replace(ip, max_slots=slots), None, rp), text_only)
            print(f"| {name} | {cos} | {slots} at {ip.slot_threshold} | {m['ndcg@10']:.4f} | {m['hr@10']:.4f} | "
                  f"{m['hr@50']:.4f} |", flush=True)


def catalogue_slots(settings: Settings) -> None:
    """The sample catalogue's category AUC and each demo user's slots, raw and centred on its own mean."""
    items = [parse_item(row) for row in load_catalogue()]
    raw = load_encoder(settings).encode([i.document() for i in items], kind="passage")
    labels = np.array([i.category for i in items])
    behaviour = [e for e in load_demo_behaviour() if e.get("item_id") in {i.item_id for i in items}]
    users = sorted({e["user_id"] for e in behaviour})
    ip = InterestParams.from_settings(settings)
    print(f"\n**the sample catalogue ({len(items)} items), slot_threshold {ip.slot_threshold}**\n\n"
          "| vectors | AUC same vs different category | different-category cosine p5 / p50 / p95 | "
          + " | ".join(users) + " |\n|---|---:|---|" + "---:|" * len(users))
    for name, vectors in (("raw (the product)", raw), ("centred on the catalogue's mean", centred(raw, raw.mean(0)))):
        cos, same = pair_cosines(vectors, labels)
        index = {i.item_id: k for k, i in enumerate(items)}
        cells = []
        for user in users:
            state = new_state(vectors.shape[1])
            for e in behaviour:
                if e["user_id"] == user:
                    state = apply_event(state, vectors[index[e["item_id"]]], e["type"], e["ts"], e["item_id"], ip)
            cells.append(f"{state.n_slots} slot{'s' * (state.n_slots != 1)}")
        p = np.percentile(cos[~same], (5, 50, 95))
        print(f"| {name} | {auc(cos[same], cos[~same]):.3f} | {p[0]:.3f} / {p[1]:.3f} / {p[2]:.3f} | "
              + " | ".join(cells) + " |", flush=True)


BOOSTS = ((0.0, 0.0), (0.3, 0.2), (0.3, 0.5), (0.5, 0.2), (0.3, 1.0))  # (cold collab, cold text) weights tried


def blend_header(data, n_events: int) -> None:
    """The header of blend_rows' table."""
    print(f"\n**{data.name}: the blend, validation targets of both modes and the {n_events} cold-item events**\n\n"
          "| vectors | text weight | text temperature | cold collab | cold text | std NDCG@10 | std hits | "
          "stream NDCG@10 | stream hits | cold-event HR@10 |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")


def blend_rows(data, name: str, vectors: np.ndarray, queries: list, settings: Settings, weights: tuple,
               temperatures: tuple, boosts: tuple) -> None:
    """Record the default's ranking inputs once with these item vectors (validation of both modes, the cold-item
    events), then print one row per text weight x text temperature x (cold collab, cold text) boost."""
    ip, cp, rp = (InterestParams.from_settings(settings), CollabParams.from_settings(settings),
                  RankParams.from_settings(settings))
    recs = {mode: record(data, vectors, mode, ip, cp, rp) for mode in MODES}
    events = record_cold_events(data, vectors, queries, ip, cp, rp)
    for tw, temp, (cc, ct) in itertools.product(weights, temperatures, boosts):
        rp_ = replace(rp, text_weight=tw, text_temperature=temp, cold_collab_weight=cc, cold_text_weight=ct)
        per = {mode: blend_metrics(r, rp_) for mode, r in recs.items()}
        hr = float(rank_metrics(blend_scores(events, rp_), events.targets, events.excluded)["hr@10"].mean())
        print(f"| {name} | {tw} | {temp} | {cc} | {ct} | {per['standard']['ndcg@10']:.4f} | "
              f"{per['standard']['hits']:.0f} | {per['streaming']['ndcg@10']:.4f} | {per['streaming']['hits']:.0f} "
              f"| {hr:.4f} |", flush=True)


def blend(data, emb: np.ndarray, settings: Settings) -> None:
    """The default blend, raw against centred vectors, on validation (both modes) and the cold-item events."""
    queries = cold_event_queries(data)
    blend_header(data, len(queries))
    for name, vectors, temperatures in (("raw", emb, (0.02, 0.05, 0.1)),
                                        ("centred", centred(emb, emb.mean(0)), (0.02, 0.1, 0.2, 0.5))):
        blend_rows(data, name, vectors, queries, settings, (0.02, 0.05), temperatures, BOOSTS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="ml-100k")
    ap.add_argument("--blend", action="store_true", help="also the blend on validation and cold events (~6 min)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    data = load_dataset(args.dataset)
    emb = item_embeddings(data, settings)
    text_alone(data, emb, settings)
    catalogue_slots(settings)
    print(f"\nEvery model with the item vectors centred on {data.name}'s item mean (benchmarks/cold_prequential.py "
          "prints the same table with the product's raw vectors):\n")
    models_table(data, centred(emb, emb.mean(0)), settings, cold_event_queries(data), COLD_THRESHOLD, 2)
    if args.blend:
        blend(data, emb, settings)


if __name__ == "__main__":
    main()
