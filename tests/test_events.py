"""The event contract: valid messages parse, every malformed one is rejected with a readable reason."""

from __future__ import annotations

import base64
import json

import pytest

from stream_app.events import EventError, dead_letter, parse_behaviour, parse_item


def b(obj) -> bytes:
    return json.dumps(obj).encode()


def test_behaviour_parses_epoch_and_iso_timestamps():
    e = parse_behaviour(b({"event_id": "e1", "user_id": "u", "type": "view", "item_id": "sku-1", "ts": 1767225600}))
    assert (e.user_id, e.type, e.item_id, e.ts) == ("u", "view", "sku-1", 1767225600.0)
    iso = parse_behaviour(b({"event_id": "e2", "user_id": "u", "type": "view", "item_id": "x", "ts": "2026-01-01T00:00:00Z"}))
    assert iso.ts == 1767225600.0
    naive = parse_behaviour(b({"event_id": "e3", "user_id": "u", "type": "view", "item_id": "x", "ts": "2026-01-01T00:00:00"}))
    assert naive.ts == 1767225600.0


def test_search_needs_text_and_keeps_chinese():
    e = parse_behaviour(b({"event_id": "e", "user_id": "小明", "type": "search", "text": "手机 充电器", "ts": 1}))
    assert (e.user_id, e.text, e.item_id) == ("小明", "手机 充电器", None)
    with pytest.raises(EventError, match="search event needs"):
        parse_behaviour(b({"event_id": "e", "user_id": "u", "type": "search", "ts": 1}))


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe", "not valid UTF-8"),
        (b"[1, 2]", "expected a JSON object"),
        (b({"user_id": "u", "type": "view", "item_id": "x", "ts": 1}), "missing required field 'event_id'"),
        (b({"event_id": "e", "type": "view", "item_id": "x", "ts": 1}), "missing required field 'user_id'"),
        (b({"event_id": "e", "user_id": "u", "type": "teleport", "item_id": "x", "ts": 1}), "unknown event type"),
        (b({"event_id": "e", "user_id": "u", "type": "view", "ts": 1}), "needs an 'item_id'"),
        (b({"event_id": "e", "user_id": "u", "type": "view", "item_id": "x"}), "missing required field 'ts'"),
        (b({"event_id": "e", "user_id": "u", "type": "view", "item_id": "x", "ts": "yesterday"}), "neither epoch"),
        (b({"event_id": "e", "user_id": "u", "type": "view", "item_id": "x", "ts": 1767225600000}), "milliseconds"),
        (b({"event_id": "e", "user_id": ["u"], "type": "view", "item_id": "x", "ts": 1}), "must be a string"),
    ],
)
def test_malformed_behaviour_is_rejected_with_reason(raw, reason):
    with pytest.raises(EventError, match=reason):
        parse_behaviour(raw)


def test_items_parse_and_deletion_needs_no_title():
    item = parse_item(b({"item_id": "sku-1", "title": "USB-C cable", "text": "1 m braided", "category": "phone-accessories",
                         "tags": ["cable"]}))
    assert item.document() == "USB-C cable. 1 m braided"
    assert item.payload()["category"] == "phone-accessories"
    gone = parse_item(b({"item_id": "sku-1", "deleted": True}))
    assert gone.deleted and gone.title == ""
    with pytest.raises(EventError, match="'title'"):
        parse_item(b({"item_id": "sku-2"}))
    with pytest.raises(EventError, match="tags"):
        parse_item(b({"item_id": "sku-2", "title": "t", "tags": "a,b"}))


def test_dead_letter_keeps_the_original_bytes():
    raw = b"\xff not json"
    rec = dead_letter(raw, b"user-1", "not valid JSON", "behaviour", 3, 42)
    assert base64.b64decode(rec["value_b64"]) == raw
    assert rec["value_text"] is None
    assert (rec["topic"], rec["partition"], rec["offset"], rec["key"]) == ("behaviour", 3, 42, "user-1")
    json.dumps(rec)  # serialisable as it goes to the DLQ topic
