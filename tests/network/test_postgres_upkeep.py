"""PostgreSQL storage layout and upkeep: HOT updates, a swept change log, bounded dead rows
(on a server with autovacuum off), "resync needed" past the horizon, opt-in field indexes."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import psycopg
import pytest
from pg_helpers import database_url, scratch_schema, with_search_path
from relay_helpers import JSON_HEADERS, make_record

from commander_os.config import RelayConfig
from commander_os.errors import CursorExpired
from commander_os.protocol import QueryRequest, encode_cursor
from commander_os.relay import create_app
from commander_os.relay.central import PostgresCentralStore
from commander_os.relay.central._postgres_upkeep import field_index_name, next_horizon

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

KEYS = 400
ROUNDS = 12


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def store() -> AsyncIterator[PostgresCentralStore]:
    url = database_url()
    with scratch_schema(url) as schema:
        # A short horizon and no upkeep loop: the test runs each pass itself.
        store = PostgresCentralStore(url, schema=schema, retention=0.4, upkeep_interval=3600)
        await store.open()
        try:
            yield store
        finally:
            await store.close()


def _stats(store: PostgresCentralStore) -> dict[str, tuple[int, int, int, int]]:
    """(live, dead, updates, HOT updates) per churned table, dead rows counted exactly."""
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS pgstattuple")
        found = {}
        for table in ("records", "changes", "agents"):
            name = f"{store.schema}.{table}"
            (live, dead) = conn.execute(
                "SELECT tuple_count, dead_tuple_count FROM pgstattuple(%s::regclass)", (name,)
            ).fetchone() or (0, 0)
            (upd, hot) = conn.execute(
                "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_user_tables WHERE relid = "
                "%s::regclass",
                (name,),
            ).fetchone() or (0, 0)
            found[table] = (int(live), int(dead), int(upd), int(hot))
        return found


async def _round(store: PostgresCentralStore, version: int) -> None:
    for start in range(0, KEYS, 100):
        await store.apply(
            [make_record(f"k{i:04d}", version, {"n": version}) for i in range(start, start + 100)]
        )


async def test_sustained_updates_are_hot_and_dead_rows_stay_bounded(
    store: PostgresCentralStore,
) -> None:
    for version in range(1, ROUNDS + 1):
        await _round(store, version)
        if version % 3 == 0:
            await asyncio.sleep(0.5)  # past the horizon of the previous pass
            await store.upkeep()
    # Sessions report their counters at most once a second, after a commit: write again
    # until the writers' counts are in (bounded).
    version = ROUNDS
    for _ in range(6):
        await asyncio.sleep(1.1)
        version += 1
        await _round(store, version)
        if _stats(store)["records"][2] >= KEYS * (version - 2):
            break
    await store.upkeep()
    stats = _stats(store)
    print(stats)
    live, dead, updates, hot = stats["records"]
    assert live == KEYS
    assert updates >= KEYS * (ROUNDS - 1)
    # Before this layout none were (the rev and GIN indexes). Room for a HOT version comes from
    # pruning, which a snapshot open elsewhere on the server can delay: most, not all.
    assert hot >= 0.6 * updates, f"only {hot} of {updates} record updates were HOT"
    # The log holds at most the changes of the last few rounds (the horizon), not all of them.
    assert stats["changes"][0] <= KEYS * 5, stats["changes"]
    for table, (live, dead, _, _) in stats.items():
        assert dead <= max(1000, live), f"{table}: {dead} dead rows for {live} live"
    # Every record is still there, once, in the order of its changes.
    page = await store.query(QueryRequest(limit=1000))
    assert sorted(r.key for r in page.records) == [f"k{i:04d}" for i in range(KEYS)]
    assert {r.version for r in page.records} == {version}


async def test_a_cursor_older_than_the_horizon_needs_a_resync(store: PostgresCentralStore) -> None:
    await store.apply([make_record("gone", 1, {"n": 1}), make_record("kept", 1, {"n": 1})])
    early = encode_cursor((await store.query(QueryRequest(limit=1))).records[0].rev)
    await store.apply([make_record("gone", 2)])  # a tombstone
    await store.upkeep()
    await asyncio.sleep(0.5)
    await store.apply([make_record("later", 1, {"n": 1})])
    await store.upkeep()  # the horizon passes the tombstone: it is swept
    with pytest.raises(CursorExpired):
        await store.query(QueryRequest(cursor=early))
    everything = await store.query(QueryRequest(include_deleted=True))
    assert sorted(r.key for r in everything.records) == ["kept", "later"]
    recent = encode_cursor(everything.records[-1].rev)
    assert (await store.query(QueryRequest(cursor=recent))).records == []

    app = create_app(RelayConfig(database_url=store.url), store=store)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost", headers=JSON_HEADERS
    ) as relay:
        answer = await relay.get("/relay/changes", params={"after": early})
        assert answer.status_code == 410
        assert answer.json()["error"] == "resync_needed"
        answer = await relay.post("/relay/query", json={"cursor": early})
        assert answer.status_code == 410


async def test_field_indexes_are_opt_in_and_serve_eq(store: PostgresCentralStore) -> None:
    assert await store.field_indexes() == []
    await store.apply([make_record(f"k{i}", 1, {"status": f"s{i % 50}"}) for i in range(2000)])
    index = await store.add_field_index("status")
    assert (index.field, index.name, index.valid) == (
        "status",
        field_index_name("status"),
        True,
    )
    assert await store.add_field_index("status") == index  # idempotent
    with pytest.raises(ValueError, match="array position"):
        await store.add_field_index("value.items.0")
    request = QueryRequest(where=[{"field": "status", "op": "eq", "value": "s7"}])
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute(f"ANALYZE {store.schema}.records")
    plan = await store.explain(request)
    assert any(index.name in step for step in plan.steps), plan.steps
    page = await store.query(request.model_copy(update={"limit": 1000}))
    assert len(page.records) == 40
    assert await store.drop_field_index("status") is True
    assert await store.drop_field_index("status") is False
    assert await store.field_indexes() == []
    assert len((await store.query(request.model_copy(update={"limit": 1000}))).records) == 40


async def test_configured_fields_are_indexed_at_start() -> None:
    url = database_url()
    with scratch_schema(url) as schema:
        async with PostgresCentralStore(
            url, schema=schema, indexed_fields=["value.a", "value.b.c"]
        ) as store:
            fields = [index.field for index in await store.field_indexes()]
    assert fields == ["value.a", "value.b.c"]
    assert time.time() > 0


def test_the_index_command_adds_lists_and_drops(tmp_path: Path) -> None:
    url = database_url()
    with scratch_schema(url, create=True) as schema:
        shared = with_search_path(url, schema)

        def run(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "commander_os", "relay", "index", *args],
                capture_output=True,
                text=True,
                timeout=60,
                cwd=tmp_path,
                env={**os.environ, "COLUMNS": "300"},  # one-line error boxes
            )

        added = run("add", "value.status", "--database-url", shared, "--json")
        assert added.returncode == 0, added.stderr
        assert json.loads(added.stdout)["field"] == "value.status"
        listed = run("list", "--database-url", shared, "--json")
        assert [i["field"] for i in json.loads(listed.stdout)] == ["value.status"]
        refused = run("add", "value.items.0", "--database-url", shared)
        assert refused.returncode == 2
        assert "array position" in refused.stderr
        dropped = run("drop", "value.status", "--database-url", shared, "--json")
        assert json.loads(dropped.stdout) == {"field": "value.status", "dropped": True}
        assert json.loads(run("list", "--database-url", shared, "--json").stdout) == []
    # The embedded SQLite store (no database URL) has field indexes too.
    on_sqlite = run("add", "value.status", "--data-dir", str(tmp_path / "central"), "--json")
    assert on_sqlite.returncode == 0, on_sqlite.stderr
    listed = run("list", "--data-dir", str(tmp_path / "central"), "--json")
    assert [i["field"] for i in json.loads(listed.stdout)] == ["value.status"]


def test_the_horizon_follows_the_retention_whatever_the_sweep_rate() -> None:
    day = 86_400 * 1_000_000
    horizon, marks = 0, []
    for tick in range(8 * 86_400 // 30):  # a sweep every 30 s for 8 days, 100 revs a second
        now = tick * 30 * 1_000_000
        horizon, marks = next_horizon(horizon, marks, now, tick * 3000, 7 * 86_400.0)
        assert len(marks) <= 2000
    # Revs of about day 1 (3000 a sweep): 7 days of changes are kept, and no more than a step.
    assert 86_400 // 30 * 3000 - 7 * 86_400 // 1000 * 100 <= horizon <= 86_400 // 30 * 3000
    assert day > 0
