"""The pipeline's batch steps in-process (no Kafka): real encoder, real embedded Qdrant engine, real interest code."""

from __future__ import annotations

import weakref

import pytest

from models.export import ensure_model
from stream_app.adapters.encoder import TextEncoder
from stream_app.core.events import BehaviourEvent, ItemEvent
from stream_app.core.interest import new_state
from stream_app.stream.pipeline import Pipeline, UnknownItem
from stream_app.settings import Settings
from stream_app.core.signal_state import SignalState, count_events

_SIGNALS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # each pipeline's counters with their user windows

ITEMS = [
    ("p1", "USB-C fast charger 65W", "phone-accessories"),
    ("p2", "Braided USB-C charging cable 2 m", "phone-accessories"),
    ("p3", "Wireless earbuds with noise cancelling", "audio"),
    ("p4", "MagSafe phone case", "phone-accessories"),
    ("t1", "Organic green tea 100 g", "tea-coffee"),
    ("t2", "Jasmine tea gift box", "tea-coffee"),
    ("t3", "Ceramic teapot 600 ml", "tea-coffee"),
    ("b1", "Trail running shoes", "running"),
]


def event(user: str, kind: str, item: str | None = None, text: str | None = None, ts: float = 1767225600.0):
    return BehaviourEvent(f"{user}-{kind}-{item}-{ts}", user, kind, item, text, ts)


@pytest.fixture(params=[20_000, 0], ids=["cached", "no-cache"])
async def pipeline(tmp_path, request):
    # item_cache_size=0 is allowed: every vector then comes from the store, nothing may rely on the cache.
    settings = Settings(data_dir=tmp_path, top_k=3, item_cache_size=request.param)  # the default, multilingual model
    encoder = TextEncoder(ensure_model(settings), int8=False)
    p = Pipeline(settings, encoder=encoder)
    await p.start()
    await p.index_items([ItemEvent(i, title, "", cat, (), False) for i, title, cat in ITEMS])
    yield p
    await p.close()


async def fold(p: Pipeline, events: list[BehaviourEvent], states: dict) -> dict:
    """Interest states as the behaviour agent folds them, counters as every worker's signal feed does."""
    signal = _SIGNALS.setdefault(p, SignalState(collab=p.collab))
    vectors = await p.event_vectors(events)
    for e, v in zip(events, vectors):
        assert not isinstance(v, UnknownItem), v
        states[e.user_id] = p.update_state(states.get(e.user_id, new_state(p.dim)), [e], [v])
        count_events(signal, [e], p.cparams)
    return states


async def test_interest_recommends_similar_unconsumed_items(pipeline):
    states = await fold(pipeline, [event("u", "view", "p1"), event("u", "purchase", "p2", ts=1767225660.0)], {})
    rec = (await pipeline.recommend(states, now=1767225660.0))["u"]
    ids = [i["item_id"] for i in rec.items]
    assert rec.strategy == "blend" and len(ids) == 3
    assert not {"p1", "p2"} & set(ids)
    assert ids[0] in {"p3", "p4"}, rec.items
    assert all(i["title"] for i in rec.items)


async def test_search_text_and_unknown_items(pipeline):
    vecs = await pipeline.event_vectors([event("s", "search", text="green tea"), event("s", "view", "nope")])
    assert isinstance(vecs[1], UnknownItem)
    states = {"s": pipeline.update_state(new_state(pipeline.dim), [event("s", "search", text="green tea")], [vecs[0]])}
    rec = (await pipeline.recommend(states, now=1767225600.0))["s"]
    assert {i["item_id"] for i in rec.items[:2]} <= {"t1", "t2", "t3"}


async def test_cold_user_gets_popular_items_and_deleted_ones_never(pipeline):
    states: dict = {}
    for n, user in enumerate(["a", "b", "c"]):
        await fold(pipeline, [event(user, "purchase", "t3", ts=1767225600.0 + n), event(user, "view", "b1", ts=1767225700.0 + n)],
                   states)
    p1 = (await pipeline.item_vectors_for(["p1"]))["p1"]
    only_dislike = {"cold": pipeline.update_state(new_state(pipeline.dim), [event("cold", "dislike", "p1")], [p1])}
    rec = (await pipeline.recommend(only_dislike, now=1767225800.0))["cold"]
    assert rec.strategy == "popular"
    assert [i["item_id"] for i in rec.items[:2]] in (["t3", "b1"], ["b1", "t3"])
    await pipeline.index_items([ItemEvent("t3", "", "", "", (), True)])
    rec = (await pipeline.recommend(only_dislike, now=1767225800.0))["cold"]
    assert "t3" not in {i["item_id"] for i in rec.items}
    # a user whose co-occurrence points at the deleted item does not get it either
    rec = (await pipeline.recommend({"a": states["a"]}, now=1767225800.0))["a"]
    assert "t3" not in {i["item_id"] for i in rec.items}


# ---- parity: what the stream sends is what the evaluator measures ---------------------------------------------


@pytest.mark.parametrize("pool", [200, 3])
async def test_stream_and_evaluator_rank_identically(tmp_path, pool):
    """Replay the tiny RecBole fixture both ways: through Pipeline.recommend (real encoder, embedded store; the
    counters fed by signal_state.count_events as the stream's signal replica does) and through the evaluator's
    default model; before every event both rank for that event's user: same lists."""
    from pathlib import Path

    import numpy as np

    from stream_app.offline.cli import build_models
    from stream_app.offline.datasets import read_atomic
    from stream_app.offline.protocol import Query, event_types
    from stream_app.offline.replay import Replay, replay
    from stream_app.core.signal_state import SignalState, count_events

    data = read_atomic(Path(__file__).resolve().parents[1] / "fixtures" / "tiny")
    settings = Settings(data_dir=tmp_path, top_k=5, rank_pool=pool)
    p = Pipeline(settings, encoder=TextEncoder(ensure_model(settings), int8=False))
    await p.start()
    try:
        await p.index_items([ItemEvent(i, text, "", "", (), False) for i, text in zip(data.item_ids, data.item_texts)])
        signal = SignalState()
        p.collab = signal.collab  # what stream_app.stream.replica does: the pipeline ranks with the signal's counters
        stored = await p.item_vectors_for(list(data.item_ids))
        emb = np.stack([stored[i] for i in data.item_ids])
        types = event_types(data)
        stream_lists, states = [], {}
        for pos in range(len(data.items)):
            user, item = data.user_ids[data.users[pos]], data.item_ids[data.items[pos]]
            ts = float(data.timestamps[pos])
            if user in states:
                rec = (await p.recommend({user: states[user]}, now=ts))[user]
                stream_lists.append([i["item_id"] for i in rec.items])
            e = BehaviourEvent(f"e{pos}", user, types[pos], item, None, ts)
            states[user] = p.update_state(states.get(user, new_state(p.dim)), [e], [stored[item]])
            count_events(signal, [e], p.cparams)
    finally:
        await p.close()

    default = build_models(data, emb.shape[1], settings, emb)[-1]
    ctx = Replay(data, emb, types)
    seen, eval_lists = set(), []
    queries = []
    for pos in range(len(data.items)):
        u = int(data.users[pos])
        if u in seen:
            queries.append(Query(pos, u, int(data.items[pos]), float(data.timestamps[pos])))
        seen.add(u)
    replay(ctx, [default], queries, np.ones(len(data.items), bool), progress=False,
           on_query=lambda q: eval_lists.append([r.item_id for r in default.ranked(ctx, q.user, q.now, 5)]))
    assert len(stream_lists) == len(queries) == len(data.items) - data.n_users
    assert stream_lists == eval_lists
    assert any(len(lst) >= 3 for lst in stream_lists)


async def test_search_excluding_is_exact_with_one_call_or_a_filtered_second(tmp_path):
    """Rows with few exclusions are post-filtered; a row whose exclusions eat into the pool is searched again."""
    import numpy as np

    from stream_app.adapters.vectorstore import EmbeddedItemStore, ItemRecord
    from stream_app.stream.pipeline import search_excluding

    dim = 16
    rng = np.random.default_rng(3)
    cat = rng.standard_normal((300, dim)).astype(np.float32)
    cat /= np.linalg.norm(cat, axis=1, keepdims=True)
    store = EmbeddedItemStore(tmp_path / "edge")
    await store.ensure_collection(dim)
    try:
        await store.upsert([ItemRecord(f"i{j}", v, {"title": f"t{j}"}) for j, v in enumerate(cat)])
        queries = cat[[0, 1, 2]]
        ranked = [[f"i{j}" for j in np.argsort(-(cat @ q), kind="stable")] for q in queries]
        excluded = [set(ranked[0][:3]), set(), set(ranked[2][:40])]  # the third row's exclusions exceed overfetch
        got = await search_excluding(store, queries, 5, excluded, payload_fields=["title"], overfetch=8)
        for row, ex, want in zip(got, excluded, ranked):
            assert [h.item_id for h in row] == [i for i in want if i not in ex][:5]
        assert got[0][0].payload["title"].startswith("t")
    finally:
        await store.close()


async def test_a_stuck_encoder_times_out_and_shows_on_health(tmp_path):
    """A call to the encoder thread has a deadline (TimeoutError, transient to the agents' policy); while the run
    is still going /health names it, and once it returns the worker is healthy again."""
    import asyncio
    import threading

    settings = Settings(data_dir=tmp_path, encoder_timeout_s=0.2, store_timeout_s=0.1)
    real = TextEncoder(ensure_model(settings), int8=False)
    release = threading.Event()

    class Blocking:
        dim, manifest, provider = real.dim, real.manifest, real.provider

        def encode(self, texts, kind="passage"):
            release.wait(10)
            return real.encode(texts, kind=kind)

    p = Pipeline(settings, encoder=Blocking())  # type: ignore[arg-type]
    p.metrics.store_stuck_s = 0.1
    p.metrics.ready = True
    try:
        with pytest.raises(TimeoutError):
            await p.encode(["stuck"])
        assert any("encoder stuck: 1 texts" in problem for problem in p.metrics.health()["problems"])
        release.set()
        for _ in range(100):
            if p.metrics.health()["ok"]:
                break
            await asyncio.sleep(0.05)
        assert p.metrics.health()["ok"]
        assert (await p.encode(["fine"])).shape == (1, real.dim)
    finally:
        release.set()
        p._encoder_pool.shutdown(wait=True)


def test_record_cache_copies_vectors_so_a_batch_array_is_not_kept_alive() -> None:
    """A store reply's vectors are rows (views) of one array; the cache must not hold that array through them."""
    import numpy as np  # noqa: PLC0415

    from stream_app.adapters.vectorstore import ItemRecord  # noqa: PLC0415
    from stream_app.stream.pipeline import LRUCache  # noqa: PLC0415

    class Batch(np.ndarray):  # a weak-referenceable ndarray subclass standing in for a reply's array
        pass

    batch = np.arange(6 * 4, dtype=np.float32).reshape(6, 4).view(Batch)
    alive = weakref.ref(batch)
    cache = LRUCache(capacity=2)
    for n in range(6):
        cache.put(f"i{n}", ItemRecord(f"i{n}", batch[n], {"title": str(n)}))
    assert cache.get("i5").vector.tolist() == [20.0, 21.0, 22.0, 23.0]
    del batch
    assert alive() is None
