"""Central stores side by side: ingest through a real relay, and field-filter query latency.

Run (PostgreSQL needs a URL; SQLite always runs)::

    .venv/bin/python -m benchmarks.central_stores \
        --database-url postgresql://postgres@127.0.0.1:5432/test --records 200000

Ingest: ``--clients`` threads, each one agent, POST ``/relay/batch`` with ``--batch`` records to
one relay process (SQLite or PostgreSQL central store); records/s over the whole run. Query: the
relay's ``/relay/query`` with an ``eq`` field filter (GIN-served on PostgreSQL), median and p95.
Every PostgreSQL run uses a fresh schema, dropped at the end.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import orjson
import psycopg

from commander_os.protocol import format_ts
from commander_os.relay import RelayProcess


def _batch(agent: str, start: int, size: int) -> bytes:
    now = format_ts(datetime.now(UTC))
    records = [
        {
            "agent_id": agent,
            "table": "kv",
            "key": f"key-{n:08d}",
            "op": "upsert",
            "data": {"value": {"n": n, "color": f"c{n % 1000}", "tags": [n % 7]}},
            "version": n + 1,
            "ts": now,
        }
        for n in range(start, start + size)
    ]
    return orjson.dumps({"agent_id": agent, "records": records})


def ingest(url: str, *, clients: int, per_client: int, batch: int) -> float:
    """Records/s through ``url`` with ``clients`` concurrent agents."""
    bodies = {
        c: [_batch(f"bench-{c}", s, batch) for s in range(0, per_client, batch)]
        for c in range(clients)
    }

    def run(c: int) -> None:
        with httpx.Client(timeout=60) as http:
            for body in bodies[c]:
                answer = http.post(
                    url + "/relay/batch", content=body, headers={"content-type": "application/json"}
                )
                answer.raise_for_status()

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return clients * per_client / (time.perf_counter() - started)


def query_latency(url: str, body: dict[str, object], rounds: int = 200) -> tuple[float, float]:
    """Median and p95 of ``/relay/query`` in ms."""
    samples = []
    with httpx.Client(timeout=60) as http:
        for _ in range(rounds):
            started = time.perf_counter()
            answer = http.post(url + "/relay/query", json=body)
            samples.append((time.perf_counter() - started) * 1000)
            answer.raise_for_status()
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95)]


QUERIES = {
    "eq on a field, all agents": {
        "where": [{"field": "value.color", "op": "eq", "value": "c123"}],
        "limit": 100,
    },
    "agent + eq": {
        "agent_id": "bench-0",
        "where": [{"field": "value.color", "op": "eq", "value": "c7"}],
        "limit": 100,
    },
    "agent + key": {"agent_id": "bench-1", "key": "key-00000042"},
}


def bench(name: str, relay: RelayProcess, args: argparse.Namespace) -> None:
    url = relay.start()
    try:
        per_client = args.records // args.clients
        rate = ingest(url, clients=args.clients, per_client=per_client, batch=args.batch)
        print(f"{name:<11} ingest {rate:>9,.0f} records/s ({args.records:,} records)")
        for label, body in QUERIES.items():
            p50, p95 = query_latency(url, body)
            print(f"{name:<11} query  {label:<28} p50 {p50:6.2f} ms   p95 {p95:6.2f} ms")
    finally:
        relay.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.central_stores")
    parser.add_argument("--database-url", help="PostgreSQL URL (skip PostgreSQL when absent)")
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--batch", type=int, default=5000)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        bench("sqlite", RelayProcess(data_dir=Path(tmp) / "sqlite"), args)
        if args.database_url:
            schema = "bench_" + uuid.uuid4().hex[:8]
            with psycopg.connect(args.database_url, autocommit=True) as conn:
                conn.execute(f"CREATE SCHEMA {schema}")
            sep = "&" if "?" in args.database_url else "?"
            url = f"{args.database_url}{sep}options={quote(f'-csearch_path={schema}')}"
            try:
                relay = RelayProcess(data_dir=Path(tmp) / "pg", extra_args=("--database-url", url))
                bench("postgresql", relay, args)
            finally:
                with psycopg.connect(args.database_url, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
