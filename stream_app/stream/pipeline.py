"""The work behind the agents, batch by batch: index items, turn events into vectors, update interests, recommend.

Faust-free on purpose: the agents in stream_app.stream.app hand each batch here, and everything that could block
(the encoder, the vector store) runs off the event loop. The interest math itself is stream_app.core.interest.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from stream_app.adapters.encoder import TextEncoder, load_encoder
from stream_app.core.events import BehaviourEvent, ItemEvent, list_title
from stream_app.core import collab
from stream_app.core.collab import CollabParams, CollabState
from stream_app.stream.metrics import Metrics
from stream_app.core.interest import (
    Exclusions, InterestParams, UserState, apply_event, consumed_items, exclusions, interest_vectors,
)
from stream_app.core.ranking import Ranked, RankParams, VectorTable, candidate_pool, merge_slot_hits, rank
from stream_app.settings import Settings
from stream_app.adapters.vectorstore import Hit, ItemRecord, ItemStore, open_item_store

log = logging.getLogger(__name__)


# Hits fetched beyond the pool per query row to absorb the row's exclusions (consumed items) by post-filtering.
# Rows whose exclusions ate into the pool are searched again with their own filter (exact either way):
# qdrant-edge's per-row filters cost more than this much over-fetching (see README, Performance).
OVERFETCH = 32

# Users per pipelined step of Pipeline.recommend (their slot rows make one store search).
RECOMMEND_CHUNK = 64


async def search_excluding(store: ItemStore, vectors: np.ndarray, pool: int,
                           excluded: Sequence[Collection[str]], payload_fields: Sequence[str] | None = None,
                           overfetch: int = OVERFETCH) -> list[list[Hit]]:
    """Per query row, the `pool` nearest items not in excluded[row], exactly; at most two store calls.

    One batched search at limit pool + min(max exclusions, overfetch) is post-filtered; a row that then has
    fewer than `pool` hits while the store returned a full list (more items may exist) is searched again with
    its own exclusion filter. The limit no longer grows with the longest history in the batch.
    """
    rows = np.asarray(vectors, dtype=np.float32)
    if len(rows) == 0 or pool <= 0:
        return [[] for _ in range(len(rows))]
    extra = min(max((len(e) for e in excluded), default=0), overfetch)
    limit = pool + extra
    hits = await store.search(rows, limit, payload_fields=payload_fields)
    out = [[h for h in row_hits if h.item_id not in ex][:pool] for row_hits, ex in zip(hits, excluded)]
    short = [r for r, row_hits in enumerate(hits) if len(out[r]) < pool and len(row_hits) == limit]
    if short:
        again = await store.search(rows[short], pool, payload_fields=payload_fields,
                                   row_excludes=[excluded[r] for r in short])
        for r, row_hits in zip(short, again):
            out[r] = row_hits
    return out


class UnknownItem(LookupError):
    """A behaviour event names an item the catalogue does not hold (never indexed, or deleted)."""


def item_fingerprint(item: ItemEvent) -> str:
    """A digest of everything stored for an item, so an unchanged re-send is not encoded again."""
    return hashlib.sha256(repr((item.document(), sorted(item.payload().items()))).encode()).hexdigest()[:32]


@dataclass
class LRUCache:
    """A bounded map of item_id -> ItemRecord (the hot part of the catalogue, saving store round trips)."""

    capacity: int
    data: OrderedDict[str, ItemRecord] = field(default_factory=OrderedDict)

    def get(self, key: str) -> ItemRecord | None:
        value = self.data.get(key)
        if value is not None:
            self.data.move_to_end(key)
        return value

    def put(self, key: str, value: ItemRecord) -> None:
        """Keep a record; its vector is copied, because a vector the store or the encoder returned is a row of a
        whole batch's array (a view), and caching the view would keep that whole array alive (at 100,000 items
        the cache's churn pinned ~800 MB of store replies this way)."""
        if self.capacity <= 0:
            return
        self.data[key] = ItemRecord(value.item_id, np.array(value.vector, dtype=np.float32), value.payload)
        self.data.move_to_end(key)
        while len(self.data) > self.capacity:
            self.data.popitem(last=False)

    def discard(self, key: str) -> None:
        self.data.pop(key, None)


@dataclass
class Recommendation:
    """One user's list, with what produced it (for the topic and the per-user explanation page)."""

    user_id: str
    items: list[dict[str, Any]]
    strategy: str  # "blend" (interest slots + collaborative re-ranking) or "popular" (no usable interest)
    slot_weights: list[float]


class Pipeline:
    """Adapters (encoder, vector store) plus the per-batch steps the Faust agents call."""

    def __init__(self, settings: Settings, encoder: TextEncoder | None = None, store: ItemStore | None = None) -> None:
        self.settings = settings
        self.params = InterestParams.from_settings(settings)
        self.encoder = encoder
        self.store = store
        self.item_vectors = LRUCache(settings.item_cache_size)
        self.cparams = CollabParams.from_settings(settings)
        self.rparams = RankParams.from_settings(settings)
        # Co-occurrence, sequence and popularity of the whole stream, fed (and replaced on start) by stream_app.stream.replica.
        self.collab = CollabState()
        self.metrics = Metrics(top_k=settings.top_k, store_stuck_s=settings.store_timeout_s,
                               agent_stuck_s=settings.agent_stuck_s)
        self.last_recommendations: OrderedDict[str, Recommendation] = OrderedDict()
        # One thread for the encoder: onnxruntime parallelises inside a run and releases the GIL.
        self._encoder_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="encoder")
        self._started = asyncio.Lock()
        self._ready = False

    @property
    def dim(self) -> int:
        if self.encoder is None:
            raise RuntimeError("Pipeline.start() first")
        return self.encoder.dim

    async def start(self) -> None:
        """Load the encoder (off the loop) and open the vector store; idempotent, called by every agent."""
        async with self._started:
            if self._ready:
                return
            loop = asyncio.get_running_loop()
            try:
                if self.encoder is None:
                    self.encoder = await loop.run_in_executor(self._encoder_pool, load_encoder, self.settings)
                if self.store is None:
                    self.store = open_item_store(self.settings)
                await self.store.ensure_collection(self.encoder.dim)
            except Exception as exc:
                self.metrics.start_failed(f"pipeline failed to start: {type(exc).__name__}: {exc}")
                raise
            self._ready = True
            self.metrics.started()
            log.info("pipeline ready: model=%s dim=%d provider=%s", self.encoder.manifest.name, self.encoder.dim,
                     self.encoder.provider)

    async def close(self) -> None:
        if self.store is not None:
            await self.store.close()
        self._encoder_pool.shutdown(wait=False)

    async def encode(self, texts: Sequence[str], kind: str = "passage") -> np.ndarray:
        """Encode a batch of texts in the encoder thread (never on the event loop)."""
        return (await self.encode_groups([(texts, kind)]))[0]

    async def encode_groups(self, groups: Sequence[tuple[Sequence[str], str]]) -> list[np.ndarray]:
        """Encode several (texts, kind) groups in one hop to the encoder thread (queries and passages of a batch)."""
        if self.encoder is None:
            raise RuntimeError("Pipeline.start() first")
        encoder = self.encoder

        n = sum(len(texts) for texts, _ in groups)

        def run() -> list[np.ndarray]:
            # Tracked in the thread itself: a run that never returns keeps the worker unhealthy (/health) even
            # after the caller below gave up waiting for it.
            call_id = self.metrics.call_started("encoder", f"{n} texts", self.settings.encoder_timeout_s)
            try:
                return [encoder.encode(list(texts), kind=kind) if len(texts)
                        else np.zeros((0, encoder.dim), np.float32) for texts, kind in groups]
            finally:
                self.metrics.call_ended(call_id)

        if n == 0:
            return run()
        t0 = time.perf_counter()
        # TimeoutError is transient to the agents' error policy: the batch waits and is retried, nothing is
        # dead-lettered for a stuck encoder.
        out = await asyncio.wait_for(asyncio.get_running_loop().run_in_executor(self._encoder_pool, run),
                                     self.settings.encoder_timeout_s)
        self.metrics.observe_encoder(n, time.perf_counter() - t0)
        return out

    # ---- items --------------------------------------------------------------------------------------------
    async def index_items(self, items: Sequence[ItemEvent]) -> None:
        """Upsert new or changed items (one encoder batch, one store call) and delete the deleted ones."""
        if self.store is None:
            raise RuntimeError("Pipeline.start() first")
        latest: dict[str, ItemEvent] = {}
        for item in items:  # the last message for an id wins within a batch
            latest[item.item_id] = item
        deleted = [i for i, item in latest.items() if item.deleted]
        upserts = [item for item in latest.values() if not item.deleted]
        records: list[ItemRecord] = []
        if upserts:
            vectors = await self.encode([item.document() for item in upserts], kind="passage")
            records = [ItemRecord(item.item_id, vec, item.payload()) for item, vec in zip(upserts, vectors)]
        await self.store_records(deleted, records)

    async def store_records(self, deleted: Sequence[str], records: Sequence[ItemRecord]) -> None:
        """Delete and upsert encoded records in this worker's store, keeping the record cache and counters in step
        (the items agent after encoding, and the catalogue replica with records encoded by another worker)."""
        if self.store is None:
            raise RuntimeError("Pipeline.start() first")
        if deleted:
            with self.metrics.store_call("delete"):
                await self.store.delete(list(deleted))
            for item_id in deleted:
                self.item_vectors.discard(item_id)
            self.metrics.count("items_deleted", len(deleted))
        if records:
            with self.metrics.store_call("upsert"):
                await self.store.upsert(list(records))
            for record in records:
                self.item_vectors.put(record.item_id, record)
            self.metrics.count("items_indexed", len(records))

    # ---- behaviour ----------------------------------------------------------------------------------------
    async def records_for(self, item_ids: Sequence[str]) -> dict[str, ItemRecord]:
        """Stored records (vector + payload) of the ids that exist: LRU cache first, the rest in one get_records."""
        if self.store is None:
            raise RuntimeError("Pipeline.start() first")
        found: dict[str, ItemRecord] = {}
        cache = self.item_vectors
        for item_id in item_ids:
            record = cache.get(item_id)
            if record is not None:
                found[item_id] = record
        self.metrics.count("cache_hits", len(found))
        missing = sorted(set(item_ids) - found.keys())
        if missing:
            self.metrics.count("store_record_calls")
            with self.metrics.store_call("get_records"):
                stored = await self.store.get_records(missing)
            for item_id, record in stored.items():
                found[item_id] = record
                cache.put(item_id, record)
        return found

    async def item_vectors_for(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors of the ids that exist (see records_for)."""
        return {i: r.vector for i, r in (await self.records_for(item_ids)).items()}

    async def event_vectors(self, events: Sequence[BehaviourEvent]) -> list[np.ndarray | UnknownItem]:
        """One vector per event: the item's stored vector, the encoded free text, or their mean for a review."""
        queries = [e for e in events if e.text and e.type == "search"]
        passages = [e for e in events if e.text and e.type != "search"]
        # The store lookup (store thread) and the encoder (encoder thread) run at the same time.
        item_vecs, (query_vecs, passage_vecs) = await asyncio.gather(
            self.item_vectors_for([e.item_id for e in events if e.item_id]),
            self.encode_groups([([e.text for e in queries], "query"), ([e.text for e in passages], "passage")]),
        )
        text_vecs: dict[int, np.ndarray] = {id(e): v for e, v in zip(queries, query_vecs)}
        text_vecs.update({id(e): v for e, v in zip(passages, passage_vecs)})
        out: list[np.ndarray | UnknownItem] = []
        for e in events:
            item_vec = item_vecs.get(e.item_id) if e.item_id else None
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
        """Fold a user's events (in arrival order) into the interest state.

        The collaborative counters are fed from the whole stream by stream_app.stream.replica, not here (see the README).
        """
        for e, vec in zip(events, vectors):
            state = apply_event(state, vec, e.type, e.ts, e.item_id, self.params)
        for e in events:  # online evaluation: each user's next event against the last list sent
            self.metrics.online.next_event(e.user_id, e.type, e.item_id)
        self.metrics.count("events", len(events))
        return state

    def forget_user(self, user_id: str) -> None:
        """Drop every per-user trace this worker keeps outside the state table (the last list sent, metrics)."""
        self.last_recommendations.pop(user_id, None)
        self.metrics.forget_user(user_id)

    async def _text_hits(self, users: Sequence[str], slots: dict[str, tuple[np.ndarray, np.ndarray]],
                         excluded: dict[str, Exclusions]) -> dict[str, dict[str, float]]:
        """Each user's best rank_text_pool non-excluded items by max over slots of slot weight x cosine (one
        batched search, post-filtered: see search_excluding); users without slots get none."""
        rp = self.rparams
        text_hits: dict[str, dict[str, float]] = {u: {} for u in users}
        owners = [u for u in users if len(slots[u][1])]
        if not owners or self.store is None:
            return text_hits
        t0 = time.perf_counter()
        # Hits carry no payload: titles come with the records of the items that are ranked.
        with self.metrics.store_call("search"):
            hits_by_row = await search_excluding(
                self.store, np.concatenate([slots[u][0] for u in owners]).astype(np.float32), rp.text_pool,
                [excluded[u] for u in owners for _ in range(len(slots[u][1]))], payload_fields=[])
        self.metrics.observe_search((time.perf_counter() - t0) * 1e3)
        self.metrics.count("store_searches")
        row = 0
        for u in owners:
            n = len(slots[u][1])
            # search_excluding already dropped the user's exclusions
            text_hits[u] = dict(merge_slot_hits([[(h.item_id, h.score) for h in hits] for hits in hits_by_row[row:row + n]],
                                                slots[u][1], (), rp.text_pool))
            row += n
        return text_hits

    async def recommend(self, states: dict[str, UserState], now: float) -> dict[str, Recommendation]:
        """Top-k per user by the one ranking function (stream_app.core.ranking.candidate_pool + rank), the same calls
        the evaluator's default model makes: slot search (batched store calls) merged by merge_slot_hits,
        co-occurrence, sequence and popularity candidates, the user's whole exclusion set, the blend.

        Users go in chunks of RECOMMEND_CHUNK, pipelined: the store searches chunk i+1 (in its own process) while
        this thread scores and ranks chunk i, so a batch costs about max(search, ranking) instead of their sum.
        """
        if self.store is None:
            raise RuntimeError("Pipeline.start() first")
        k, rp = self.settings.top_k, self.rparams
        slots = {u: interest_vectors(s, now, self.params) for u, s in states.items()}
        recent = {u: consumed_items(s) for u, s in states.items()}
        excluded = {u: exclusions(s) for u, s in states.items()}
        # Enough popular items for the pool after any user's exclusions; also the online evaluation's baseline.
        popular = collab.top_popular(self.collab, rp.pool + max((len(excluded[u]) for u in states), default=0))
        users = list(states)
        if not users:
            return {}
        chunks = [users[i:i + RECOMMEND_CHUNK] for i in range(0, len(users), RECOMMEND_CHUNK)]
        ranked: dict[str, list[Ranked]] = {}
        payloads: dict[str, dict] = {}
        supports: dict[str, float] = {}  # collab.support of every ranked item, for "why"
        search = asyncio.ensure_future(self._text_hits(chunks[0], slots, excluded))
        try:
            for c, chunk in enumerate(chunks):
                cooc = {u: collab.cooc_scores(self.collab, recent[u], self.cparams) for u in chunk}
                seq = {u: collab.seq_scores(self.collab, recent[u], self.cparams) for u in chunk}
                text_hits = await search  # chunk c's search, started before chunk c-1 was ranked
                pools = {u: candidate_pool(text_hits[u], cooc[u], seq[u], popular, excluded[u], rp) for u in chunk}
                # Counter items come from the stream, not the store: only items with a stored record are in the
                # catalogue. One round trip (cache first) brings the vectors every pool item's text affinity needs
                # and the payloads, gathered into one matrix for the chunk.
                records = await self.records_for(sorted({i for pool in pools.values() for i in pool}))
                if c + 1 < len(chunks):
                    search = asyncio.ensure_future(self._text_hits(chunks[c + 1], slots, excluded))
                payloads.update((i, record.payload) for i, record in records.items())
                vectors = VectorTable.of({i: record.vector for i, record in records.items()}, self.dim)
                known = collab.support(self.collab, list(vectors), self.cparams)
                supports.update(known)
                for u in chunk:
                    ranked[u] = rank(pools[u], vectors, *slots[u], cooc[u], seq[u], self.collab.pop, known, rp, k)
        finally:
            if not search.done():  # an error above: do not leave the next chunk's search behind
                search.cancel()
        out: dict[str, Recommendation] = {}
        for u in users:
            weights = slots[u][1]
            items = []
            for r in ranked[u]:
                # support: the interactions the counters know for the item (a little-known one gets the cold boosts)
                why = {"text": r.text, "slot": r.slot, "cooc": r.cooc, "seq": r.seq, "pop": r.pop,
                       "support": supports.get(r.item_id, 0.0)}
                why = {key: value if key == "slot" else float(f"{value:.4g}") for key, value in why.items()}
                why.update(collab.explain_sources(self.collab, recent[u], r.item_id, self.cparams))
                items.append({"item_id": r.item_id, "score": float(f"{r.score:.6g}"),
                              "title": list_title(payloads.get(r.item_id, {}).get("title", "")), "why": why})
            strategy = "blend" if len(weights) else "popular"
            out[u] = Recommendation(u, items, strategy, [round(float(w), 4) for w in weights])
        for user_id, rec in out.items():
            seen = set(recent[user_id])
            self.metrics.online.list_sent(user_id, [i["item_id"] for i in rec.items],
                                          [i for i in popular if i not in seen][:k])
            self.last_recommendations[user_id] = rec
            self.last_recommendations.move_to_end(user_id)
        while len(self.last_recommendations) > 10_000:
            self.last_recommendations.popitem(last=False)
        return out
