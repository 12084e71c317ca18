"""Loads the bundled sample catalogue and demo behaviour, used by the demo and the end-to-end tests."""

from __future__ import annotations

import json
from importlib import resources

DATA_PACKAGE = "stream_app.data"
CATALOGUE_FILE = "catalogue.jsonl"
DEMO_BEHAVIOUR_FILE = "demo_behaviour.jsonl"

CATEGORIES: tuple[str, ...] = (
    "phones", "phone-accessories", "audio", "laptops", "computer-accessories", "kitchen", "tea-coffee",
    "books", "sports-outdoors", "running", "clothing", "beauty", "toys", "home",
)

# Pairs of categories a user interested in one would plausibly be shown the other.
_RELATED_PAIRS: tuple[tuple[str, str], ...] = (
    ("phones", "phone-accessories"),
    ("phones", "audio"),
    ("phone-accessories", "audio"),
    ("phone-accessories", "computer-accessories"),
    ("laptops", "computer-accessories"),
    ("kitchen", "tea-coffee"),
    ("kitchen", "home"),
    ("running", "sports-outdoors"),
    ("running", "clothing"),
    ("sports-outdoors", "clothing"),
)


def _related(pairs: tuple[tuple[str, str], ...]) -> dict[str, set[str]]:
    """Symmetric, reflexive relation over CATEGORIES built from the listed pairs."""
    related = {category: {category} for category in CATEGORIES}
    for a, b in pairs:
        related[a].add(b)
        related[b].add(a)
    return related


RELATED_CATEGORIES: dict[str, set[str]] = _related(_RELATED_PAIRS)


def read_jsonl(name: str) -> list[dict]:
    """Every non-blank line of a bundled .jsonl file, parsed (importlib.resources, so it works when installed)."""
    text = resources.files(DATA_PACKAGE).joinpath(name).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def load_catalogue() -> list[dict]:
    """The sample products as `items` events: item_id, title, text, category, tags, lang."""
    return read_jsonl(CATALOGUE_FILE)


def load_demo_behaviour() -> list[dict]:
    """The scripted demo users' `behaviour` events, in timestamp order."""
    return read_jsonl(DEMO_BEHAVIOUR_FILE)


def category_of() -> dict[str, str]:
    """item_id -> category for the sample catalogue (for checking recommendations by topic)."""
    return {item["item_id"]: item["category"] for item in load_catalogue()}
