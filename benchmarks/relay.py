"""Relay benchmarks: ingest through ``/relay/batch`` and queries on a large central store.

For each central store (SQLite always; PostgreSQL when a database URL is given):

* **Ingest**: ``sizes.ingest_agents`` agent processes, pinned to the client CPU, each post
  ``sizes.ingest_batches`` zstd bodies of ``sizes.ingest_batch`` records (built before the
  start signal, as ``RelayClient.push`` builds them) to a relay pinned to the server CPU.
* **Queries** on a store preloaded with ``sizes.central_records`` ~1 KB records (through the
  store's own ``apply``, in big batches): by agent + key, by agent + key prefix, and by a JSON
  field filter (limit 100). Each is timed server-side (``CentralStore.query`` in-process: what
  the relay's ``commander_relay_query_seconds`` histogram observes) and as a client round trip
  to a relay process serving the same store; the relay's own histogram mean is kept in
  ``extra``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

from benchmarks import workload
from benchmarks.core import Result, Stats, Target
from benchmarks.sizes import Sizes
from benchmarks.sync import _child, _taskset
from commander_os.protocol import ChangeRecord, QueryRequest
from commander_os.relay import RelayProcess
from commander_os.relay.central import CentralStore, SQLiteCentralStore
from commander_os.storage import RelayClient

__all__ = ["run_relay"]

LOAD_CHUNK = 20_000
#: Fields the queries filter on with eq: declared indexed on PostgreSQL (indexes are opt-in).
INDEXED_FIELDS = ("value.status",)
QUERY_HISTOGRAM = "commander_relay_query_seconds"


@dataclass
class Backend:
    """One kind of central store: how to open a fresh one in-process and serve it."""

    name: str
    make_store: Callable[[str], CentralStore]  # tag -> a fresh, unopened store
    relay_kwargs: Callable[[str], dict[str, Any]]  # tag -> RelayProcess arguments
    cleanup: Callable[[], None] = lambda: None


def _sqlite_backend(workdir: Path) -> Backend:
    return Backend(
        name="sqlite",
        make_store=lambda tag: SQLiteCentralStore.in_directory(workdir / tag),
        relay_kwargs=lambda tag: {"data_dir": workdir / tag},
    )


def _postgres_backend(workdir: Path, url: str) -> Backend:
    """Every tag gets its own schema, dropped at cleanup."""
    import psycopg

    from commander_os.relay.central import PostgresCentralStore

    workdir.mkdir(parents=True, exist_ok=True)
    schemas: list[str] = []

    def schema(tag: str) -> str:
        name = f"bench_{os.getpid()}_{tag}".replace("-", "_")
        if name not in schemas:
            schemas.append(name)
        return name

    def relay_kwargs(tag: str) -> dict[str, Any]:
        separator = "&" if "?" in url else "?"
        options = httpx.QueryParams({"options": f"-csearch_path={schema(tag)}"})
        config = workdir / f"relay-{tag}.yaml"
        body = {
            "relay": {
                "backend": "postgresql",
                "database_url": f"{url}{separator}{options}",
                "indexed_fields": list(INDEXED_FIELDS),
            }
        }
        config.write_bytes(orjson.dumps(body))  # JSON is YAML
        return {"data_dir": workdir / tag, "config": config}

    def cleanup() -> None:
        with psycopg.connect(url, autocommit=True) as conn:
            for name in schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')

    return Backend(
        name="postgresql",
        make_store=lambda tag: PostgresCentralStore(
            url, schema=schema(tag), indexed_fields=INDEXED_FIELDS
        ),
        relay_kwargs=relay_kwargs,
        cleanup=cleanup,
    )


# ---------------------------------------------------------------------------------- ingest


def _ingest(
    sizes: Sizes,
    backend: Backend,
    workdir: Path,
    server_cpu: int | None,
    client_cpu: int | None,
    *,
    tag: str = "ingest",
    env: dict[str, str] | None = None,
    alongside: Callable[[str], contextlib.AbstractContextManager[object]] | None = None,
) -> tuple[float, list[float]]:
    """Records per second over all agents, and every batch's round trip.

    ``tag`` names the fresh store; ``env`` is the relay's environment; ``alongside(url)`` is
    entered while the agents push (e.g. heartbeats of other agents).
    """
    asyncio.run(_create(backend.make_store(tag)))
    with RelayProcess(cpu=server_cpu, env=env, **backend.relay_kwargs(tag)) as relay:
        children = []
        for n in range(sizes.ingest_agents):
            out = workdir / f"{tag}-{backend.name}-{n}.json"
            argv = _child(
                "ingest",
                relay.url,
                f"{tag}-{n}",
                str(sizes.ingest_batches),
                str(sizes.ingest_batch),
                str(out),
            )
            child = subprocess.Popen(
                _taskset(client_cpu) + argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            children.append((child, out))
        for child, _ in children:
            assert child.stdout is not None
            if child.stdout.readline().strip() != "ready":
                raise RuntimeError("an ingest agent did not start")
        with alongside(relay.url) if alongside else contextlib.nullcontext():
            for child, _ in children:
                assert child.stdin is not None
                child.stdin.write("go\n")
                child.stdin.flush()
            for child, _ in children:
                if child.wait(timeout=600) != 0:
                    raise RuntimeError("an ingest agent failed")
    reports = [orjson.loads(out.read_bytes()) for _, out in children]
    elapsed = (max(r["end"] for r in reports) - min(r["start"] for r in reports)) * 1e-9
    total = sizes.ingest_agents * sizes.ingest_batches * sizes.ingest_batch
    return total / elapsed, [lat for r in reports for lat in r["latencies"]]


async def _create(store: CentralStore) -> None:
    await store.open()
    await store.close()


# ------------------------------------------------------------------------------- queries


def _agent(index: int, agents: int) -> str:
    # Blocks of PREFIXES consecutive items per agent, so every agent has every key prefix.
    return f"agent-{(index // workload.PREFIXES) % agents:04d}"


def _records(start: int, stop: int, agents: int) -> Iterator[ChangeRecord]:
    now = datetime.now(UTC)
    for i in range(start, stop):
        key = workload.key(i)
        yield ChangeRecord.model_construct(
            agent_id=_agent(i, agents),
            table="kv",
            key=key,
            op="upsert",
            data={"key": key, "value": workload.value(i, 1), "updated_at": now.timestamp()},
            version=(1 << 32) | (i + 1),
            ts=now,
        )


async def _load(store: CentralStore, sizes: Sizes) -> None:
    for start in range(0, sizes.central_records, LOAD_CHUNK):
        stop = min(start + LOAD_CHUNK, sizes.central_records)
        await store.apply(list(_records(start, stop, sizes.central_agents)))


def _query_kinds(sizes: Sizes) -> dict[str, list[dict[str, Any]]]:
    """Per query kind, ``sizes.query_ops`` random filter sets (as RelayClient.query kwargs)."""
    rng = random.Random(11)
    count, n = sizes.query_ops, sizes.central_records

    def some_index() -> int:
        return rng.randrange(n)

    by_key = []
    for _ in range(count):
        i = some_index()
        by_key.append(
            {"agent_id": _agent(i, sizes.central_agents), "table": "kv", "key": workload.key(i)}
        )
    by_prefix = [
        {
            "agent_id": _agent(some_index(), sizes.central_agents),
            "key_prefix": workload.prefix(rng.randrange(workload.PREFIXES)),
            "limit": 100,
        }
        for _ in range(count)
    ]
    status = [
        {
            "where": [
                {"field": "value.status", "op": "eq", "value": rng.choice(workload.STATUSES)}
            ],
            "limit": 100,
        }
        for _ in range(count)
    ]
    agent_score = [
        {
            "agent_id": _agent(some_index(), sizes.central_agents),
            "where": [{"field": "value.score", "op": "gte", "value": 990}],
            "limit": 100,
        }
        for _ in range(count)
    ]
    return {
        "agent + key": by_key,
        "agent + key prefix, limit 100": by_prefix,
        "field eq, 10% match, limit 100": status,
        "agent + field gte, 1% match, limit 100": agent_score,
    }


async def _server_side(store: CentralStore, kinds: dict[str, list[dict[str, Any]]]) -> dict:
    samples: dict[str, list[float]] = {}
    for kind, filters in kinds.items():
        requests = [QueryRequest.model_validate(f) for f in filters]
        await store.query(requests[0])  # warm the statement cache and the pages
        timings = []
        for request in requests:
            started = time.perf_counter()
            await store.query(request)
            timings.append(time.perf_counter() - started)
        samples[kind] = timings
    return samples


def _histogram(url: str) -> tuple[float, float]:
    """(sum, count) of the relay's query-latency histogram."""
    text = httpx.get(url + "/metrics").text
    values = {}
    for line in text.splitlines():
        for suffix in ("_sum", "_count"):
            if line.startswith(QUERY_HISTOGRAM + suffix + " "):
                values[suffix] = float(line.split()[1])
    return values.get("_sum", 0.0), values.get("_count", 0.0)


def _round_trips(url: str, kinds: dict[str, list[dict[str, Any]]]) -> tuple[dict, dict]:
    samples: dict[str, list[float]] = {}
    relay_means: dict[str, float] = {}
    with RelayClient(url) as client:
        for kind, filters in kinds.items():
            client.query(**filters[0])
            before = _histogram(url)
            timings = []
            for f in filters:
                started = time.perf_counter()
                client.query(**f)
                timings.append(time.perf_counter() - started)
            after = _histogram(url)
            samples[kind] = timings
            done = after[1] - before[1]
            relay_means[kind] = (after[0] - before[0]) / done if done else float("nan")
    return samples, relay_means


def _queries(
    sizes: Sizes, backend: Backend, server_cpu: int | None, log: Callable[[str], None]
) -> tuple[dict, dict, dict]:
    kinds = _query_kinds(sizes)

    async def load_and_time() -> dict:
        store = backend.make_store("central")
        await store.open()
        try:
            started = time.monotonic()
            await _load(store, sizes)
            log(
                f"relay[{backend.name}]: loaded {sizes.central_records} records in "
                f"{time.monotonic() - started:.1f} s"
            )
            return await _server_side(store, kinds)
        finally:
            await store.close()

    server = asyncio.run(load_and_time())
    with RelayProcess(cpu=server_cpu, **backend.relay_kwargs("central")) as relay:
        client, relay_means = _round_trips(relay.url, kinds)
    return server, client, relay_means


# -------------------------------------------------------------------------------- results


def _results(
    sizes: Sizes,
    backend: Backend,
    ingest: tuple[float, list[float]],
    queries: tuple[dict, dict, dict],
) -> list[Result]:
    tag = f" [{backend.name}]"
    rate, latencies = ingest
    sqlite = backend.name == "sqlite"
    shape = f"{sizes.ingest_agents} agents, batches of {sizes.ingest_batch}, zstd"
    results = [
        Result(
            f"relay ingest /relay/batch ({shape}){tag}",
            "value",
            "records/s",
            rate,
            target=Target(">=", 50_000) if sqlite else None,
        ),
        Result(f"relay /relay/batch round trip ({shape}){tag}", "median", "s", Stats.of(latencies)),
    ]
    server, client, relay_means = queries
    size = f"{sizes.central_records // 1000}k" if sizes.central_records < 10**6 else "1M"
    goals = {
        "agent + key": Target("<=", 0.002),
        "field eq, 10% match, limit 100": Target("<=", 0.020),
        "agent + field gte, 1% match, limit 100": Target("<=", 0.020),
    }
    for kind in server:
        results.append(
            Result(
                f"query {kind} @{size}, server-side{tag}",
                "median",
                "s",
                Stats.of(server[kind]),
                target=goals.get(kind),
                extra={"relay_histogram_mean_s": relay_means.get(kind)},
            )
        )
        results.append(
            Result(
                f"query {kind} @{size}, client round trip{tag}",
                "median",
                "s",
                Stats.of(client[kind]),
            )
        )
    return results


def run_relay(
    sizes: Sizes,
    workdir: Path,
    *,
    server_cpu: int | None,
    database_url: str | None,
    log: Callable[[str], None],
) -> list[Result]:
    """Ingest and query figures on SQLite, and on PostgreSQL when ``database_url`` is set."""
    from benchmarks.core import cpus

    client_cpu = cpus()[0] if server_cpu is not None else None
    backends = [_sqlite_backend(workdir / "sqlite")]
    if database_url:
        backends.append(_postgres_backend(workdir / "postgresql", database_url))
    results: list[Result] = []
    for backend in backends:
        try:
            log(f"relay[{backend.name}]: ingest from {sizes.ingest_agents} agents")
            ingest = _ingest(sizes, backend, workdir, server_cpu, client_cpu)
            log(f"relay[{backend.name}]: loading {sizes.central_records} records, then queries")
            queries = _queries(sizes, backend, server_cpu, log)
            results += _results(sizes, backend, ingest, queries)
            if backend.name == "sqlite":
                from benchmarks.analytics import analytics_overhead

                log("relay[sqlite]: analytics and heartbeats, on and off")
                results += analytics_overhead(
                    sizes, backend, workdir, server_cpu, client_cpu, _query_kinds(sizes)
                )
                from benchmarks.operability import access_log_cost, async_reads

                results += async_reads(sizes, workdir, server_cpu=server_cpu, log=log)
                results += access_log_cost(sizes, workdir, server_cpu=server_cpu, log=log)
        finally:
            with contextlib.suppress(Exception):
                backend.cleanup()
    return results
