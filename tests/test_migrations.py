"""Custom storage classes: their own tables, indexes and ordered, transactional migrations."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from commander_os.errors import SchemaError, SchemaTooNew
from commander_os.storage.base_storage import BaseStorage, Migration, SyncedTable

REPO_ROOT = Path(__file__).resolve().parent.parent
MakeStorage = Callable[..., Any]

CANDIDATES_V1 = """
CREATE TABLE candidates (
    id     TEXT PRIMARY KEY,
    name   TEXT NOT NULL,
    skills TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX idx_candidates_name ON candidates(name);
"""


def migrate_to_v2(conn):  # type: ignore[no-untyped-def]
    """Migrate schema to version 2"""
    conn.executescript("""
        ALTER TABLE candidates ADD COLUMN linkedin_url TEXT;
        INSERT INTO schema_version (version, description) 
        VALUES (2, 'Added LinkedIn URL field');
    """)  # noqa: W291 - the seed's example, verbatim
    conn.commit()


class RecruiterV1(BaseStorage):
    migrations = (Migration(1, "candidates", CANDIDATES_V1),)
    synced_tables = (SyncedTable("candidates", json_columns=("skills",)),)

    def add(self, candidate_id: str, name: str) -> None:
        with self.transaction() as conn:
            conn.execute("INSERT INTO candidates (id, name) VALUES (?, ?)", (candidate_id, name))


class RecruiterV2(RecruiterV1):
    migrations = (*RecruiterV1.migrations, Migration(2, "linkedin url", migrate_to_v2))


def versions(conn: sqlite3.Connection) -> list[tuple[int, str]]:
    return conn.execute("SELECT version, description FROM schema_version ORDER BY 1").fetchall()


def columns(conn: sqlite3.Connection, table: str) -> list[str]:
    return [row[1] for row in conn.execute(f"PRAGMA table_info({table})")]


def test_custom_schema_tables_and_indexes(make_storage: MakeStorage) -> None:
    storage = make_storage("recruiter", cls=RecruiterV1)
    storage.add("c1", "Ada")
    assert versions(storage.conn) == [(1, "candidates")]
    applied_at = storage.conn.execute("SELECT applied_at FROM schema_version").fetchone()[0]
    assert applied_at.startswith("20")
    indexes = storage.conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'candidates' "
        "AND name NOT LIKE 'sqlite_autoindex%'"
    ).fetchall()
    assert indexes == [("idx_candidates_name",)]
    plan = storage.conn.execute(
        "EXPLAIN QUERY PLAN SELECT id FROM candidates WHERE name = 'Ada'"
    ).fetchall()
    assert "idx_candidates_name" in str(plan)
    assert storage.health_check()["schema_version"] == 1


def test_ordered_migrations_run_in_order_once(make_storage: MakeStorage, tmp_path: Path) -> None:
    calls: list[int] = []

    def add_column(conn: sqlite3.Connection) -> None:
        calls.append(3)
        conn.execute("ALTER TABLE notes ADD COLUMN tags TEXT")

    class Notes(BaseStorage):
        migrations = (
            Migration(1, "notes", "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)"),
            Migration(2, "index", "CREATE INDEX idx_body ON notes(body)"),
            Migration(3, "tags", add_column),
        )

    storage = make_storage("notes", cls=Notes)
    assert versions(storage.conn) == [(1, "notes"), (2, "index"), (3, "tags")]
    assert columns(storage.conn, "notes") == ["id", "body", "tags"]
    storage.close()
    make_storage("notes", cls=Notes)
    assert calls == [3]


def test_seed_migrate_to_v2_on_a_version_1_store(make_storage: MakeStorage) -> None:
    v1 = make_storage("recruiter", cls=RecruiterV1)
    v1.add("c1", "Ada")
    migrate_to_v2(v1.conn)  # the seed's style: a hand-run function on the connection
    assert versions(v1.conn) == [(1, "candidates"), (2, "Added LinkedIn URL field")]
    v1.close()

    v2 = make_storage("recruiter", cls=RecruiterV2)
    assert "linkedin_url" in columns(v2.conn, "candidates")
    assert versions(v2.conn)[-1] == (2, "Added LinkedIn URL field")
    v2.conn.execute("UPDATE candidates SET linkedin_url = 'https://l/ada'")
    v2.close()

    with pytest.raises(SchemaTooNew, match=r"schema version 2.*versions up to 1") as excinfo:
        RecruiterV1("recruiter", v1.data_dir, enable_htpc=False)
    assert isinstance(excinfo.value, SchemaError)
    assert "recruiter.db" in str(excinfo.value)


def test_seed_migrate_to_v2_as_a_declared_migration(make_storage: MakeStorage) -> None:
    make_storage("recruiter", cls=RecruiterV1).close()
    v2 = make_storage("recruiter", cls=RecruiterV2)
    assert versions(v2.conn) == [(1, "candidates"), (2, "Added LinkedIn URL field")]
    assert "linkedin_url" in columns(v2.conn, "candidates")
    assert not v2.conn.in_transaction


def test_newer_database_is_refused_and_left_alone(make_storage: MakeStorage) -> None:
    v2 = make_storage("recruiter", cls=RecruiterV2)
    v2.add("c1", "Ada")
    path = v2.db_path
    v2.close()
    with pytest.raises(SchemaTooNew):
        RecruiterV1("recruiter", path.parent, enable_htpc=False)
    conn = sqlite3.connect(path)
    try:
        assert [v for v, _ in versions(conn)] == [1, 2]
        assert conn.execute("SELECT id FROM candidates").fetchall() == [("c1",)]
    finally:
        conn.close()


def test_failing_migration_leaves_the_previous_version(
    make_storage: MakeStorage, tmp_path: Path
) -> None:
    make_storage("recruiter", cls=RecruiterV1).close()

    class Broken(RecruiterV1):
        migrations = (
            *RecruiterV1.migrations,
            Migration(
                2,
                "half good",
                "CREATE TABLE interviews (id TEXT PRIMARY KEY);\n"
                "ALTER TABLE candidates ADD COLUMN email TEXT;\n"
                "INSERT INTO no_such_table VALUES (1);",
            ),
        )

    with pytest.raises(SchemaError, match=r"migration 2 \(half good\) failed.*no_such_table"):
        Broken("recruiter", tmp_path / "agents" / "recruiter", enable_htpc=False)
    storage = make_storage("recruiter", cls=RecruiterV1)
    assert [v for v, _ in versions(storage.conn)] == [1]
    assert "email" not in columns(storage.conn, "candidates")
    tables = storage.conn.execute("SELECT name FROM sqlite_master WHERE name = 'interviews'")
    assert tables.fetchall() == []


def test_failing_python_migration_rolls_back(make_storage: MakeStorage, tmp_path: Path) -> None:
    def explode(conn: sqlite3.Connection) -> None:
        conn.execute("CREATE TABLE half (id INTEGER PRIMARY KEY)")
        raise RuntimeError("bug in migration")

    class Broken(BaseStorage):
        migrations = (
            Migration(1, "one", "CREATE TABLE one (id INTEGER PRIMARY KEY)"),
            Migration(2, "two", explode),
        )

    with pytest.raises(RuntimeError, match="bug in migration"):
        Broken("broken", tmp_path, enable_htpc=False)
    conn = sqlite3.connect(tmp_path / "broken.db")
    try:
        assert [v for v, _ in versions(conn)] == [1]
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchall() == []
    finally:
        conn.close()


@pytest.mark.parametrize(
    "numbers",
    [(2,), (1, 3), (2, 1), (1, 1), (0, 1)],
)
def test_misnumbered_migrations_are_refused(tmp_path: Path, numbers: tuple[int, ...]) -> None:
    class Misnumbered(BaseStorage):
        migrations = tuple(
            Migration(n, f"m{i}", f"CREATE TABLE t{i} (id INTEGER PRIMARY KEY)")
            for i, n in enumerate(numbers)
        )

    with pytest.raises(SchemaError, match="numbered 1, 2, 3"):
        Misnumbered("misnumbered", tmp_path, enable_htpc=False)


def test_migration_rebuilding_a_synced_table_keeps_capture(
    make_storage: MakeStorage, dead_relay_url: str
) -> None:
    sync = {
        "enable_htpc": True,
        "htpc_url": dead_relay_url,
        "sync_interval": 0.2,
        "close_timeout": 0,
    }
    make_storage("recruiter", cls=RecruiterV1, **sync).close()

    class Rebuilt(RecruiterV1):
        migrations = (
            *RecruiterV1.migrations,
            Migration(
                2,
                "rebuild candidates",
                """
                CREATE TABLE candidates_new (id TEXT PRIMARY KEY, name TEXT NOT NULL,
                                             skills TEXT NOT NULL DEFAULT '[]', email TEXT);
                INSERT INTO candidates_new (id, name, skills)
                    SELECT id, name, skills FROM candidates;
                DROP TABLE candidates;
                ALTER TABLE candidates_new RENAME TO candidates;
                """,
            ),
        )

    storage = make_storage("recruiter", cls=Rebuilt, **sync)
    storage.add("c9", "Grace")
    rows = storage.conn.execute("SELECT tbl, pk FROM _sync_queue").fetchall()
    assert rows == [("candidates", '["c9"]')]


MIGRATING_MODULE = """
import time
from commander_os.storage.base_storage import BaseStorage, Migration


def slow_step(conn):
    conn.execute("INSERT INTO applied (version) VALUES (2)")
    time.sleep(0.05)  # widen the window in which another process could also apply it


class Racing(BaseStorage):
    migrations = (
        Migration(1, "log", "CREATE TABLE applied (version INTEGER);"
                            "INSERT INTO applied (version) VALUES (1);"),
        Migration(2, "slow", slow_step),
        Migration(3, "three", "INSERT INTO applied (version) VALUES (3)"),
    )
"""


def test_concurrent_openers_apply_each_migration_once(tmp_path: Path) -> None:
    (tmp_path / "racing_storage.py").write_text(MIGRATING_MODULE)
    go = tmp_path / "go"
    opener = textwrap.dedent(f"""
        import os, time
        from pathlib import Path
        from racing_storage import Racing
        while not os.path.exists({str(go)!r}):
            time.sleep(0.001)
        store = Racing("racer", Path({str(tmp_path / "store")!r}), enable_htpc=False)
        store.close()
        print("ok")
    """)
    env = {"PYTHONPATH": f"{tmp_path}:{REPO_ROOT}", "PATH": "/usr/bin:/bin"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", opener],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    time.sleep(0.3)  # let the interpreters start; correctness does not depend on it
    go.touch()
    outputs = [proc.communicate(timeout=60) for proc in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err
        assert out.strip() == "ok"
    conn = sqlite3.connect(tmp_path / "store" / "racer.db")
    try:
        applied = conn.execute("SELECT version FROM applied ORDER BY rowid").fetchall()
        assert applied == [(1,), (2,), (3,)]
        assert [v for v, _ in versions(conn)] == [1, 2, 3]
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("CREATE TABLE a (x); CREATE TABLE b (y)", ["CREATE TABLE a (x);", "CREATE TABLE b (y)"]),
        ("INSERT INTO a VALUES ('x;y');", ["INSERT INTO a VALUES ('x;y');"]),
        (
            "CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; SELECT 2; END;\nSELECT 3;",
            ["CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1; SELECT 2; END;", "SELECT 3;"],
        ),
        ("SELECT 1;\n-- trailing comment", ["SELECT 1;", "-- trailing comment"]),
        ("  ;\n;  ", []),
    ],
)
def test_split_sql(script: str, expected: list[str]) -> None:
    from commander_os._sqlite import split_statements as split_sql

    assert split_sql(script) == expected


def test_split_sql_refuses_an_incomplete_script() -> None:
    from commander_os._sqlite import split_statements as split_sql

    with pytest.raises(SchemaError, match="incomplete"):
        split_sql("CREATE TABLE a (x); CREATE TRIGGER t AFTER INSERT ON a BEGIN SELECT 1;")


def test_one_line_script_migration(tmp_path: Path) -> None:
    class OneLine(BaseStorage):
        migrations = (
            Migration(
                1, "two tables", "CREATE TABLE a (id INTEGER PRIMARY KEY); CREATE TABLE b (id)"
            ),
        )

    with OneLine("one-line", tmp_path, enable_htpc=False) as storage:
        names = storage.conn.execute(
            "SELECT name FROM sqlite_master WHERE name IN ('a', 'b') ORDER BY name"
        ).fetchall()
        assert names == [("a",), ("b",)]
