"""Merging per-slot hits: max of weighted similarity, exclusion, dedupe, deterministic tie-break; popularity."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stream_app.core.ranking import merge_slot_hits, popular_items


def test_scores_by_max_weighted_similarity_and_dedupes():
    hits = [
        [("a", 0.9), ("b", 0.8), ("c", 0.1)],
        [("b", 0.95), ("d", 0.7), ("a", 0.2)],
    ]
    out = merge_slot_hits(hits, np.array([0.6, 0.4]), exclude=(), k=10)
    expected = {"a": 0.54, "b": max(0.48, 0.38), "c": 0.06, "d": 0.28}
    assert [i for i, _ in out] == ["a", "b", "d", "c"]
    for item_id, score in out:
        assert score == pytest.approx(expected[item_id])
    assert len({i for i, _ in out}) == len(out)


def test_excludes_consumed_and_truncates_to_k():
    hits = [[("a", 0.9), ("b", 0.8), ("c", 0.7), ("d", 0.6)]]
    assert merge_slot_hits(hits, np.array([1.0]), exclude={"a", "c"}, k=1) == [("b", 0.8)]
    assert merge_slot_hits(hits, np.array([1.0]), exclude=["b"], k=2) == [("a", 0.9), ("c", 0.7)]
    assert merge_slot_hits(hits, np.array([1.0]), exclude=(), k=0) == []
    assert merge_slot_hits([], np.zeros(0), exclude=(), k=5) == []


def test_ties_break_by_item_id():
    hits = [[("z", 0.5), ("m", 0.5)], [("a", 1.0)]]
    out = merge_slot_hits(hits, np.array([1.0, 0.5]), exclude=(), k=3)
    assert [i for i, _ in out] == ["a", "m", "z"]


def test_duplicate_within_one_slot_keeps_best():
    out = merge_slot_hits([[("a", 0.2), ("a", 0.7)]], np.array([1.0]), exclude=(), k=5)
    assert out == [("a", 0.7)]


def test_rejects_mismatched_or_non_finite_input():
    with pytest.raises(ValueError):
        merge_slot_hits([[("a", 1.0)]], np.array([0.5, 0.5]), exclude=(), k=3)
    with pytest.raises(ValueError):
        merge_slot_hits([[("a", float("nan"))]], np.array([1.0]), exclude=(), k=3)
    with pytest.raises(ValueError):
        merge_slot_hits([[("a", 1.0)]], np.array([np.inf]), exclude=(), k=3)


hit_lists = st.lists(
    st.lists(st.tuples(st.sampled_from("abcdefghij"), st.floats(-1, 1, allow_nan=False)), max_size=8),
    min_size=1,
    max_size=4,
)


@settings(max_examples=200, deadline=None)
@given(hits=hit_lists, data=st.data(), k=st.integers(0, 12))
def test_merge_matches_brute_force(hits, data, k):
    weights = np.array(data.draw(st.lists(st.floats(0, 1), min_size=len(hits), max_size=len(hits))))
    exclude = set(data.draw(st.lists(st.sampled_from("abcdefghij"), max_size=4)))
    out = merge_slot_hits(hits, weights, exclude, k)
    best: dict[str, float] = {}
    for w, slot in zip(weights, hits):
        for item_id, sim in slot:
            if item_id not in exclude:
                best[item_id] = max(best.get(item_id, -np.inf), w * sim)
    expected = sorted(best.items(), key=lambda kv: (-kv[1], kv[0]))[:k]
    assert out == expected
    assert not exclude & {i for i, _ in out}


def test_popular_items_fallback():
    counts = {"a": 3.0, "b": 10.0, "c": 3.0, "d": 0.0, "e": 7.5}
    assert popular_items(counts, exclude={"b"}, k=3) == [("e", 7.5), ("a", 3.0), ("c", 3.0)]
    assert popular_items(counts, exclude=(), k=10) == [("b", 10.0), ("e", 7.5), ("a", 3.0), ("c", 3.0)]
    assert popular_items({}, exclude=(), k=3) == []
    with pytest.raises(ValueError):
        popular_items({"a": float("inf")}, exclude=(), k=1)


# ---- the one ranking function --------------------------------------------------------------------------------

from stream_app.core.ranking import RankParams, candidate_pool, rank, text_affinity  # noqa: E402


def test_pool_takes_each_signals_best_unexcluded_items() -> None:
    p = RankParams(pool=2, text_pool=2)
    text = {"t1": 0.9, "t2": 0.8, "t3": 0.7, "x": 0.99}
    cooc = {f"c{k}": float(10 - k) for k in range(5)} | {"x": 100.0}
    seq = {"s1": 1.0, "t1": 5.0}
    pool = candidate_pool(text, cooc, seq, ["x", "p1", "p2", "p3"], {"x", "c0"}, p)
    # text t1,t2; cooc c1,c2 (c0 and x excluded, however high); seq t1 (dup), s1; popular p1,p2 (x excluded)
    assert pool == ["t1", "t2", "c1", "c2", "s1", "p1", "p2"]
    # the text pool has its own size (the search limit)
    assert candidate_pool(text, cooc, seq, ["x", "p1", "p2", "p3"], {"x", "c0"}, RankParams(pool=2, text_pool=3))[:3] \
        == ["t1", "t2", "t3"]


def test_rank_blend_hand_computed_with_parts() -> None:
    p = RankParams(pool=10, text_weight=1.0, cooc_weight=1.0, seq_weight=2.0, pop_weight=0.5, text_temperature=0.1,
                   cold_text_weight=0.5, cold_collab_weight=0.0, cold_support=2.0)
    e = np.eye(3, dtype=np.float32)
    vectors = {"a": e[0], "b": e[1], "c": (e[0] + e[1]) / np.sqrt(2)}
    slots, weights = np.stack([e[0], e[1]]), np.array([0.6, 0.4])
    cooc, seq, pop = {"b": 2.0, "c": 1.0}, {"a": 3.0}, {"a": 4.0, "c": 2.0}
    support = {"a": 2.0, "b": 0.0}  # c: never seen
    out = rank(["a", "b", "c", "gone"], vectors, slots, weights, cooc, seq, pop, support, p, k=5)
    text = {"a": 0.6, "b": 0.4, "c": 0.6 / np.sqrt(2)}
    tw = {i: 1.0 + 0.5 * np.exp(-support.get(i, 0.0) / 2.0) for i in text}
    expect = {i: tw[i] * np.exp((text[i] - 0.6) / 0.1) + cooc.get(i, 0) / 2 + 2 * seq.get(i, 0) / 3 + 0.5 * pop.get(i, 0) / 4
              for i in text}
    assert [r.item_id for r in out] == sorted(expect, key=lambda i: -expect[i])  # "gone" has no vector: dropped
    for r in out:
        assert r.score == pytest.approx(expect[r.item_id])
        assert r.score == pytest.approx(r.text + r.cooc + r.seq + r.pop)
    assert {r.item_id: r.slot for r in out} == {"a": 0, "b": 1, "c": 0}
    assert rank(["a"], vectors, slots, weights, {}, {}, {}, {}, p, k=0) == []


def test_rank_without_slots_uses_counters_and_breaks_ties_by_id() -> None:
    p = RankParams(pool=10, text_weight=0.1, cooc_weight=1.0, seq_weight=1.0, pop_weight=1.0)
    vectors = {i: np.ones(4, np.float32) / 2 for i in "abc"}
    out = rank(["c", "b", "a"], vectors, np.zeros((0, 4)), np.zeros(0), {}, {}, {"a": 1.0, "b": 1.0, "c": 2.0}, {}, p, 3)
    assert [r.item_id for r in out] == ["c", "a", "b"] and all(r.slot == -1 for r in out)


def test_without_slots_the_cold_text_boost_does_not_order_the_list() -> None:
    """A user with no interest slot has no text affinity: the text part is 0, so the cold-item text boost cannot
    put the least-supported items of a popular fallback first."""
    p = RankParams(pool=10, text_weight=0.02, cooc_weight=1.0, seq_weight=0.5, pop_weight=0.0, cold_text_weight=0.2,
                   cold_collab_weight=0.3, cold_support=5.0)
    vectors = {i: np.ones(4, np.float32) / 2 for i in "abcde"}
    support = {"a": 60.0, "b": 40.0, "c": 20.0, "d": 3.0, "e": 0.0}
    out = rank(list("abcde"), vectors, np.zeros((0, 4)), np.zeros(0), {}, {}, {}, support, p, k=5)
    assert [r.item_id for r in out] == list("abcde")  # every score 0: ties by id, not by coldness
    assert all(r.text == 0.0 and r.score == 0.0 and r.slot == -1 for r in out)
    # counters still rank (and the cold factor still lifts a little-supported item's counts)
    out = rank(list("abcde"), vectors, np.zeros((0, 4)), np.zeros(0), {"a": 1.0, "e": 0.9}, {}, {}, support, p, k=2)
    assert [r.item_id for r in out] == ["e", "a"] and out[0].cooc == pytest.approx(0.9 * 1.3)


def test_text_affinity_matches_merge_slot_hits() -> None:
    rng = np.random.default_rng(1)
    items = rng.normal(size=(20, 8)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    slots, weights = items[:2] * 1.0, np.array([0.7, 0.3])
    aff, slot = text_affinity(items, slots, weights)
    ids = [str(i) for i in range(20)]
    hits = [[(ids[j], float(items[j] @ v)) for j in range(20)] for v in slots]
    merged = dict(merge_slot_hits(hits, weights, set(), 20))
    assert [merged[i] for i in ids] == pytest.approx(aff.tolist(), abs=1e-6)
    assert slot[0] == 0 and slot[1] == 1
    assert text_affinity(items, np.zeros((0, 8)), np.zeros(0))[0].tolist() == [0.0] * 20


@settings(max_examples=60, deadline=None)
@given(values=st.lists(st.integers(-3, 40), min_size=0, max_size=700), k=st.integers(1, 300))
def test_top_k_numpy_path_equals_a_full_sort(values, k) -> None:
    """Above the heap threshold _top_k partitions with numpy; ties (many here) must still break by id."""
    from stream_app.core.ranking import _top_k  # noqa: PLC0415

    scores = {f"i{n:04d}": v / 7 for n, v in enumerate(values)}
    assert _top_k(scores, k) == sorted(scores.items(), key=lambda kv: (-kv[1], kv[0]))[:k]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 12))
def test_a_text_pool_of_k_gives_the_same_top_k_as_a_larger_one(seed, k) -> None:
    """rank_text_pool's claim: with no cold-item text weight, no text hit below rank k makes a top-k list."""
    rng = np.random.default_rng(seed)
    ids = [f"i{n}" for n in range(60)]
    vectors = {i: v / np.linalg.norm(v) for i, v in zip(ids, rng.normal(size=(60, 8)).astype(np.float32))}
    slots = rng.normal(size=(2, 8)).astype(np.float32)
    weights = np.array([0.7, 0.3])
    text = dict(zip(ids, text_affinity(np.stack(list(vectors.values())), slots, weights)[0].tolist()))
    cooc = {i: float(rng.exponential()) for i in rng.choice(ids, 20, replace=False)}
    seq = {i: float(rng.exponential()) for i in rng.choice(ids, 10, replace=False)}
    pop = {i: float(rng.integers(1, 9)) for i in ids}
    popular = sorted(ids, key=lambda i: (-pop[i], i))
    exclude = set(rng.choice(ids, 5, replace=False).tolist())

    def top(text_pool: int) -> list[str]:
        p = RankParams(pool=30, text_pool=text_pool, pop_weight=0.1, cold_text_weight=0.0)
        pool = candidate_pool(text, cooc, seq, popular, exclude, p)
        return [r.item_id for r in rank(pool, vectors, slots, weights, cooc, seq, pop, {}, p, k)]

    assert top(k) == top(60)


def test_cold_collab_weight_raises_the_counters_of_little_supported_items() -> None:
    """(1 + cold_collab_weight * exp(-n/cold_support)) multiplies the co-occurrence and sequence parts; a well
    supported item keeps (almost) its plain score, so a cold item with weaker counts can pass it."""
    p = RankParams(pool=10, text_weight=0.0, cooc_weight=1.0, seq_weight=0.5, pop_weight=0.0, cold_collab_weight=2.0,
                   cold_text_weight=0.0, cold_support=1.0)
    vectors = {i: np.ones(2, np.float32) / np.sqrt(2) for i in ("warm", "cold")}
    cooc, seq, support = {"warm": 4.0, "cold": 2.0}, {"warm": 2.0, "cold": 1.0}, {"warm": 100.0, "cold": 0.0}
    out = rank(["warm", "cold"], vectors, np.zeros((0, 2)), np.zeros(0), cooc, seq, {}, support, p, k=2)
    expect = {"warm": (1.0 + 0.5) * (1 + 2 * np.exp(-100.0)), "cold": (2 / 4 + 0.5 * 1 / 2) * (1 + 2 * np.exp(0.0))}
    assert [r.item_id for r in out] == ["cold", "warm"]
    for r in out:
        assert r.score == pytest.approx(expect[r.item_id]) and r.score == pytest.approx(r.cooc + r.seq + r.text + r.pop)
    off = rank(["warm", "cold"], vectors, np.zeros((0, 2)), np.zeros(0), cooc, seq, {}, support,
               RankParams(pool=10, text_weight=0.0, cooc_weight=1.0, seq_weight=0.5, pop_weight=0.0,
                          cold_collab_weight=0.0, cold_text_weight=0.0), k=2)
    assert [r.item_id for r in off] == ["warm", "cold"]
    with pytest.raises(ValueError):
        RankParams(cold_collab_weight=-1.0)


def test_tuning_blend_metrics_score_like_rank_with_cold_boosts() -> None:
    """The tuner's vectorised blend (stream_app.offline.tuning.blend_metrics) ranks like ranking.rank, cold boosts
    included: each item's NDCG@10 as a target is 1/log2(position + 2) of its position in rank()'s list."""
    from stream_app.offline.tuning import Recorded, blend_metrics

    rng = np.random.default_rng(3)
    n, dim = 40, 8
    ids = [f"i{j:02d}" for j in range(n)]
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    slots, weights = emb[:2] + 0.1, np.array([0.7, 0.3])
    cooc = np.where(rng.random(n) < 0.5, rng.random(n), 0.0)
    seq = np.where(rng.random(n) < 0.3, rng.random(n), 0.0)
    support = rng.integers(0, 6, n).astype(np.float64)
    p = RankParams(pool=n, text_weight=0.05, cooc_weight=1.0, seq_weight=0.5, pop_weight=0.0, text_temperature=0.05,
                   cold_text_weight=0.3, cold_collab_weight=1.5, cold_support=2.0)
    ranked = rank(ids, dict(zip(ids, emb)), slots, weights, dict(zip(ids, cooc)), dict(zip(ids, seq)), {},
                  dict(zip(ids, support)), p, k=n)
    position = {r.item_id: pos for pos, r in enumerate(ranked)}
    text = text_affinity(emb, slots, weights)[0]
    rec = Recorded(np.tile(text, (n, 1)), np.tile(cooc, (n, 1)), np.tile(seq, (n, 1)), np.zeros((n, n)),
                   np.tile(support, (n, 1)), np.ones((n, n), bool), np.arange(n), np.zeros((n, n), bool),
                   np.zeros(n, bool))
    hits = sum(position[i] < 10 for i in ids)
    m = blend_metrics(rec, p)
    assert m["hits"] == pytest.approx(hits)
    expected_ndcg = np.mean([1 / np.log2(position[i] + 2) if position[i] < 10 else 0.0 for i in ids])
    assert m["ndcg@10"] == pytest.approx(expected_ndcg)


def test_tuning_blend_has_no_text_part_without_slots_like_rank() -> None:
    """A query whose user had no interest slot (Recorded.slotted False) gets no text part in the tuner's blend, as
    in rank(): with the cold text boost on, the least-supported items would otherwise come first."""
    from stream_app.offline.tuning import Recorded, blend_scores

    n = 6
    support = np.array([60.0, 40.0, 20.0, 3.0, 0.0, 10.0])
    cooc = np.array([0.0, 0.0, 0.0, 0.0, 0.0, 1.0])
    p = RankParams(pool=n, text_weight=0.02, cooc_weight=1.0, seq_weight=0.5, pop_weight=0.0, cold_text_weight=0.2,
                   cold_collab_weight=0.3, cold_support=5.0)
    rec = Recorded(np.zeros((2, n)), np.tile(cooc, (2, 1)), np.zeros((2, n)), np.zeros((2, n)), np.tile(support, (2, 1)),
                   np.ones((2, n), bool), np.zeros(2, int), np.zeros((2, n), bool), np.zeros(2, bool),
                   np.array([False, True]))
    scores = blend_scores(rec, p)
    ids = [f"i{j}" for j in range(n)]
    ranked = rank(ids, {i: np.ones(4, np.float32) / 2 for i in ids}, np.zeros((0, 4)), np.zeros(0),
                  dict(zip(ids, cooc)), {}, {}, dict(zip(ids, support)), p, k=n)
    assert [r.score for r in ranked] == pytest.approx(sorted(scores[0], reverse=True))
    assert scores[0].tolist() == pytest.approx(cooc * (1 + 0.3 * np.exp(-support / 5.0)))
    assert scores[1, 4] > scores[1, 0]  # with a slot (all text equal) the cold text boost does lift item 4
