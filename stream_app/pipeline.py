"""The work behind the agents, batch by batch: index items, turn events into vectors, update interests, recommend.

Faust-free on purpose: the agents in stream_app.app hand each batch here, and everything that could block
(the encoder, the vector store) runs off the event loop. The interest math itself is stream_app.interest.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_app.encoder import TextEncoder, load_encoder
from stream_app.events import BehaviourEvent, ItemEvent
from stream_app.interest import InterestParams, UserState, apply_event, consumed_items, interest_vectors
from stream_app.ranking import merge_slot_hits, popular_items
from stream_app.settings import Settings
from stream_app.vectorstore import ItemRecord, ItemStore, open_item_store

log = logging.getLogger(__name__)


class UnknownItem(LookupError):
    """A behaviour event names an item the catalogue does not hold (never indexed, or deleted)."""


def item_fingerprint(item: ItemEvent) -> str:
    """A digest of everything stored for an item, so an unchanged re-send is not encoded again."""
    return hashlib.sha256(repr((item.document(), sorted(item.payload().items()))).encode()).hexdigest()[:32]


@dataclass
class LRUCache:
    """A bounded map of item_id -> vector (the hot part of the catalogue, saving store round trips)."""

    capacity: int
    data: OrderedDict[str, np.ndarray] = field(default_factory=OrderedDict)

    def get(self, key: str) -> np.ndarray | None:
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key: str, value: np.ndarray) -> None:
        if self.capacity <= 0:
            return
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.capacity:
            self.data.popitem(last=False)

    def discard(self, key: str) -> None:
        self.data.pop(key, None)


@dataclass
class Popularity:
    """Exponentially decayed interaction counts per item (half-life in hours), this worker's view of the stream."""

    half_life_hours: float = 24.0
    counts: dict[str, float] = field(default_factory=dict)
    ref_ts: float = 0.0

    def add(self, item_id: str, ts: float, weight: float = 1.0) -> None:
        """Count one interaction at time ts (stored relative to a moving reference time, so no overflow)."""
        if ts > self.ref_ts:
            if self.counts:
                factor = math.exp(-math.log(2) * (ts - self.ref_ts) / 3600.0 / self.half_life_hours)
                if factor < 1e-12:
                    self.counts.clear()
                else:
                    for k in self.counts:
                        self.counts[k] *= factor
            self.ref_ts = ts
        age_h = (self.ref_ts - ts) / 3600.0
        self.counts[item_id] = self.counts.get(item_id, 0.0) + weight * math.exp(-math.log(2) * age_h / self.half_life_hours)

    def discard(self, item_id: str) -> None:
        self.counts.pop(item_id, None)


@dataclass
class Metrics:
    """Counters and a window of recent latencies for the web view."""

    events: int = 0
    batches: int = 0
    recommendations: int = 0
    dead_letters: int = 0
    items_indexed: int = 0
    items_deleted: int = 0
    items_unchanged: int = 0
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    started_at: float = field(default_factory=time.time)

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0..100) of recent event -> recommendation latencies, in ms."""
        if not self.latencies_ms:
            return None
        return float(np.percentile(np.fromiter(self.latencies_ms, float), q))

    def snapshot(self) -> dict[str, Any]:
        return {
            "events": self.events,
            "batches": self.batches,
            "recommendations": self.recommendations,
            "dead_letters": self.dead_letters,
            "items_indexed": self.items_indexed,
            "items_deleted": self.items_deleted,
            "items_unchanged": self.items_unchanged,
            "latency_ms_p50": self.percentile(50),
            "latency_ms_p95": self.percentile(95),
            "latency_ms_p99": self.percentile(99),
            "uptime_s": round(time.time() - self.started_at, 1),
        }


@dataclass
class Recommendation:
    """One user's list, with what produced it (for the topic and the per-user explanation page)."""

    user_id: str
    items: list[dict[str, Any]]
    strategy: str  # "interest" (slot search) or "popular" (no usable history)
    slot_weights: list[float]


class Pipeline:
    """Adapters (encoder, vector store) plus the per-batch steps the Faust agents call."""

    def __init__(self, settings: Settings, encoder: TextEncoder | None = None, store: ItemStore | None = None) -> None:
        self.settings = settings
        self.params = InterestParams.from_settings(settings)
        self.encoder = encoder
        self.store = store
        self.item_vectors = LRUCache(settings.item_cache_size)
        self.popularity = Popularity()
        self.metrics = Metrics()
        self.last_recommendations: OrderedDict[str, Recommendation] = OrderedDict()
        # One thread for the encoder: onnxruntime parallelises inside a run and releases the GIL.
        self._encoder_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._started = asyncio.Lock()
        self._ready = False

    @property
    def dim(self) -> int:
        assert self.encoder is not None, "Pipeline.start() first"
        return self.encoder.dim

    async def start(self) -> None:
        """Load the encoder (off the loop) and open the vector store; idempotent, called by every agent."""
        async with self._started:
            if self._ready:
                return
            loop = asyncio.get_running_loop()
            if self.encoder is None:
                self.encoder = await loop.run_in_executor(self._encoder_pool, load_encoder, self.settings)
            if self.store is None:
                self.store = open_item_store(self.settings)
            await self.store.ensure_collection(self.encoder.dim)
            self._ready = True
            log.info("pipeline ready: model=%s dim=%d provider=%s", self.encoder.manifest.name, self.encoder.dim,
                     self.encoder.provider)

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
        self._encoder_pool.shutdown(wait=False)

    async def encode(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        """Encode a batch of texts in the encoder thread (never on the event loop)."""
        assert self.encoder is not None
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._encoder_pool, lambda: self.encoder.encode(list(texts), kind=kind))

    # ---- items --------------------------------------------------------------------------------------------
    async def index_items(self, items: Sequence[ItemEvent]) -> None:
        """Upsert new or changed items (one encoder batch, one store call) and delete the deleted ones."""
        assert self.store is not None
        latest: dict[str, ItemEvent] = {}
        for item in items:  # the last message for an id wins within a batch
            latest[item.item_id] = item
        deleted = [i for i, item in latest.items() if item.deleted]
        upserts = [item for item in latest.values() if not item.deleted]
        if deleted:
            await self.store.delete(deleted)
            for item_id in deleted:
                self.item_vectors.discard(item_id)
                self.popularity.discard(item_id)
            self.metrics.items_deleted += len(deleted)
        if upserts:
            vectors = await self.encode([item.document() for item in upserts], kind="passage")
            records = [ItemRecord(item.item_id, vec, item.payload()) for item, vec in zip(upserts, vectors)]
            await self.store.upsert(records)
            for item, vec in zip(upserts, vectors):
                self.item_vectors.put(item.item_id, vec)
            self.metrics.items_indexed += len(upserts)

    # ---- behaviour ----------------------------------------------------------------------------------------
    async def event_vectors(self, events: Sequence[BehaviourEvent]) -> list[np.ndarray | UnknownItem]:
        """One vector per event: the item's stored vector, the encoded free text, or their mean for a review."""
        assert self.store is not None
        missing = sorted({e.item_id for e in events if e.item_id and self.item_vectors.get(e.item_id) is None})
        if missing:
            found = await self.store.get_vectors(missing)
            for item_id, vec in found.items():
                self.item_vectors.put(item_id, np.asarray(vec, np.float32))
        text_events = [e for e in events if e.text]
        queries = [e for e in text_events if e.type == "search"]
        passages = [e for e in text_events if e.type != "search"]
        text_vecs: dict[int, np.ndarray] = {}
        for group, kind in ((queries, "query"), (passages, "passage")):
            if group:
                for e, vec in zip(group, await self.encode([e.text for e in group], kind=kind)):  # type: ignore[misc]
                    text_vecs[id(e)] = vec
        out: list[np.ndarray | UnknownItem] = []
        for e in events:
            item_vec = self.item_vectors.get(e.item_id) if e.item_id else None
            text_vec = text_vecs.get(id(e))
            if item_vec is not None and text_vec is not None:
                mean = item_vec + text_vec
                out.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
            elif item_vec is not None:
                out.append(item_vec)
            elif text_vec is not None:
                out.append(text_vec)
            else:
                out.append(UnknownItem(f"unknown or deleted item_id {e.item_id!r}"))
        return out

    def update_state(self, state: UserState, events: Sequence[BehaviourEvent], vectors: Sequence[np.ndarray]) -> UserState:
        """Fold a user's events (in arrival order) into the state; counts items for popularity."""
        for e, vec in zip(events, vectors):
            state = apply_event(state, vec, e.type, e.ts, e.item_id, self.params)
            if e.item_id and e.type != "dislike":
                self.popularity.add(e.item_id, e.ts, self.params.type_weights.get(e.type, 1.0))
        self.metrics.events += len(events)
        return state

    async def recommend(self, states: dict[str, UserState], now: float) -> dict[str, Recommendation]:
        """Top-k per user: all users' slot vectors in one batched search, merged by slot weight, consumed excluded."""
        assert self.store is not None
        k = self.settings.top_k
        rows: list[np.ndarray] = []
        owners: list[tuple[str, np.ndarray, int, int]] = []  # user, weights, first row, row count
        for user_id, state in states.items():
            vecs, weights = interest_vectors(state, now, self.params)
            if len(weights):
                owners.append((user_id, weights, len(rows), len(weights)))
                rows.extend(vecs)
        hits_by_row: list = []
        consumed = {u: consumed_items(s) for u, s in states.items()}
        if rows:
            # Post-filter instead of per-user Qdrant filters: one batched call, exact while limit >= k + |consumed|.
            limit = k + max(len(consumed[u]) for u, *_ in owners)
            hits_by_row = await self.store.search(np.stack(rows).astype(np.float32), limit)
        out: dict[str, Recommendation] = {}
        for user_id, weights, start, n in owners:
            hit_lists = hits_by_row[start:start + n]
            titles = {h.item_id: h.payload.get("title", "") for hits in hit_lists for h in hits}
            merged = merge_slot_hits([[(h.item_id, h.score) for h in hits] for hits in hit_lists], weights,
                                     set(consumed[user_id]), k)
            items = [{"item_id": i, "score": round(s, 6), "title": titles.get(i, "")} for i, s in merged]
            out[user_id] = Recommendation(user_id, items, "interest", [round(float(w), 4) for w in weights])
        cold = [u for u in states if u not in out]
        if cold:
            out.update(await self._popular(cold, consumed, k))
        for user_id, rec in out.items():
            self.last_recommendations[user_id] = rec
            self.last_recommendations.move_to_end(user_id)
        while len(self.last_recommendations) > 10_000:
            self.last_recommendations.popitem(last=False)
        return out

    async def _popular(self, users: list[str], consumed: dict[str, list[str]], k: int) -> dict[str, Recommendation]:
        """Cold users get the currently most popular items (titles fetched from the store in one call)."""
        assert self.store is not None
        ranked = {u: popular_items(self.popularity.counts, set(consumed[u]), k) for u in users}
        ids = sorted({i for lst in ranked.values() for i, _ in lst})
        titles = await self.store.get_payloads(ids) if ids and hasattr(self.store, "get_payloads") else {}
        return {
            u: Recommendation(u, [{"item_id": i, "score": round(s, 6), "title": titles.get(i, {}).get("title", "")}
                                  for i, s in lst], "popular", [])
            for u, lst in ranked.items()
        }
