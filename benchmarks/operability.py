"""Async network reads and the relay's access log (issue 17), measured against their
alternatives in the same run.

* **Async reads**: ``BURST`` concurrent ``aquery_network`` calls from one event loop (httpx
  ``AsyncClient``, at most 8 on the wire) against the same calls of ``query_network`` run off
  the loop with ``asyncio.to_thread`` (what an async agent had to do before), while a timer
  task ticks every 10 ms. Reported: queries/s, and the timer's worst gap (how long the loop was
  held). Rounds alternate which goes first.
* **Access log**: the median round trip of ``GET /health`` to a relay with ``access_log`` on
  (JSON lines, to a pipe the benchmark reads) against one with it off.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from benchmarks.core import Result, Stats
from benchmarks.sizes import Sizes
from commander_os.relay import RelayProcess
from commander_os.storage.agent_storage import AgentStorage

__all__ = ["access_log_cost", "async_reads"]

BURST = 100
ROUNDS = 3
TICK = 0.01


async def _ticking(burst: Callable[[], Awaitable[object]]) -> tuple[float, float]:
    """Seconds the burst took, and the ticker's worst gap meanwhile."""
    gaps: list[float] = []
    stop = asyncio.Event()

    async def tick() -> None:
        last = time.perf_counter()
        while not stop.is_set():
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    await asyncio.sleep(0.05)
    started = time.perf_counter()
    await burst()
    elapsed = time.perf_counter() - started
    stop.set()
    await ticker
    return elapsed, max(gaps)


def async_reads(
    sizes: Sizes, workdir: Path, *, server_cpu: int | None, log: Callable[[str], None]
) -> list[Result]:
    """``aquery_network`` vs ``query_network`` in threads: queries/s and the loop's worst gap."""
    log(f"operability: {BURST} concurrent network reads, async vs threads")
    rates: dict[str, list[float]] = {"async": [], "threads": []}
    worst: dict[str, list[float]] = {"async": [], "threads": []}
    with RelayProcess(data_dir=workdir / "relay-reads", cpu=server_cpu) as relay:
        writer = AgentStorage("writer", workdir / "writer", htpc_url=relay.url, enable_htpc=True)
        writer.set_many(
            {f"k{i:03d}": {"n": i, "theme": ("dark", "light")[i % 2]} for i in range(60)}
        )
        writer.wait_for_sync(30)
        writer.close()
        reader = AgentStorage("reader", workdir / "reader", htpc_url=relay.url, enable_htpc=False)
        query: dict[str, Any] = {
            "agent_id": "writer",
            "where": [("value.theme", "eq", "dark")],
            "page_size": 10,
        }

        async def with_async() -> object:
            return await asyncio.gather(*(reader.aquery_network(**query) for _ in range(BURST)))

        async def with_threads() -> object:
            calls = (asyncio.to_thread(reader.query_network, **query) for _ in range(BURST))
            return await asyncio.gather(*calls)

        async def measure() -> None:
            for round_ in range(max(ROUNDS, sizes.rounds)):
                order = [("async", with_async), ("threads", with_threads)]
                for name, burst in order if round_ % 2 == 0 else order[::-1]:
                    elapsed, gap = await _ticking(burst)
                    rates[name].append(BURST / elapsed)
                    worst[name].append(gap)
            await reader.close()

        asyncio.run(measure())
    shape = f"{BURST} concurrent, 3 pages each"
    return [
        Result(
            f"network reads ({shape}): aquery_network vs query_network in threads",
            "value",
            "queries/s",
            _median(rates["async"]),
            peer_name="asyncio.to_thread",
            peer=_median(rates["threads"]),
        ),
        Result(
            f"network reads ({shape}): the event loop's worst stall",
            "value",
            "s",
            max(worst["async"]),
            peer_name="asyncio.to_thread",
            peer=max(worst["threads"]),
        ),
    ]


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def access_log_cost(
    sizes: Sizes, workdir: Path, *, server_cpu: int | None, log: Callable[[str], None]
) -> list[Result]:
    """Median ``GET /health`` round trip with ``access_log`` (JSON lines) on and off."""
    log("operability: access log on vs off")
    requests = max(200, sizes.query_ops * 4)
    samples: dict[str, list[float]] = {"on": [], "off": []}
    on = {"COMMANDER_OS_RELAY_ACCESS_LOG": "true", "COMMANDER_OS_RELAY_LOG_FORMAT": "json"}
    with contextlib.ExitStack() as stack:
        relays = {
            "on": stack.enter_context(
                RelayProcess(data_dir=workdir / "relay-log-on", cpu=server_cpu, env=on)
            ),
            "off": stack.enter_context(
                RelayProcess(data_dir=workdir / "relay-log-off", cpu=server_cpu)
            ),
        }
        clients = {
            name: stack.enter_context(httpx.Client(base_url=r.url)) for name, r in relays.items()
        }
        for round_ in range(max(ROUNDS, sizes.rounds)):
            for name in ("on", "off") if round_ % 2 == 0 else ("off", "on"):
                client = clients[name]
                for _ in range(requests // ROUNDS):
                    started = time.perf_counter()
                    client.get("/health")
                    samples[name].append(time.perf_counter() - started)
    return [
        Result(
            "relay GET /health round trip, access_log on (JSON lines)",
            "median",
            "s",
            Stats.of(samples["on"]),
            peer_name="access_log off",
            peer=Stats.of(samples["off"]),
        )
    ]
