"""Metrics (one object, two views), online evaluation, health rules and the explanation maths."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from stream_app.core import collab
from stream_app.core.collab import CollabParams, CollabState
from stream_app.stream.explain import attention_weights, because, cooc_contributions, score_parts
from stream_app.stream.metrics import Histogram, Metrics, MetricsCollector, OnlineEval


def scrape(m: Metrics) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(MetricsCollector(m))
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            out[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return out


def test_online_eval_scores_only_the_next_event_against_served_and_popular_lists():
    ev = OnlineEval(k=3)
    ev.list_sent("u", ["a", "b", "c", "d"], ["p", "a"])
    ev.next_event("u", "search", None)  # no item: waits for the next item event
    ev.next_event("u", "view", "a")  # hit for both lists
    ev.next_event("u", "view", "b")  # no new list since: not a trial
    ev.list_sent("u", ["x"], ["p"])
    ev.next_event("u", "purchase", "p")  # popular hit only
    ev.list_sent("v", ["d"], ["p"])
    ev.next_event("v", "view", "d")  # "d" was 4th for u but v's list has it
    snap = ev.snapshot()["by_type"]
    assert snap["view"] == {"trials": 2, "hr_served": 1.0, "hr_popular": 0.5}
    assert snap["purchase"] == {"trials": 1, "hr_served": 0.0, "hr_popular": 1.0}
    assert snap["all"] == {"trials": 3, "hr_served": round(2 / 3, 4), "hr_popular": round(2 / 3, 4)}
    ev.list_sent("w", ["d", "e", "f", "g"], [])
    ev.next_event("w", "view", "g")  # beyond k=3: a miss
    assert ev.snapshot()["by_type"]["view"]["hr_served"] == round(2 / 3, 4)


def test_histogram_buckets_and_window():
    h = Histogram(buckets=(1, 10))
    for v in (0.5, 1, 5, 50):
        h.observe(v, now=100.0)
    assert h.counts == [2, 1, 1] and h.n == 4 and h.total == 56.5
    assert h.values_since(99.0) == [50, 5, 1, 0.5] and h.values_since(100.0) == []
    assert h.percentile(50) == pytest.approx(3.0)


def test_prometheus_view_reads_the_same_numbers():
    m = Metrics(top_k=10)
    m.events = 7
    m.observe_latency(20.0)
    m.observe_latency(300.0)
    m.dead_letter("behaviour", 1, 42, b"\xe5\xb0\x8f\xe6\x98\x8e", "unknown item")
    m.online.list_sent("u", ["a"], ["b"])
    m.online.next_event("u", "view", "a")
    m.lag = {"behaviour[0]": 5}
    s = scrape(m)
    assert s["stream_app_events_total"] == 7
    assert s["stream_app_dead_letters_total"] == 1 and s["stream_app_dead_letters_by_topic_total{topic=behaviour}"] == 1
    assert s["stream_app_latency_ms_count"] == 2 and s["stream_app_latency_ms_bucket{le=25.0}"] == 1
    assert s["stream_app_latency_ms_bucket{le=+Inf}"] == 2
    assert s["stream_app_online_hits_total{event_type=view,list=served}"] == 1
    assert s["stream_app_online_hits_total{event_type=view,list=popular}"] == 0
    assert s["stream_app_online_hit_rate{event_type=all,list=served}"] == 1.0
    assert s["stream_app_consumer_lag{partition=behaviour[0]}"] == 5
    assert m.snapshot()["events"] == 7 and m.dead_letter_log[-1]["key"] == "小明"
    m.online.list_sent("小明", ["a"], ["b"])
    m.forget_user("小明")  # a forgotten user leaves no trace in the metrics
    assert not m.dead_letter_log and "小明" not in m.online.pending


def test_health_is_not_ok_until_ready_and_while_an_agent_crash_loops():
    m = Metrics(crash_window_s=60)
    assert not m.health()["ok"] and "starting" in m.health()["problems"][0]
    m.ready = True
    assert m.health()["ok"]
    with pytest.raises(RuntimeError), m.agent_running("stream_app.stream.app.process_behaviour"):
        raise RuntimeError("model missing")
    h = m.health()
    assert not h["ok"] and h["agents"]["process_behaviour"]["status"] == "crash-looping"
    assert "model missing" in h["problems"][0]
    m.agent_batch_ended("stream_app.stream.app.process_behaviour")  # it works again
    assert m.health()["ok"]
    m.startup_error = "pipeline failed to start: FileNotFoundError: model.onnx"
    assert m.health()["problems"] == [m.startup_error]


def test_a_store_call_running_too_long_is_unhealthy():
    m = Metrics(store_stuck_s=0.0)
    m.ready = True
    with m.store_call("search"):
        time.sleep(0.01)
        assert any("vector store stuck: search" in p for p in m.health()["problems"])
    assert m.health()["ok"]


def test_an_encoder_call_running_too_long_is_unhealthy_and_counted_once_done():
    m = Metrics()
    m.ready = True
    call = m.call_started("encoder", "8 texts", stuck_after_s=0.0)
    time.sleep(0.01)
    assert any("encoder stuck: 8 texts" in p for p in m.health()["problems"])
    m.call_ended(call)
    m.observe_encoder(8, 0.5)
    assert m.health()["ok"]
    assert (m.encoded_texts, m.encoder_calls, m.encoder_s, m.encoder_batch_max) == (8, 1, 0.5, 8)


def test_sample_gives_rates_and_interval_percentiles():
    m = Metrics()
    t0 = time.time() - 1
    m.sample(now=t0)
    m.events += 10
    m.observe_latency(5.0)  # observed now, after the first sample
    m.observe_encoder(8, 0.012)
    point = m.sample(now=t0 + 2)
    assert point["events_per_s"] == 5.0 and point["latency_p50_ms"] == 5.0
    assert point["encoder_batch"] == 8 and point["encoder_ms"] == 12.0 and point["search_ms"] is None


def test_attention_is_a_softmax_over_items_per_slot():
    rng = np.random.default_rng(0)
    items, slots = rng.normal(size=(5, 16)), rng.normal(size=(2, 16))
    a = attention_weights(items, slots, temperature=0.1)
    assert a.shape == (5, 2) and np.allclose(a.sum(axis=0), 1.0)
    unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    logits = unit(items) @ unit(slots).T / 0.1
    expected = np.exp(logits[:, 0]) / np.exp(logits[:, 0]).sum()
    assert np.allclose(a[:, 0], expected)
    assert a[np.argmax(unit(items) @ unit(slots[1])), 1] == a[:, 1].max()  # most similar item gets most attention
    assert attention_weights(np.zeros((0, 16)), slots, 0.1).shape == (0, 2)


def test_cooc_contributions_sum_to_the_blend_score():
    params = CollabParams(window=5, recency=0.8)
    state = CollabState()
    for t, (prev, item) in enumerate([((), "a"), (("a",), "b"), (("a", "b"), "c"), ((), "b"), (("b",), "c")]):
        collab.observe(state, item, list(prev), 1000.0 + t, params)
    recent = ["a", "b"]
    scores = collab.cooc_scores(state, recent, params)
    parts = cooc_contributions(state, recent, "c", params)
    assert {h for h, _ in parts} == {"a", "b"}
    assert math.isclose(sum(c for _, c in parts), scores["c"], rel_tol=1e-12)


def test_score_parts_and_because():
    slots = np.array([[1.0, 0.0], [0.0, 1.0]])
    parts = score_parts(np.array([0.6, 0.8]), slots, np.array([0.7, 0.3]), {"r1": np.array([0.0, 1.0])},
                        [("r2", 0.4), ("r1", 0.1)], popularity=3)
    assert parts["text_by_slot"] == [0.42, 0.24] and parts["text"] == 0.42 and parts["text_slot"] == 0
    assert parts["cooc"] == 0.5 and parts["cooc_from"][0] == {"item_id": "r2", "contribution": 0.4}
    assert parts["most_similar_recent"] == {"item_id": "r1", "cosine": 0.8}
    assert because(parts, {"r2": "华为 耳机"}) == "people who interacted with “华为 耳机” also chose it"
    parts["cooc_from"] = []
    assert because(parts, {}) == "it is like “r1” (cosine 0.80)"
    # an item the counters barely know (below the cold-item support) says so; a known one does not
    assert (because(parts, {}, support=1.2, cold_support=5)
            == "it is like “r1” (cosine 0.80); little known: about 1 interaction so far")
    assert because(parts, {}, support=0.0, cold_support=5).endswith("; little known: no interactions yet")
    assert because(parts, {}, support=3.0, cold_support=5).endswith("; little known: about 3 interactions so far")
    assert because(parts, {}, support=5.0, cold_support=5) == "it is like “r1” (cosine 0.80)"


def test_each_call_is_stuck_only_past_its_own_deadline():
    """An encoder run is judged by the encoder's deadline (STREAM_APP_ENCODER_TIMEOUT_S), not the store's: a
    long but live batch of texts keeps the worker healthy while a store call of the same age does not."""
    m = Metrics(store_stuck_s=0.0)
    m.ready = True
    call = m.call_started("encoder", "64 texts", stuck_after_s=60.0)
    time.sleep(0.01)
    assert m.health()["ok"]
    with m.store_call("search"):
        time.sleep(0.01)
        problems = m.health()["problems"]
        assert len(problems) == 1 and "vector store stuck: search" in problems[0]
    m.call_ended(call)


def test_counters_move_only_through_count_and_only_known_ones():
    m = Metrics()
    m.count("events", 3)
    m.count("batches")
    assert (m.events, m.batches) == (3, 1)
    with pytest.raises(ValueError, match="unknown counter"):
        m.count("evnets")


def test_an_agent_on_one_batch_too_long_is_unhealthy_until_it_leaves_it():
    m = Metrics(agent_stuck_s=0.0)
    m.ready = True
    m.agent_batch_started("stream_app.stream.app.process_behaviour")
    time.sleep(0.01)
    health = m.health()
    assert health["agents"]["process_behaviour"]["status"] == "stuck"
    assert any("process_behaviour has been on one batch" in p for p in health["problems"])
    m.agent_batch_ended("stream_app.stream.app.process_behaviour")
    assert m.health()["ok"] and m.health()["agents"]["process_behaviour"]["on_batch_s"] is None
    m.agent_batch_started("stream_app.stream.app.index_items")
    m.agent_batch_ended("stream_app.stream.app.index_items", done=False)  # cancelled: not a served batch
    assert m.health()["ok"] and m.health()["agents"]["index_items"]["last_batch_s_ago"] is None
