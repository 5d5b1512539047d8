"""Relay fleet benchmarks (issue 15): what a fleet of relays costs per unit, beside its floors.

* **Relay CPU per 1-record request** against an empty FastAPI endpoint served the same way
  (uvicorn, uvloop, httptools), both pinned to the server CPU, measured in the same run from
  the processes' own CPU time (``/proc/<pid>/stat``).
* **Batched ingest on SQLite** (``/relay/batch`` of 1,000 records, one client) against the floor
  of raw ``sqlite3`` writing the same rows (WAL, ``synchronous=FULL``, one commit per batch).
* **Change-feed subscribers** during ingest at a steady rate: whole-feed and per-agent
  long-polls; the share of records each received in the window, delivery lag p99, relay CPU.
* **PostgreSQL ingest with 1, 2 and 3 relays** on one database (with ``--database-url``), and
  how often a writer session was seen waiting on a lock meanwhile.

Sizes per suite size are in :data:`FLEET_SIZES` (``quick`` runs in seconds, for the tests).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson

from benchmarks.core import Result, Target
from benchmarks.sizes import Sizes
from commander_os.protocol import format_ts
from commander_os.relay import RelayProcess

__all__ = ["FLEET_SIZES", "FleetSizes", "run_fleet"]

JSON = {"content-type": "application/json"}
#: The relay's per-client limits, lifted: every subscriber comes from this one process.
OPEN_LIMITS = {
    "COMMANDER_OS_RELAY_LIMITS__MAX_CONCURRENT_QUERIES": "1000",
    "COMMANDER_OS_RELAY_LIMITS__MAX_CONNECTIONS": "100000",
}
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
DISK_BYTES = """
SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c
WHERE c.relnamespace = current_schema()::regnamespace AND c.relkind = 'r'
"""


@dataclass(frozen=True)
class FleetSizes:
    """The knobs of this area."""

    requests: int  # 1-record requests per round (CPU per request)
    rounds: int
    batches: int  # /relay/batch bodies of 1,000 (ingest vs raw sqlite3)
    feed_whole: int  # whole-feed subscribers
    feed_per_agent: int  # per-agent subscribers
    feed_agents: int
    feed_rate: int  # records/s written while they follow
    feed_seconds: float
    pg_records: int  # per PostgreSQL ingest run
    pg_clients: int


FLEET_SIZES = {
    "quick": FleetSizes(200, 2, 5, 3, 10, 5, 200, 2.0, 6_000, 3),
    "standard": FleetSizes(2000, 3, 40, 20, 200, 50, 500, 8.0, 60_000, 6),
    "full": FleetSizes(5000, 3, 100, 100, 1000, 100, 1000, 20.0, 300_000, 6),
}


def run_fleet(
    sizes: Sizes,
    workdir: Path,
    *,
    server_cpu: int | None,
    database_url: str | None,
    log: Callable[[str], None],
) -> list[Result]:
    """Every fleet row at ``sizes.name``'s fleet sizes."""
    fleet = FLEET_SIZES[sizes.name]
    results = _cpu_per_request(fleet, workdir, server_cpu, log)
    results += _batched_vs_sqlite(fleet, workdir, server_cpu, log)
    results += _feed(fleet, workdir, None, log)
    if database_url:
        results += _pg_ingest(fleet, workdir, database_url, log)
        results += _feed(fleet, workdir, database_url, log)
    return results


# --------------------------------------------------------------------------------- helpers


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def _empty_endpoint(server_cpu: int | None) -> Iterator[tuple[str, int]]:
    port = _free_port()
    argv = [sys.executable, "-m", "benchmarks.empty_app", str(port)]
    if server_cpu is not None:
        argv = ["taskset", "-c", str(server_cpu), *argv]
    child = subprocess.Popen(argv)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.post(url + "/empty", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the empty endpoint did not start") from None
                time.sleep(0.05)
        yield url, child.pid
    finally:
        child.terminate()
        child.wait(10)


def _record(agent: str, n: int, data: dict[str, Any]) -> dict[str, Any]:
    return {
        "agent_id": agent,
        "table": "kv",
        "key": f"k{n:08d}",
        "op": "upsert",
        "data": data,
        "version": n + 1,
        "ts": format_ts(1_764_210_000.5 + n),
    }


def _pg_schema_url(url: str) -> tuple[str, str]:
    import psycopg

    schema = "bench_fleet_" + uuid.uuid4().hex[:8]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    separator = "&" if "?" in url else "?"
    return schema, f"{url}{separator}options={quote(f'-csearch_path={schema}')}"


def _drop_schema(url: str, schema: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


# ------------------------------------------------------------------ CPU per 1-record request


def _cpu_per_request(
    fleet: FleetSizes, workdir: Path, server_cpu: int | None, log: Callable[[str], None]
) -> list[Result]:
    relay_samples: list[float] = []
    empty_samples: list[float] = []
    with (
        RelayProcess(data_dir=workdir / "cpu", cpu=server_cpu, env=OPEN_LIMITS) as relay,
        _empty_endpoint(server_cpu) as (empty_url, empty_pid),
        httpx.Client(headers=JSON, timeout=30) as http,
    ):
        assert relay.pid is not None
        n = 0
        for _ in range(fleet.rounds):
            bodies = []
            for _ in range(fleet.requests):
                n += 1
                bodies.append(orjson.dumps(_record("cpu-agent", n, {"n": n})))
            before = cpu_seconds(relay.pid)
            for body in bodies:
                http.post(relay.url + "/relay/immediate", content=body).raise_for_status()
            relay_samples.append((cpu_seconds(relay.pid) - before) / fleet.requests)
            before = cpu_seconds(empty_pid)
            for body in bodies:
                http.post(empty_url + "/empty", content=body).raise_for_status()
            empty_samples.append((cpu_seconds(empty_pid) - before) / fleet.requests)
    ours, floor = statistics.median(relay_samples), statistics.median(empty_samples)
    log(f"fleet: relay CPU per 1-record request {ours * 1e6:.0f} us, empty {floor * 1e6:.0f} us")
    return [
        Result(
            "relay CPU per 1-record request [sqlite]",
            "value",
            "s",
            ours,
            peer_name="empty FastAPI endpoint",
            peer=floor,
            target=Target("<=", 2.0, ratio=True),
            note="CPU time of the server process per request, same HTTP stack, same run",
        )
    ]


# -------------------------------------------------------- batched ingest vs raw sqlite3


RAW_SCHEMA = """
CREATE TABLE records (agent_id TEXT NOT NULL, tbl TEXT NOT NULL, key TEXT NOT NULL,
    version INTEGER NOT NULL, ts INTEGER NOT NULL, deleted INTEGER NOT NULL, data TEXT,
    rev INTEGER NOT NULL, PRIMARY KEY (agent_id, key, tbl))
"""
RAW_UPSERT = """
INSERT INTO records (agent_id, tbl, key, version, ts, deleted, data, rev)
VALUES (?, ?, ?, ?, ?, 0, ?, ?)
ON CONFLICT (agent_id, key, tbl) DO UPDATE SET version = excluded.version, ts = excluded.ts,
    data = excluded.data, rev = excluded.rev WHERE excluded.version > records.version
"""


def _raw_sqlite(path: Path, batches: list[list[dict[str, Any]]]) -> float:
    """Records/s of raw sqlite3 writing the rows (parsing the same JSON bodies first)."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(RAW_SCHEMA)
    bodies = [orjson.dumps({"records": batch}) for batch in batches]
    rev = 0
    started = time.perf_counter()
    for body in bodies:
        rows = []
        for record in orjson.loads(body)["records"]:
            rev += 1
            rows.append(
                (
                    record["agent_id"],
                    record["table"],
                    record["key"],
                    record["version"],
                    rev,
                    orjson.dumps(record["data"]).decode(),
                    rev,
                )
            )
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(RAW_UPSERT, rows)
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - started
    conn.close()
    return sum(map(len, batches)) / elapsed


def _batched_vs_sqlite(
    fleet: FleetSizes, workdir: Path, server_cpu: int | None, log: Callable[[str], None]
) -> list[Result]:
    batches = [
        [
            _record("ingest-agent", b * 1000 + i, {"n": b * 1000 + i, "pad": "x" * 100})
            for i in range(1000)
        ]
        for b in range(fleet.batches)
    ]
    floor = _raw_sqlite(workdir / "raw.db", batches)
    bodies = [orjson.dumps({"agent_id": "ingest-agent", "records": batch}) for batch in batches]
    with (
        RelayProcess(data_dir=workdir / "batched", cpu=server_cpu, env=OPEN_LIMITS) as relay,
        httpx.Client(headers=JSON, timeout=60) as http,
    ):
        started = time.perf_counter()
        for body in bodies:
            http.post(relay.url + "/relay/batch", content=body).raise_for_status()
        ours = sum(map(len, batches)) / (time.perf_counter() - started)
    log(f"fleet: batched ingest {ours:,.0f} records/s, raw sqlite3 {floor:,.0f} records/s")
    return [
        Result(
            "relay batched ingest, batches of 1000 [sqlite]",
            "value",
            "items/s",
            ours,
            peer_name="raw sqlite3 (same rows, FULL)",
            peer=floor,
            target=Target(">=", 0.75, ratio=True),
            note="one client, sequential batches; the floor parses the same JSON and commits "
            "once per batch",
        )
    ]


# -------------------------------------------------------------------- feed subscribers


@dataclass
class _Follower:
    agent: str | None
    received: int = 0


class _Wire:
    """A minimal HTTP/1.1 keep-alive client for GETs: a thousand subscribers in one Python
    process would otherwise measure the client library (httpx costs ~1 ms of CPU a request,
    more than the relay's answer), not the relay."""

    def __init__(self, url: str) -> None:
        host, port = url.removeprefix("http://").split(":")
        self.host, self.port = host, int(port)
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def get(self, path: str) -> tuple[int, bytes]:
        """Status and body of ``GET path``."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self._streams
        writer.write(f"GET {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode())
        status = int((await reader.readline()).split()[1])
        length = 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return status, await reader.readexactly(length)

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()


async def _follow(
    url: str,
    follower: _Follower,
    cursor: str,
    lags: list[float],
    stop: asyncio.Event,
) -> None:
    wire = _Wire(url)
    query = "wait=2&limit=1000" + (f"&agent_id={follower.agent}" if follower.agent else "")
    try:
        while not stop.is_set():
            try:
                status, body = await wire.get(f"/relay/changes?{query}&after={cursor}")
            except (OSError, asyncio.IncompleteReadError, ValueError, IndexError):
                wire.close()
                wire = _Wire(url)
                await asyncio.sleep(0.05)
                continue
            if status != 200:
                await asyncio.sleep(0.05)
                continue
            page = orjson.loads(body)
            now = time.time()
            for record in page["records"]:
                lags.append(now - record["data"]["t"])
            follower.received += len(page["records"])
            cursor = page["next_cursor"] or cursor
    finally:
        wire.close()


async def _feed_run(url: str, fleet: FleetSizes, pid: int) -> dict[str, Any]:
    agents = [f"feed-{i:03d}" for i in range(fleet.feed_agents)]
    limits = httpx.Limits(max_connections=fleet.feed_whole + fleet.feed_per_agent + 10)
    async with httpx.AsyncClient(base_url=url, headers=JSON, timeout=30, limits=limits) as http:
        seed = _record("feed-seed", 0, {"t": time.time()})
        await http.post("/relay/immediate", content=orjson.dumps(seed))
        cursor = (await http.get("/relay/changes", params={"limit": 1000})).json()["next_cursor"]
        followers = [_Follower(None) for _ in range(fleet.feed_whole)]
        followers += [_Follower(agents[i % len(agents)]) for i in range(fleet.feed_per_agent)]
        lags: list[float] = []
        stop = asyncio.Event()
        tasks = [asyncio.create_task(_follow(url, f, cursor, lags, stop)) for f in followers]
        await asyncio.sleep(0.5)  # every follower waiting
        written = dict.fromkeys(agents, 0)
        per_tick = max(1, fleet.feed_rate // 20)
        ticks = int(fleet.feed_seconds * 20)
        cpu_before, wall_before = cpu_seconds(pid), time.monotonic()
        n = 0
        for tick in range(ticks):
            agent = agents[tick % len(agents)]
            records = []
            for _ in range(per_tick):
                n += 1
                records.append(_record(agent, n, {"t": time.time()}))
            body = orjson.dumps({"agent_id": agent, "records": records})
            (await http.post("/relay/batch", content=body)).raise_for_status()
            written[agent] += per_tick
            await asyncio.sleep(max(0.0, wall_before + (tick + 1) / 20 - time.monotonic()))
        await asyncio.sleep(0.5)  # the last records' delivery
        cpu = (cpu_seconds(pid) - cpu_before) / (time.monotonic() - wall_before)
        stop.set()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    total = sum(written.values())
    shares = [f.received / (total if f.agent is None else written[f.agent] or 1) for f in followers]
    whole = shares[: fleet.feed_whole]
    mine = shares[fleet.feed_whole :]
    lags.sort()
    return {
        "written": total,
        "whole_min": min(whole) if whole else None,
        "per_agent_min": min(mine) if mine else None,
        "lag_p99": lags[min(len(lags) - 1, int(0.99 * len(lags)))] if lags else None,
        "relay_cpu": cpu,
    }


def _feed(
    fleet: FleetSizes, workdir: Path, database_url: str | None, log: Callable[[str], None]
) -> list[Result]:
    backend = "postgresql" if database_url else "sqlite"
    extra_args: tuple[str, ...] = ()
    schema = None
    if database_url:
        schema, shared = _pg_schema_url(database_url)
        extra_args = ("--database-url", shared)
    try:
        with RelayProcess(
            data_dir=workdir / f"feed-{backend}", extra_args=extra_args, env=OPEN_LIMITS
        ) as relay:
            assert relay.pid is not None
            found = asyncio.run(_feed_run(relay.url, fleet, relay.pid))
    finally:
        if database_url and schema:
            _drop_schema(database_url, schema)
    label = (
        f"{fleet.feed_whole} whole-feed + {fleet.feed_per_agent} per-agent subscribers, "
        f"{fleet.feed_rate} records/s [{backend}]"
    )
    log(f"fleet: feed {label}: {found}")
    return [
        Result(
            f"feed delivery, least whole-feed subscriber, {label}",
            "value",
            "%",
            100 * (found["whole_min"] or 0),
            target=Target(">=", 99.0),
        ),
        Result(
            f"feed delivery, least per-agent subscriber, {label}",
            "value",
            "%",
            100 * (found["per_agent_min"] or 0),
            target=Target(">=", 99.0),
        ),
        Result(
            f"feed delivery lag p99, {label}",
            "value",
            "s",
            found["lag_p99"] or 0.0,
            target=Target("<=", 0.5),
        ),
        Result(
            f"relay CPU serving the feed, {label}",
            "value",
            "% of a core",
            100 * found["relay_cpu"],
            target=Target("<=", 50.0),
            note="ingest included; the relay is not pinned",
        ),
    ]


# ------------------------------------------------------------ PostgreSQL, 1-3 relays


def _pg_ingest(
    fleet: FleetSizes, workdir: Path, database_url: str, log: Callable[[str], None]
) -> list[Result]:
    results: list[Result] = []
    single: float | None = None
    for relays in (1, 2, 3):
        rate, waits, samples, disk = _pg_ingest_once(fleet, workdir, database_url, relays)
        log(f"fleet: PG ingest, {relays} relay(s): {rate:,.0f} records/s, lock waits {waits}")
        single = rate if single is None else single
        results.append(
            Result(
                f"PG ingest /relay/batch, {relays} relay(s), {fleet.pg_clients} agents",
                "value",
                "items/s",
                rate,
                peer_name=None if relays == 1 else "1 relay",
                peer=None if relays == 1 else single,
                note="relays, PostgreSQL and the load share 2 cores: reported, not held to a ratio",
                # By lock type: "extend" is PostgreSQL adding a page to a table (held for
                # microseconds, per table); "tuple"/"transactionid" would be a shared row.
                extra={"writer_lock_waits_seen": waits, "lock_samples": samples},
            )
        )
    results.append(
        Result(
            "PG disk per record (tables and indexes, ~150 B of data each)",
            "value",
            "B",
            disk,
            note="records + change log + agents + per-table counts, after the last run",
        )
    )
    return results


def _pg_ingest_once(
    fleet: FleetSizes, workdir: Path, database_url: str, relays: int
) -> tuple[float, dict[str, int], int, float]:
    import psycopg

    schema, shared = _pg_schema_url(database_url)
    processes = [
        RelayProcess(
            data_dir=workdir / f"pg{relays}-{i}",
            extra_args=("--database-url", shared),
            env=OPEN_LIMITS,
        )
        for i in range(relays)
    ]
    per_client = fleet.pg_records // fleet.pg_clients
    bodies = {
        c: [
            orjson.dumps(
                {
                    "agent_id": f"pg-{c}",
                    "records": [
                        _record(f"pg-{c}", n, {"n": n, "pad": "x" * 100})
                        for n in range(start, min(start + 1000, per_client))
                    ],
                }
            )
            for start in range(0, per_client, 1000)
        ]
        for c in range(fleet.pg_clients)
    }
    waits: dict[str, int] = {}
    samples = 0
    try:
        for process in processes:
            process.start()
        urls = [p.url for p in processes]

        def push(c: int) -> None:
            with httpx.Client(headers=JSON, timeout=120) as http:
                for body in bodies[c]:
                    http.post(urls[c % relays] + "/relay/batch", content=body).raise_for_status()

        threads = [threading.Thread(target=push, args=(c,)) for c in range(fleet.pg_clients)]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        with psycopg.connect(database_url, autocommit=True) as conn:
            while any(thread.is_alive() for thread in threads):
                for (event,) in conn.execute(
                    "SELECT wait_event FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND application_name LIKE 'commander-os relay writers%'"
                ):
                    waits[str(event)] = waits.get(str(event), 0) + 1
                samples += 1
                time.sleep(0.01)
        for thread in threads:
            thread.join()
        rate = per_client * fleet.pg_clients / (time.perf_counter() - started)
        with psycopg.connect(shared, autocommit=True) as conn:
            (size,) = conn.execute(DISK_BYTES).fetchone() or (0,)
        disk = int(size) / (per_client * fleet.pg_clients)
    finally:
        for process in processes:
            process.stop()
        _drop_schema(database_url, schema)
    return rate, waits, samples, disk
