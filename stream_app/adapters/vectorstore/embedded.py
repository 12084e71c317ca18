"""The embedded item store: Qdrant's own engine (qdrant-edge) in a child process, driven over a pipe.

The engine holds the GIL for the whole of every call (measured: a heartbeat thread got 1 tick during a 3 s
optimize()), so a thread executor would still freeze the event loop. It therefore runs in one child process
(a plain subprocess, so the parent's __main__ is never re-imported as multiprocessing's spawn would), fed calls
by one dedicated thread: calls are serialised and the event loop only awaits a future. The wire format is in
stream_app.adapters.vectorstore.child (raw array bytes + JSON, never pickle).

Every call has a deadline (`timeout_s`; optimize() has its own, longer one). A call that misses it, or a child
that died, marks the store unhealthy (`healthy`, `last_error`); the child is killed (SIGKILL also ends a
SIGSTOPped one), a new one is started and reopens the same on-disk shard (its WAL holds every acknowledged
write). A dead child's call is retried once on the new child (every call is idempotent); a timed-out call raises
StoreTimeout, so the caller decides (the agents retry the batch).
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import subprocess
import sys
import time
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from stream_app.adapters.vectorstore import child
from stream_app.adapters.vectorstore.protocol import (
    ITEM_ID_KEY,
    SEARCH_CHUNK,
    Hit,
    ItemRecord,
    StoreError,
    StoreTimeout,
    as_rows,
    stored_payload,
)
from stream_app.settings import setting_default

log = logging.getLogger(__name__)

# New un-indexed points after which an upsert also runs optimize() (HNSW build) in the child.
# Measured (2 busy cores, dim 384): exact scan of plain segments ~0.33 ms per 10k points per query;
# optimize() rebuilds the whole shard, ~19 s at 20k, ~32 s at 40k, ~104 s at 100k, and the store
# answers nothing meanwhile. So small catalogues stay exact, and rebuilds are rare.
OPTIMIZE_EVERY: int = setting_default("qdrant_optimize_every")
_PACKAGE_ROOT = Path(__file__).resolve().parents[3]
_ERRORS: dict[str, type[Exception]] = {e.__name__: e for e in (ValueError, TypeError, KeyError, RuntimeError)}


class WorkerDied(StoreError):
    """The embedded store's child process exited or its pipe broke."""


class _Child:
    """Parent-side handle of one child process; call() blocks (with a deadline), so only the store's thread uses it."""

    def __init__(self) -> None:
        """Start the child loop (stream_app.adapters.vectorstore.child.main) with this package importable."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_PACKAGE_ROOT), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from stream_app.adapters.vectorstore.child import main; main()"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )
        self._out = self.proc.stdin.fileno()
        self._in = self.proc.stdout.fileno()
        os.set_blocking(self._out, False)
        os.set_blocking(self._in, False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _write(self, buffers: list[bytes | memoryview], deadline: float) -> None:
        for buf in buffers:
            view = memoryview(buf).cast("B")
            while view:
                if not select.select([], [self._out], [], max(0.0, deadline - time.monotonic()))[1]:
                    raise TimeoutError("writing to the child")
                try:
                    n = os.write(self._out, view)
                except BlockingIOError:
                    continue
                view = view[n:]

    def _read(self, n: int, deadline: float) -> bytes:
        chunks, left = [], n
        while left:
            if not select.select([self._in], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise TimeoutError("reading from the child")
            try:
                chunk = os.read(self._in, min(left, 1 << 20))
            except BlockingIOError:
                continue
            if not chunk:
                raise EOFError("pipe closed")
            chunks.append(chunk)
            left -= len(chunk)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def call(self, name: str, args: list, timeout_s: float) -> Any:
        """Run child function `name`(*args); StoreTimeout past timeout_s, WorkerDied if the child is gone."""
        deadline = time.monotonic() + timeout_s
        try:
            self._write(child.encode_frame([name, args]), deadline)
            json_len, data_len = child.frame_sizes(self._read(child.HEADER.size, deadline))
            doc = self._read(json_len, deadline)
            status, value = child.decode_frame(doc, self._read(data_len, deadline) if data_len else b"")
        except TimeoutError as exc:
            raise StoreTimeout(f"qdrant-edge child (pid {self.pid}) gave no answer to {name} in {timeout_s:g} s") \
                from exc
        except (EOFError, OSError, ValueError) as exc:
            raise WorkerDied(f"qdrant-edge child (pid {self.pid}) exited (code {self.proc.poll()})") from exc
        if status == "err":
            kind, message = value
            raise _ERRORS.get(kind, RuntimeError)(message if kind in _ERRORS else f"{kind}: {message}")
        return value

    def stop(self, timeout_s: float = 60.0) -> None:
        """Close its stdin (it then closes the shard and exits); kill it if it hangs."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=timeout_s)
        except (OSError, subprocess.TimeoutExpired):
            self.kill()

    def kill(self) -> None:
        """SIGKILL (also ends a stopped process) and reap it."""
        try:
            self.proc.kill()
        except OSError:
            pass
        self.proc.wait()
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass


class EmbeddedItemStore:
    """Qdrant's own engine (qdrant-edge) on local disk, driven from one dedicated child process."""

    def __init__(self, path: Path, *, optimize_every: int = OPTIMIZE_EVERY,
                 timeout_s: float = setting_default("store_timeout_s"),
                 optimize_timeout_s: float = 1800.0) -> None:
        """Store under path; optimize() runs after optimize_every new un-indexed points; calls time out."""
        self.path = Path(path)
        self.optimize_every = optimize_every
        self.timeout_s = timeout_s
        self.optimize_timeout_s = optimize_timeout_s
        self.restarts = 0
        self.last_error: str | None = None
        self._failed = False
        self._dim: int | None = None
        self._child: _Child | None = None
        self._thread: ThreadPoolExecutor | None = None

    @property
    def healthy(self) -> bool:
        """False after a call failed (until one succeeds) or while the child process is known to be gone."""
        if self._failed:
            return False
        return self._child is None or self._child.proc.poll() is None

    @property
    def child_pid(self) -> int | None:
        """Process id of the current child (tests and operators use it to find the process)."""
        return self._child.pid if self._child is not None else None

    def _restart(self) -> None:
        """In the store's thread: kill the child if any, start a new one and reopen the shard."""
        old, self._child = self._child, None
        if old is not None:
            old.kill()
        self.restarts += 1
        self._child = _Child()
        if self._dim is not None:
            self._child.call("_w_ensure", [str(self.path), self._dim], max(self.timeout_s, 120.0))
        log.warning("qdrant-edge child restarted (pid %d) and reopened %s", self._child.pid, self.path)

    def _blocking_call(self, name: str, args: list, timeout_s: float) -> Any:
        """In the store's thread: one call with a deadline; restart a dead or stuck child (see module docstring)."""
        try:
            if self._child is None:
                self._child = _Child()
            try:
                result = self._child.call(name, args, timeout_s)
            except WorkerDied as exc:
                self._note_failure(str(exc))
                self._restart()
                result = self._child.call(name, args, timeout_s)
        except StoreTimeout as exc:
            self._note_failure(str(exc))
            try:
                self._restart()
            except StoreError as again:
                self._note_failure(f"{exc}; restart failed: {again}")
            raise
        except StoreError as exc:
            self._note_failure(str(exc))
            raise
        self._failed = False
        return result

    def _note_failure(self, message: str) -> None:
        self._failed = True
        self.last_error = message
        log.error("item store: %s", message)

    async def _call(self, name: str, *args: Any, timeout_s: float | None = None) -> Any:
        """Await child function `name`(*args) via the store's single thread (serialised access)."""
        if self._thread is None:
            self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qdrant-edge")
        return await asyncio.get_running_loop().run_in_executor(
            self._thread, self._blocking_call, name, list(args), timeout_s or self.timeout_s)

    async def ensure_collection(self, dim: int) -> None:
        """Open the shard at self.path (creating it when missing); ValueError if it holds another dim."""
        await self._call("_w_ensure", str(self.path), dim, timeout_s=max(self.timeout_s, 120.0))
        self._dim = dim

    async def upsert(self, records: Sequence[ItemRecord]) -> None:
        """Insert or replace items; builds the HNSW index (in the child) after large loads."""
        if not records:
            return
        vectors = np.stack([np.asarray(r.vector, dtype=np.float32) for r in records])
        due = await self._call("_w_upsert", [r.item_id for r in records], vectors,
                               [stored_payload(r) for r in records], self.optimize_every)
        if due:
            t0 = time.perf_counter()
            await self.optimize()
            log.info("qdrant-edge index rebuilt at %s in %.1f s", self.path, time.perf_counter() - t0)

    async def optimize(self) -> tuple[int, int]:
        """Build the HNSW index now (e.g. after a bulk load); returns (points, indexed vectors)."""
        points, indexed = await self._call("_w_optimize", timeout_s=self.optimize_timeout_s)
        return points, indexed

    async def delete(self, item_ids: Sequence[str]) -> None:
        """Delete items; they are never returned by search afterwards."""
        if item_ids:
            await self._call("_w_delete", list(item_ids))

    async def get_records(self, item_ids: Sequence[str]) -> dict[str, ItemRecord]:
        """Vector and payload of the item ids that exist, in one round trip (missing ids are absent)."""
        if not item_ids:
            return {}
        ids, payloads, vectors = await self._call("_w_get_records", list(item_ids), True)
        return {i: ItemRecord(i, vectors[n], payloads[n]) for n, i in enumerate(ids)}

    async def get_vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors of the item ids that exist (read-only float32 rows)."""
        return {i: r.vector for i, r in (await self.get_records(item_ids)).items()}

    async def get_payloads(self, item_ids: Sequence[str]) -> dict[str, dict]:
        """Stored payloads (with ITEM_ID_KEY) of the item ids that exist."""
        if not item_ids:
            return {}
        ids, payloads, _ = await self._call("_w_get_records", list(item_ids), False)
        return dict(zip(ids, payloads))

    async def search(self, vectors: np.ndarray, limit: int, exclude_ids: Collection[str] = (),
                     payload_fields: Sequence[str] | None = None,
                     row_excludes: Sequence[Collection[str]] | None = None) -> list[list[Hit]]:
        """Nearest items by cosine for each query row, as one batched engine call per SEARCH_CHUNK rows.

        exclude_ids are never returned; row_excludes[r] are not returned for row r (each row gets its own filter,
        so `limit` hits survive the exclusions: no over-fetching). payload_fields limits the payload each hit
        carries (ITEM_ID_KEY always); None returns all of it.
        """
        rows = as_rows(vectors)
        if len(rows) == 0 or limit <= 0:
            return [[] for _ in range(len(rows))]
        if row_excludes is not None and len(row_excludes) != len(rows):
            raise ValueError(f"{len(row_excludes)} row_excludes for {len(rows)} query rows")
        exclude = list(dict.fromkeys(exclude_ids))
        fields = None if payload_fields is None else list(payload_fields)
        out: list[list[Hit]] = []
        for start in range(0, len(rows), SEARCH_CHUNK):
            own = None if row_excludes is None else [list(x) for x in row_excludes[start : start + SEARCH_CHUNK]]
            ids, scores, lengths, payloads = await self._call(
                "_w_search", rows[start : start + SEARCH_CHUNK], limit, exclude, fields, own)
            pos = 0
            for n in lengths.tolist():
                out.append([Hit(ids[j], s, {ITEM_ID_KEY: ids[j]} if payloads is None else payloads[j])  # None: ids only
                            for j, s in zip(range(pos, pos + n), scores[pos:pos + n].tolist())])
                pos += n
        return out

    async def count(self) -> int:
        """Number of items stored."""
        return await self._call("_w_count")

    async def ping(self, timeout_s: float = 5.0) -> bool:
        """True when the child answers within timeout_s (a stuck child is restarted, see the module docstring)."""
        try:
            return bool(await self._call("_w_ping", timeout_s=timeout_s))
        except StoreError:
            return False

    async def close(self) -> None:
        """Flush and close the shard and stop the child process and thread."""
        if self._thread is None:
            return
        thread, self._thread = self._thread, None
        proc, self._child = self._child, None
        if proc is not None:
            await asyncio.get_running_loop().run_in_executor(thread, proc.stop)
        thread.shutdown(wait=True)
