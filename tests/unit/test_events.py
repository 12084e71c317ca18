"""The event contract: valid messages parse, every malformed one is rejected with a readable reason."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from stream_app.core.events import (DLQ_KEY_CHARS, DLQ_REASON_CHARS, DLQ_VALUE_BYTES, LIST_TITLE_CHARS, EventError,
                               MessageMeta, dead_letter, list_title, parse_behaviour, parse_item, split_by_event_ids)


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


GOOD = {"event_id": "e", "user_id": "u", "type": "view", "item_id": "sku-1", "ts": 1767225600}


def with_fields(**fields) -> bytes:
    return json.dumps({**GOOD, **fields}).encode()


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (None, "empty value"),
        (b"", "empty value"),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
        (b'{"event_id": "e", "user_id": "u", "type": "view", "item_id": "x", "ts": 1, "extra": '
         + b'{"a": ' * 5000 + b"1" + b"}" * 5000 + b"}", "nested too deeply"),
        (b'{"event_id": "e", "user_id": "u", "type": "view", "item_id": "x", "ts": ' + b"9" * 5000 + b"}",
         "not valid JSON"),
        (b'{"event_id": "e", "user_id": "u", "type": "view", "item_id": "x", "ts": 1e999}', "not a valid time"),
        (b'{"event_id": "e", "user_id": "u", "type": "view", "item_id": "x", "ts": NaN}', "NaN is not a number"),
        (b'{"event_id": "e", "user_id": "u\\ud800", "type": "view", "item_id": "x", "ts": 1}', "lone surrogate"),
        (b'{"event_id": "e", "user_id": "u", "type": "review", "item_id": "x\\udfff", "ts": 1}', "lone surrogate"),
        (b'{"event_id": "e", "user_id": "u", "type": "search", "text": "\\ud800 phone", "ts": 1}', "lone surrogate"),
        (b'{"event_id": "\\ud800", "user_id": "u", "type": "view", "item_id": "x", "ts": 1}', "lone surrogate"),
        (b"\xed\xa0\x80", "not valid UTF-8"),  # a surrogate encoded in the bytes themselves
        (with_fields(type="review", text="x" * (16 * 1024 + 1)), "longer than 16384 bytes"),
        (with_fields(type="review", text="字" * 6000), "longer than 16384 bytes"),  # 18,000 bytes of UTF-8
        (with_fields(type="review", text="a" * (2 << 20)), "over the 1048576-byte limit"),
        (with_fields(user_id="u" * 257), "longer than 256 characters"),
        (with_fields(ts=10**400), "out of range"),
        (with_fields(ts="9" * 100), "longer than 64"),
    ],
    ids=["null", "empty", "deep-array", "deep-object", "5000-digits", "inf", "nan", "surrogate-user",
         "surrogate-item", "surrogate-text", "surrogate-event-id", "utf8-surrogate", "text-16k", "text-16k-cjk",
         "over-1mib", "long-id", "huge-int-ts", "long-ts"],
)
def test_poison_messages_are_rejected_with_their_own_reason(raw, reason):
    with pytest.raises(EventError, match=reason):
        parse_behaviour(raw)


def test_text_at_the_limit_is_accepted():
    e = parse_behaviour(with_fields(type="review", text="x" * (16 * 1024)))
    assert len(e.text) == 16 * 1024


def test_any_unexpected_exception_becomes_an_event_error(monkeypatch):
    import stream_app.core.events as events

    def boom(v):
        raise ZeroDivisionError("nobody expected this")

    monkeypatch.setattr(events, "parse_timestamp", boom)
    with pytest.raises(EventError, match="unreadable message: ZeroDivisionError"):
        parse_behaviour(with_fields())


def test_key_must_be_the_user_id_and_ts_at_most_a_day_ahead_of_the_broker():
    now = 1767225600.0
    assert parse_behaviour(with_fields(), MessageMeta(b"u", now)).user_id == "u"
    for key in (b"someone-else", None, b"\xff"):
        with pytest.raises(EventError, match="key is not the user_id"):
            parse_behaviour(with_fields(), MessageMeta(key, now))
    assert parse_behaviour(with_fields(ts=now + 86_000), MessageMeta(b"u", now)).ts == now + 86_000
    with pytest.raises(EventError, match="ahead of the message's broker timestamp"):
        parse_behaviour(with_fields(ts=now + 86_401), MessageMeta(b"u", now))
    assert parse_behaviour(with_fields(ts=100_000_000), MessageMeta(b"u", now)).ts == 100_000_000  # 1973: fine
    item = json.dumps({"item_id": "sku-1", "title": "t"}).encode()
    assert parse_item(item, MessageMeta(b"sku-1", now)).item_id == "sku-1"
    with pytest.raises(EventError, match="key is not the item_id"):
        parse_item(item, MessageMeta(b"sku-2", now))


def test_items_reject_surrogates_long_titles_and_many_tags():
    with pytest.raises(EventError, match="lone surrogate"):
        parse_item(b'{"item_id": "x-\\ud800", "title": "t"}')
    with pytest.raises(EventError, match="lone surrogate"):
        parse_item(b'{"item_id": "x", "title": "t", "tags": ["\\udc00"]}')
    with pytest.raises(EventError, match="longer than 16384 bytes"):
        parse_item(json.dumps({"item_id": "x", "title": "t" * 20_000}).encode())
    with pytest.raises(EventError, match="more than 64"):
        parse_item(json.dumps({"item_id": "x", "title": "t", "tags": ["a"] * 65}).encode())


def test_forget_needs_no_item():
    e = parse_behaviour(json.dumps({"event_id": "f", "user_id": "u", "type": "forget", "ts": 1}).encode())
    assert e.type == "forget" and e.item_id is None


def test_dead_letter_of_a_huge_value_is_capped_and_keeps_its_digest():
    raw = json.dumps({**GOOD, "text": "\u0001" * 900_000}).encode()  # escapes 6x in JSON: the worst case
    rec = dead_letter(raw, b"k" * 100_000, "r" * 50_000, "behaviour", 0, 7)
    assert rec["value_length"] == len(raw) and rec["value_truncated"]
    assert rec["value_sha256"] == hashlib.sha256(raw).hexdigest()
    assert base64.b64decode(rec["value_b64"]) == raw[:DLQ_VALUE_BYTES]
    assert len(rec["reason"]) == DLQ_REASON_CHARS and len(rec["key"]) == DLQ_KEY_CHARS
    assert len(json.dumps(rec).encode()) < 512 * 1024  # well under the broker's 1 MB
    bare = dead_letter(raw, None, "r", "behaviour", 0, 7, copy_value=False)
    assert bare["value_b64"] is None and bare["value_truncated"] and bare["value_length"] == len(raw)
    small = dead_letter(b"{}", None, "r", "behaviour", 0, 7)
    assert not small["value_truncated"] and small["value_text"] == "{}"


def test_a_list_title_is_cut_to_its_bound_and_a_short_one_kept():
    assert list_title("Hoka Clifton 9") == "Hoka Clifton 9"
    cut = list_title("\x01" * 16_000)
    assert len(cut) == LIST_TITLE_CHARS and cut.endswith("…")


@given(st.lists(st.text(min_size=1, max_size=40), min_size=1, max_size=60), st.integers(200, 3000))
def test_a_recommendation_splits_by_event_ids_each_part_fitting_each_id_once_in_order(ids, limit):
    record = {"user_id": "u", "event_id": ids[-1], "event_ids": ids, "items": [{"item_id": "a", "title": "t"}]}

    def fits(value: dict) -> bool:
        return len(json.dumps(value)) <= limit

    parts = split_by_event_ids(record, fits)
    assert [i for p in parts for i in p["event_ids"]] == ids  # every id exactly once, in order
    assert all(fits(p) or len(p["event_ids"]) == 1 for p in parts)  # only a lone id may be too large
    same = ("user_id", "items")
    assert all({k: p[k] for k in same} == {k: record[k] for k in same} and p["event_id"] == p["event_ids"][-1]
               for p in parts)
    if fits(record):
        assert parts == [record]


def test_a_json_constant_is_rejected_with_one_prefix():
    with pytest.raises(EventError) as raised:
        parse_behaviour(b'{"event_id": "e", "user_id": "u", "type": "view", "item_id": "x", "ts": Infinity}')
    assert str(raised.value) == "not valid JSON: Infinity is not a number"
