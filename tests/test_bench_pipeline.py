"""Smoke test of `stream-app bench pipeline` at tiny sizes on the real broker (numbers are not checked, only
that every phase ran, every event was accounted for and the JSON has its fields)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.pipeline import top_frames
from benchmarks.workload import Users, catalogue, known_item_events, text_events
from stream_app.bench import main as bench_main

pytestmark = pytest.mark.kafka


def test_workload_is_deterministic_and_mixes_english_and_chinese():
    a, b = catalogue(300), catalogue(300)
    assert a.items == b.items and len({i["title"] for i in a.items}) == 300
    assert any(i["tags"][0] == "zh" for i in a.items) and any(i["tags"][0] == "en" for i in a.items)
    users = Users(a, 10)
    known = known_item_events(users, 50, "k", seed=1)
    assert known == known_item_events(Users(b, 10), 50, "k", seed=1)
    assert {e["item_id"] for e in known} <= {i["item_id"] for i in a.items}
    texts = text_events(users, 10, "t", seed=2)
    assert {e["type"] for e in texts} == {"review", "search"} and all(e["text"] for e in texts)


def test_top_frames_reads_collapsed_stacks(tmp_path: Path):
    raw = tmp_path / "p.txt"
    raw.write_text("main (a.py:1);work (a.py:5) 3\nmain (a.py:1);idle (a.py:9) 1\n")
    assert top_frames(raw)[0] == (75.0, 75.0, "work (a.py)")


def test_bench_pipeline_runs_end_to_end_at_tiny_sizes(kafka_bootstrap: str, tmp_path: Path, monkeypatch):
    monkeypatch.setenv("STREAM_APP_KAFKA_BOOTSTRAP", kafka_bootstrap)
    out = tmp_path / "bench.json"
    code = bench_main(["pipeline", "--items", "120", "--users", "15", "--events", "60", "--text-events", "10",
                       "--rate", "20", "--rate-seconds", "1", "--naive-events", "12", "--encoder-seconds", "0.2",
                       "--stall-seconds", "60", "--json", str(out)])
    assert code == 0
    r = json.loads(out.read_text())
    for key in ("items_per_s", "events_per_s", "text_events_per_s", "naive_events_per_s", "peak_rss_mb"):
        assert r[key] > 0, key
    assert set(r["latency_ms"]) == {"p50", "p95", "p99"}
    assert r["sizes"]["items"] == 120 and r["sizes"]["users"] == 15
    assert r["ingest"]["indexed"] == 120
    for phase in [*r["phases"].values(), *r["naive"].values()]:
        assert phase["missing"] == 0 and phase["dead_lettered"] == 0
    assert sum(r["consumer_lag"].values()) == 0
