"""``commander-os relay migrate / export / import``: moving a central store between backends.

SQLite → PostgreSQL → SQLite must keep every record (version, ts, deletion, data); importing
twice must change nothing; a stale import must not overwrite newer data.
"""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import psycopg
import pytest
from pg_helpers import database_url, scratch_schema, with_search_path
from relay_helpers import make_record

from commander_os.protocol import QueryRequest
from commander_os.relay.central import PostgresCentralStore, SQLiteCentralStore
from commander_os.relay.central._base import CentralStore
from commander_os.relay.central._postgres_schema import SCHEMA_VERSION
from commander_os.relay.central._transfer import export_records, import_records, parse_line

pytestmark = pytest.mark.anyio

CLI = [sys.executable, "-m", "commander_os"]
BASE_TS = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=60, check=False)


async def snapshot(store: CentralStore) -> list[tuple[object, ...]]:
    """Every record's identity and content (not its rev, which is local to a store)."""
    found = []
    cursor = None
    while True:
        page = await store.query(QueryRequest(include_deleted=True, limit=1000, cursor=cursor))
        found += [
            (r.agent_id, r.table, r.key, r.version, r.ts, r.deleted, r.data) for r in page.records
        ]
        if page.next_cursor is None:
            return sorted(found, key=repr)
        cursor = page.next_cursor


async def fill(store: CentralStore) -> None:
    await store.apply(
        [
            make_record(
                f"k{i:04d}",
                i + 1,
                {"i": i, "tags": ["a", i], "f": i / 3},
                ts=BASE_TS + timedelta(seconds=i),
            )
            for i in range(2500)
        ]
        + [make_record("c1", 7, {"name": "é ☃"}, agent_id="agent-b", table="candidates")]
    )
    await store.apply([make_record("k0003", 9000)])  # a tombstone travels too


@pytest.fixture
def pg_url() -> str:
    return database_url()


@pytest.mark.postgres
async def test_sqlite_to_postgresql_and_back_loses_nothing(tmp_path: Path, pg_url: str) -> None:
    with scratch_schema(pg_url) as schema:
        async with SQLiteCentralStore.in_directory(tmp_path / "a") as source:
            await fill(source)
            original = await snapshot(source)
            dump = io.BytesIO()
            assert await export_records(source, dump) == 2501
        async with PostgresCentralStore(pg_url, schema=schema) as middle:
            result = await import_records(middle, dump.getvalue().splitlines())
            assert (result.records, result.applied, result.ignored) == (2501, 2501, 0)
            again = await import_records(middle, dump.getvalue().splitlines())
            assert (again.applied, again.ignored) == (0, 2501)  # re-import is a no-op
            assert await snapshot(middle) == original
            assert {a.agent_id: a.highest_version for a in await middle.agents()} == {
                "agent-a": 9000,
                "agent-b": 7,
            }
            back = io.BytesIO()
            await export_records(middle, back)
        async with SQLiteCentralStore.in_directory(tmp_path / "b") as target:
            await import_records(target, back.getvalue().splitlines())
            assert await snapshot(target) == original


async def test_import_never_overwrites_newer_records(tmp_path: Path) -> None:
    async with SQLiteCentralStore.in_directory(tmp_path / "a") as source:
        await source.apply([make_record("k", 5, {"v": "old"})])
        dump = io.BytesIO()
        await export_records(source, dump)
    async with SQLiteCentralStore.in_directory(tmp_path / "b") as target:
        await target.apply([make_record("k", 8, {"v": "new"})])
        result = await import_records(target, dump.getvalue().splitlines())
        assert (result.applied, result.ignored) == (0, 1)
        (record,) = (await target.query(QueryRequest())).records
        assert record.data == {"v": "new"}


def test_a_bad_line_is_named() -> None:
    with pytest.raises(ValueError, match="line 3"):
        parse_line(b'{"agent_id": "a", "table": "kv"}', 3)
    with pytest.raises(ValueError, match="line 1"):
        parse_line(b"[1, 2]", 1)


@pytest.mark.postgres
def test_cli_migrate_export_import_round_trip(tmp_path: Path) -> None:
    url = database_url()
    with scratch_schema(url, create=True) as schema:
        shared = with_search_path(url, schema)
        migrated = run_cli("relay", "migrate", "--database-url", shared)
        assert migrated.returncode == 0, migrated.stderr
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute(f"SELECT max(version) FROM {schema}.schema_version").fetchone()
        assert row == (SCHEMA_VERSION,)
        assert run_cli("relay", "migrate", "--database-url", shared).returncode == 0  # idempotent

        source = tmp_path / "sqlite-relay"
        dump = tmp_path / "central.jsonl"

        async def seed() -> None:
            async with SQLiteCentralStore.in_directory(source) as store:
                await fill(store)

        anyio.run(seed)
        exported = run_cli("relay", "export", "--data-dir", str(source), "--out", str(dump))
        assert exported.returncode == 0, exported.stderr
        assert "exported 2501 record(s)" in exported.stdout
        imported = run_cli("relay", "import", str(dump), "--database-url", shared)
        assert imported.returncode == 0, imported.stderr
        assert "2501 applied" in imported.stdout
        again = run_cli("relay", "import", str(dump), "--database-url", shared)
        assert "0 applied, 2501 already there" in again.stdout
        back = tmp_path / "back.jsonl"
        assert (
            run_cli("relay", "export", "--database-url", shared, "--out", str(back)).returncode == 0
        )
        restored = tmp_path / "restored"
        assert run_cli("relay", "import", str(back), "--data-dir", str(restored)).returncode == 0

        async def compare() -> None:
            async with (
                SQLiteCentralStore.in_directory(source) as a,
                SQLiteCentralStore.in_directory(restored) as b,
            ):
                assert await snapshot(a) == await snapshot(b)

        anyio.run(compare)


def test_cli_unreachable_database_fails_with_one_line() -> None:
    result = run_cli("relay", "migrate", "--database-url", "postgresql://postgres@127.0.0.1:9/x")
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1, result.stderr
    assert "cannot connect to PostgreSQL at postgres@127.0.0.1:9/x" in result.stderr
    assert "Traceback" not in result.stderr
