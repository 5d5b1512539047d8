"""Revisions on PostgreSQL without a global lock: a sequence read up to a commit-order watermark.

* A rev that commits late is never skipped by a reader that already saw a higher one.
* Two relay processes ingesting at once never wait on a shared row or lock (``pg_locks`` and
  the wait events of ``pg_stat_activity`` are sampled while they run), and a feed follower sees
  every record exactly once, each agent's in order.
* The schema is ready for distribution by ``agent_id`` (a catalog property: Citus itself is not
  installable here).
* A version-2 database (the one-row ``rev_counter``) migrates, keeping its revs.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx
import psycopg
import pytest
from pg_helpers import database_url, scratch_schema, with_search_path
from relay_helpers import JSON_HEADERS, make_record

from commander_os.protocol import QueryRequest, format_ts
from commander_os.relay._process import RelayProcess
from commander_os.relay.central import PostgresCentralStore
from commander_os.relay.central._postgres_schema import MIGRATIONS, REV_BLOCK
from commander_os.relay.central._postgres_store import application_name

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

AGENTS_PER_RELAY = 3
BATCHES = 40
BATCH = 25


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def schema_url() -> Iterator[tuple[str, str]]:
    url = database_url()
    with scratch_schema(url, create=True) as schema:
        yield url, schema


async def test_a_rev_that_commits_late_is_not_skipped(schema_url: tuple[str, str]) -> None:
    url, schema = schema_url
    store = PostgresCentralStore(url, schema=schema)
    await store.open()
    store._watermark.max_wait = 0.3
    try:
        await store.apply([make_record("first", 1, {"n": 1})])
        assert [r.key for r in (await store.query(QueryRequest())).records] == ["first"]
        name = quote(application_name("writers", schema))
        writer = with_search_path(url, schema) + f"&application_name={name}"
        with psycopg.connect(writer) as slow:
            # A writer that took its id and drew a rev, and has not committed yet.
            slow.execute("SELECT pg_current_xact_id()")
            (late_rev,) = slow.execute("SELECT nextval('records_rev_seq')").fetchone() or (0,)
            await store.apply([make_record("second", 2, {"n": 2})])
            seen = (await store.query(QueryRequest())).records
            assert [r.key for r in seen] == ["first"], "read past a rev that may still commit"
            slow.execute(
                "INSERT INTO records (agent_id, tbl, key, version, ts, deleted, data, rev, "
                "received) VALUES ('agent-b', 'kv', 'late', 1, 0, false, '{}', %s, 0)",
                (late_rev,),
            )
            slow.execute(
                "INSERT INTO changes (agent_id, key, tbl, rev)"
                " VALUES ('agent-b', 'late', 'kv', %s)",
                (late_rev,),
            )
            slow.commit()
        seen = (await store.query(QueryRequest())).records
        assert [r.key for r in seen] == ["first", "late", "second"]
        assert [r.rev for r in seen] == sorted(r.rev for r in seen)
    finally:
        await store.close()


async def test_a_write_is_visible_at_once_through_another_store(
    schema_url: tuple[str, str],
) -> None:
    url, schema = schema_url
    one, two = PostgresCentralStore(url, schema=schema), PostgresCentralStore(url, schema=schema)
    await one.open()
    await two.open()
    try:
        for n in range(20):
            await one.apply([make_record(f"k{n}", n + 1, {"n": n})])
            page = await two.query(QueryRequest(key=f"k{n}"))
            assert [r.key for r in page.records] == [f"k{n}"]
    finally:
        await one.close()
        await two.close()


def test_schema_is_ready_for_sharding_by_agent_id(schema_url: tuple[str, str]) -> None:
    url, schema = schema_url

    async def create() -> None:
        async with PostgresCentralStore(url, schema=schema):
            pass

    asyncio.run(create())
    with psycopg.connect(url) as conn:
        tables = {
            name
            for (name,) in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)
            )
        }
        # The small tables without agents are reference (replicated) tables.
        distributed = tables - {"schema_version", "field_indexes", "retention"}
        assert distributed == {"records", "changes", "agents", "table_stats"}
        for table in sorted(distributed):
            unique = conn.execute(
                """
                SELECT i.indexrelid::regclass::text,
                       array_agg(a.attname::text ORDER BY a.attnum)
                FROM pg_index i
                JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
                WHERE i.indrelid = %s::regclass AND i.indisunique
                GROUP BY 1
                """,
                (f"{schema}.{table}",),
            ).fetchall()
            assert unique, f"{table} has no primary key"
            for index, columns in unique:
                assert "agent_id" in columns, f"unique index {index} lacks agent_id"
        foreign = conn.execute(
            "SELECT conname FROM pg_constraint"
            " WHERE contype = 'f' AND connamespace = %s::regnamespace",
            (schema,),
        ).fetchall()
        assert foreign == [], "a foreign key would cross shards"
        # No table keeps a row every writer updates (the old rev_counter).
        assert "rev_counter" not in tables


@pytest.fixture
def own_database() -> Iterator[str]:
    """A database of this test's own: the fault below terminates every relay writer in it."""
    url = database_url()
    name = "test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield urlunsplit(urlsplit(url)._replace(path="/" + name))
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def test_two_relays_never_wait_on_a_shared_lock_and_the_feed_has_every_record_once(
    own_database: str, tmp_path: Path
) -> None:
    relays = [
        RelayProcess(data_dir=tmp_path / f"relay{i}", extra_args=("--database-url", own_database))
        for i in range(2)
    ]
    for relay in relays:
        relay.start()
    try:
        _run_two_relays(own_database, relays)
    finally:
        for relay in relays:
            relay.stop()


def _run_two_relays(url: str, relays: list[RelayProcess]) -> None:
    agents = {
        f"r{i}-a{j}": relay.url for i, relay in enumerate(relays) for j in range(AGENTS_PER_RELAY)
    }
    stop = threading.Event()
    samples: dict[str, Any] = {"waits": [], "blocked": [], "overlaps": 0, "taken": 0, "extends": 0}
    sampler = threading.Thread(target=_sample_locks, args=(url, stop, samples))
    killed: list[int] = []
    terminator = threading.Thread(target=_terminate_writers, args=(url, stop, killed))
    feed: list[dict[str, Any]] = []
    follower = threading.Thread(target=_follow, args=(relays[0].url, stop, feed))
    writers = [threading.Thread(target=_write, args=(a, u)) for a, u in agents.items()]
    sampler.start()
    follower.start()
    terminator.start()
    for thread in writers:
        thread.start()
    for thread in writers:
        thread.join()
    deadline = time.monotonic() + 30
    while len(feed) < len(agents) * BATCHES * BATCH and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    sampler.join()
    follower.join()
    terminator.join()
    print(
        f"lock samples {samples['taken']}, with both relays' writers in a transaction "
        f"{samples['overlaps']}; lock waits {len(samples['waits'])}, page extensions "
        f"{samples['extends']}; writer backends terminated {len(killed)}"
    )
    assert samples["overlaps"] > 0, "the writers never overlapped: the check proved nothing"
    assert killed, "no writer backend was terminated"
    assert samples["waits"] == [], f"a writer waited on a lock: {samples['waits'][:5]}"
    assert samples["blocked"] == [], f"ungranted locks: {samples['blocked'][:5]}"
    revs = [record["rev"] for record in feed]
    assert revs == sorted(set(revs)), "the feed repeated a rev or went backwards"
    for agent in agents:
        versions = [r["version"] for r in feed if r["agent_id"] == agent]
        assert versions == list(range(1, BATCHES * BATCH + 1)), f"{agent}: gap, repeat or order"


def _write(agent_id: str, url: str) -> None:
    with httpx.Client(base_url=url, headers=JSON_HEADERS, timeout=30) as http:
        version = 0
        for _ in range(BATCHES):
            records = []
            for _ in range(BATCH):
                version += 1
                records.append(
                    {
                        "agent_id": agent_id,
                        "table": "kv",
                        "key": f"k{version:05d}",
                        "op": "upsert",
                        "data": {"n": version},
                        "version": version,
                        "ts": format_ts(1_764_210_000.5 + version),
                    }
                )
            body = {"agent_id": agent_id, "records": records}
            for _ in range(100):  # as an agent does: a 503 (its backend was killed) is retried
                answer = http.post("/relay/batch", json=body)
                if answer.status_code != 503:
                    break
                time.sleep(0.05)
            assert answer.status_code == 200, answer.text


def _follow(url: str, stop: threading.Event, feed: list[dict[str, Any]]) -> None:
    cursor = None
    with httpx.Client(base_url=url, timeout=30) as http:
        while not stop.is_set():
            params: dict[str, Any] = {"wait": 0.2, "limit": 1000}
            if cursor:
                params["after"] = cursor
            page = http.get("/relay/changes", params=params).json()
            feed += page["records"]
            cursor = page["next_cursor"] or cursor


def _terminate_writers(url: str, stop: threading.Event, killed: list[int]) -> None:
    """A fault: every 0.4 s, terminate one relay writer's backend (mid-commit or idle)."""
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.wait(0.4):
            row = conn.execute(
                "SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE application_name = 'commander-os relay writers' "
                "AND datname = current_database() ORDER BY random() LIMIT 1"
            ).fetchone()
            if row is not None:
                killed.append(int(row[0]))


def _sample_locks(url: str, stop: threading.Event, samples: dict[str, Any]) -> None:
    """Every few ms: any writer of a relay waiting on a heavyweight lock, any lock not granted
    in this database, and whether the writers of both relays were in a transaction at once."""
    with psycopg.connect(url, autocommit=True) as conn:
        while not stop.is_set():
            rows = conn.execute(
                """
                SELECT pid, wait_event_type, wait_event, xact_start IS NOT NULL, client_port
                FROM pg_stat_activity
                WHERE datname = current_database()
                  AND application_name = 'commander-os relay writers'
                """
            ).fetchall()
            samples["taken"] += 1
            # "extend" is PostgreSQL adding a page to a table: held for microseconds by any
            # inserting session (per table, per shard on a cluster), it orders no commits.
            # Counted, not refused; any other lock (a row, a transaction) fails the test.
            samples["waits"] += [row for row in rows if row[1] == "Lock" and row[2] != "extend"]
            samples["extends"] += sum(1 for row in rows if row[2] == "extend")
            if sum(1 for row in rows if row[3]) >= 2:
                samples["overlaps"] += 1
            samples["blocked"] += conn.execute(
                """
                SELECT l.locktype, l.relation::regclass::text, l.mode
                FROM pg_locks l JOIN pg_stat_activity s ON s.pid = l.pid
                WHERE NOT l.granted AND s.application_name = 'commander-os relay writers'
                  AND s.datname = current_database()
                  AND l.locktype <> 'extend'
                """
            ).fetchall()
            time.sleep(0.002)


def test_a_version_2_database_migrates_and_keeps_its_revs(schema_url: tuple[str, str]) -> None:
    url, schema = schema_url
    with psycopg.connect(with_search_path(url, schema)) as conn:
        conn.execute(
            "CREATE TABLE schema_version (version integer PRIMARY KEY, description text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        for step in MIGRATIONS[:2]:
            conn.execute(step.statements)
            conn.execute(
                "INSERT INTO schema_version (version, description) VALUES (%s, %s)",
                (step.version, step.description),
            )
        conn.execute(
            "INSERT INTO records (agent_id, tbl, key, version, ts, deleted, data, rev, received)"
            " VALUES ('agent-a', 'kv', 'old', 1, 0, false, '{\"v\": 1}', 7, 0)"
        )
        conn.execute("UPDATE rev_counter SET last_rev = 7")

    async def upgrade() -> list[tuple[str, int]]:
        async with PostgresCentralStore(url, schema=schema) as store:
            await store.apply([make_record("new", 2, {"v": 2})])
            return [(r.key, r.rev) for r in (await store.query(QueryRequest())).records]

    seen = asyncio.run(upgrade())
    assert seen == [("old", 7), ("new", 8)]
    assert REV_BLOCK > 1
