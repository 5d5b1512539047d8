"""The LangChain stores in the main suite: order, None, paging, replication and errors.
(LangChain's standard tests run in tests/integrations/external.)"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from commander_os.errors import InvalidKey, ValueTooLarge
from commander_os.integrations import IntegrationStorage, langchain
from commander_os.integrations.langchain import CommanderByteStore, CommanderJSONStore

MakeStorage = Callable[..., IntegrationStorage]


def test_mget_keeps_order_and_answers_none(make_integration_storage: MakeStorage) -> None:
    store = CommanderJSONStore(make_integration_storage())
    store.mset([("b", {"n": 2}), ("a", [1]), ("a", "last wins")])
    assert store.mget(["a", "zz", "b", "a"]) == ["last wins", None, {"n": 2}, "last wins"]
    assert store.mget([]) == []


def test_yield_keys_pages_through_prefixes(
    make_integration_storage: MakeStorage, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(langchain, "KEY_PAGE", 3)
    store = CommanderByteStore(make_integration_storage())
    keys = [f"doc/{n:02}" for n in range(8)] + ["do", "dp", "a", "doc", "é"]
    store.mset([(key, key.encode()) for key in keys])
    assert list(store.yield_keys(prefix="doc/")) == sorted(k for k in keys if k.startswith("doc/"))
    assert list(store.yield_keys()) == sorted(keys)
    assert list(store.yield_keys(prefix="é")) == ["é"]

    async def collect() -> list[str]:
        return [key async for key in store.ayield_keys(prefix="doc")]

    assert asyncio.run(collect()) == sorted(k for k in keys if k.startswith("doc"))


def test_writes_are_captured_and_deletes_are_one_transaction(
    make_integration_storage: MakeStorage, dead_relay_url: str
) -> None:
    # compact_outbox off: the test counts every captured change in the queue.
    storage = make_integration_storage(
        enable_htpc=True, htpc_url=dead_relay_url, compact_outbox=False, close_timeout=0
    )
    store = CommanderByteStore(storage)
    store.mset([("a", b"\x00\x01"), ("b", b"")])
    store.mdelete(["a", "missing"])
    assert store.mget(["a", "b"]) == [None, b""]
    assert storage.get_sync_queue_size() == 3


def test_bad_keys_and_values_are_refused(make_integration_storage: MakeStorage) -> None:
    storage = make_integration_storage(max_value_bytes=1024)
    raw, json_store = CommanderByteStore(storage), CommanderJSONStore(storage)
    with pytest.raises(InvalidKey):
        raw.mset([("", b"x")])
    with pytest.raises(TypeError, match="bytes"):
        raw.mset([("k", "text")])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="'k'"):
        json_store.mset([("k", {1, 2})])
    with pytest.raises(ValueTooLarge):
        raw.mset([("ok", b"1"), ("k", b"x" * 2000)])
    assert raw.mget(["ok"]) == [None]  # all or nothing
