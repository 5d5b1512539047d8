"""What the relay's analytics and agent heartbeats cost: the same relay with
``relay.analytics`` on and off, in the same run (issue 18: at most 5%).

* **Ingest**: the relay benchmark's ingest (``relay._ingest``) against a fresh store per
  round, analytics on while ``HEARTBEAT_AGENTS`` other agents send heartbeats (at
  ``HEARTBEAT_RATE`` per second: that many idle stores, one a minute each, the issue's case),
  and analytics off without them. Rounds alternate which goes first.
* **Queries**: the relay benchmark's query kinds as client round trips to a relay serving the
  preloaded central store, analytics on and off, alternating per round.
* **Bookkeeping alone**, in-process and so immune to a noisy neighbour: the ingest hook's time
  per record (1,000-record batches over two tables) against the relay's ingest time per record
  with analytics off, and the per-query bookkeeping against the median query round trip.
"""

from __future__ import annotations

import contextlib
import threading
import time
import timeit
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.core import Result, Stats, Target
from benchmarks.sizes import Sizes
from commander_os.config import RelayConfig
from commander_os.protocol import Ack, EncodedRecord, QueryRequest
from commander_os.relay import RelayProcess
from commander_os.relay._analytics import Analytics
from commander_os.relay._analytics._queries import COUNT_EVERY
from commander_os.relay._metrics import RelayMetrics

__all__ = ["analytics_overhead"]

HEARTBEAT_AGENTS = 1000
HEARTBEAT_RATE = 1000 / 60
ROUNDS = 3
ON = {"COMMANDER_OS_ANALYTICS": "true"}
OFF = {"COMMANDER_OS_ANALYTICS": "false"}


@contextlib.contextmanager
def heartbeats(url: str) -> Iterator[None]:
    """Send heartbeats of ``HEARTBEAT_AGENTS`` agents, round robin, until the block ends."""
    stop = threading.Event()

    def send() -> None:
        with httpx.Client(base_url=url, timeout=10) as client:
            n = 0
            while not stop.wait(1.0 / HEARTBEAT_RATE):
                agent = f"idle-{n % HEARTBEAT_AGENTS:04d}"
                client.post("/relay/heartbeat", json={"agent_id": agent, "queue_size": n % 7})
                n += 1

    thread = threading.Thread(target=send, name="heartbeats", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def _ingest_rates(
    sizes: Sizes, backend: Any, workdir: Path, server_cpu: int | None, client_cpu: int | None
) -> dict[str, list[float]]:
    from benchmarks.relay import _ingest

    rates: dict[str, list[float]] = {"on": [], "off": []}
    for round_no in range(ROUNDS):
        order = ["on", "off"] if round_no % 2 == 0 else ["off", "on"]
        for mode in order:
            rate, _ = _ingest(
                sizes,
                backend,
                workdir,
                server_cpu,
                client_cpu,
                tag=f"analytics-{mode}-{round_no}",
                env=ON if mode == "on" else OFF,
                alongside=heartbeats if mode == "on" else None,
            )
            rates[mode].append(rate)
    return rates


def _query_samples(
    backend: Any, server_cpu: int | None, kinds: dict[str, list[dict[str, Any]]]
) -> dict[str, list[float]]:
    from benchmarks.relay import _round_trips

    samples: dict[str, list[float]] = {"on": [], "off": []}
    for round_no in range(ROUNDS):
        order = ["on", "off"] if round_no % 2 == 0 else ["off", "on"]
        for mode in order:
            env = ON if mode == "on" else OFF
            with RelayProcess(cpu=server_cpu, env=env, **backend.relay_kwargs("central")) as relay:
                timings, _ = _round_trips(relay.url, kinds)
            samples[mode] += [t for kind in timings.values() for t in kind]
    return samples


def _bookkeeping() -> tuple[float, float]:
    """Seconds of analytics work per ingested record, and per query."""
    analytics = Analytics(RelayConfig(), RelayMetrics())
    now_us = int(time.time() * 1e6)
    batch = [
        EncodedRecord("a", "kv" if i % 2 else "notes", f"k{i}", i + 1, now_us, False, "{}")
        for i in range(1000)
    ]
    acks = [Ack(agent_id="a", highest_version=1000, applied=1000, ignored=0)]
    per_batch = min(timeit.repeat(lambda: analytics.on_write(batch, acks), number=200, repeat=5))
    request = QueryRequest.model_validate(
        {"agent_id": "a", "where": [{"field": "value.status", "op": "eq", "value": "x"}]}
    )
    queries = analytics.queries

    def one_query() -> None:
        queries.record(queries.stats_for("query", request), request, 0.001, 100, None)
        analytics.data.on_query(0.001)

    per_query = min(timeit.repeat(one_query, number=20_000, repeat=5))
    return per_batch / 200 / len(batch), per_query / 20_000


def analytics_overhead(
    sizes: Sizes,
    backend: Any,
    workdir: Path,
    server_cpu: int | None,
    client_cpu: int | None,
    kinds: dict[str, list[dict[str, Any]]],
) -> list[Result]:
    """Ingest throughput and query latency, analytics on over off; and the bookkeeping alone
    against the relay's own time per record and per query."""
    rates = _ingest_rates(sizes, backend, workdir, server_cpu, client_cpu)
    queries = _query_samples(backend, server_cpu, kinds)
    per_record, per_query = _bookkeeping()
    off_rate = sum(rates["off"]) / len(rates["off"])
    tag = " [sqlite]"
    beat = f"on: with {HEARTBEAT_RATE:.1f} heartbeats/s of {HEARTBEAT_AGENTS} agents alongside"
    return [
        Result(
            f"relay ingest, analytics + heartbeats on vs off{tag}",
            "value",
            "records/s",
            sum(rates["on"]) / len(rates["on"]),
            peer_name="analytics off",
            peer=off_rate,
            target=Target(">=", 0.95, ratio=True),
            note=f"{beat}; mean of {ROUNDS} alternating rounds each",
        ),
        Result(
            f"query round trip, analytics on vs off (every query kind){tag}",
            "median",
            "s",
            Stats.of(queries["on"]),
            peer_name="analytics off",
            peer=Stats.of(queries["off"]),
            target=Target("<=", 1.05, ratio=True),
            note=f"{ROUNDS} alternating rounds each",
        ),
        Result(
            f"analytics bookkeeping per ingested record vs relay ingest time per record{tag}",
            "value",
            "s",
            per_record,
            peer_name="relay, analytics off",
            peer=1.0 / off_rate,
            target=Target("<=", 0.05, ratio=True),
            note="in-process, 1,000-record batches over two tables",
        ),
        Result(
            f"analytics bookkeeping per query vs query round trip{tag}",
            "value",
            "s",
            per_query,
            peer_name="round trip median, off",
            peer=Stats.of(queries["off"]).median,
            target=Target("<=", 0.05, ratio=True),
            note=f"in-process; rows examined are also counted on 1 in {COUNT_EVERY} queries",
        ),
    ]
