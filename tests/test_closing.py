"""``close()``: ships what is queued (bounded by close_timeout), then closes; works as plain
``storage.close()``, ``await storage.close()``, and with asyncio's run, wait_for and
create_task, never blocking the event loop."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from commander_os.storage.agent_storage import AgentStorage


def queued_store(tmp_path: Path, url: str, **settings: object) -> AgentStorage:
    store = AgentStorage("closing", tmp_path / "a", htpc_url=url, enable_htpc=True, **settings)
    store.set_many({f"k{i}": i for i in range(3)})
    return store


def test_a_plain_close_closes_and_says_what_stays_queued(
    tmp_path: Path, dead_relay_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = queued_store(tmp_path, dead_relay_url, close_timeout=0.2)
    with caplog.at_level(logging.WARNING, logger="commander_os.storage"):
        result = store.close()  # no await: no "never awaited" warning (warnings are errors)
    assert store.closed
    assert result.done
    assert (result.pending, result.shipped) == (3, 0)
    assert any("closed with 3 changes still queued" in r.getMessage() for r in caplog.records)
    assert store.close().pending == 0  # idempotent


def test_asyncio_run_of_close(tmp_path: Path, dead_relay_url: str) -> None:
    store = queued_store(tmp_path, dead_relay_url, close_timeout=0)
    result = asyncio.run(store.close())  # type: ignore[arg-type]
    assert store.closed
    assert result.pending == 3


def test_await_wait_for_and_create_task_inside_async_code(
    tmp_path: Path, dead_relay_url: str
) -> None:
    async def main() -> None:
        first = queued_store(tmp_path / "1", dead_relay_url, close_timeout=0)
        assert (await first.close()).pending == 3
        second = queued_store(tmp_path / "2", dead_relay_url, close_timeout=0)
        assert (await asyncio.wait_for(second.close(), 5)).pending == 3
        third = queued_store(tmp_path / "3", dead_relay_url, close_timeout=0)
        task = asyncio.create_task(third.close())  # type: ignore[arg-type]
        assert (await task).pending == 3
        assert first.closed
        assert second.closed
        assert third.closed

    asyncio.run(main())


def test_awaiting_close_never_blocks_the_event_loop(tmp_path: Path, dead_relay_url: str) -> None:
    async def main() -> int:
        store = queued_store(tmp_path, dead_relay_url, close_timeout=1.0)
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await asyncio.sleep(0.05)
                ticks += 1

        running = asyncio.create_task(ticker())
        await store.close()  # keeps retrying the absent relay for a second
        running.cancel()
        assert store.closed
        return ticks

    assert asyncio.run(main()) >= 5  # the loop kept running while close() flushed


def test_a_forgotten_await_inside_async_code_still_closes(
    tmp_path: Path, dead_relay_url: str
) -> None:
    async def main() -> None:
        store = queued_store(tmp_path, dead_relay_url, close_timeout=0)
        store.close()  # forgot the await: it closes anyway, in the background
        for _ in range(200):
            if store.closed:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the store never closed")

    asyncio.run(main())
