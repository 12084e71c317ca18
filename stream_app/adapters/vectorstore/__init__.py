"""The item catalogue in Qdrant behind one async API (ItemStore): an embedded qdrant-edge shard in a child
process (embedded, child) or a Qdrant server (server). open_item_store picks one from the settings."""

from __future__ import annotations

from pathlib import Path

from stream_app.adapters.vectorstore.embedded import OPTIMIZE_EVERY, EmbeddedItemStore, WorkerDied
from stream_app.adapters.vectorstore.protocol import (
    ITEM_ID_KEY,
    ITEM_NAMESPACE,
    SEARCH_CHUNK,
    UPSERT_CHUNK,
    Hit,
    ItemRecord,
    ItemStore,
    StoreError,
    StoreTimeout,
    as_rows,
    point_id,
    stored_payload,
)
from stream_app.adapters.vectorstore.server import QdrantServerStore, open_server_store
from stream_app.settings import Settings

__all__ = [
    "ITEM_ID_KEY", "ITEM_NAMESPACE", "OPTIMIZE_EVERY", "SEARCH_CHUNK", "UPSERT_CHUNK", "EmbeddedItemStore", "Hit",
    "ItemRecord", "ItemStore", "QdrantServerStore", "StoreError", "StoreTimeout", "WorkerDied", "as_rows",
    "open_item_store", "open_server_store", "point_id", "stored_payload",
]


def open_item_store(settings: Settings) -> ItemStore:
    """A server store when settings.qdrant_url is set, else the embedded store under data_dir."""
    timeout_s = settings.store_timeout_s
    if settings.qdrant_url:
        return open_server_store(settings.qdrant_url, settings.qdrant_api_key, settings.qdrant_collection,
                                 timeout_s=timeout_s)
    return EmbeddedItemStore(Path(settings.data_dir) / "qdrant-edge" / settings.qdrant_collection,
                             optimize_every=settings.qdrant_optimize_every, timeout_s=timeout_s)
