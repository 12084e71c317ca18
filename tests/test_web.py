"""Web view pieces without a worker: content negotiation, the user page's HTML, shipped assets, table codecs."""

from __future__ import annotations

import json
from types import SimpleNamespace

from stream_app.web import STATIC, json_bytes, render_user_page, wants_json


def req(query: dict | None = None, accept: str = "") -> SimpleNamespace:
    return SimpleNamespace(query=query or {}, headers={"Accept": accept} if accept else {})


def test_browsers_get_html_and_programs_json():
    assert not wants_json(req(accept="text/html,application/xhtml+xml,*/*;q=0.8"))
    assert wants_json(req(accept="application/json"))
    assert wants_json(req())  # curl, urllib
    assert wants_json(req({"format": "json"}, accept="text/html"))
    assert not wants_json(req({"format": "html"}))


def test_json_keeps_chinese_readable():
    assert json_bytes({"title": "华为 耳机"}).decode() == '{\n "title": "华为 耳机"\n}'


def test_user_page_shows_titles_attention_and_score_parts_escaped():
    data = {
        "user_id": "<小明>", "known": True, "events": 3, "last_ts": 1767225600.0, "slots": 2,
        "usable_slot_weights": [0.7, 0.3],
        "behaviours": [{"item_id": "sku-1", "title": "华为 FreeBuds", "attention": [0.8125, 0.1], "slot": 0},
                       {"item_id": "sku-2", "title": "Hoka <Clifton>", "attention": [0.1875, 0.9], "slot": 1}],
        "attention_note": "a_jk = softmax",
        "last_recommendation": {"strategy": "blend", "slot_weights": [0.7, 0.3], "items": []},
        "why": [{"item_id": "sku-3", "title": "华为 充电器", "score": 0.25,
                 "because": "people who interacted with “华为 FreeBuds” also chose it",
                 "parts": {"text_by_slot": [0.5, 0.1], "text": 0.5, "text_slot": 0, "cooc": 0.4,
                           "cooc_from": [{"item_id": "sku-1", "title": "华为 FreeBuds", "contribution": 0.4}],
                           "popularity": 2.0, "most_similar_recent": None}}],
    }
    page = render_user_page(data)
    assert "&lt;小明&gt;" in page and "<小明>" not in page
    assert "Hoka &lt;Clifton&gt;" in page
    assert "0.81" in page and "0.90" in page  # attention weights of both behaviours
    assert "slot 1<br><small>weight 0.70" in page
    assert "华为 充电器" in page and "0.400 ← 华为 FreeBuds" in page and "because people who interacted" in page
    assert "<script" not in page  # the user page needs no script


def test_dashboard_assets_ship_with_the_package_and_need_no_network():
    names = {p.name for p in STATIC.iterdir()}
    assert {"dashboard.html", "dashboard.js", "style.css"} <= names
    for path in STATIC.iterdir():
        text = path.read_text("utf-8")
        assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text


def test_raw_tables_changelog_decodes_raw_keys_and_values():
    """Recovery reads the changelog with its topic's codecs: they must be raw, like the writes."""
    from stream_app.app import app, user_state

    schema = user_state.changelog_topic.schema
    key = app.serializers.loads_key(str, "小明".encode(), serializer=schema.key_serializer)
    value = app.serializers.loads_value(bytes, b"\x00\x01", serializer=schema.value_serializer)
    assert key == "小明" and value == b"\x00\x01"
    assert json.loads(json_bytes({"k": key})) == {"k": "小明"}
