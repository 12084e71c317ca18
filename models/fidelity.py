"""How faithful an encoder graph is to its fp32 graph: held-out texts and the measures the tests and bench share.

The shipped sample catalogue (stream_app/data/catalogue.jsonl) is split once by position: every 4th item is
calibration material for static int8 (its activation ranges), the other items are never calibrated on and are
what fidelity is measured on. Two sets are measured separately because they stress different lengths:
``titles`` (~10 tokens) and ``reviews`` (three item descriptions joined, ~100 tokens).

Measures (vs the fp32 graph's vectors of the same texts):
- top-10 neighbour overlap: for each text, |top10_fp32 ∩ top10_graph| / 10 over cosine neighbours within the set
  (self excluded), averaged. The service ranks by similarity, so this is the number that matters.
- alone vs batch: the minimum cosine between a text encoded on its own and the same text inside a large batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources

import numpy as np

CATALOGUE = resources.files("stream_app") / "data" / "catalogue.jsonl"  # package data, shipped with the wheel
CALIBRATION_EVERY = 4  # items 0, 4, 8, ... calibrate; every other item is held out
K = 10
REVIEW_PARTS = 3


def _items() -> list[dict]:
    """The sample catalogue's items in file order."""
    lines = CATALOGUE.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def _reviews(descriptions: Sequence[str], n: int) -> list[str]:
    """n review-like texts of REVIEW_PARTS descriptions each, picked by a fixed stride (deterministic)."""
    m = len(descriptions)
    return [" ".join(descriptions[(i * 7 + j * 13) % m] for j in range(REVIEW_PARTS)) for i in range(n)]


def calibration_texts() -> list[str]:
    """Texts whose activation ranges calibrate static int8: titles, descriptions and reviews of the calibration items."""
    items = [item for i, item in enumerate(_items()) if i % CALIBRATION_EVERY == 0]
    titles = [item["title"] for item in items if item.get("title")]
    texts = [item["text"] for item in items if item.get("text")]
    return titles + texts + _reviews(texts, 40)


def evaluation_sets() -> dict[str, list[str]]:
    """Held-out texts (never calibrated on): {'titles': [...], 'reviews': [...]}."""
    items = [item for i, item in enumerate(_items()) if i % CALIBRATION_EVERY != 0]
    texts = [item["text"] for item in items if item.get("text")]
    return {"titles": [item["title"] for item in items if item.get("title")], "reviews": _reviews(texts, 200)}


def neighbour_overlap(reference: np.ndarray, other: np.ndarray, k: int = K) -> float:
    """Mean fraction of shared top-k cosine neighbours (self excluded) between two embeddings of one corpus."""
    def top(x: np.ndarray) -> np.ndarray:
        sim = x @ x.T
        np.fill_diagonal(sim, -np.inf)
        return np.argpartition(-sim, k, axis=1)[:, :k]

    ta, tb = top(reference), top(other)
    return float(np.mean([len(set(r) & set(s)) / k for r, s in zip(ta, tb)]))


@dataclass(frozen=True)
class Fidelity:
    """One graph on one text set, against the fp32 graph."""

    overlap: float  # mean top-10 neighbour overlap with fp32
    mean_cos: float  # mean cosine to the fp32 vector of the same text
    min_cos: float
    alone_vs_batch: float  # min cosine of a text encoded alone vs inside the whole set in one call


def measure(encode: Callable[[list[str]], np.ndarray], reference: np.ndarray, texts: Sequence[str],
            alone: int = 40) -> Fidelity:
    """Fidelity of `encode` on `texts` vs `reference` (fp32 vectors of the same texts); `alone` texts re-encoded singly."""
    texts = list(texts)
    batch = encode(texts)
    cos = (batch * reference).sum(1)
    step = max(1, len(texts) // alone)
    picked = list(range(0, len(texts), step))[:alone]
    singles = np.concatenate([encode([texts[i]]) for i in picked])
    return Fidelity(
        overlap=neighbour_overlap(reference, batch),
        mean_cos=float(cos.mean()),
        min_cos=float(cos.min()),
        alone_vs_batch=float((singles * batch[picked]).sum(1).min()),
    )
