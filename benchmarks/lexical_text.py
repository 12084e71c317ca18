"""Lexical text vectors: does an exact-word view of the item text rank little-known items better than e5?

    .venv/bin/python -m benchmarks.lexical_text          # ~4 minutes on 2 cores after the embeddings are cached
    .venv/bin/python -m benchmarks.lexical_text --blend  # + the blend with TF-IDF over weights, ~4 minutes more

On ML-100K an item's text is its title, year and genres ("Toy Story (1995). Animation, Children's, Comedy").
A dense encoder weighs the title's words most; the words a user's next little-known film shares with the films
before it are more likely its genres and decade. TF-IDF over the item texts (words in at least two texts,
sublinear term frequency, L2-normalised rows) matches those exactly. This prints the cold-item events' table
(benchmarks/cold_prequential.py: every event whose item had fewer than 5 earlier interactions) with the item
vectors of multilingual-e5-small as served, e5 centred on the dataset's item mean (benchmarks/centred_text.py),
and TF-IDF, each standing in for the text in every model (the interest state and the blend are unchanged).
--blend: the blend with TF-IDF vectors on the validation targets of both modes and the cold-item events, over
text weights, text temperatures (TF-IDF cosines spread over 0-1, e5's over 0.68-1) and cold-item boosts, beside
the default with e5 (benchmarks/centred_text.py --blend prints the same for centred e5).

Nothing here is in the product: see README, Offline evaluation (what was tried) for the outcome.
"""

from __future__ import annotations

import argparse
import logging
import re
import time
from collections import Counter
from collections.abc import Sequence

import numpy as np

from benchmarks.centred_text import BOOSTS, blend_header, blend_rows, centred
from benchmarks.cold_prequential import models_table
from stream_app.offline.datasets import Interactions, load_dataset
from stream_app.offline.protocol import COLD_THRESHOLD, cold_event_queries
from stream_app.offline.replay import item_embeddings
from stream_app.settings import Settings

MIN_HISTORY = 2


def tfidf_vectors(texts: Sequence[str], min_df: int = 2) -> np.ndarray:
    """Rows (1 + log tf) * log(n / df) over the words in at least min_df texts, L2-normalised, float32."""
    words = [re.findall(r"[a-z0-9']+", text.lower()) for text in texts]
    df = Counter(w for ws in words for w in set(ws))
    vocab = {w: i for i, w in enumerate(sorted(w for w, c in df.items() if c >= min_df))}
    out = np.zeros((len(texts), len(vocab)), np.float64)
    for row, ws in enumerate(words):
        for w, tf in Counter(ws).items():
            if w in vocab:
                out[row, vocab[w]] = (1 + np.log(tf)) * np.log(len(texts) / df[w])
    out /= np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)
    return out.astype(np.float32)


def blend(data: Interactions, e5: np.ndarray, lexical: np.ndarray, settings: Settings) -> None:
    """The blend with TF-IDF item vectors over weights, beside the default with e5: validation and cold events."""
    queries = cold_event_queries(data, COLD_THRESHOLD, MIN_HISTORY)
    blend_header(data, len(queries))
    s = settings
    blend_rows(data, "e5 (the default)", e5, queries, s, (s.blend_text_weight,), (s.blend_text_temperature,),
               ((s.blend_cold_collab_weight, s.blend_cold_text_weight),))
    blend_rows(data, "TF-IDF", lexical, queries, s, (0.02, 0.05, 0.1), (0.02, 0.1, 0.2, 0.5), BOOSTS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blend", action="store_true", help="also the blend with TF-IDF over weights (~4 min)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    settings = Settings()
    data = load_dataset("ml-100k")
    queries = cold_event_queries(data, COLD_THRESHOLD, MIN_HISTORY)
    e5 = item_embeddings(data, settings)
    lexical = tfidf_vectors(data.item_texts)
    for name, vectors in (("e5 as served", e5), ("e5 centred on the item mean", centred(e5, e5.mean(0))),
                          (f"TF-IDF ({lexical.shape[1]} words)", lexical)):
        t0 = time.perf_counter()
        print(f"\n### item vectors: {name}\n")
        models_table(data, vectors, settings, queries, COLD_THRESHOLD, MIN_HISTORY)
        print(f"({time.perf_counter() - t0:.0f}s)", flush=True)
    if args.blend:
        blend(data, e5, lexical, settings)


if __name__ == "__main__":
    main()
