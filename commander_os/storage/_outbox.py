"""The sync queue (outbox): capture triggers, reading pending changes, acks, dead letters.

Every synced table gets ``AFTER INSERT / UPDATE / DELETE`` triggers that append a row to
``_sync_queue`` in the same transaction as the change, so nothing written through any path
(our methods, a subclass's SQL, raw SQL on ``storage.conn``) can be forgotten. The queue holds
only *which* row changed; the row's data is read when it ships, so many updates of one key
between two syncs travel as one record (the newest).

**Sequence numbers.** A row's ``seq`` (its rowid) orders the store's writes and becomes the low
32 bits of the shipped version. It is a plain ``INTEGER PRIMARY KEY``, not ``AUTOINCREMENT``
(whose bookkeeping row cost a quarter of a captured write): SQLite hands out ``max(seq) + 1``,
so the newest row is never deleted. Once acknowledged it stays as a *marker* (``op = 'mark'``)
until a newer row exists, and seqs never go back.

**Targets.** Each relay the store ships to has a cursor in ``_sync_targets``: the seq it
acknowledged. A row is pending while some target's cursor is below it, and deleted once every
target acknowledged it (:func:`ack`). While a target is away the queue is compacted per key
(:func:`set_compaction`): only each row's newest change is kept, so the queue is bounded by the
number of distinct keys changed, not by the number of writes.

This module is SQL only; :mod:`commander_os.storage._delivery` does the shipping.
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
from commander_os.storage._values import unpack

__all__ = [
    "INTERNAL_SCHEMA",
    "OutboxRow",
    "PendingChange",
    "SyncedTable",
    "ack",
    "compacting",
    "dead_letter",
    "dead_letter_count",
    "drop_triggers",
    "floor",
    "has_row",
    "install_triggers",
    "is_registered",
    "key_values",
    "last_pending_seq",
    "last_seq",
    "load_changes",
    "oldest_pending_time",
    "pending",
    "queue_size",
    "quote",
    "record_failure",
    "register_table",
    "registered_tables",
    "reserve_seq",
    "set_compaction",
    "split_internal_schema",
    "table_chunk",
    "upgrade",
]

#: The outbox layout this code writes; older ones are rebuilt by :func:`upgrade`.
OUTBOX_VERSION = 2

INTERNAL_SCHEMA = """
CREATE TABLE IF NOT EXISTS _sync_meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS _sync_queue (
    seq         INTEGER PRIMARY KEY,
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
CREATE TABLE IF NOT EXISTS _sync_targets (
    name         TEXT PRIMARY KEY,
    urls         TEXT NOT NULL,
    acked        INTEGER NOT NULL DEFAULT 0,
    acked_incarnation INTEGER NOT NULL DEFAULT 0,
    repair       INTEGER NOT NULL DEFAULT 0,
    last_success REAL,
    last_attempt REAL,
    last_error   TEXT,
    reachable    INTEGER
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
    "SELECT seq, tbl, pk, op, attempts, enqueued_at FROM _sync_queue "
    "WHERE seq > ? AND op != 'mark' ORDER BY seq LIMIT ?"
)
SELECT_FLOOR = "SELECT min(acked) FROM _sync_targets"
SELECT_LAST_SEQ = "SELECT ifnull(max(seq), 0) FROM _sync_queue"
SELECT_LAST_PENDING = "SELECT ifnull(max(seq), 0) FROM _sync_queue WHERE op != 'mark'"
COUNT_PENDING = "SELECT COUNT(*) FROM _sync_queue WHERE seq > ? AND op != 'mark'"
COUNT_DEAD = "SELECT COUNT(*) FROM _dead_letters"
OLDEST_PENDING = "SELECT MIN(enqueued_at) FROM _sync_queue WHERE seq > ? AND op != 'mark'"
# The newest row stays (as a marker) so that SQLite never hands out its seq again.
DELETE_ACKED = "DELETE FROM _sync_queue WHERE seq <= ? AND seq < (SELECT max(seq) FROM _sync_queue)"
MARK_ACKED = "UPDATE _sync_queue SET op = 'mark', last_error = NULL WHERE seq <= ? AND op != 'mark'"
DELETE_ONE = "DELETE FROM _sync_queue WHERE seq = ?"
MARK_ONE = "UPDATE _sync_queue SET op = 'mark' WHERE seq = ?"
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
SELECT_REGISTRATION = "SELECT pk_columns, json_columns FROM _synced_tables WHERE tbl = ?"
SELECT_TRIGGERS = (
    "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = ?1 "
    "AND name IN ('_sync_ins_' || ?1, '_sync_upd_' || ?1, '_sync_del_' || ?1)"
)
# Compaction while a target is away: an index on the key, and a trigger that drops the older
# changes of a key as a newer one is queued (any target needing the old one needs the new one).
CREATE_KEY_INDEX = "CREATE INDEX IF NOT EXISTS _sync_queue_key ON _sync_queue (tbl, pk)"
DROP_KEY_INDEX = "DROP INDEX IF EXISTS _sync_queue_key"
CREATE_COMPACTOR = """
CREATE TRIGGER IF NOT EXISTS _sync_compact AFTER INSERT ON _sync_queue BEGIN
    DELETE FROM _sync_queue
    WHERE tbl = NEW.tbl AND pk = NEW.pk AND seq < NEW.seq AND op != 'mark';
END
"""
DROP_COMPACTOR = "DROP TRIGGER IF EXISTS _sync_compact"
HAS_COMPACTOR = "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = '_sync_compact'"
COMPACT_NOW = """
DELETE FROM _sync_queue WHERE op != 'mark' AND seq NOT IN (
    SELECT max(seq) FROM _sync_queue WHERE op != 'mark' GROUP BY tbl, pk
)
"""
SELECT_META = "SELECT value FROM _sync_meta WHERE key = ?"
UPSERT_META = (
    "INSERT INTO _sync_meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)


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


def quote(identifier: str) -> str:
    """``identifier`` as a quoted SQL identifier."""
    return '"' + identifier.replace('"', '""') + '"'


_quote = quote


def _trigger_sql(table: SyncedTable) -> list[str]:
    name = table.name
    literal = "'" + name.replace("'", "''") + "'"
    new_pk = "json_array(" + ", ".join("NEW." + _quote(c) for c in table.primary_key) + ")"
    old_pk = "json_array(" + ", ".join("OLD." + _quote(c) for c in table.primary_key) + ")"
    moved = " OR ".join(f"OLD.{_quote(c)} IS NOT NEW.{_quote(c)}" for c in table.primary_key)
    queue = "INSERT INTO _sync_queue (tbl, pk, op) VALUES"
    return [
        f"CREATE TRIGGER IF NOT EXISTS {_quote('_sync_ins_' + name)} AFTER INSERT ON "
        f"{_quote(name)} BEGIN {queue} ({literal}, {new_pk}, 'upsert'); END",
        # A primary-key change is a delete of the old key plus an upsert of the new one.
        f"CREATE TRIGGER IF NOT EXISTS {_quote('_sync_upd_' + name)} AFTER UPDATE ON "
        f"{_quote(name)} BEGIN "
        f"INSERT INTO _sync_queue (tbl, pk, op) SELECT {literal}, {old_pk}, 'delete' "
        f"WHERE {moved}; "
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


def is_registered(conn: sqlite3.Connection, table: SyncedTable, *, triggers: bool) -> bool:
    """Whether ``table`` is registered exactly so (its primary key resolved), and with
    ``triggers`` its capture triggers are in place: reopening a store then writes nothing (no
    commit, no fsync)."""
    row = conn.execute(SELECT_REGISTRATION, (table.name,)).fetchone()
    if row is None or not table.primary_key:
        return False
    registered = (tuple(orjson.loads(row[0])), tuple(orjson.loads(row[1])))
    if registered != (table.primary_key, table.json_columns):
        return False
    if not triggers:
        return True
    installed = [sql for (sql,) in conn.execute(SELECT_TRIGGERS, (table.name,))]
    expected = [statement.replace(" IF NOT EXISTS", "", 1) for statement in _trigger_sql(table)]
    return sorted(installed) == sorted(expected)


def registered_tables(conn: sqlite3.Connection) -> dict[str, SyncedTable]:
    """Every table registered for sync in this database (a new dict each call)."""
    return dict(_parsed_registrations(tuple(conn.execute(SELECT_REGISTRATIONS))))


@functools.lru_cache(maxsize=256)
def _parsed_registrations(
    rows: tuple[tuple[str, str, str], ...],
) -> tuple[tuple[str, SyncedTable], ...]:
    # The shipper reads the registrations on every draft; parsing (and validating) them again
    # each time cost more than the read. Keyed by the rows themselves, so never stale.
    return tuple(
        (name, SyncedTable(name, tuple(orjson.loads(pk)), tuple(orjson.loads(js))))
        for name, pk, js in rows
    )


def install_triggers(conn: sqlite3.Connection, table: SyncedTable) -> None:
    """(Re)create the capture triggers of ``table``; call inside a transaction."""
    drop_triggers(conn, table.name)
    for statement in _trigger_sql(table):
        conn.execute(statement)


def drop_triggers(conn: sqlite3.Connection, table: str) -> None:
    """Remove the capture triggers of ``table`` (nothing is queued for it afterwards)."""
    for kind in ("ins", "upd", "del"):
        conn.execute(f"DROP TRIGGER IF EXISTS {_quote(f'_sync_{kind}_{table}')}")


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
        yield from _decoded(conn.execute(sql, (keys,)), table, decode)


def _decoded(
    cursor: sqlite3.Cursor, table: SyncedTable, decode: Any
) -> Iterator[tuple[Any, dict[str, Any]]]:
    """``(tag, data)`` for rows selected as ``tag, *``: JSON columns decoded (or embedded as
    fragments), BLOBs as hex text (JSON has no bytes)."""
    names = [description[0] for description in cursor.description][1:]
    for tag, *values in cursor:
        data = dict(zip(names, values, strict=True))
        for column in table.json_columns:
            value = data.get(column)
            if isinstance(value, bytes):
                data[column] = decode(unpack(value))  # a large value, compressed at rest
            elif isinstance(value, str):
                data[column] = decode(value)
        for name, value in data.items():
            if isinstance(value, bytes):
                data[name] = value.hex()
        yield tag, data


def table_chunk(
    conn: sqlite3.Connection, table: SyncedTable, after: list[Any] | None, limit: int
) -> list[tuple[list[Any], str, dict[str, Any]]]:
    """Up to ``limit`` rows of ``table`` after primary key ``after``, in key order, as
    ``(pk values, wire key, data)`` with JSON columns embedded (a whole-state re-ship)."""
    columns = [_quote(column) for column in table.primary_key]
    key = ", ".join(columns)
    where = f"WHERE ({key}) > ({', '.join('?' * len(columns))}) " if after is not None else ""
    sql = f"SELECT json_array({key}), * FROM {_quote(table.name)} {where}ORDER BY {key} LIMIT ?"
    cursor = conn.execute(sql, [*(after or []), limit])
    chunk = []
    for tag, data in _decoded(cursor, table, orjson.Fragment):
        values = orjson.loads(tag)
        chunk.append((values, wire_key(values), data))
    return chunk


def key_values(table: SyncedTable, key: str) -> list[Any] | None:
    """The primary-key values of the row whose wire key is ``key`` (None if it cannot be one).

    A one-column key is the bare text (SQLite's column affinity turns ``"5"`` back into 5).
    """
    if len(table.primary_key) == 1:
        return [key]
    try:
        parsed = orjson.loads(key)
    except orjson.JSONDecodeError:
        return None
    values = list(parsed) if isinstance(parsed, list) else [parsed]
    return values if len(values) == len(table.primary_key) else None


def has_row(conn: sqlite3.Connection, table: SyncedTable, key: str) -> bool:
    """Whether ``table`` holds the row whose wire key is ``key``."""
    columns = [_quote(column) for column in table.primary_key]
    values = key_values(table, key)
    if values is None:
        return False
    where = " AND ".join(f"{column} = ?" for column in columns)
    sql = f"SELECT 1 FROM {_quote(table.name)} WHERE {where} LIMIT 1"
    return conn.execute(sql, values).fetchone() is not None


def floor(conn: sqlite3.Connection) -> int:
    """The seq every target has acknowledged (0 when no target was ever registered)."""
    value = conn.execute(SELECT_FLOOR).fetchone()[0]
    return 0 if value is None else int(value)


def last_seq(conn: sqlite3.Connection) -> int:
    """The newest seq handed out (0 for a new store)."""
    return int(conn.execute(SELECT_LAST_SEQ).fetchone()[0])


def last_pending_seq(conn: sqlite3.Connection) -> int:
    """The newest seq of a change still queued for some target (0 when none is)."""
    return int(conn.execute(SELECT_LAST_PENDING).fetchone()[0])


def queue_size(conn: sqlite3.Connection, after_seq: int | None = None) -> int:
    """Number of changes some target (or the target whose cursor is ``after_seq``) has not
    acknowledged yet."""
    start = floor(conn) if after_seq is None else after_seq
    return int(conn.execute(COUNT_PENDING, (start,)).fetchone()[0])


def dead_letter_count(conn: sqlite3.Connection) -> int:
    """Number of changes the relay permanently refused."""
    return int(conn.execute(COUNT_DEAD).fetchone()[0])


def oldest_pending_time(conn: sqlite3.Connection, after_seq: int | None = None) -> float | None:
    """Unix time at which the oldest change waiting for some target (or for the target whose
    cursor is ``after_seq``) was written, or None if none waits."""
    start = floor(conn) if after_seq is None else after_seq
    value = conn.execute(OLDEST_PENDING, (start,)).fetchone()[0]
    return None if value is None else float(value)


def pending(conn: sqlite3.Connection, limit: int, *, after_seq: int = 0) -> list[OutboxRow]:
    """The oldest ``limit`` queued changes after ``after_seq``, in the order they were written."""
    return list(map(OutboxRow._make, conn.execute(SELECT_PENDING, (after_seq, limit))))


def reserve_seq(conn: sqlite3.Connection) -> int:
    """Hand out the next seq without a change (a marker row); call inside a write transaction.

    Lets a cursor start past every change queued so far, even on a store that never queued one.
    """
    cursor = conn.execute("INSERT INTO _sync_queue (tbl, pk, op) VALUES ('', '[]', 'mark')")
    seq = int(cursor.lastrowid or 0)
    conn.execute("DELETE FROM _sync_queue WHERE op = 'mark' AND seq < ?", (seq,))
    return seq


def ack(conn: sqlite3.Connection, up_to_seq: int) -> int:
    """Drop every change up to ``up_to_seq``, which every target acknowledged; return how many
    were dropped (the newest row stays as a marker). Call inside a write transaction."""
    deleted = conn.execute(DELETE_ACKED, (up_to_seq,)).rowcount
    return deleted + conn.execute(MARK_ACKED, (up_to_seq,)).rowcount


def record_failure(conn: sqlite3.Connection, seqs: Iterable[int], error: str) -> None:
    """Count one more failed attempt for these queued changes, keeping the error text."""
    conn.executemany(BUMP_ATTEMPTS, ((error[:2000], seq) for seq in seqs))


def dead_letter(
    conn: sqlite3.Connection, seqs: Iterable[int], record: dict[str, Any] | None, error: str
) -> None:
    """Move these queued changes to ``_dead_letters`` with the relay's reason."""
    body = None if record is None else orjson.dumps(record, default=str).decode()
    now = time.time()
    top = last_seq(conn)
    for seq in seqs:
        conn.execute(INSERT_DEAD, (body, error[:2000], now, seq))
        conn.execute(MARK_ONE if seq == top else DELETE_ONE, (seq,))


def compacting(conn: sqlite3.Connection) -> bool:
    """Whether the queue keeps only each key's newest change (:func:`set_compaction`)."""
    return conn.execute(HAS_COMPACTOR).fetchone() is not None


def set_compaction(conn: sqlite3.Connection, on: bool) -> bool:
    """Keep only each key's newest change (``on``), or every change; True if it changed.

    Switching on also compacts what is queued. Call inside a write transaction.
    """
    if compacting(conn) == on:
        return False
    if on:
        conn.execute(COMPACT_NOW)
        conn.execute(CREATE_KEY_INDEX)
        conn.execute(CREATE_COMPACTOR)
    else:
        conn.execute(DROP_COMPACTOR)
        conn.execute(DROP_KEY_INDEX)
    return True


def read_meta(conn: sqlite3.Connection, key: str) -> str | None:
    """One value of ``_sync_meta``."""
    row = conn.execute(SELECT_META, (key,)).fetchone()
    return None if row is None else str(row[0])


def write_meta(conn: sqlite3.Connection, key: str, value: object) -> None:
    """Set one value of ``_sync_meta``; call inside a write transaction."""
    conn.execute(UPSERT_META, (key, str(value)))


_V1_QUEUE = (
    "SELECT sql FROM sqlite_master WHERE name = '_sync_queue' AND sql LIKE '%AUTOINCREMENT%'"
)
_V1_NEXT_SEQ = "SELECT ifnull(max(seq), 0) FROM sqlite_sequence WHERE name = '_sync_queue'"


def upgrade(conn: sqlite3.Connection) -> None:
    """Rebuild an outbox of the first layout (``AUTOINCREMENT`` seqs) in place, keeping every
    queued change and the seq numbering. Call inside a write transaction, before anything
    else touches the queue."""
    if conn.execute(_V1_QUEUE).fetchone() is None:
        return
    next_seq = int(conn.execute(_V1_NEXT_SEQ).fetchone()[0])
    tables = registered_tables(conn)
    for name in tables:
        drop_triggers(conn, name)
    conn.execute("ALTER TABLE _sync_queue RENAME TO _sync_queue_v1")
    conn.execute(split_internal_schema()[1])
    conn.execute("INSERT INTO _sync_queue SELECT * FROM _sync_queue_v1")
    if next_seq and last_seq(conn) < next_seq:
        conn.execute(
            "INSERT INTO _sync_queue (seq, tbl, pk, op) VALUES (?, '', '[]', 'mark')", (next_seq,)
        )
    conn.execute("DROP TABLE _sync_queue_v1")
    for table in tables.values():
        if conn.execute(TABLE_EXISTS, (table.name,)).fetchone():
            install_triggers(conn, table)


TABLE_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"
