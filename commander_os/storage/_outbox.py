"""The sync queue (outbox): capture triggers, reading pending changes, acks, dead letters.

Every synced table gets ``AFTER INSERT / UPDATE / DELETE`` triggers that append a row to
``_sync_queue`` in the same transaction as the change, so nothing written through any path
(our methods, a subclass's SQL, raw SQL on ``storage.conn``) can be forgotten. The queue holds
only *which* row changed; the row's data is read when it ships, so many updates of one key
between two syncs travel as one record (the newest).

This module is SQL only; :mod:`commander_os.storage._delivery.worker` does the shipping.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from commander_os.identifiers import validate_table_name

__all__ = [
    "INTERNAL_SCHEMA",
    "OutboxRow",
    "PendingChange",
    "SyncedTable",
    "ack",
    "dead_letter",
    "dead_letter_count",
    "drop_triggers",
    "install_triggers",
    "load_changes",
    "oldest_pending_time",
    "pending",
    "queue_size",
    "record_failure",
    "register_table",
    "registered_tables",
    "split_internal_schema",
]

INTERNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS _sync_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _sync_queue (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    tbl         TEXT NOT NULL,
    pk          TEXT NOT NULL,
    op          TEXT NOT NULL,
    enqueued_at REAL NOT NULL DEFAULT ((julianday('now') - 2440587.5) * 86400.0),
    attempts    INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT
);
CREATE TABLE IF NOT EXISTS _synced_tables (
    tbl          TEXT PRIMARY KEY,
    pk_columns   TEXT NOT NULL,
    json_columns TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _dead_letters (
    seq       INTEGER PRIMARY KEY,
    tbl       TEXT NOT NULL,
    pk        TEXT NOT NULL,
    op        TEXT NOT NULL,
    record    TEXT,
    error     TEXT NOT NULL,
    attempts  INTEGER NOT NULL,
    failed_at REAL NOT NULL
);
"""


def split_internal_schema() -> list[str]:
    """The statements that create the internal tables (idempotent)."""
    return [part.strip() for part in INTERNAL_SCHEMA.split(";") if part.strip()]


SELECT_PENDING = (
    "SELECT seq, tbl, pk, op, attempts, enqueued_at FROM _sync_queue WHERE seq > ? "
    "ORDER BY seq LIMIT ?"
)
COUNT_QUEUE = "SELECT COUNT(*) FROM _sync_queue"
COUNT_DEAD = "SELECT COUNT(*) FROM _dead_letters"
OLDEST_PENDING = "SELECT MIN(enqueued_at) FROM _sync_queue"
DELETE_UP_TO = "DELETE FROM _sync_queue WHERE seq <= ?"
DELETE_ONE = "DELETE FROM _sync_queue WHERE seq = ?"
BUMP_ATTEMPTS = "UPDATE _sync_queue SET attempts = attempts + 1, last_error = ? WHERE seq = ?"
INSERT_DEAD = """
INSERT OR REPLACE INTO _dead_letters (seq, tbl, pk, op, record, error, attempts, failed_at)
SELECT seq, tbl, pk, op, ?, ?, attempts, ? FROM _sync_queue WHERE seq = ?
"""
UPSERT_REGISTRATION = """
INSERT INTO _synced_tables (tbl, pk_columns, json_columns) VALUES (?, ?, ?)
ON CONFLICT (tbl) DO UPDATE SET pk_columns = excluded.pk_columns,
                                json_columns = excluded.json_columns
"""
SELECT_REGISTRATIONS = "SELECT tbl, pk_columns, json_columns FROM _synced_tables"


@dataclass(frozen=True)
class SyncedTable:
    """A table whose every change is captured for the relay.

    ``primary_key`` names the columns that identify a row (default: the table's declared primary
    key). ``json_columns`` hold JSON text and are shipped as embedded JSON, not as strings.
    """

    name: str
    primary_key: tuple[str, ...] = ()
    json_columns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validate_table_name(self.name)
        for column in (*self.primary_key, *self.json_columns):
            validate_table_name(column)


class OutboxRow(NamedTuple):
    """One queued change: which row of which table, and what happened to it."""

    seq: int
    table: str
    pk: str  # JSON array of the primary-key values
    op: str
    attempts: int
    enqueued_at: float


class PendingChange(NamedTuple):
    """The newest state of one changed row, ready to ship (``data`` is None for a delete)."""

    seqs: tuple[int, ...]  # every outbox row this change covers
    table: str
    key: str
    data: dict[str, Any] | None
    attempts: int
    written_at: float  # Unix time of the newest write this change covers

    @property
    def seq(self) -> int:
        """The newest outbox sequence number this change covers (its version's low bits)."""
        return self.seqs[-1]


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _trigger_sql(table: SyncedTable) -> list[str]:
    name = table.name
    literal = "'" + name.replace("'", "''") + "'"
    new_pk = "json_array(" + ", ".join("NEW." + _quote(c) for c in table.primary_key) + ")"
    old_pk = "json_array(" + ", ".join("OLD." + _quote(c) for c in table.primary_key) + ")"
    queue = "INSERT INTO _sync_queue (tbl, pk, op) VALUES"
    return [
        f"CREATE TRIGGER IF NOT EXISTS {_quote('_sync_ins_' + name)} AFTER INSERT ON "
        f"{_quote(name)} BEGIN {queue} ({literal}, {new_pk}, 'upsert'); END",
        # A primary-key change is a delete of the old key plus an upsert of the new one.
        f"CREATE TRIGGER IF NOT EXISTS {_quote('_sync_upd_' + name)} AFTER UPDATE ON "
        f"{_quote(name)} BEGIN "
        f"INSERT INTO _sync_queue (tbl, pk, op) SELECT {literal}, {old_pk}, 'delete' "
        f"WHERE {old_pk} IS NOT {new_pk}; "
        f"{queue} ({literal}, {new_pk}, 'upsert'); END",
        f"CREATE TRIGGER IF NOT EXISTS {_quote('_sync_del_' + name)} AFTER DELETE ON "
        f"{_quote(name)} BEGIN {queue} ({literal}, {old_pk}, 'delete'); END",
    ]


def declared_primary_key(conn: sqlite3.Connection, table: str) -> tuple[str, ...]:
    """The primary-key columns of ``table`` in key order (empty if it has none)."""
    rows = conn.execute(f"PRAGMA table_info({_quote(table)})").fetchall()
    return tuple(row[1] for row in sorted((r for r in rows if r[5]), key=lambda r: r[5]))


def register_table(conn: sqlite3.Connection, table: SyncedTable) -> SyncedTable:
    """Record ``table`` as synced (resolving its primary key); call inside a transaction."""
    primary_key = table.primary_key or declared_primary_key(conn, table.name)
    if not primary_key:
        columns = conn.execute(f"PRAGMA table_info({_quote(table.name)})").fetchall()
        if not columns:
            raise ValueError(f"cannot sync table {table.name!r}: no such table")
        raise ValueError(
            f"cannot sync table {table.name!r}: it has no PRIMARY KEY; pass primary_key=(...)"
        )
    resolved = SyncedTable(table.name, primary_key, table.json_columns)
    conn.execute(
        UPSERT_REGISTRATION,
        (
            resolved.name,
            orjson.dumps(primary_key).decode(),
            orjson.dumps(table.json_columns).decode(),
        ),
    )
    return resolved


def registered_tables(conn: sqlite3.Connection) -> dict[str, SyncedTable]:
    """Every table registered for sync in this database."""
    return {
        name: SyncedTable(name, tuple(orjson.loads(pk)), tuple(orjson.loads(js)))
        for name, pk, js in conn.execute(SELECT_REGISTRATIONS)
    }


def install_triggers(conn: sqlite3.Connection, table: SyncedTable) -> None:
    """(Re)create the capture triggers of ``table``; call inside a transaction."""
    drop_triggers(conn, table.name)
    for statement in _trigger_sql(table):
        conn.execute(statement)


def drop_triggers(conn: sqlite3.Connection, table: str) -> None:
    """Remove the capture triggers of ``table`` (nothing is queued for it afterwards)."""
    for kind in ("ins", "upd", "del"):
        conn.execute(f"DROP TRIGGER IF EXISTS {_quote(f'_sync_{kind}_{table}')}")


def queue_size(conn: sqlite3.Connection) -> int:
    """Number of changes waiting for the relay."""
    return int(conn.execute(COUNT_QUEUE).fetchone()[0])


def dead_letter_count(conn: sqlite3.Connection) -> int:
    """Number of changes the relay permanently refused."""
    return int(conn.execute(COUNT_DEAD).fetchone()[0])


def oldest_pending_time(conn: sqlite3.Connection) -> float | None:
    """Unix time at which the oldest waiting change was written, or None if none waits."""
    value = conn.execute(OLDEST_PENDING).fetchone()[0]
    return None if value is None else float(value)


def pending(conn: sqlite3.Connection, limit: int, *, after_seq: int = 0) -> list[OutboxRow]:
    """The oldest ``limit`` queued changes after ``after_seq``, in the order they were written."""
    return list(map(OutboxRow._make, conn.execute(SELECT_PENDING, (after_seq, limit))))


def wire_key(pk_values: Sequence[Any]) -> str:
    """The relay key of a row: the bare value for a one-column key, else a JSON array."""
    if len(pk_values) == 1:
        value = pk_values[0]
        return value if isinstance(value, str) else orjson.dumps(value).decode()
    return orjson.dumps(list(pk_values)).decode()


def load_changes(
    conn: sqlite3.Connection,
    rows: Iterable[OutboxRow],
    tables: dict[str, SyncedTable],
    *,
    embed_json: bool = False,
) -> list[PendingChange]:
    """Coalesce ``rows`` per changed row and read each row's current data.

    Call inside one read transaction together with :func:`pending` so that the data matches
    the queue. A row that no longer exists ships as a delete, whatever its queued ``op``.
    With ``embed_json`` the JSON columns stay encoded (``orjson.Fragment``), ready to be
    embedded in a request without being parsed and serialised again.
    """
    grouped: dict[tuple[str, str], list[OutboxRow]] = {}
    for row in rows:
        grouped.setdefault((row.table, row.pk), []).append(row)
    keys_by_table: dict[str, list[str]] = {}
    for table_name, pk in grouped:
        keys_by_table.setdefault(table_name, []).append(pk)
    current: dict[tuple[str, str], dict[str, Any]] = {}
    for table_name, pks in keys_by_table.items():
        table = tables.get(table_name)
        if table is not None:
            for pk, data in _read_rows(conn, table, pks, embed_json):
                current[table_name, pk] = data
    changes = [
        PendingChange(
            tuple(row.seq for row in group),
            table_name,
            wire_key(orjson.loads(pk)),
            current.get((table_name, pk)),
            max(row.attempts for row in group),
            group[-1].enqueued_at,
        )
        for (table_name, pk), group in grouped.items()
    ]
    changes.sort(key=lambda change: change.seqs[-1])
    return changes


#: Rows read per statement; the keys travel as one JSON parameter, so any number would bind.
_READ_CHUNK = 1000


@functools.lru_cache(maxsize=256)
def _select_rows_sql(table: SyncedTable) -> str:
    """Read rows of ``table`` by a JSON array of primary keys, tagged with their outbox ``pk``.

    ``json_array(pk columns)`` is exactly what the capture triggers queued, so the first column
    matches the outbox's text. The keys arrive as one JSON parameter, split by ``json_each``.
    """
    columns = [_quote(column) for column in table.primary_key]
    tag = "json_array(" + ", ".join(columns) + ")"
    if len(columns) == 1:
        wanted = f"{columns[0]} IN (SELECT value FROM json_each(?))"
    else:
        parts = ", ".join(f"json_extract(value, '$[{i}]')" for i in range(len(columns)))
        wanted = f"({', '.join(columns)}) IN (SELECT {parts} FROM json_each(?))"
    return f"SELECT {tag}, * FROM {_quote(table.name)} WHERE {wanted}"


def _read_rows(
    conn: sqlite3.Connection, table: SyncedTable, pks: list[str], embed_json: bool
) -> Iterator[tuple[str, dict[str, Any]]]:
    sql = _select_rows_sql(table)
    decode = orjson.Fragment if embed_json else orjson.loads
    for start in range(0, len(pks), _READ_CHUNK):
        chunk = pks[start : start + _READ_CHUNK]
        if len(table.primary_key) == 1:
            # '[["a"],["b"]]' -> '["a","b"]': each queued pk is a one-element JSON array.
            keys = "[" + ",".join(pk[1:-1] for pk in chunk) + "]"
        else:
            keys = "[" + ",".join(chunk) + "]"
        cursor = conn.execute(sql, (keys,))
        names = [description[0] for description in cursor.description][1:]
        for tag, *values in cursor:
            data = dict(zip(names, values, strict=True))
            for column in table.json_columns:
                value = data.get(column)
                if isinstance(value, (str, bytes)):
                    data[column] = decode(value)
            for name, value in data.items():
                if isinstance(value, bytes):
                    # JSON has no bytes; BLOB columns travel as hex text.
                    data[name] = value.hex()
            yield tag, data


def ack(conn: sqlite3.Connection, up_to_seq: int) -> int:
    """Delete every queued change up to and including ``up_to_seq``; return how many."""
    return conn.execute(DELETE_UP_TO, (up_to_seq,)).rowcount


def ack_seqs(conn: sqlite3.Connection, seqs: Iterable[int]) -> None:
    """Delete exactly these queued changes."""
    conn.executemany(DELETE_ONE, ((seq,) for seq in seqs))


def record_failure(conn: sqlite3.Connection, seqs: Iterable[int], error: str) -> None:
    """Count one more failed attempt for these queued changes, keeping the error text."""
    conn.executemany(BUMP_ATTEMPTS, ((error[:2000], seq) for seq in seqs))


def dead_letter(
    conn: sqlite3.Connection, seqs: Iterable[int], record: dict[str, Any] | None, error: str
) -> None:
    """Move these queued changes to ``_dead_letters`` with the relay's reason."""
    body = None if record is None else orjson.dumps(record, default=str).decode()
    now = time.time()
    for seq in seqs:
        conn.execute(INSERT_DEAD, (body, error[:2000], now, seq))
        conn.execute(DELETE_ONE, (seq,))
