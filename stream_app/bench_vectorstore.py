"""Benchmark of the embedded item store through its async API: load, optimize, query latency, recall.

Run: python -m stream_app.bench_vectorstore [--sizes 10000 100000] [--dim 384] [--queries 200]
Prints numbers only; nothing is asserted. Timings include the hop to the store's worker process.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np

from stream_app.adapters.vectorstore import EmbeddedItemStore, ItemRecord

LOAD_CHUNK = 5000


def unit_rows(n: int, dim: int, seed: int) -> np.ndarray:
    """n random unit vectors of dim (float32)."""
    x = np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


async def timed(fn: Callable[[], Awaitable[object]], runs: int) -> np.ndarray:
    """Milliseconds of each of runs awaited calls of fn."""
    out = np.empty(runs)
    for i in range(runs):
        t0 = time.perf_counter()
        await fn()
        out[i] = (time.perf_counter() - t0) * 1e3
    return out


def fmt(ms: np.ndarray) -> str:
    """p50/p95 of a latency sample."""
    return f"p50 {np.percentile(ms, 50):7.2f} ms  p95 {np.percentile(ms, 95):7.2f} ms"


async def recall_at_10(store: EmbeddedItemStore, catalogue: np.ndarray, queries: np.ndarray) -> float:
    """Mean overlap of the store's top-10 with exact top-10 by cosine."""
    results = await store.search(queries, limit=10)
    exact = np.argsort(-(queries @ catalogue.T), axis=1)[:, :10]
    hits = [len({h.item_id for h in r} & {f"i{j}" for j in e}) / 10 for r, e in zip(results, exact)]
    return float(np.mean(hits))


async def latency_suite(store: EmbeddedItemStore, catalogue: np.ndarray, queries: np.ndarray, label: str) -> None:
    """Single, single+50 excluded, batch of 8, and 8 singles, for one index state."""
    n = len(queries)
    rng = np.random.default_rng(1)
    exclude = [f"i{j}" for j in rng.choice(len(catalogue), 50, replace=False)]
    it = iter(range(10**9))
    single = await timed(lambda: store.search(queries[next(it) % n], 10), n)
    excl = await timed(lambda: store.search(queries[next(it) % n], 10, exclude), n)
    batch_runs = max(n // 8, 5)
    batch = await timed(lambda: store.search(queries[(k := next(it) % (n - 8)) : k + 8], 10, exclude), batch_runs)

    async def eight_singles() -> None:
        k = next(it) % (n - 8)
        for row in queries[k : k + 8]:
            await store.search(row, 10, exclude)

    singles8 = await timed(eight_singles, batch_runs)
    round_trip = await timed(lambda: store.get_vectors(["i0"]), n)
    ids64 = [f"i{j}" for j in rng.choice(len(catalogue), 64, replace=False)]
    records64 = await timed(lambda: store.get_records(ids64), max(n // 4, 5))
    # What one behaviour batch asks: 64 users x 3 slots, each row with its user's 100 consumed items excluded.
    rows = np.concatenate([queries] * (192 // n + 1))[:192]
    consumed = [[f"i{j}" for j in rng.choice(len(catalogue), 100, replace=False)] for _ in range(64)]
    row_ex = [consumed[r // 3] for r in range(192)]
    batch192 = await timed(lambda: store.search(rows, 20, row_excludes=row_ex, payload_fields=["title"]),
                           max(n // 20, 3))
    post120 = await timed(lambda: store.search(rows, 120, payload_fields=["title"]), max(n // 20, 3))
    print(f"  [{label}] get_vectors(1)      {fmt(round_trip)}")
    print(f"  [{label}] get_records(64)     {fmt(records64)}")
    print(f"  [{label}] 192 rows, own excl  {fmt(batch192)}  (64 users x 3 slots, 100 excluded each, limit 20)")
    print(f"  [{label}] 192 rows, limit 120 {fmt(post120)}  (the same, post-filtered: no filters, over-fetched)")
    print(f"  [{label}] 1 query             {fmt(single)}")
    print(f"  [{label}] 1 query, 50 excl    {fmt(excl)}")
    print(f"  [{label}] batch of 8, 50 excl {fmt(batch)}")
    print(f"  [{label}] 8 single, 50 excl   {fmt(singles8)}")
    print(f"  [{label}] recall@10 vs exact  {await recall_at_10(store, catalogue, queries[:50]):.3f}")


async def bench_size(root: Path, size: int, dim: int, queries: int) -> None:
    """Load size points, measure before and after optimize()."""
    catalogue = unit_rows(size, dim, seed=0)
    q = unit_rows(queries, dim, seed=2)
    store = EmbeddedItemStore(root / f"n{size}", optimize_every=0)
    await store.ensure_collection(dim)
    try:
        t0 = time.perf_counter()
        for s in range(0, size, LOAD_CHUNK):
            await store.upsert([ItemRecord(f"i{j}", catalogue[j], {"n": j}) for j in range(s, min(s + LOAD_CHUNK, size))])
        load_s = time.perf_counter() - t0
        print(f"n={size} dim={dim}: upsert {load_s:.1f} s ({size / load_s:,.0f} points/s), count {await store.count()}")
        await latency_suite(store, catalogue, q, "plain")
        t0 = time.perf_counter()
        points, indexed = await store.optimize()
        print(f"  optimize() {time.perf_counter() - t0:.1f} s -> {points} points, {indexed} indexed")
        await latency_suite(store, catalogue, q, "hnsw ")
    finally:
        await store.close()


async def run(sizes: list[int], dim: int, queries: int) -> None:
    """All sizes in a throwaway directory."""
    with tempfile.TemporaryDirectory(prefix="bench-vectorstore-") as tmp:
        for size in sizes:
            await bench_size(Path(tmp), size, dim, queries)


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: parse arguments and print the numbers."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args(argv)
    asyncio.run(run(args.sizes, args.dim, args.queries))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
