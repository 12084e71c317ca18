"""Cost of the whole-stream signal per event (parse + count) and of its snapshot, on a synthetic stream.

    .venv/bin/python benchmarks/bench_signal.py --events 200000 --users 20000 --items 50000

Every worker pays this for every event of the whole stream (not only its partitions'), so it bounds how many
events/s one worker's signal feed can follow; the snapshot's size and time bound how often it can be saved.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

from stream_app.core.collab import CollabParams
from stream_app.core.events import parse_behaviour
from stream_app.settings import Settings
from stream_app.core.signal_state import SignalState, count_events
from stream_app.stream.replica import load_signal_snapshot, save_signal_snapshot


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=20_000)
    ap.add_argument("--items", type=int, default=50_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    params = CollabParams.from_settings(Settings())
    # Zipf-like item popularity (rank^-1), users uniform: a shop's long tail.
    weights = [1.0 / (r + 1) for r in range(args.items)]
    items = rng.choices(range(args.items), weights=weights, k=args.events)
    raw = [json.dumps({"event_id": f"e{k}", "user_id": f"u{rng.randrange(args.users)}", "type": "view",
                       "item_id": f"sku-{items[k]}", "ts": 1767225600 + k}).encode() for k in range(args.events)]
    t0 = time.perf_counter()
    events = [parse_behaviour(r) for r in raw]
    t1 = time.perf_counter()
    state = SignalState()
    count_events(state, events, params)
    t2 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "signal.json.gz"
        size = save_signal_snapshot(state, path)
        t3 = time.perf_counter()
        load_signal_snapshot(path, max_users=10**9)
        t4 = time.perf_counter()
    n = args.events
    print(f"{n:,} events, {args.users:,} users, {args.items:,} items (window {params.window}, "
          f"max_neighbours {params.max_neighbours})")
    print(f"parse  {1e6 * (t1 - t0) / n:6.1f} us/event")
    print(f"count  {1e6 * (t2 - t1) / n:6.1f} us/event  -> {n / (t2 - t0):,.0f} events/s parse+count on one core")
    print(f"state  {len(state.collab.pop):,} items, {sum(len(r) for r in state.collab.cooc.values()):,} co-occurrence "
          f"entries, {len(state.recent):,} user windows")
    print(f"snapshot {size / 1e6:.1f} MB gzip JSON, save {t3 - t2:.2f} s, load {t4 - t3:.2f} s")


if __name__ == "__main__":
    main()
