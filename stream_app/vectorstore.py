"""Item catalogue in Qdrant behind one async API: an embedded qdrant-edge shard or a Qdrant server.

Item ids are strings; Qdrant point ids are uuid5(ITEM_NAMESPACE, item_id) and the item id is kept
in the payload under ITEM_ID_KEY. Vectors are unit-norm and compared by cosine.

The embedded engine (qdrant-edge-py) holds the GIL for the whole of every call (measured: a
heartbeat thread got 1 tick during a 3 s optimize()), so a thread executor would still freeze the
event loop. It therefore runs in one dedicated worker process (a plain subprocess, so the parent's
__main__ is never re-imported as multiprocessing's spawn would), fed calls over a pipe by one dedicated
thread: calls are serialised and the event loop only awaits a future. The pipe carries length-prefixed JSON
(function names from a fixed list, arrays as raw float32 bytes), never pickle: nothing on it can run code.
"""

from __future__ import annotations

import asyncio
import logging
import os
import base64
import json
import struct
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from stream_app.settings import Settings

log = logging.getLogger(__name__)

ITEM_NAMESPACE = uuid.UUID("5b0f7c0e-2f1d-5c8e-9a3b-6d4e1f2a7c90")
ITEM_ID_KEY = "item_id"
UPSERT_CHUNK = 512
SEARCH_CHUNK = 64
# New un-indexed points after which an upsert also runs optimize() (HNSW build) in the worker.
# Measured (2 busy cores, dim 384): exact scan of plain segments ~0.33 ms per 10k points per query;
# optimize() rebuilds the whole shard, ~19 s at 20k, ~32 s at 40k, ~104 s at 100k, and the store
# answers nothing meanwhile. So small catalogues stay exact, and rebuilds are rare.
OPTIMIZE_EVERY = 50_000


@dataclass(frozen=True)
class ItemRecord:
    """One catalogue item: its id, unit-norm embedding and free-form payload."""

    item_id: str
    vector: np.ndarray
    payload: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Hit:
    """One search result: item id, cosine score and stored payload (which includes ITEM_ID_KEY)."""

    item_id: str
    score: float
    payload: dict


@runtime_checkable
class ItemStore(Protocol):
    """The async catalogue API the agents use; implementations never block the event loop."""

    async def ensure_collection(self, dim: int) -> None: ...

    async def upsert(self, records: Sequence[ItemRecord]) -> None: ...

    async def delete(self, item_ids: Sequence[str]) -> None: ...

    async def get_vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]: ...

    async def get_payloads(self, item_ids: Sequence[str]) -> dict[str, dict]: ...

    async def search(
        self, vectors: np.ndarray, limit: int, exclude_ids: Collection[str] = ()
    ) -> list[list[Hit]]: ...

    async def count(self) -> int: ...

    async def close(self) -> None: ...


def point_id(item_id: str) -> uuid.UUID:
    """The Qdrant point id of an item id (Qdrant accepts only uints and UUIDs)."""
    return uuid.uuid5(ITEM_NAMESPACE, item_id)


def as_rows(vectors: np.ndarray) -> np.ndarray:
    """Query vectors as a float32 (n, dim) array; a single 1-D vector becomes one row."""
    arr = np.asarray(vectors, dtype=np.float32)
    return arr.reshape(1, -1) if arr.ndim == 1 else arr


def stored_payload(record: ItemRecord) -> dict:
    """The payload written to Qdrant: the record's payload plus its item id."""
    return {**record.payload, ITEM_ID_KEY: record.item_id}


def open_item_store(settings: Settings) -> ItemStore:
    """A server store when settings.qdrant_url is set, else the embedded store under data_dir."""
    if settings.qdrant_url:
        return open_server_store(settings.qdrant_url, settings.qdrant_api_key, settings.qdrant_collection)
    return EmbeddedItemStore(Path(settings.data_dir) / "qdrant-edge" / settings.qdrant_collection,
                             optimize_every=settings.qdrant_optimize_every)


# ---------------------------------------------------------------------------------------------
# Embedded store: qdrant-edge in a dedicated worker process.
# ---------------------------------------------------------------------------------------------

# Worker-process state: the one open shard and its optimize bookkeeping.
_W: dict[str, Any] = {}
_PACKAGE_ROOT = Path(__file__).resolve().parents[1]


class WorkerDied(RuntimeError):
    """The embedded store's worker process exited or its pipe broke."""


_ERRORS: dict[str, type[Exception]] = {e.__name__: e for e in (ValueError, TypeError, KeyError, RuntimeError)}


def _to_wire(obj: Any) -> Any:
    """JSON-ready form of call arguments and results: arrays and tuples are tagged, dicts and lists recursed."""
    if isinstance(obj, np.ndarray):
        return {"__nd__": [str(obj.dtype), list(obj.shape), base64.b64encode(np.ascontiguousarray(obj)).decode()]}
    if isinstance(obj, tuple):
        return {"__tuple__": [_to_wire(x) for x in obj]}
    if isinstance(obj, list):
        return [_to_wire(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): _to_wire(v) for k, v in obj.items()}
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _from_wire(obj: Any) -> Any:
    """Inverse of _to_wire."""
    if isinstance(obj, list):
        return [_from_wire(x) for x in obj]
    if isinstance(obj, dict):
        if "__nd__" in obj:
            dtype, shape, data = obj["__nd__"]
            return np.frombuffer(base64.b64decode(data), dtype=np.dtype(dtype)).reshape(shape).copy()
        if "__tuple__" in obj:
            return tuple(_from_wire(x) for x in obj["__tuple__"])
        return {k: _from_wire(v) for k, v in obj.items()}
    return obj


def _send(stream: Any, message: Any) -> None:
    data = json.dumps(_to_wire(message), separators=(",", ":")).encode()
    stream.write(struct.pack("<Q", len(data)) + data)
    stream.flush()


def _receive(stream: Any) -> Any:
    header = stream.read(8)
    if len(header) < 8:
        raise EOFError("pipe closed")
    (size,) = struct.unpack("<Q", header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("pipe closed mid-message")
    return _from_wire(json.loads(data))


def worker_main() -> None:
    """Worker process loop: read (function name, args), run it, write ("ok"|"err", value); EOF ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group; the parent closes us
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must never corrupt the reply channel
    while True:
        try:
            name, args = _receive(inp)
        except EOFError:
            break
        try:
            reply: tuple[str, Any] = ("ok", _WORKER_FUNCTIONS[name](*args))
        except Exception as exc:  # returned to the caller and re-raised there
            reply = ("err", [type(exc).__name__, str(exc)])
        _send(out, reply)
    _w_close()


class _Worker:
    """Parent-side handle of one worker process; call() blocks, so only the store's thread uses it."""

    def __init__(self) -> None:
        """Start `python -c worker_main()` with this package importable."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from stream_app.vectorstore import worker_main; worker_main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    def call(self, fn: Callable[..., Any], args: tuple) -> Any:
        """Run fn(*args) in the worker and return its result (or raise its exception)."""
        try:
            _send(self.proc.stdin, [fn.__name__, list(args)])
            status, value = _receive(self.proc.stdout)
        except (EOFError, OSError, ValueError) as exc:
            raise WorkerDied(f"qdrant-edge worker exited (code {self.proc.poll()})") from exc
        if status == "err":
            kind, message = value
            raise _ERRORS.get(kind, RuntimeError)(message if kind in _ERRORS else f"{kind}: {message}")
        return value

    def stop(self) -> None:
        """Close its stdin (it then closes the shard and exits); kill it if it hangs."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()
            self.proc.wait()


def _w_ensure(path: str, dim: int) -> None:
    """Worker: load the shard at path (checking dim) or create it."""
    import qdrant_edge as qe

    if _W.get("shard") is not None:
        if _W["dim"] != dim:
            raise ValueError(f"item store at {path} holds dim {_W['dim']}, asked for {dim}")
        return
    config = qe.EdgeConfig(vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine))
    root = Path(path)
    if (root / "edge_config.json").exists():
        try:
            shard = qe.EdgeShard.load(path, config)
        except Exception as exc:  # the engine raises a bare Exception with the reason
            raise ValueError(f"cannot open item store at {path} with dim {dim}: {exc}") from exc
    else:
        root.mkdir(parents=True, exist_ok=True)
        shard = qe.EdgeShard.create(path, config)
    info = shard.info()
    _W.update(shard=shard, dim=dim, unindexed_at_optimize=info.points_count - info.indexed_vectors_count)


def _w_shard() -> Any:
    """Worker: the open shard, or a clear error when ensure_collection was not called."""
    shard = _W.get("shard")
    if shard is None:
        raise RuntimeError("item store not opened: call ensure_collection(dim) first")
    return shard


def _w_upsert(item_ids: list[str], vectors: np.ndarray, payloads: list[dict], optimize_every: int) -> bool:
    """Worker: upsert points in chunks, then optimize when enough points are un-indexed; True if it did."""
    import qdrant_edge as qe

    shard = _w_shard()
    rows = vectors.tolist()
    for start in range(0, len(item_ids), UPSERT_CHUNK):
        points = [
            qe.Point(id=point_id(item_ids[i]), vector=rows[i], payload=payloads[i])
            for i in range(start, min(start + UPSERT_CHUNK, len(item_ids)))
        ]
        shard.update(qe.UpdateOperation.upsert_points(points))
    return _w_maybe_optimize(optimize_every)


def _w_maybe_optimize(optimize_every: int) -> bool:
    """Worker: run optimize() once optimize_every more points are un-indexed than after the last run."""
    shard = _w_shard()
    info = shard.info()
    unindexed = info.points_count - info.indexed_vectors_count
    if optimize_every <= 0 or unindexed - _W["unindexed_at_optimize"] < optimize_every:
        return False
    _w_optimize()
    return True


def _w_optimize() -> tuple[int, int]:
    """Worker: build indexes and merge segments; returns (points, indexed vectors) afterwards."""
    shard = _w_shard()
    shard.optimize()
    shard.flush()
    info = shard.info()
    # Segments under the engine's indexing threshold stay plain: count them as the new baseline.
    _W["unindexed_at_optimize"] = info.points_count - info.indexed_vectors_count
    return info.points_count, info.indexed_vectors_count


def _w_delete(item_ids: list[str]) -> None:
    """Worker: delete the points of these item ids (unknown ids are ignored)."""
    import qdrant_edge as qe

    _w_shard().update(qe.UpdateOperation.delete_points([point_id(i) for i in item_ids]))


def _w_get_vectors(item_ids: list[str]) -> dict[str, np.ndarray]:
    """Worker: stored vectors of the item ids that exist."""
    records = _w_shard().retrieve([point_id(i) for i in item_ids], True, True)
    return {r.payload[ITEM_ID_KEY]: np.asarray(r.vector, dtype=np.float32) for r in records}


def _w_get_payloads(item_ids: list[str]) -> dict[str, dict]:
    """Worker: stored payloads of the item ids that exist."""
    records = _w_shard().retrieve([point_id(i) for i in item_ids], True, False)
    return {r.payload[ITEM_ID_KEY]: r.payload for r in records}


def _w_search(vectors: np.ndarray, limit: int, exclude_ids: list[str]) -> list[list[tuple[str, float, dict]]]:
    """Worker: one batched nearest-neighbour query per row, excluding the given item ids."""
    import qdrant_edge as qe

    shard = _w_shard()
    flt = qe.Filter(must_not=[qe.HasIdCondition({point_id(i) for i in exclude_ids})]) if exclude_ids else None
    requests = [
        qe.QueryRequest(limit=limit, query=qe.Query.Nearest(row), filter=flt, with_payload=True)
        for row in vectors.tolist()
    ]
    batches = shard.query_batch(qe.QueryBatchRequest(requests))
    return [[(p.payload[ITEM_ID_KEY], float(p.score), p.payload) for p in rows] for rows in batches]


def _w_count() -> int:
    """Worker: exact number of points."""
    import qdrant_edge as qe

    return _w_shard().count(qe.CountRequest(exact=True))


def _w_close() -> None:
    """Worker: flush and close the shard, releasing its WAL lock."""
    shard = _W.pop("shard", None)
    if shard is not None:
        shard.flush()
        shard.close()


_WORKER_FUNCTIONS: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (_w_ensure, _w_upsert, _w_optimize, _w_delete, _w_get_vectors, _w_get_payloads, _w_search, _w_count)
}


class EmbeddedItemStore:
    """Qdrant's own engine (qdrant-edge) on local disk, driven from one dedicated worker process."""

    def __init__(self, path: Path, *, optimize_every: int = OPTIMIZE_EVERY) -> None:
        """Store under path; optimize() runs in the worker after optimize_every new un-indexed points."""
        self.path = Path(path)
        self.optimize_every = optimize_every
        self._dim: int | None = None
        self._worker: _Worker | None = None
        self._thread: ThreadPoolExecutor | None = None

    def _blocking_call(self, fn: Callable[..., Any], args: tuple) -> Any:
        """In the store's thread: call the worker, starting it if needed; if it died, restart, reopen, retry once."""
        if self._worker is None:
            self._worker = _Worker()
        try:
            return self._worker.call(fn, args)
        except WorkerDied:
            log.warning("qdrant-edge worker died; restarting it and reopening %s", self.path)
            self._worker = _Worker()
            if self._dim is not None and fn is not _w_ensure:
                self._worker.call(_w_ensure, (str(self.path), self._dim))
            return self._worker.call(fn, args)

    async def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Await fn(*args) run in the worker process, via the store's single thread (serialised access)."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-edge")
        return await asyncio.get_running_loop().run_in_executor(self._thread, self._blocking_call, fn, args)

    async def ensure_collection(self, dim: int) -> None:
        """Open the shard at self.path (creating it when missing); ValueError if it holds another dim."""
        await self._call(_w_ensure, str(self.path), dim)
        self._dim = dim

    async def upsert(self, records: Sequence[ItemRecord]) -> None:
        """Insert or replace items; may also build the HNSW index (in the worker) after large loads."""
        if not records:
            return
        vectors = np.stack([np.asarray(r.vector, dtype=np.float32) for r in records])
        optimized = await self._call(
            _w_upsert, [r.item_id for r in records], vectors, [stored_payload(r) for r in records], self.optimize_every
        )
        if optimized:
            log.info("qdrant-edge index rebuilt at %s after upserting %d items", self.path, len(records))

    async def optimize(self) -> tuple[int, int]:
        """Build the HNSW index now (e.g. after a bulk load); returns (points, indexed vectors)."""
        return await self._call(_w_optimize)

    async def delete(self, item_ids: Sequence[str]) -> None:
        """Delete items; they are never returned by search afterwards."""
        if item_ids:
            await self._call(_w_delete, list(item_ids))

    async def get_vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors of the item ids that exist (missing ids are absent from the dict)."""
        if not item_ids:
            return {}
        return await self._call(_w_get_vectors, list(item_ids))

    async def get_payloads(self, item_ids: Sequence[str]) -> dict[str, dict]:
        """Stored payloads (with ITEM_ID_KEY) of the item ids that exist."""
        if not item_ids:
            return {}
        return await self._call(_w_get_payloads, list(item_ids))

    async def search(self, vectors: np.ndarray, limit: int, exclude_ids: Collection[str] = ()) -> list[list[Hit]]:
        """Nearest items by cosine for each query row, as one batched engine call per SEARCH_CHUNK rows."""
        rows = as_rows(vectors)
        if len(rows) == 0 or limit <= 0:
            return [[] for _ in range(len(rows))]
        exclude = list(dict.fromkeys(exclude_ids))
        out: list[list[Hit]] = []
        for start in range(0, len(rows), SEARCH_CHUNK):
            raw = await self._call(_w_search, rows[start : start + SEARCH_CHUNK], limit, exclude)
            out.extend([Hit(i, s, p) for i, s, p in hits] for hits in raw)
        return out

    async def count(self) -> int:
        """Number of items stored."""
        return await self._call(_w_count)

    async def close(self) -> None:
        """Flush and close the shard and stop the worker process and thread."""
        if self._thread is None:
            return
        thread, self._thread = self._thread, None
        worker, self._worker = self._worker, None
        if worker is not None:
            await asyncio.get_running_loop().run_in_executor(thread, worker.stop)
        thread.shutdown(wait=True)


# ---------------------------------------------------------------------------------------------
# Server store: qdrant-client's AsyncQdrantClient.
# ---------------------------------------------------------------------------------------------


class QdrantServerStore:
    """A collection on a Qdrant server through AsyncQdrantClient (network I/O, awaited)."""

    def __init__(self, client: Any, collection: str) -> None:
        """Wrap an AsyncQdrantClient (any location it supports) and a collection name."""
        self.client = client
        self.collection = collection

    async def ensure_collection(self, dim: int) -> None:
        """Create the collection (size=dim, cosine) when missing; ValueError if it exists with another size."""
        from qdrant_client import models

        if not await self.client.collection_exists(self.collection):
            await self.client.create_collection(
                self.collection, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE)
            )
            return
        info = await self.client.get_collection(self.collection)
        params = info.config.params.vectors
        size = params.size if isinstance(params, models.VectorParams) else None
        if size != dim:
            raise ValueError(f"collection {self.collection!r} has vectors {params!r}, expected one of size {dim}")

    async def upsert(self, records: Sequence[ItemRecord]) -> None:
        """Insert or replace items, UPSERT_CHUNK points per request."""
        from qdrant_client import models

        for start in range(0, len(records), UPSERT_CHUNK):
            chunk = records[start : start + UPSERT_CHUNK]
            points = [
                models.PointStruct(
                    id=str(point_id(r.item_id)),
                    vector=np.asarray(r.vector, dtype=np.float32).tolist(),
                    payload=stored_payload(r),
                )
                for r in chunk
            ]
            await self.client.upsert(self.collection, points=points, wait=True)

    async def delete(self, item_ids: Sequence[str]) -> None:
        """Delete items by id."""
        from qdrant_client import models

        if item_ids:
            selector = models.PointIdsList(points=[str(point_id(i)) for i in item_ids])
            await self.client.delete(self.collection, points_selector=selector, wait=True)

    async def get_vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors of the item ids that exist."""
        if not item_ids:
            return {}
        records = await self.client.retrieve(
            self.collection, ids=[str(point_id(i)) for i in item_ids], with_payload=True, with_vectors=True
        )
        return {r.payload[ITEM_ID_KEY]: np.asarray(r.vector, dtype=np.float32) for r in records}

    async def get_payloads(self, item_ids: Sequence[str]) -> dict[str, dict]:
        """Stored payloads (with ITEM_ID_KEY) of the item ids that exist."""
        if not item_ids:
            return {}
        records = await self.client.retrieve(
            self.collection, ids=[str(point_id(i)) for i in item_ids], with_payload=True, with_vectors=False
        )
        return {r.payload[ITEM_ID_KEY]: dict(r.payload) for r in records}

    async def search(self, vectors: np.ndarray, limit: int, exclude_ids: Collection[str] = ()) -> list[list[Hit]]:
        """Nearest items by cosine per row, via query_batch_points (SEARCH_CHUNK queries per request)."""
        from qdrant_client import models

        rows = as_rows(vectors)
        if len(rows) == 0 or limit <= 0:
            return [[] for _ in range(len(rows))]
        exclude = [str(point_id(i)) for i in dict.fromkeys(exclude_ids)]
        flt = models.Filter(must_not=[models.HasIdCondition(has_id=exclude)]) if exclude else None
        out: list[list[Hit]] = []
        for start in range(0, len(rows), SEARCH_CHUNK):
            requests = [
                models.QueryRequest(query=row, limit=limit, filter=flt, with_payload=True)
                for row in rows[start : start + SEARCH_CHUNK].tolist()
            ]
            responses = await self.client.query_batch_points(self.collection, requests=requests)
            out.extend(
                [Hit(p.payload[ITEM_ID_KEY], float(p.score), dict(p.payload)) for p in resp.points]
                for resp in responses
            )
        return out

    async def count(self) -> int:
        """Exact number of items."""
        return (await self.client.count(self.collection, exact=True)).count

    async def close(self) -> None:
        """Close the client's connections."""
        await self.client.close()


def open_server_store(url: str, api_key: str | None, collection: str) -> QdrantServerStore:
    """A QdrantServerStore talking to the server at url (no I/O here: the client connects on first call)."""
    from qdrant_client import AsyncQdrantClient

    # check_compatibility would make a blocking HTTP request inside the constructor.
    return QdrantServerStore(AsyncQdrantClient(url=url, api_key=api_key, check_compatibility=False), collection)
