"""Every public method has an ``a``-twin; the network reads among them never block the loop.

The reads run against a real relay process over loopback; the agents are real SQLite stores.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from commander_os.errors import RelayUnavailable
from commander_os.relay._process import RelayProcess
from commander_os.storage._delivery.client import AsyncRelayClient
from commander_os.storage.agent_storage import AgentStorage
from commander_os.storage.base_storage import BaseStorage

#: Public callables that need no twin, and why.
NO_TWIN = {
    "transaction": "a context manager around synchronous SQL on storage.conn",
    "reading": "a context manager around synchronous SQL on storage.conn",
    "shipping_connection": "the shipper's (internal) context manager",
    "close": "awaitable itself: `await storage.close()`",
    "process_sync_queue": "a coroutine itself",
    "from_config": "a constructor",
    "restore_from_relay": "a constructor: rebuilds a lost store from the relay, then opens it",
}


def _public_methods(cls: type[Any]) -> list[str]:
    names = []
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or isinstance(inspect.getattr_static(cls, name), property):
            continue
        if not callable(member) or inspect.isclass(member):
            continue
        is_async = inspect.iscoroutinefunction(member) or inspect.isasyncgenfunction(member)
        if not is_async and name not in NO_TWIN:
            names.append(name)
    return names


@pytest.mark.parametrize("cls", [BaseStorage, AgentStorage])
def test_every_public_method_has_an_async_twin(cls: type[Any]) -> None:
    methods = _public_methods(cls)
    assert {"query_network", "get_network_record", "health_check", "wait_for_sync"} <= set(methods)
    missing = []
    for name in methods:
        twin = getattr(cls, f"a{name}", None)
        if not (inspect.iscoroutinefunction(twin) or inspect.isasyncgenfunction(twin)):
            missing.append(name)
    assert missing == []


def test_network_twins_are_coroutines_not_threads() -> None:
    # Built on httpx.AsyncClient: nothing of them goes through run_in_thread / to_thread.
    for name in ("aquery_network", "aget_network_record", "await_for_sync"):
        source = inspect.getsource(getattr(BaseStorage, name))
        assert "run_in_thread" not in source, name
        assert "to_thread" not in source, name
    assert "run_in_thread" not in inspect.getsource(AgentStorage.aget_remote)


def test_a_hundred_concurrent_queries_leave_the_loop_free(
    shared_relay: RelayProcess, make_agent: Callable[..., AgentStorage], agent_id: str
) -> None:
    writer = make_agent(agent_id, shared_relay.url)
    writer.set_many(
        {f"k{i:03d}": {"n": i, "theme": "dark" if i % 2 else "light"} for i in range(60)}
    )
    assert writer.wait_for_sync(15)
    reader = make_agent(f"{agent_id}-r", shared_relay.url)

    async def main() -> tuple[list[list[dict[str, Any]]], list[float]]:
        gaps: list[float] = []
        stop = asyncio.Event()

        async def tick() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.01)
                now = time.perf_counter()
                gaps.append(now - last)
                last = now

        ticker = asyncio.create_task(tick())
        await asyncio.sleep(0.05)
        results = await asyncio.gather(
            *(
                reader.aquery_network(
                    agent_id=agent_id, where=[("value.theme", "eq", "dark")], page_size=7
                )
                for _ in range(100)
            )
        )
        stop.set()
        await ticker
        await reader.close()
        return results, gaps

    results, gaps = asyncio.run(main())
    expected = sorted(f"k{i:03d}" for i in range(60) if i % 2)
    for records in results:  # 30 records in pages of 7: five cursors followed per call
        assert sorted(record["key"] for record in records) == expected
    # Had the calls blocked, the ticker would have stood still for the whole burst (about a
    # second here). It ticks on; its worst gap, measured on a quiet machine, is 20-80 ms. The
    # bounds leave room for a 2-vCPU machine shared with other work, which descheduled the
    # whole process for up to ~0.25 s now and then.
    late = sum(max(0.0, gap - 0.01) for gap in gaps)
    assert max(gaps) < 0.5, f"the event loop stalled for {max(gaps):.3f} s"
    assert late < 0.5 * sum(gaps), f"the ticker was late {late:.2f} s of {sum(gaps):.2f} s"


def test_network_read_twins_agree_with_the_blocking_calls(
    shared_relay: RelayProcess, make_agent: Callable[..., AgentStorage], agent_id: str
) -> None:
    store = make_agent(agent_id, shared_relay.url)

    async def main() -> None:
        await store.aset("mission", {"goal": "map"})
        assert await store.await_for_sync(15)
        record = await store.aget_network_record(agent_id, "kv", "mission")
        assert record is not None
        assert record["data"]["value"] == {"goal": "map"}
        assert record == store.get_network_record(agent_id, "kv", "mission")
        assert await store.aget_remote(agent_id, "mission") == {"goal": "map"}
        assert await store.aget_remote(agent_id, "nothing", "default") == "default"
        assert await store.aget_network_record(agent_id, "kv", "nothing") is None
        health = await store.ahealth_check()
        assert health["sync_queue_size"] == 0
        assert health["relay"]["reachable"] is True
        assert await store.aget_sync_queue_size() == 0

    asyncio.run(main())


def test_the_store_serves_several_event_loops(
    shared_relay: RelayProcess, make_agent: Callable[..., AgentStorage], agent_id: str
) -> None:
    # Each asyncio.run has its own loop: the store opens a client on each and closes it when
    # the loop ends (filterwarnings=error would turn a leaked connection into a failure).
    store = make_agent(agent_id, shared_relay.url)
    store.set("a", 1)
    assert store.wait_for_sync(15)
    for _ in range(2):
        found = asyncio.run(store.aquery_network(agent_id=agent_id))
        assert [record["key"] for record in found] == ["a"]


def test_network_read_twin_reports_an_unreachable_relay(
    make_agent: Callable[..., AgentStorage], dead_relay_url: str, agent_id: str
) -> None:
    store = make_agent(agent_id, dead_relay_url, request_timeout=2.0, close_timeout=0)

    async def main() -> None:
        try:
            with pytest.raises(RelayUnavailable, match="unreachable"):
                await store.aquery_network(agent_id="anyone")
        finally:
            await store.close()

    asyncio.run(main())


def test_local_twins(make_storage: Callable[..., AgentStorage], tmp_path: Path) -> None:
    store = make_storage()

    async def main() -> None:
        await store.aset_many({"b/1": 1, "a/1": 2, "a/2": 3})
        assert [pair async for pair in store.aitems("a/")] == [("a/1", 2), ("a/2", 3)]
        copy = await store.abackup(tmp_path / "copy.db")
        assert copy.exists()
        assert await store.await_for_sync(0.1) is True  # local only: nothing to wait for
        await store.aregister_synced_table("kv")
        assert (await store.ahealth_check())["local_db"] is True

    asyncio.run(main())


def test_async_client_retries_when_the_relay_says_too_many_queries(
    shared_relay: RelayProcess, make_agent: Callable[..., AgentStorage], agent_id: str
) -> None:
    # 40 at once on the wire: past the relay's 8 per caller, so some are answered 429 and
    # retried after a short pause, and every call still gets its answer.
    store = make_agent(agent_id, shared_relay.url)
    store.set("x", 1)
    assert store.wait_for_sync(15)

    async def main() -> list[dict[str, Any]]:
        async with AsyncRelayClient(shared_relay.url, max_concurrent=40) as client:
            return await asyncio.gather(
                *(client.query(agent_id=agent_id, limit=5) for _ in range(40))
            )

    pages = asyncio.run(main())
    assert all([r["key"] for r in page["records"]] == ["x"] for page in pages)
