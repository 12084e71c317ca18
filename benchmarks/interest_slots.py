"""Does the encoder's cosine scale let the interest model open more than one slot?

    .venv/bin/python benchmarks/interest_slots.py                            # the configured encoder (e5 by default)
    STREAM_APP_MODEL_NAME=all-MiniLM-L6-v2 .venv/bin/python benchmarks/interest_slots.py
    .venv/bin/python benchmarks/interest_slots.py --thresholds 0.35,0.8,0.85,0.9 --dataset ml-100k

An event joins the interest slot whose direction is nearest by cosine if that cosine is >= slot_threshold, else it
opens a new slot (stream_app.core.interest.choose_slot). Whether that ever happens depends on where the encoder puts
unrelated texts: prints, for the sample catalogue (and a dataset's item texts with --dataset), the percentiles of
the pairwise cosines between items of the same and of different categories, how well the cosine separates the two
(AUC: the chance that a random same-category pair is nearer than a random different-category pair), the share of
different-category pairs below each threshold, how many slots each scripted demo user ends with, and what a user
with two interests gets from the ranking's text affinity.
"""

from __future__ import annotations

import argparse
import logging
from collections import Counter
from dataclasses import replace

import numpy as np

from stream_app.adapters.encoder import load_encoder
from stream_app.core.events import ItemEvent, parse_item
from stream_app.core.interest import InterestParams, apply_event, interest_vectors, new_state
from stream_app.core.ranking import text_affinity
from stream_app.offline.datasets import load_dataset
from stream_app.offline.replay import item_embeddings
from stream_app.sample_data import load_catalogue, load_demo_behaviour
from stream_app.settings import Settings


def unit(v: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (the exported encoders already normalise; a custom model folder may not)."""
    v = np.asarray(v, np.float64)
    return v / np.maximum(np.linalg.norm(v, axis=1, keepdims=True), 1e-12)


def auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a random positive > a random negative), ties counting half (the Mann-Whitney U over the pair counts)."""
    neg = np.sort(negative)
    below = np.searchsorted(neg, positive, "left") + np.searchsorted(neg, positive, "right")
    return float(below.sum() / 2 / (len(positive) * len(negative)))


def pair_cosines(vectors: np.ndarray, labels: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Cosines of every unordered pair, and whether the pair shares a label (all False without labels)."""
    rows = unit(vectors)
    cos = rows @ rows.T
    upper = np.triu_indices(len(vectors), 1)
    same = (labels[:, None] == labels[None, :])[upper] if labels is not None else np.zeros(len(upper[0]), bool)
    return cos[upper], same


def two_interests(items: list[ItemEvent], vectors: dict[str, np.ndarray], settings: Settings, thresholds: list[float],
                  categories: tuple[str, str]) -> None:
    """A user who views the first 3 items of two categories, alternating: slots, their weights, and the categories
    of the top 10 other items by the ranking's text affinity (max over slots of weight x cosine), and by a mixture
    rule the product does not serve (max over slots of cosine + T log weight, T the text temperature: the blend's
    exp(text / T) then weighs each slot's items by w_s exp(cos / T), so the slot weights no longer swamp e5's narrow
    cosine range)."""
    first, second = ([i.item_id for i in items if i.category == c][:3] for c in categories)
    seen = [x for pair in zip(first, second) for x in pair]
    others = [i.item_id for i in items if i.item_id not in seen]
    matrix = np.stack([vectors[i] for i in others])
    category = {i.item_id: i.category for i in items}
    print(f"\nA user who viewed 3 {categories[0]} and 3 {categories[1]} items, alternating:\n")
    print("| slot_threshold | slots (weights) | categories of the text affinity's top 10 | by the mixture rule |")
    print("|---:|---|---|---|")
    temperature = settings.blend_text_temperature
    for threshold in thresholds:
        params = replace(InterestParams.from_settings(settings), slot_threshold=threshold)
        state = new_state(matrix.shape[1])
        for n, item_id in enumerate(seen):
            state = apply_event(state, vectors[item_id], "view", 1_767_225_600 + 60 * n, item_id, params)
        slots, weights = interest_vectors(state, state.last_ts, params)
        text, _ = text_affinity(matrix, slots, weights)
        mixture = (matrix @ slots.T + temperature * np.log(weights)[None, :]).max(axis=1)
        tops = [Counter(category[others[r]] for r in np.argsort(-score, kind="stable")[:10]) for score in (text, mixture)]
        print(f"| {threshold:g} | {state.n_slots} ({', '.join(f'{w:.2f}' for w in weights)}) | "
              + " | ".join(", ".join(f"{c} {n}" for c, n in top.most_common()) for top in tops) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--thresholds", default="0.35,0.8,0.85,0.9", help="slot thresholds to try (comma-separated)")
    parser.add_argument("--dataset", help="also a dataset's item texts (e.g. ml-100k): their cosine percentiles")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    thresholds = [float(t) for t in args.thresholds.split(",")]
    encoder = load_encoder(settings)
    items = [parse_item(row) for row in load_catalogue()]
    vectors = dict(zip([i.item_id for i in items], encoder.encode([i.document() for i in items])))
    cos, same = pair_cosines(np.stack(list(vectors.values())), np.array([i.category for i in items]))
    pct = (1, 5, 50, 95)
    print(f"**{settings.model_name}: the sample catalogue** ({len(items)} items, {len(cos)} pairs)\n")
    print("| pairs | " + " | ".join(f"p{p}" for p in pct) + " | min |")
    print("|---|" + "---:|" * (len(pct) + 1))
    for name, mask in (("same category", same), ("different categories", ~same)):
        q = np.percentile(cos[mask], pct)
        print(f"| {name} | " + " | ".join(f"{x:.3f}" for x in q) + f" | {cos[mask].min():.3f} |")
    print(f"\nAUC same vs different category: {auc(cos[same], cos[~same]):.3f}\n")
    behaviour = [e for e in load_demo_behaviour() if e.get("item_id") in vectors]
    category = {i.item_id: i.category for i in items}
    users = sorted({e["user_id"] for e in behaviour})
    print("| slot_threshold | different-category pairs below it | "
          + " | ".join(f"{u} ({len({category[e['item_id']] for e in behaviour if e['user_id'] == u})} cat.)"
                       for u in users) + " |")
    print("|---:|---:|" + "---:|" * len(users))
    for threshold in thresholds:
        params = replace(InterestParams.from_settings(settings), slot_threshold=threshold)
        cells = []
        for user in users:
            state = new_state(encoder.dim)
            for e in behaviour:
                if e["user_id"] == user:
                    state = apply_event(state, vectors[e["item_id"]], e["type"], e["ts"], e["item_id"], params)
            cells.append(f"{state.n_slots} slot{'s' * (state.n_slots != 1)}")
        print(f"| {threshold:g} | {(cos[~same] < threshold).mean():.1%} | " + " | ".join(cells) + " |")
    two_interests(items, vectors, settings, thresholds, ("tea-coffee", "running"))
    if args.dataset:
        data = load_dataset(args.dataset)
        emb = item_embeddings(data, settings)
        rng = np.random.default_rng(0)
        sample = emb[rng.choice(len(emb), size=min(len(emb), 1000), replace=False)]
        dcos, _ = pair_cosines(sample, None)
        q = np.percentile(dcos, pct)
        print(f"\n**{settings.model_name}: {data.name} item texts** (1,000 items drawn with seed 0): pairwise cosine "
              + ", ".join(f"p{p} {x:.3f}" for p, x in zip(pct, q)) + f", min {dcos.min():.3f}; below each "
              "threshold: " + ", ".join(f"{t:g} {(dcos < t).mean():.1%}" for t in thresholds))


if __name__ == "__main__":
    main()
