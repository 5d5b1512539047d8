"""Schema versions: the seed's ``schema_version`` table, ordered migrations and their runner.

A storage class declares its migrations in order::

    class NotesStorage(BaseStorage):
        migrations = (
            Migration(1, "notes table", "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT)"),
            Migration(2, "notes.tags", add_tags),   # a function taking the connection
        )

Each pending migration runs in one ``BEGIN IMMEDIATE`` transaction together with its
``schema_version`` row, so two processes opening the same store never apply one twice. A
database whose version is newer than the newest migration the code knows is refused with
:class:`~commander_os.errors.SchemaTooNew` instead of being written by code that does not
understand it.

Hand-written migrations in the seed's style (``conn.executescript(...)`` that inserts its own
``schema_version`` row, then ``conn.commit()``) work too; the runner notices the row.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from commander_os import _sqlite as db
from commander_os.errors import SchemaError, SchemaTooNew

__all__ = [
    "CREATE_SCHEMA_VERSION",
    "Migration",
    "check_migrations",
    "current_version",
    "run_migrations",
]

CREATE_SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (
    version     INTEGER PRIMARY KEY,
    description TEXT,
    applied_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
)
"""
HAS_VERSION_TABLE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'"
SELECT_CURRENT_VERSION = "SELECT COALESCE(MAX(version), 0) FROM schema_version"
SELECT_HAS_VERSION = "SELECT 1 FROM schema_version WHERE version = ?"
INSERT_VERSION = "INSERT INTO schema_version (version, description) VALUES (?, ?)"


@dataclass(frozen=True)
class Migration:
    """One schema change: a SQL script, or a function that receives the connection.

    A function runs inside the migration's transaction; it should not commit (a function that
    does still works, but is then no longer atomic with its ``schema_version`` row).
    """

    version: int
    description: str
    apply: str | Callable[[sqlite3.Connection], object]


def check_migrations(migrations: Sequence[Migration]) -> None:
    """Raise :class:`SchemaError` unless versions are 1, 2, 3, ... in order."""
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise SchemaError(
                f"migrations must be numbered 1, 2, 3, ... in order; found version "
                f"{migration.version} where {expected} was expected ({migration.description!r})"
            )


def current_version(conn: sqlite3.Connection) -> int:
    """The highest version recorded in ``schema_version`` (0 for a new database)."""
    if conn.execute(HAS_VERSION_TABLE).fetchone() is None:
        return 0
    return int(conn.execute(SELECT_CURRENT_VERSION).fetchone()[0])


def run_migrations(
    conn: sqlite3.Connection, migrations: Sequence[Migration], *, where: str = "database"
) -> int:
    """Apply the pending ``migrations`` one transaction each; return the resulting version.

    Raises :class:`SchemaTooNew` if the database is newer than ``migrations`` knows, and
    :class:`SchemaError` (with the failing migration named) if one fails; a failed migration
    leaves the database at the previous version.
    """
    check_migrations(migrations)
    newest = len(migrations)
    while True:
        with db.write_transaction(conn, "a migration", translate=False):
            conn.execute(CREATE_SCHEMA_VERSION)
            version = int(conn.execute(SELECT_CURRENT_VERSION).fetchone()[0])
            if version > newest:
                raise SchemaTooNew(
                    f"{where} has schema version {version}, but this code knows versions up to "
                    f"{newest}: upgrade the code (or open a backup made by this version)"
                )
            if version == newest:
                return version
            migration = migrations[version]
            _apply(conn, migration)
            committed_itself = not conn.in_transaction
            if not committed_itself:
                _record(conn, migration)
        if committed_itself:
            # The migration committed by itself (the seed's executescript style): its version
            # row is still recorded exactly once, in a transaction of its own.
            with db.write_transaction(conn, "a migration's version row"):
                _record(conn, migration)


def _apply(conn: sqlite3.Connection, migration: Migration) -> None:
    try:
        if isinstance(migration.apply, str):
            for statement in db.split_statements(migration.apply):
                conn.execute(statement)
        else:
            migration.apply(conn)
    except db.Error as exc:
        raise SchemaError(
            f"migration {migration.version} ({migration.description}) failed: {exc}"
        ) from exc


def _record(conn: sqlite3.Connection, migration: Migration) -> None:
    if conn.execute(SELECT_HAS_VERSION, (migration.version,)).fetchone() is None:
        conn.execute(INSERT_VERSION, (migration.version, migration.description))
