"""One behaviour suite run against both item stores.

"embedded" is the real qdrant-edge store on a temporary directory (its worker process included).
"server-api" is the real QdrantServerStore code (AsyncQdrantClient calls: create_collection, upsert,
query_batch_points, retrieve, delete, count) pointed at qdrant-client's in-memory local mode, the
same client API a server URL uses; only the transport differs. Not a mock.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio
from qdrant_client import AsyncQdrantClient

from stream_app.settings import Settings
from stream_app.adapters.vectorstore import (
    ITEM_ID_KEY,
    EmbeddedItemStore,
    ItemRecord,
    ItemStore,
    QdrantServerStore,
    StoreTimeout,
    open_item_store,
    point_id,
)

DIM = 16


def unit_rows(n: int, dim: int = DIM, seed: int = 0) -> np.ndarray:
    """n random unit vectors."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def records(vectors: np.ndarray, prefix: str = "sku") -> list[ItemRecord]:
    """ItemRecords sku-0..n-1 with a small payload."""
    return [ItemRecord(f"{prefix}-{i}", v, {"title": f"item {i}", "rank": i}) for i, v in enumerate(vectors)]


def brute_force(catalogue: np.ndarray, query: np.ndarray, k: int, exclude: set[int] = frozenset()) -> list[str]:
    """Exact top-k item ids by cosine (rows are unit-norm)."""
    scores = catalogue @ query
    order = [i for i in np.argsort(-scores, kind="stable") if i not in exclude]
    return [f"sku-{i}" for i in order[:k]]


@pytest_asyncio.fixture(params=["embedded", "server-api"])
async def store(request, tmp_path: Path):
    """An empty store with a DIM collection, of each implementation."""
    if request.param == "embedded":
        s: ItemStore = EmbeddedItemStore(tmp_path / "edge")
    else:
        s = QdrantServerStore(AsyncQdrantClient(location=":memory:"), "items")
    await s.ensure_collection(DIM)
    yield s
    await s.close()


@pytest.mark.asyncio
async def test_implements_protocol(store):
    assert isinstance(store, ItemStore)


@pytest.mark.asyncio
async def test_upsert_then_count(store):
    await store.upsert(records(unit_rows(50)))
    assert await store.count() == 50


@pytest.mark.asyncio
async def test_empty_store_search_returns_empty_lists(store):
    assert await store.count() == 0
    assert await store.search(unit_rows(3, seed=1), limit=5) == [[], [], []]


@pytest.mark.asyncio
async def test_search_returns_nearest_by_cosine(store):
    cat = unit_rows(300)
    await store.upsert(records(cat))
    q = unit_rows(1, seed=7)[0]
    [hits] = await store.search(q, limit=10)
    assert [h.item_id for h in hits] == brute_force(cat, q, 10)
    np.testing.assert_allclose([h.score for h in hits], np.sort(cat @ q)[::-1][:10], atol=1e-5)
    assert hits[0].payload[ITEM_ID_KEY] == hits[0].item_id
    assert hits[0].payload["title"] == f"item {hits[0].item_id.split('-')[1]}"


@pytest.mark.asyncio
async def test_exclude_ids_are_honoured(store):
    cat = unit_rows(200)
    await store.upsert(records(cat))
    q = unit_rows(1, seed=3)[0]
    top = brute_force(cat, q, 5)
    [hits] = await store.search(q, limit=5, exclude_ids=set(top[:3]))
    ids = [h.item_id for h in hits]
    assert not set(top[:3]) & set(ids)
    assert ids == brute_force(cat, q, 5, exclude={int(t.split("-")[1]) for t in top[:3]})


@pytest.mark.asyncio
async def test_batched_search_one_list_per_row(store):
    cat = unit_rows(200)
    await store.upsert(records(cat))
    queries = unit_rows(7, seed=11)
    excluded = {brute_force(cat, q, 1)[0] for q in queries[:3]}
    results = await store.search(queries, limit=4, exclude_ids=excluded)
    assert len(results) == 7
    excluded_rows = {int(e.split("-")[1]) for e in excluded}
    for q, hits in zip(queries, results):
        assert [h.item_id for h in hits] == brute_force(cat, q, 4, exclude=excluded_rows)


@pytest.mark.asyncio
async def test_search_of_a_stored_vector_finds_itself_first(store):
    cat = unit_rows(100)
    await store.upsert(records(cat))
    results = await store.search(cat[[5, 42, 99]], limit=1)
    assert [r[0].item_id for r in results] == ["sku-5", "sku-42", "sku-99"]
    assert all(r[0].score == pytest.approx(1.0, abs=1e-5) for r in results)


@pytest.mark.asyncio
async def test_delete_removes_from_results_and_count(store):
    cat = unit_rows(100)
    await store.upsert(records(cat))
    await store.delete(["sku-5", "sku-6", "no-such-item"])
    assert await store.count() == 98
    [hits] = await store.search(cat[5], limit=100)
    assert {"sku-5", "sku-6"}.isdisjoint(h.item_id for h in hits)
    assert len(hits) == 98
    assert "sku-5" not in await store.get_vectors(["sku-5", "sku-7"])


@pytest.mark.asyncio
async def test_get_vectors_round_trip(store):
    cat = unit_rows(20)
    await store.upsert(records(cat))
    got = await store.get_vectors(["sku-3", "sku-17", "missing"])
    assert set(got) == {"sku-3", "sku-17"}
    np.testing.assert_allclose(got["sku-3"], cat[3], atol=1e-6)
    np.testing.assert_allclose(got["sku-17"], cat[17], atol=1e-6)
    assert got["sku-3"].dtype == np.float32


@pytest.mark.asyncio
async def test_get_payloads_returns_stored_payloads(store):
    await store.upsert(records(unit_rows(5)))
    got = await store.get_payloads(["sku-2", "missing"])
    assert got == {"sku-2": {"title": "item 2", "rank": 2, ITEM_ID_KEY: "sku-2"}}
    assert await store.get_payloads([]) == {}


@pytest.mark.asyncio
async def test_upsert_of_existing_id_replaces_it(store):
    cat = unit_rows(10)
    await store.upsert(records(cat))
    new_vec = unit_rows(1, seed=99)[0]
    await store.upsert([ItemRecord("sku-4", new_vec, {"title": "renamed"})])
    assert await store.count() == 10
    got = await store.get_vectors(["sku-4"])
    np.testing.assert_allclose(got["sku-4"], new_vec, atol=1e-6)
    [hits] = await store.search(new_vec, limit=1)
    assert hits[0].item_id == "sku-4"
    assert hits[0].payload == {"title": "renamed", ITEM_ID_KEY: "sku-4"}


@pytest.mark.asyncio
async def test_ensure_collection_is_idempotent_and_checks_dim(store):
    await store.upsert(records(unit_rows(5)))
    await store.ensure_collection(DIM)
    assert await store.count() == 5
    with pytest.raises(ValueError):
        await store.ensure_collection(DIM + 1)


@pytest.mark.asyncio
async def test_embedded_store_keeps_data_when_reopened(tmp_path: Path):
    cat = unit_rows(60)
    first = EmbeddedItemStore(tmp_path / "edge")
    await first.ensure_collection(DIM)
    await first.upsert(records(cat))
    await first.delete(["sku-0"])
    await first.close()

    second = EmbeddedItemStore(tmp_path / "edge")
    await second.ensure_collection(DIM)
    try:
        assert await second.count() == 59
        [hits] = await second.search(cat[1], limit=1)
        assert hits[0].item_id == "sku-1"
        # ids-only searches map point ids back to item ids: the new child learns them from the stored payloads
        rows = await second.search(cat[1:40], limit=3, payload_fields=[])
        assert [r[0].item_id for r in rows] == [f"sku-{i}" for i in range(1, 40)]
        assert rows[0][0].payload == {ITEM_ID_KEY: "sku-1"}
        with pytest.raises(ValueError):
            await second.ensure_collection(DIM * 2)
    finally:
        await second.close()


@pytest.mark.asyncio
async def test_embedded_store_survives_its_worker_being_killed(tmp_path: Path):
    """Writes are in the engine's WAL: a killed worker is restarted and reopens the same data."""
    cat = unit_rows(40)
    store = EmbeddedItemStore(tmp_path / "edge")
    await store.ensure_collection(DIM)
    try:
        await store.upsert(records(cat))
        store._child.proc.kill()
        store._child.proc.wait()
        assert await store.count() == 40
        [hits] = await store.search(cat[7], limit=1)
        assert hits[0].item_id == "sku-7"
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_embedded_store_optimize_builds_index_and_keeps_results(tmp_path: Path):
    cat = unit_rows(2000, dim=DIM)
    store = EmbeddedItemStore(tmp_path / "edge", optimize_every=0)
    await store.ensure_collection(DIM)
    try:
        await store.upsert(records(cat))
        points, _indexed = await store.optimize()
        assert points == 2000
        q = unit_rows(1, seed=5)[0]
        [hits] = await store.search(q, limit=5)
        assert [h.item_id for h in hits] == brute_force(cat, q, 5)
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_embedded_store_does_not_block_the_event_loop(tmp_path: Path):
    """A heartbeat task keeps ticking while 8k points of dim 384 are upserted and HNSW-indexed.

    The engine holds the GIL for a whole optimize(), so with a thread executor the heartbeat
    would tick at most once during it (measured); the worker process keeps the loop free.
    """
    dim = 384
    store = EmbeddedItemStore(tmp_path / "edge", optimize_every=0)
    await store.ensure_collection(dim)
    beats = 0

    async def heartbeat() -> None:
        nonlocal beats
        while True:
            await asyncio.sleep(0.005)
            beats += 1

    task = asyncio.create_task(heartbeat())
    try:
        await store.upsert(records(unit_rows(8000, dim=dim)))
        assert beats > 0
        beats = 0
        points, indexed = await store.optimize()
        beats_during_optimize = beats
        assert (points, indexed) == (8000, 8000)
        assert beats_during_optimize >= 20
    finally:
        task.cancel()
        await store.close()


@pytest.mark.asyncio
async def test_open_item_store_chooses_by_settings(tmp_path: Path):
    embedded = open_item_store(Settings(data_dir=tmp_path, qdrant_url="", qdrant_collection="things"))
    assert isinstance(embedded, EmbeddedItemStore)
    assert embedded.path == tmp_path / "qdrant-edge" / "things"
    server = open_item_store(Settings(qdrant_url="http://127.0.0.1:6333", qdrant_collection="things"))
    assert isinstance(server, QdrantServerStore)
    assert server.collection == "things"
    await embedded.close()


def test_point_ids_are_stable_uuids():
    assert point_id("sku-1") == point_id("sku-1")
    assert point_id("sku-1") != point_id("sku-2")
    assert point_id("sku-1").version == 5


@pytest.mark.asyncio
async def test_get_records_returns_vector_and_payload_in_one_call(store):
    cat = unit_rows(6)
    await store.upsert(records(cat))
    got = await store.get_records(["sku-1", "sku-4", "missing"])
    assert set(got) == {"sku-1", "sku-4"}
    assert got["sku-4"].payload == {"title": "item 4", "rank": 4, ITEM_ID_KEY: "sku-4"}
    np.testing.assert_allclose(got["sku-1"].vector, cat[1], atol=1e-6)
    assert got["sku-1"].vector.dtype == np.float32
    assert await store.get_records([]) == {}


@pytest.mark.asyncio
async def test_search_can_return_only_some_payload_fields(store):
    cat = unit_rows(30)
    await store.upsert(records(cat))
    [hits] = await store.search(cat[3], limit=2, payload_fields=["title"])
    assert hits[0].payload == {"title": "item 3", ITEM_ID_KEY: "sku-3"}
    [hits] = await store.search(cat[3], limit=2, payload_fields=[])  # ids only
    assert hits[0].item_id == "sku-3" and hits[0].payload == {ITEM_ID_KEY: "sku-3"}
    await store.delete(["sku-3"])
    [hits] = await store.search(cat[3], limit=2, payload_fields=[])
    assert "sku-3" not in [h.item_id for h in hits]


def test_wire_frames_carry_arrays_as_raw_bytes_and_json_values():
    from stream_app.adapters.vectorstore import child

    vectors = unit_rows(3, dim=384)
    message = ["_w_upsert", [["a", "b", "c"], vectors, [{"title": "蓝牙耳机", "n": 1}, {}, {}], 7]]
    frame = b"".join(bytes(b) for b in child.encode_frame(message))
    json_len, data_len = child.frame_sizes(frame[: child.HEADER.size])
    assert data_len == vectors.nbytes  # raw float32, not base64 or text
    body = frame[child.HEADER.size:]
    name, args = child.decode_frame(body[:json_len], body[json_len:])
    assert name == "_w_upsert" and args[0] == ["a", "b", "c"] and args[2][0]["title"] == "蓝牙耳机"
    np.testing.assert_array_equal(args[1], vectors)
    with pytest.raises(ValueError):
        child.frame_sizes(child.HEADER.pack(1 << 40, 0))


@pytest.mark.asyncio
async def test_embedded_store_restarts_a_killed_child_and_serves(tmp_path: Path):
    cat = unit_rows(40)
    store = EmbeddedItemStore(tmp_path / "edge", timeout_s=10)
    await store.ensure_collection(DIM)
    try:
        await store.upsert(records(cat))
        old_pid = store.child_pid
        os.kill(old_pid, signal.SIGKILL)
        await asyncio.sleep(0.2)
        assert not store.healthy  # a dead child shows before any call
        assert await store.count() == 40  # restarted, shard reopened, call retried
        assert store.child_pid != old_pid and store.restarts == 1
        assert store.healthy and "exited" in (store.last_error or "")
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_the_child_outlives_a_sigterm_to_the_process_group_and_is_closed_by_its_parent(tmp_path: Path):
    """A worker stopped the way operators do (SIGTERM to its process group: systemd, `kill -- -PGID`, the system
    tests' stop_process) used to lose its store child first: the parent logged it as crashed and restarted it
    during its own shutdown (seen in the two-worker takeover test's logs)."""
    store = EmbeddedItemStore(tmp_path / "edge", timeout_s=10)
    await store.ensure_collection(DIM)
    try:
        await store.upsert(records(unit_rows(10)))
        pid = store.child_pid
        os.kill(pid, signal.SIGTERM)
        await asyncio.sleep(0.3)
        assert store.healthy and await store.count() == 10 and store.child_pid == pid and store.restarts == 0
    finally:
        await store.close()
    with pytest.raises(ProcessLookupError):  # closed (and reaped) by its parent
        os.kill(pid, 0)


@pytest.mark.asyncio
async def test_embedded_store_times_out_on_a_stopped_child_and_restarts_it(tmp_path: Path):
    cat = unit_rows(40)
    store = EmbeddedItemStore(tmp_path / "edge", timeout_s=1.5)
    await store.ensure_collection(DIM)
    try:
        await store.upsert(records(cat))
        old_pid = store.child_pid
        os.kill(old_pid, signal.SIGSTOP)
        with pytest.raises(StoreTimeout):
            await store.search(cat[2], limit=1)
        assert not store.healthy and "no answer" in (store.last_error or "")
        assert store.child_pid != old_pid  # the stuck child was killed and replaced at once
        with pytest.raises(ProcessLookupError):
            os.kill(old_pid, 0)
        [hits] = await store.search(cat[2], limit=1)
        assert hits[0].item_id == "sku-2"
        assert store.healthy and await store.ping()
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_row_excludes_filter_each_row_and_still_return_limit_hits(store):
    cat = unit_rows(200)
    await store.upsert(records(cat))
    queries = unit_rows(3, seed=21)
    own = [set(brute_force(cat, queries[0], 6)), set(), set(brute_force(cat, queries[2], 2))]
    results = await store.search(queries, limit=5, row_excludes=own, exclude_ids={"sku-0"})
    for q, mine, hits in zip(queries, own, results):
        skip = {int(e.split("-")[1]) for e in mine | {"sku-0"}}
        assert [h.item_id for h in hits] == brute_force(cat, q, 5, exclude=skip)
    with pytest.raises(ValueError):
        await store.search(queries, limit=5, row_excludes=[set()])
