"""Catalogue writes in-process (no Kafka): the shared-server path and the replicated embedded path.

Server path: the items agent's publish_items() upserts and deletes in the shared store itself (qdrant-client's
in-memory mode stands in for the server, as in test_vectorstore). Embedded path: publish_items() encodes once and
emits item-vectors records; apply_item_records() turns them into another worker's embedded store. The broker in
between is covered by tests/test_scale_out.py.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np
import pytest
from aiokafka.structs import ConsumerRecord
from qdrant_client import AsyncQdrantClient

from models.export import ensure_model
from stream_app.encoder import TextEncoder
from stream_app.events import ItemEvent
from stream_app.pipeline import Pipeline, item_fingerprint
from stream_app.replica import apply_item_records, publish_items
from stream_app.settings import Settings
from stream_app.adapters.vectorstore import QdrantServerStore

ITEMS = [ItemEvent("p1", "USB-C fast charger 65W", "", "phone-accessories", (), False),
         ItemEvent("p2", "华为 Mate 60 Pro 手机", "", "phones", (), False),
         ItemEvent("t1", "Organic green tea 100 g", "", "tea-coffee", ("tea",), False)]


@pytest.fixture(scope="module")
def encoder() -> TextEncoder:
    return TextEncoder(ensure_model(Settings()), int8=False)


def with_fp(items):
    return [(i, None if i.deleted else item_fingerprint(i)) for i in items]


async def test_server_path_writes_the_shared_store_once(tmp_path, encoder):
    store = QdrantServerStore(AsyncQdrantClient(location=":memory:"), "items")
    p = Pipeline(Settings(data_dir=tmp_path, qdrant_url="http://qdrant:6333"), encoder=encoder, store=store)
    await p.start()
    try:
        await publish_items(p, with_fp(ITEMS), send=None)
        assert await store.count() == 3 and p.metrics.items_encoded == 3
        await publish_items(p, with_fp([ItemEvent("p1", "", "", "", (), True)]), send=None)
        assert await store.count() == 2 and "p1" not in await store.get_vectors(["p1", "p2"])
    finally:
        await p.close()


async def test_embedded_path_encodes_once_and_every_replica_applies_it(tmp_path, encoder):
    writer = Pipeline(Settings(data_dir=tmp_path / "a"), encoder=encoder)
    reader = Pipeline(Settings(data_dir=tmp_path / "b"), encoder=encoder)
    await writer.start()
    await reader.start()
    sent: list[tuple[bytes, bytes | None]] = []

    async def send(key: bytes, value: bytes | None):
        sent.append((key, value))
        done = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def records(msgs):
        return [ConsumerRecord("item-vectors", 0, n, 0, 0, k, v, None, len(k), len(v or b""), ()) for n, (k, v) in
                enumerate(msgs)]

    try:
        changed = replace(ITEMS[2], title="Organic green tea 250 g")
        await publish_items(writer, with_fp([*ITEMS, changed]), send)
        assert [k for k, _ in sent] == [b"p1", b"p2", b"t1"]  # the later t1 in the batch won
        assert writer.metrics.items_encoded == 3
        garbage = (b"x1", b'{"v": 1, "item_id": "x1"}')
        for replica in (writer, reader):
            await apply_item_records(replica, records([sent[0], garbage, *sent[1:]]))
            assert await replica.store.count() == 3  # the bad record cost only itself
        want = encoder.encode([ITEMS[0].document(), changed.document()], kind="passage")
        got = await reader.store.get_vectors(["p1", "t1"])
        assert np.allclose(got["p1"], want[0], atol=1e-6) and np.allclose(got["t1"], want[1], atol=1e-6)
        assert (await reader.store.get_payloads(["t1"]))["t1"]["title"] == "Organic green tea 250 g"

        sent.clear()
        await publish_items(writer, with_fp([ItemEvent("p2", "", "", "", (), True)]), send)
        assert sent == [(b"p2", None)]  # a tombstone: compaction drops the item from the topic
        await apply_item_records(reader, records(sent))
        assert await reader.store.count() == 2 and reader.metrics.items_deleted == 1
        assert "p2" not in await reader.item_vectors_for(["p2"])
    finally:
        await writer.close()
        await reader.close()
