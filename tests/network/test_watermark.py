"""The commit-order watermark's bookkeeping, driven by scripted ticks (no database)."""

from __future__ import annotations

import asyncio

import pytest

from commander_os.relay.central._postgres_watermark import Watermark

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_reader_waits_for_the_writers_running_when_it_asked() -> None:
    # Each tick: (highest rev drawn, writer transactions running after it was read).
    script = [(10, frozenset({7})), (20, frozenset({7})), (20, frozenset({7})), (30, frozenset())]
    ticks: list[int] = []

    async def tick() -> tuple[int, frozenset[int]]:
        step = script[min(len(ticks), len(script) - 1)]
        ticks.append(step[0])
        return step

    mark = Watermark(tick, max_wait=5)
    mark.start()
    try:
        # Transaction 7 may hold a rev <= 10 and 20: nothing is settled until it ends, even
        # though ticks 2 and 3 saw the same transactions (their candidates merge).
        assert await mark.fresh() == 30
        assert len(ticks) >= 4
    finally:
        await mark.stop()


async def test_a_stuck_writer_holds_readers_only_max_wait() -> None:
    async def tick() -> tuple[int, frozenset[int]]:
        return 10, frozenset({7})

    mark = Watermark(tick, max_wait=0.2)
    mark.start()
    try:
        started = asyncio.get_running_loop().time()
        assert await mark.fresh() == 0  # never past a rev that may still commit
        assert asyncio.get_running_loop().time() - started < 2
    finally:
        await mark.stop()
