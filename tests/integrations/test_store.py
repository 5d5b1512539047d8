"""CommanderStore beyond the differential test: timestamps, TTL, sweeping, semantic search,
async, replication capture and errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest
from langgraph.store.base import InvalidNamespaceError, PutOp, SearchOp
from langgraph.store.memory import InMemoryStore

from commander_os.errors import ValueTooLarge
from commander_os.integrations import IntegrationStorage
from commander_os.integrations._sweeper import SHARED_SWEEPER, Sweeper
from commander_os.integrations.langgraph import CommanderStore

MakeStorage = Callable[..., IntegrationStorage]
DIMS = 16


def toy_embed(texts: list[str]) -> list[list[float]]:
    """Deterministic: a text's vector counts its letters modulo DIMS."""
    vectors = []
    for text in texts:
        vector = [0.0] * DIMS
        for char in text.lower():
            if char.isalpha():
                vector[ord(char) % DIMS] += 1.0
        vectors.append(vector)
    return vectors


async def atoy_embed(texts: list[str]) -> list[list[float]]:
    return toy_embed(texts)


def expiry(storage: IntegrationStorage, namespace: str, key: str) -> Any:
    with storage.reading() as conn:
        row = conn.execute(
            "SELECT expires_at FROM lg_store WHERE namespace = ? AND key = ?", (namespace, key)
        ).fetchone()
    return None if row is None else row[0]


def test_created_at_is_kept_and_updated_at_moves(make_integration_storage: MakeStorage) -> None:
    store = CommanderStore(make_integration_storage())
    store.put(("users", "u1"), "prefs", {"theme": "dark"})
    first = store.get(("users", "u1"), "prefs")
    store.put(("users", "u1"), "prefs", {"theme": "light"})
    second = store.get(("users", "u1"), "prefs")
    assert first is not None
    assert second is not None
    assert second.value == {"theme": "light"}
    assert second.created_at == first.created_at
    assert second.updated_at >= first.updated_at
    assert second.created_at.tzinfo is not None


def test_filters_limits_and_offsets_run_in_sql(make_integration_storage: MakeStorage) -> None:
    store = CommanderStore(make_integration_storage())
    for n in range(10):
        store.put(
            ("docs", f"d{n % 2}"),
            f"k{n}",
            {"n": n, "meta": {"kind": "even" if n % 2 == 0 else "odd"}},
        )
    found = store.search(("docs",), filter={"n": {"$gte": 3, "$lt": 8}, "meta": {"kind": "odd"}})
    assert [item.key for item in found] == ["k3", "k5", "k7"]
    page = store.search(("docs",), filter={"n": {"$ne": 0}}, limit=2, offset=3)
    assert [item.key for item in page] == ["k8", "k1"]  # d0's items come first, in write order
    with pytest.raises(ValueError, match="unsupported filter operator"):
        store.search(("docs",), filter={"n": {"$in": [1]}})
    with pytest.raises(ValueError, match="negative"):
        store.search(("docs",), limit=-1)


def test_ttl_expired_items_are_never_returned(make_integration_storage: MakeStorage) -> None:
    storage = make_integration_storage()
    store = CommanderStore(storage)
    store.put(("tmp",), "gone", {"x": 1}, ttl=0)  # expires at once
    store.put(("tmp",), "kept", {"x": 2}, ttl=60)
    store.put(("only-expired",), "gone", {"x": 3}, ttl=0)
    assert store.get(("tmp",), "gone") is None
    assert [item.key for item in store.search(("tmp",))] == ["kept"]
    assert ("only-expired",) not in store.list_namespaces()
    assert ("tmp",) in store.list_namespaces()


def test_ttl_refresh_on_read(make_integration_storage: MakeStorage) -> None:
    storage = make_integration_storage()
    store = CommanderStore(storage, ttl={"refresh_on_read": True})
    store.put(("tmp",), "k", {"x": 1}, ttl=10)
    with storage.transaction() as conn:  # pretend the item was written long ago
        conn.execute("UPDATE lg_store SET expires_at = expires_at - 300")
    before = expiry(storage, "tmp", "k")
    assert store.get(("tmp",), "k", refresh_ttl=False) is not None
    assert expiry(storage, "tmp", "k") == before
    assert store.get(("tmp",), "k") is not None
    refreshed = expiry(storage, "tmp", "k")
    assert refreshed >= before + 299
    store.search(("tmp",))
    assert expiry(storage, "tmp", "k") >= refreshed


def test_default_ttl_applies_to_new_items(make_integration_storage: MakeStorage) -> None:
    storage = make_integration_storage()
    store = CommanderStore(storage, ttl={"default_ttl": 5})
    store.put(("tmp",), "k", {"x": 1})
    store.put(("tmp",), "forever", {"x": 1}, ttl=None)
    assert expiry(storage, "tmp", "k") is not None
    assert expiry(storage, "tmp", "forever") is None


def test_sweep_deletes_expired_items_and_replicates_the_deletes(
    make_integration_storage: MakeStorage, dead_relay_url: str
) -> None:
    # compact_outbox off: the test counts every captured change in the queue.
    storage = make_integration_storage(
        enable_htpc=True, htpc_url=dead_relay_url, compact_outbox=False, close_timeout=0
    )
    store = CommanderStore(storage)
    store.put(("tmp",), "kept", {"x": 2})  # the store's first write sweeps; the next is not due
    store.put(("tmp",), "gone", {"x": 1}, ttl=0)
    queued = storage.get_sync_queue_size()
    assert store.sweep_ttl() == 1
    assert store.sweep_ttl() == 0
    assert storage.get_sync_queue_size() == queued + 1  # the delete, captured for the relay
    with storage.reading() as conn:
        assert conn.execute("SELECT count(*) FROM lg_store").fetchone()[0] == 1


def test_writes_sweep_lazily(make_integration_storage: MakeStorage) -> None:
    storage = make_integration_storage()
    store = CommanderStore(storage)
    store.put(("tmp",), "other", {"x": 2})  # the first write sweeps, the next one a minute on
    store.put(("tmp",), "gone", {"x": 1}, ttl=0)

    def keys() -> list[str]:
        with storage.reading() as conn:
            return [row[0] for row in conn.execute("SELECT key FROM lg_store ORDER BY key")]

    assert keys() == ["gone", "other"]
    store._next_sweep = 0.0  # as if the minute had passed
    store.put(("tmp",), "other", {"x": 3})
    assert keys() == ["other"]


def test_background_sweeping_uses_one_shared_thread(make_integration_storage: MakeStorage) -> None:
    before = SHARED_SWEEPER.registered()
    first = CommanderStore(make_integration_storage("a1"), ttl={"sweep_interval_minutes": 5})
    second = CommanderStore(make_integration_storage("a2"))
    second.start_ttl_sweeper(10)
    assert SHARED_SWEEPER.registered() == before + 2
    first.close()
    assert second.stop_ttl_sweeper() is True
    assert second.stop_ttl_sweeper() is False
    assert SHARED_SWEEPER.registered() == before


def test_the_sweeper_calls_due_stores(make_integration_storage: MakeStorage) -> None:
    store = CommanderStore(make_integration_storage())
    store.put(("tmp",), "first", {"x": 1})
    store.put(("tmp",), "gone", {"x": 1}, ttl=0)
    assert expiry(store.storage, "tmp", "gone") is not None
    sweeper = Sweeper()
    sweeper.add(store, 0.01)
    try:
        for _ in range(500):
            if expiry(store.storage, "tmp", "gone") is None:
                break
            time.sleep(0.01)  # bounded: the thread sweeps every 10 ms
        assert expiry(store.storage, "tmp", "gone") is None
    finally:
        sweeper.remove(store)
    assert sweeper.registered() == 0


def test_semantic_search_ranks_like_in_memory_store(make_integration_storage: MakeStorage) -> None:
    index: Any = {"embed": toy_embed, "dims": DIMS, "fields": ["text"]}
    ours = CommanderStore(make_integration_storage(), index=index)
    reference = InMemoryStore(index=index)
    docs = {
        "cats": {"text": "cats purr and sleep"},
        "dogs": {"text": "dogs bark loudly"},
        "tea": {"text": "green tea leaves"},
        "none": {"other": "no text field"},
    }
    for store in (ours, reference):
        for key, value in docs.items():
            store.put(("docs",), key, value)
        store.put(("docs",), "skipped", {"text": "cats cats"}, index=False)
    for query in ("cats sleep", "barking dogs", "tea"):
        got = ours.search(("docs",), query=query, limit=3)
        expected = reference.search(("docs",), query=query, limit=3)
        assert [item.key for item in got] == [item.key for item in expected]
        assert [item.score for item in got] == pytest.approx([item.score for item in expected])
    assert ours.search(("docs",), query="cats sleep", limit=1)[0].key == "cats"
    ours.delete(("docs",), "cats")
    with ours.storage.reading() as conn:
        assert (
            conn.execute("SELECT count(*) FROM lg_store_vectors WHERE key = 'cats'").fetchone()[0]
            == 0
        )


def test_semantic_search_with_filters_and_array_fields(
    make_integration_storage: MakeStorage,
) -> None:
    index: Any = {"embed": toy_embed, "dims": DIMS, "fields": ["notes[*]"]}
    store = CommanderStore(make_integration_storage(), index=index)
    store.put(("m",), "a", {"notes": ["apples", "zebra"], "kind": "x"})
    store.put(("m",), "b", {"notes": ["zzz"], "kind": "y"})
    found = store.search(("m",), query="zebra", filter={"kind": "x"})
    assert [item.key for item in found] == ["a"]
    assert found[0].score == pytest.approx(1.0)


def test_a_wrong_embedding_size_is_refused(make_integration_storage: MakeStorage) -> None:
    store = CommanderStore(make_integration_storage(), index={"embed": toy_embed, "dims": 3})
    with pytest.raises(ValueError, match="3 dimensions"):
        store.put(("m",), "a", {"text": "hello"})
    assert store.get(("m",), "a") is None


def test_async_api_and_async_embeddings(make_integration_storage: MakeStorage) -> None:
    index: Any = {"embed": atoy_embed, "dims": DIMS, "fields": ["text"]}
    store = CommanderStore(make_integration_storage(), index=index)

    async def scenario() -> list[Any]:
        await store.aput(("a",), "k1", {"text": "hello world"})
        await store.aput(("a", "b"), "k2", {"text": "other words"})
        item = await store.aget(("a",), "k1")
        found = await store.asearch(("a",), query="hello")
        spaces = await store.alist_namespaces(prefix=("a",))
        await store.adelete(("a",), "k1")
        results = await store.abatch([SearchOp(("a",)), PutOp(("c",), "k", {"x": 1})])
        return [item, found, spaces, results]

    item, found, spaces, results = asyncio.run(scenario())
    assert item.value == {"text": "hello world"}
    assert found[0].key == "k1"
    assert spaces == [("a",), ("a", "b")]
    assert [i.key for i in results[0]] == ["k2"]
    assert results[1] is None
    assert store.get(("c",), "k") is not None


def test_every_write_is_captured_for_the_relay(
    make_integration_storage: MakeStorage, dead_relay_url: str
) -> None:
    # compact_outbox off: the test counts every captured change in the queue.
    storage = make_integration_storage(
        enable_htpc=True, htpc_url=dead_relay_url, compact_outbox=False, close_timeout=0
    )
    store = CommanderStore(storage)
    store.batch([PutOp(("a",), "k1", {"x": 1}), PutOp(("a",), "k2", {"x": 2})])
    store.delete(("a",), "k1")
    assert storage.get_sync_queue_size() == 3


def test_bad_input_is_refused_and_changes_nothing(make_integration_storage: MakeStorage) -> None:
    store = CommanderStore(make_integration_storage(max_value_bytes=1024))
    with pytest.raises(TypeError, match="'k'"):
        store.put(("a",), "k", {"when": object()})
    with pytest.raises(ValueTooLarge):
        store.put(("a",), "k", {"text": "x" * 2000})
    with pytest.raises(InvalidNamespaceError):
        store.put(("a.b",), "k", {"x": 1})
    with pytest.raises(InvalidNamespaceError):
        store.batch([PutOp(("a.b",), "k", {"x": 1})])
    assert store.list_namespaces() == []


def test_open_owns_its_storage(tmp_path: Any) -> None:
    with CommanderStore.open("owner", tmp_path, enable_htpc=False) as store:
        store.put(("a",), "k", {"x": 1})
        storage = store.storage
    assert storage.closed
    with CommanderStore.open("owner", tmp_path, enable_htpc=False) as again:
        item = again.get(("a",), "k")
        assert item is not None
        assert item.value == {"x": 1}
