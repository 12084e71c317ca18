"""Checks the bundled sample catalogue and demo behaviour against the `items` and `behaviour` contracts."""

from __future__ import annotations

import json
from collections import Counter
from importlib import resources

import pytest

from stream_app.sample_data import (
    CATEGORIES,
    RELATED_CATEGORIES,
    category_of,
    load_catalogue,
    load_demo_behaviour,
)

EVENT_TYPES = {"view", "click", "cart", "purchase", "review", "search", "dislike"}
ITEM_FIELDS = {"item_id": str, "title": str, "text": str, "category": str, "tags": list, "lang": str}


@pytest.fixture(scope="module")
def catalogue() -> list[dict]:
    return load_catalogue()


@pytest.fixture(scope="module")
def demo() -> list[dict]:
    return load_demo_behaviour()


def _has_cjk(text: str) -> bool:
    return any("\u4e00" <= ch <= "\u9fff" for ch in text)


@pytest.mark.parametrize("name", ["catalogue.jsonl", "demo_behaviour.jsonl"])
def test_every_line_is_a_json_object(name: str) -> None:
    lines = resources.files("stream_app.data").joinpath(name).read_text(encoding="utf-8").splitlines()
    assert lines
    for line in lines:
        assert isinstance(json.loads(line), dict)


def test_catalogue_items_have_contract_fields(catalogue: list[dict]) -> None:
    assert 300 <= len(catalogue) <= 400
    for item in catalogue:
        assert set(item) == set(ITEM_FIELDS), item
        for field, kind in ITEM_FIELDS.items():
            assert isinstance(item[field], kind), (field, item)
        assert item["title"].strip() and item["text"].strip()
        assert item["lang"] in {"en", "zh"}
        assert item["category"] in CATEGORIES
        assert item["tags"] and all(isinstance(t, str) and t.strip() for t in item["tags"])


def test_chinese_items_are_written_in_chinese_and_english_ones_not(catalogue: list[dict]) -> None:
    for item in catalogue:
        assert _has_cjk(item["text"]) == (item["lang"] == "zh"), item
        assert _has_cjk(item["title"]) == (item["lang"] == "zh"), item
    for item in catalogue:
        if item["lang"] == "en":
            assert all(t == t.lower() for t in item["tags"]), item


def test_language_mix_is_about_sixty_forty(catalogue: list[dict]) -> None:
    share_en = sum(item["lang"] == "en" for item in catalogue) / len(catalogue)
    assert 0.5 <= share_en <= 0.7


def test_ids_titles_and_texts_are_unique(catalogue: list[dict]) -> None:
    for field in ("item_id", "title", "text"):
        values = [item[field] for item in catalogue]
        assert len(values) == len(set(values)), [v for v, n in Counter(values).items() if n > 1]


def test_every_category_has_at_least_ten_items(catalogue: list[dict]) -> None:
    counts = Counter(item["category"] for item in catalogue)
    assert set(counts) == set(CATEGORIES)
    assert min(counts.values()) >= 10, counts


@pytest.mark.parametrize("category", ["phones", "phone-accessories", "audio", "tea-coffee"])
def test_key_categories_have_both_languages(catalogue: list[dict], category: str) -> None:
    langs = Counter(item["lang"] for item in catalogue if item["category"] == category)
    assert langs["en"] >= 5 and langs["zh"] >= 5, langs


def test_demo_events_follow_behaviour_contract(demo: list[dict]) -> None:
    ids = [event["event_id"] for event in demo]
    assert len(ids) == len(set(ids))
    for event in demo:
        assert event["type"] in EVENT_TYPES
        assert isinstance(event["user_id"], str) and event["user_id"]
        assert isinstance(event["ts"], int | float)
        if event["type"] in {"review", "search"}:
            assert isinstance(event["text"], str) and event["text"].strip()
        if event["type"] != "search":
            assert isinstance(event["item_id"], str)


def test_demo_item_ids_exist_in_catalogue(demo: list[dict]) -> None:
    categories = category_of()
    missing = [event for event in demo if "item_id" in event and event["item_id"] not in categories]
    assert not missing


def test_demo_users_scripts(demo: list[dict]) -> None:
    per_user = Counter(event["user_id"] for event in demo)
    assert set(per_user) == {"alice", "bob", "xiaoming", "mei"}
    assert all(8 <= n <= 12 for n in per_user.values()), per_user
    assert any(event["type"] == "dislike" for event in demo)
    searches = {(e["user_id"], e["text"]) for e in demo if e["type"] == "search"}
    assert ("alice", "fast charging cable") in searches
    assert ("xiaoming", "手机 充电器") in searches
    assert ("mei", "green tea 绿茶 礼盒") in searches
    assert any(e["user_id"] == "bob" and e["type"] == "review" and "cushioning" in e["text"] for e in demo)


def test_demo_timestamps_increase_per_user_and_overall(demo: list[dict]) -> None:
    stamps = [event["ts"] for event in demo]
    assert stamps == sorted(stamps)
    for user in {event["user_id"] for event in demo}:
        user_ts = [event["ts"] for event in demo if event["user_id"] == user]
        assert all(a < b for a, b in zip(user_ts, user_ts[1:]))


def test_demo_users_touch_their_expected_categories(demo: list[dict]) -> None:
    categories = category_of()
    expected = {"alice": "phone-accessories", "bob": "running", "xiaoming": "phones", "mei": "tea-coffee"}
    for user, category in expected.items():
        touched = [categories[e["item_id"]] for e in demo if e["user_id"] == user and "item_id" in e]
        assert all(c in RELATED_CATEGORIES[category] for c in touched), (user, touched)
        assert Counter(touched).most_common(1)[0][0] in RELATED_CATEGORIES[category]


def test_related_categories_is_symmetric_reflexive_and_complete() -> None:
    assert set(RELATED_CATEGORIES) == set(CATEGORIES)
    for category, related in RELATED_CATEGORIES.items():
        assert category in related
        assert related <= set(CATEGORIES)
        for other in related:
            assert category in RELATED_CATEGORIES[other]
    assert {"phone-accessories", "audio"} <= RELATED_CATEGORIES["phones"]
    assert "books" not in RELATED_CATEGORIES["phones"]
