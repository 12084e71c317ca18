"""The item store on a Qdrant server, through qdrant-client's AsyncQdrantClient (network I/O, awaited)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Collection, Sequence
from typing import Any, TypeVar

import numpy as np

from stream_app.adapters.vectorstore.protocol import (
    ITEM_ID_KEY,
    SEARCH_CHUNK,
    UPSERT_CHUNK,
    Hit,
    ItemRecord,
    StoreError,
    StoreTimeout,
    as_rows,
    point_id,
    stored_payload,
)
from stream_app.settings import setting_default

T = TypeVar("T")


class QdrantServerStore:
    """A collection on a Qdrant server; every call is bounded by `timeout_s` and recorded in `healthy`."""

    def __init__(self, client: Any, collection: str, *, timeout_s: float = setting_default("store_timeout_s")) -> None:
        """Wrap an AsyncQdrantClient (any location it supports) and a collection name."""
        self.client = client
        self.collection = collection
        self.timeout_s = timeout_s
        self.healthy = True
        self.last_error: str | None = None

    async def _guard(self, call: Awaitable[T]) -> T:
        """Await one client call under the timeout; failures flip `healthy` and are re-raised as StoreError."""
        try:
            result = await asyncio.wait_for(call, self.timeout_s)
        except asyncio.TimeoutError as exc:
            self.healthy, self.last_error = False, f"Qdrant server call timed out after {self.timeout_s} s"
            raise StoreTimeout(self.last_error) from exc
        except (OSError, ConnectionError) as exc:
            self.healthy, self.last_error = False, f"Qdrant server unreachable: {exc}"
            raise StoreError(self.last_error) from exc
        self.healthy, self.last_error = True, None
        return result

    async def ensure_collection(self, dim: int) -> None:
        """Create the collection (size=dim, cosine) when missing; ValueError if it exists with another size."""
        from qdrant_client import models

        if not await self._guard(self.client.collection_exists(self.collection)):
            await self._guard(self.client.create_collection(
                self.collection, vectors_config=models.VectorParams(size=dim, distance=models.Distance.COSINE)
            ))
            return
        info = await self._guard(self.client.get_collection(self.collection))
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
            await self._guard(self.client.upsert(self.collection, points=points, wait=True))

    async def delete(self, item_ids: Sequence[str]) -> None:
        """Delete items by id."""
        from qdrant_client import models

        if item_ids:
            selector = models.PointIdsList(points=[str(point_id(i)) for i in item_ids])
            await self._guard(self.client.delete(self.collection, points_selector=selector, wait=True))

    async def _retrieve(self, item_ids: Sequence[str], with_vectors: bool) -> list[Any]:
        return await self._guard(self.client.retrieve(
            self.collection, ids=[str(point_id(i)) for i in item_ids], with_payload=True, with_vectors=with_vectors
        ))

    async def get_records(self, item_ids: Sequence[str]) -> dict[str, ItemRecord]:
        """Vector and payload of the item ids that exist, in one request."""
        if not item_ids:
            return {}
        out = {}
        for r in await self._retrieve(item_ids, True):
            payload = dict(r.payload)
            out[payload[ITEM_ID_KEY]] = ItemRecord(payload[ITEM_ID_KEY], np.asarray(r.vector, np.float32), payload)
        return out

    async def get_vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]:
        """Stored vectors of the item ids that exist."""
        return {i: r.vector for i, r in (await self.get_records(item_ids)).items()}

    async def get_payloads(self, item_ids: Sequence[str]) -> dict[str, dict]:
        """Stored payloads (with ITEM_ID_KEY) of the item ids that exist."""
        if not item_ids:
            return {}
        return {r.payload[ITEM_ID_KEY]: dict(r.payload) for r in await self._retrieve(item_ids, False)}

    async def search(self, vectors: np.ndarray, limit: int, exclude_ids: Collection[str] = (),
                     payload_fields: Sequence[str] | None = None,
                     row_excludes: Sequence[Collection[str]] | None = None) -> list[list[Hit]]:
        """Nearest items by cosine per row, via query_batch_points (SEARCH_CHUNK queries per request).

        exclude_ids are never returned; row_excludes[r] are not returned for row r (a filter per query).
        payload_fields limits the payload each hit carries (ITEM_ID_KEY always); None returns all of it.
        """
        from qdrant_client import models

        rows = as_rows(vectors)
        if len(rows) == 0 or limit <= 0:
            return [[] for _ in range(len(rows))]
        if row_excludes is not None and len(row_excludes) != len(rows):
            raise ValueError(f"{len(row_excludes)} row_excludes for {len(rows)} query rows")
        exclude = [str(point_id(i)) for i in dict.fromkeys(exclude_ids)]

        def row_filter(r: int) -> Any:
            ids = exclude + [str(point_id(i)) for i in (row_excludes[r] if row_excludes is not None else ())]
            return models.Filter(must_not=[models.HasIdCondition(has_id=ids)]) if ids else None

        with_payload: Any = True if payload_fields is None else sorted({ITEM_ID_KEY, *payload_fields})
        out: list[list[Hit]] = []
        for start in range(0, len(rows), SEARCH_CHUNK):
            requests = [
                models.QueryRequest(query=row, limit=limit, filter=row_filter(start + r), with_payload=with_payload)
                for r, row in enumerate(rows[start : start + SEARCH_CHUNK].tolist())
            ]
            responses = await self._guard(self.client.query_batch_points(self.collection, requests=requests))
            out.extend(
                [Hit(p.payload[ITEM_ID_KEY], float(p.score), dict(p.payload)) for p in resp.points]
                for resp in responses
            )
        return out

    async def count(self) -> int:
        """Exact number of items."""
        return (await self._guard(self.client.count(self.collection, exact=True))).count

    async def close(self) -> None:
        """Close the client's connections."""
        await self.client.close()


def open_server_store(url: str, api_key: str | None, collection: str,
                      timeout_s: float = setting_default("store_timeout_s")) -> QdrantServerStore:
    """A QdrantServerStore talking to the server at url (no I/O here: the client connects on first call)."""
    from qdrant_client import AsyncQdrantClient

    # check_compatibility would make a blocking HTTP request inside the constructor.
    client = AsyncQdrantClient(url=url, api_key=api_key, check_compatibility=False, timeout=max(1, int(timeout_s)))
    return QdrantServerStore(client, collection, timeout_s=timeout_s)
