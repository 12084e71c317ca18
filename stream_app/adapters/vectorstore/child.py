"""The embedded store's child process: qdrant-edge behind a pipe, and the pipe's wire format (both sides use it).

Wire format. A frame is a 16-byte header <json_len: u64, data_len: u64>, a UTF-8 JSON document and
data_len bytes of raw array data. The JSON is {"v": value, "a": [[dtype, shape], ...]}: every numpy array in
value is replaced by {"__nd__": index} and its bytes are appended to the data section, in order, so vectors
cross the pipe as raw little-endian float32 (no base64, no per-number text). Only plain JSON values and
arrays travel; calls name a function from a fixed table. Nothing on the pipe can run code (no pickle).

Requests are [function name, [args...]]; replies ["ok", value] or ["err", [exception class name, message]].
"""

from __future__ import annotations

import functools
import json
import signal
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from stream_app.adapters.vectorstore.protocol import ITEM_ID_KEY, UPSERT_CHUNK
from stream_app.adapters.vectorstore.protocol import point_id as _point_id

HEADER = struct.Struct("<QQ")
MAX_FRAME = 1 << 34  # a corrupt header must not make a reader allocate without bound


def _flatten(obj: Any, arrays: list[np.ndarray], depth: int = 0) -> Any:
    """obj with numpy arrays replaced by {"__nd__": i} (appended to arrays).

    Arrays travel only as elements of the message's top two list levels (a call's arguments, a result's
    parts); deeper values (ids, payload dicts) are left to json as they are, so large results are not walked.
    """
    if isinstance(obj, np.ndarray):
        arrays.append(np.ascontiguousarray(obj))
        return {"__nd__": len(arrays) - 1}
    if isinstance(obj, (list, tuple)) and depth < 2:
        return [_flatten(x, arrays, depth + 1) for x in obj]
    return obj


def _json_default(obj: Any) -> Any:
    """numpy scalars become plain numbers; anything else json cannot write is an error."""
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"{type(obj).__name__} cannot cross the store pipe (arrays only at the top two list levels)")


def _restore(obj: Any, arrays: list[np.ndarray], depth: int = 0) -> Any:
    """Inverse of _flatten."""
    if isinstance(obj, list) and depth < 2:
        return [_restore(x, arrays, depth + 1) for x in obj]
    if isinstance(obj, dict) and len(obj) == 1 and "__nd__" in obj:
        return arrays[obj["__nd__"]]
    return obj


def encode_frame(message: Any) -> list[bytes | memoryview]:
    """The frame of message as a list of buffers to write in order (arrays are not copied)."""
    arrays: list[np.ndarray] = []
    value = _flatten(message, arrays)
    doc = json.dumps({"v": value, "a": [[a.dtype.str, list(a.shape)] for a in arrays]},
                     separators=(",", ":"), ensure_ascii=False, default=_json_default).encode()
    buffers = [memoryview(a).cast("B") for a in arrays if a.nbytes]
    return [HEADER.pack(len(doc), sum(len(b) for b in buffers)), doc, *buffers]


def decode_frame(doc: bytes, data: bytes) -> Any:
    """The message of a frame's JSON document and data section (arrays are read-only views of data)."""
    parsed = json.loads(doc)
    arrays, offset = [], 0
    for dtype, shape in parsed["a"]:
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        arrays.append(np.frombuffer(data, dtype=dt, count=count, offset=offset).reshape(shape))
        offset += count * dt.itemsize
    return _restore(parsed["v"], arrays)


def frame_sizes(header: bytes) -> tuple[int, int]:
    """(json_len, data_len) of a frame header; ValueError when it is not a plausible header."""
    json_len, data_len = HEADER.unpack(header)
    if json_len + data_len > MAX_FRAME:
        raise ValueError(f"implausible frame of {json_len + data_len} bytes")
    return json_len, data_len


def _read_exact(stream: Any, n: int) -> bytes:
    data = stream.read(n)
    if len(data) < n:
        raise EOFError("pipe closed")
    return data


def receive(stream: Any) -> Any:
    """Read one frame from a blocking binary stream (the child's stdin)."""
    json_len, data_len = frame_sizes(_read_exact(stream, HEADER.size))
    return decode_frame(_read_exact(stream, json_len), _read_exact(stream, data_len) if data_len else b"")


def send(stream: Any, message: Any) -> None:
    """Write one frame to a blocking binary stream (the child's stdout)."""
    for buf in encode_frame(message):
        stream.write(buf)
    stream.flush()


# ---------------------------------------------------------------------------------------------
# The child's functions: the one open shard lives in _W.
# ---------------------------------------------------------------------------------------------

_W: dict[str, Any] = {}
# Point id -> item id of the points this child wrote or read (searches that want ids only skip the payload).
_NAMES: dict[Any, str] = {}
# uuid5 is a SHA-1 per id; searches exclude the same consumed ids batch after batch.
point_id = functools.lru_cache(maxsize=1 << 16)(_point_id)


def _w_ensure(path: str, dim: int) -> None:
    """Load the shard at path (checking dim) or create it."""
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
    """The open shard, or a clear error when ensure_collection was not called."""
    shard = _W.get("shard")
    if shard is None:
        raise RuntimeError("item store not opened: call ensure_collection(dim) first")
    return shard


def _w_upsert(item_ids: list[str], vectors: np.ndarray, payloads: list[dict], optimize_every: int) -> bool:
    """Upsert points in chunks; True when optimize_every more points are un-indexed than after the last optimize."""
    import qdrant_edge as qe

    shard = _w_shard()
    rows = vectors.tolist()
    for start in range(0, len(item_ids), UPSERT_CHUNK):
        points = [
            qe.Point(id=point_id(item_ids[i]), vector=rows[i], payload=payloads[i])
            for i in range(start, min(start + UPSERT_CHUNK, len(item_ids)))
        ]
        _NAMES.update((p.id, i) for p, i in zip(points, item_ids[start:start + UPSERT_CHUNK]))
        shard.update(qe.UpdateOperation.upsert_points(points))
    info = shard.info()
    unindexed = info.points_count - info.indexed_vectors_count
    return optimize_every > 0 and unindexed - _W["unindexed_at_optimize"] >= optimize_every


def _w_optimize() -> list[int]:
    """Build indexes and merge segments; returns [points, indexed vectors] afterwards."""
    shard = _w_shard()
    shard.optimize()
    shard.flush()
    info = shard.info()
    # Segments under the engine's indexing threshold stay plain: count them as the new baseline.
    _W["unindexed_at_optimize"] = info.points_count - info.indexed_vectors_count
    return [info.points_count, info.indexed_vectors_count]


def _w_delete(item_ids: list[str]) -> None:
    """Delete the points of these item ids (unknown ids are ignored)."""
    import qdrant_edge as qe

    _w_shard().update(qe.UpdateOperation.delete_points([point_id(i) for i in item_ids]))
    for i in item_ids:
        _NAMES.pop(point_id(i), None)


def _w_get_records(item_ids: list[str], with_vectors: bool) -> list[Any]:
    """[ids, payloads, (n, dim) float32 vectors or None] of the item ids that exist, in one engine call."""
    records = _w_shard().retrieve([point_id(i) for i in item_ids], True, with_vectors)
    ids = [r.payload[ITEM_ID_KEY] for r in records]
    payloads = [r.payload for r in records]
    if not with_vectors:
        return [ids, payloads, None]
    vectors = np.asarray([r.vector for r in records], dtype=np.float32).reshape(len(records), _W["dim"])
    return [ids, payloads, vectors]


def _w_search(vectors: np.ndarray, limit: int, exclude_ids: list[str], fields: list[str] | None,
              row_excludes: list[list[str]] | None = None) -> list[Any]:
    """One batched nearest-neighbour query per row -> [ids, scores (float32), row lengths, payloads or None].

    exclude_ids apply to every row, row_excludes[r] to row r only (a filter per request of the batch).
    fields None returns whole payloads; a list returns only those payload keys (ITEM_ID_KEY always); an empty
    list reads no payload (ids come from _NAMES) and returns None for the payloads.
    """
    import qdrant_edge as qe

    shard = _w_shard()
    common = {point_id(i) for i in exclude_ids}
    with_payload: Any = True if fields is None else sorted({ITEM_ID_KEY, *fields})
    filters: dict[int, Any] = {}

    def row_filter(r: int) -> Any:
        own = row_excludes[r] if row_excludes is not None else ()
        if not own:
            if None not in filters:
                filters[None] = qe.Filter(must_not=[qe.HasIdCondition(common)]) if common else None
            return filters[None]
        return qe.Filter(must_not=[qe.HasIdCondition(common | {point_id(i) for i in own})])

    ids_only = fields is not None and not fields  # the caller wants ids and scores: no payload read at all
    requests = [
        qe.QueryRequest(limit=limit, query=qe.Query.Nearest(row), filter=row_filter(r),
                        with_payload=False if ids_only else with_payload)
        for r, row in enumerate(vectors.tolist())
    ]
    batches = shard.query_batch(qe.QueryBatchRequest(requests))
    scores = [p.score for rows in batches for p in rows]
    lengths = np.fromiter((len(rows) for rows in batches), dtype=np.int32, count=len(batches))
    if ids_only:
        # Point ids map back to item ids in memory (reading payloads was ~40% of a search of 82 hits per row).
        ids = _item_ids([p.id for rows in batches for p in rows])
        return [ids, np.asarray(scores, dtype=np.float32), lengths, None]  # the parent writes {ITEM_ID_KEY: id}
    payloads = [p.payload for rows in batches for p in rows]
    ids = [payload[ITEM_ID_KEY] for payload in payloads]
    _NAMES.update(zip((p.id for rows in batches for p in rows), ids))
    return [ids, np.asarray(scores, dtype=np.float32), lengths, payloads]


def _item_ids(points: list[Any]) -> list[str]:
    """The item ids of these point ids: from _NAMES, the ones not seen yet (a shard loaded from disk) read once."""
    names = _NAMES
    missing = list({p for p in points if p not in names})
    if missing:
        for record in _w_shard().retrieve(missing, True, False):
            names[record.id] = record.payload[ITEM_ID_KEY]
    return [names[p] for p in points]


def _w_count() -> int:
    """Exact number of points."""
    import qdrant_edge as qe

    return _w_shard().count(qe.CountRequest(exact=True))


def _w_ping() -> bool:
    """Liveness: answers at once (health checks)."""
    return True


def _w_close() -> None:
    """Flush and close the shard, releasing its WAL lock."""
    shard = _W.pop("shard", None)
    if shard is not None:
        shard.flush()
        shard.close()


FUNCTIONS: dict[str, Callable[..., Any]] = {
    f.__name__: f
    for f in (_w_ensure, _w_upsert, _w_optimize, _w_delete, _w_get_records, _w_search, _w_count, _w_ping)
}


def main() -> None:
    """Child loop: read [function name, args], run it, write ["ok"|"err", value]; EOF on stdin ends it."""
    # Ctrl-C and an operator's SIGTERM to the process group (systemd's default, `kill -- -PGID`) reach the child too;
    # the parent flushes and closes us on its way out (and EOF ends us if it dies). Dying first made the parent log
    # the child as crashed and restart it in the middle of its shutdown.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    inp, out = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must never corrupt the reply channel
    while True:
        try:
            name, args = receive(inp)
        except EOFError:
            break
        try:
            reply: list[Any] = ["ok", FUNCTIONS[name](*args)]
        except Exception as exc:  # returned to the caller and re-raised there
            reply = ["err", [type(exc).__name__, str(exc)]]
        send(out, reply)
    _w_close()


if __name__ == "__main__":
    main()
