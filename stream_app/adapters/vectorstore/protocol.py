"""The item catalogue's async API (ItemStore) and the value types both implementations share.

Item ids are strings; Qdrant point ids are uuid5(ITEM_NAMESPACE, item_id) and the item id is kept
in the payload under ITEM_ID_KEY. Vectors are unit-norm and compared by cosine.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol, runtime_checkable

import numpy as np

ITEM_NAMESPACE = uuid.UUID("5b0f7c0e-2f1d-5c8e-9a3b-6d4e1f2a7c90")
ITEM_ID_KEY = "item_id"
UPSERT_CHUNK = 512
SEARCH_CHUNK = 256


class StoreError(RuntimeError):
    """The item store could not answer (its process died or hung, or the server failed)."""


class StoreTimeout(StoreError, TimeoutError):
    """A store call took longer than its timeout; the embedded store's process is restarted."""


@dataclass(frozen=True)
class ItemRecord:
    """One catalogue item: its id, unit-norm embedding and free-form payload."""

    item_id: str
    vector: np.ndarray
    payload: dict = field(default_factory=dict)


class Hit(NamedTuple):
    """One search result: item id, cosine score and stored payload (which includes ITEM_ID_KEY).

    A NamedTuple: a batch of searches builds thousands of them, at a third of a frozen dataclass's cost.
    """

    item_id: str
    score: float
    payload: dict


@runtime_checkable
class ItemStore(Protocol):
    """The async catalogue API the agents use; implementations never block the event loop.

    `healthy` is False while the store cannot answer (last call failed, process gone); `last_error` says why.
    """

    healthy: bool
    last_error: str | None

    async def ensure_collection(self, dim: int) -> None: ...

    async def upsert(self, records: Sequence[ItemRecord]) -> None: ...

    async def delete(self, item_ids: Sequence[str]) -> None: ...

    async def get_vectors(self, item_ids: Sequence[str]) -> dict[str, np.ndarray]: ...

    async def get_payloads(self, item_ids: Sequence[str]) -> dict[str, dict]: ...

    async def get_records(self, item_ids: Sequence[str]) -> dict[str, ItemRecord]: ...

    async def search(
        self, vectors: np.ndarray, limit: int, exclude_ids: Collection[str] = (),
        payload_fields: Sequence[str] | None = None, row_excludes: Sequence[Collection[str]] | None = None,
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
