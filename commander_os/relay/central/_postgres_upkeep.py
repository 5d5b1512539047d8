"""Upkeep of the PostgreSQL central store: opt-in field indexes, the retention sweep, vacuum.

**Field indexes.** A field of ``data`` gets a value index only when asked (``indexed_fields``,
``commander-os relay index add FIELD``): an expression index on ``data #> path`` answering
``eq``/``in``. Each costs every write that changes the field, so none is on by default.

**Retention.** The change log (``changes``) keeps one row per applied change. A row whose
record has moved on (superseded) and a deleted record's tombstone are what a reader behind
needs; past the retention horizon both are swept. The horizon is a rev: each sweep notes
``(now, watermark)`` and the horizon is the newest noted rev at least ``retention`` seconds old.
A cursor below it gets :class:`~commander_os.errors.CursorExpired` (410, resync needed), never
a silent gap.

**Vacuum.** Updates of ``records`` and ``agents`` are HOT (no index holds a changing column;
fillfactor leaves room in each page), so their old versions are pruned within the page; the
sweep's deletes leave dead rows. The relay vacuums a table when its dead rows pass
:data:`VACUUM_MIN_DEAD` and :data:`VACUUM_DEAD_FRACTION` of its live rows, whether or not
autovacuum runs (it warns at start when autovacuum is off).

One relay at a time sweeps and vacuums (a session advisory lock it only *tries*: nothing waits).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from psycopg import AsyncConnection, sql

from commander_os.protocol import parse_field_path
from commander_os.relay.central._base import FieldIndex, field_index_name

__all__ = [
    "CHURNED_TABLES",
    "FieldIndex",
    "UpkeepReport",
    "add_field_index",
    "autovacuum_is_off",
    "drop_field_index",
    "field_index_name",
    "list_field_indexes",
    "next_horizon",
    "read_indexed_fields",
    "run_upkeep",
]

_log = logging.getLogger("commander_os.relay.central")

#: Any constant, the same for every relay (differs from the migration lock).
UPKEEP_LOCK_KEY = 0x75706B656570  # "upkeep"
VACUUM_MIN_DEAD = 1000
VACUUM_DEAD_FRACTION = 0.1
#: The tables a relay churns, and so vacuums.
CHURNED_TABLES = ("records", "changes", "agents", "table_stats")
#: Notes of (time, rev) taken per retention period (the horizon's step), and kept at most.
MARKS_PER_HORIZON = 1000
MAX_MARKS = 2 * MARKS_PER_HORIZON

SELECT_FIELDS = "SELECT field FROM field_indexes ORDER BY field"
LIST_FIELDS = """
SELECT f.field, f.name, coalesce(pg_relation_size(c.oid), 0), coalesce(i.indisvalid, false)
FROM field_indexes f
LEFT JOIN pg_class c ON c.relname = f.name AND c.relnamespace = current_schema()::regnamespace
LEFT JOIN pg_index i ON i.indexrelid = c.oid
ORDER BY f.field
"""
REGISTER_FIELD = """
INSERT INTO field_indexes (field, name) VALUES (%s, %s) ON CONFLICT (field) DO NOTHING
"""
CREATE_FIELD_INDEX = "CREATE INDEX CONCURRENTLY IF NOT EXISTS {} ON records ((data #> {}::text[]))"
FORGET_FIELD = "DELETE FROM field_indexes WHERE field = %s RETURNING name"
SHOW_AUTOVACUUM = "SELECT current_setting('autovacuum') = 'off'"
TRY_LOCK = "SELECT pg_try_advisory_lock(%s)"
UNLOCK = "SELECT pg_advisory_unlock(%s)"
DEAD_ROWS = """
SELECT relname, n_dead_tup, n_live_tup FROM pg_stat_user_tables
WHERE schemaname = current_schema() AND relname = ANY(%s)
"""
READ_RETENTION = "SELECT horizon_rev, marks FROM retention"
#: Superseded log rows and tombstones with revs in (old horizon, new horizon], then the new
#: horizon, in one transaction (a reader checks the horizon after its query: see the store).
SWEEP_SUPERSEDED = """
DELETE FROM changes c USING records r
WHERE c.rev > %(old)s AND c.rev <= %(new)s
  AND r.agent_id = c.agent_id AND r.key = c.key AND r.tbl = c.tbl AND r.rev > c.rev
"""
SWEEP_TOMBSTONES = """
WITH dead AS (
    SELECT c.agent_id, c.key, c.tbl, c.rev FROM changes c JOIN records r
      ON r.agent_id = c.agent_id AND r.key = c.key AND r.tbl = c.tbl AND r.rev = c.rev
    WHERE c.rev > %(old)s AND c.rev <= %(new)s AND r.deleted
), gone AS (
    DELETE FROM records r USING dead d
    WHERE r.agent_id = d.agent_id AND r.key = d.key AND r.tbl = d.tbl AND r.rev = d.rev
)
DELETE FROM changes c USING dead d
WHERE c.agent_id = d.agent_id AND c.key = d.key AND c.tbl = d.tbl AND c.rev = d.rev
"""
WRITE_RETENTION = "UPDATE retention SET horizon_rev = %s, marks = %s"


@dataclass(frozen=True, slots=True)
class UpkeepReport:
    """What one upkeep pass did (``swept`` False when another relay held the upkeep lock)."""

    swept: bool
    horizon_rev: int
    vacuumed: tuple[str, ...]


def _path(field: str) -> list[str]:
    segments = parse_field_path(field)  # ValueError for a path queries could not take
    if not all(isinstance(segment, str) for segment in segments):
        raise ValueError(f"field {field!r} holds an array position: it cannot be indexed")
    return [str(segment) for segment in segments]


async def add_field_index(conn: AsyncConnection[Any], field: str) -> FieldIndex:
    """Create the index of ``field`` (without blocking writes) and register it.

    ``conn`` must be in autocommit mode. Raises ``ValueError`` for a field that cannot be
    indexed. Idempotent.
    """
    path = _path(field)
    name = field_index_name(field)
    # CONCURRENTLY: writers go on while it builds. A build that failed leaves an invalid
    # index: drop it first so IF NOT EXISTS does not keep it.
    valid = await conn.execute(
        "SELECT i.indisvalid FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid "
        "WHERE c.relname = %s AND c.relnamespace = current_schema()::regnamespace",
        (name,),
    )
    row = await valid.fetchone()
    if row is not None and not row[0]:
        await conn.execute(sql.SQL("DROP INDEX CONCURRENTLY {}").format(sql.Identifier(name)))
    create = sql.SQL(CREATE_FIELD_INDEX).format(sql.Identifier(name), sql.Literal(path))
    await conn.execute(create)
    await conn.execute(REGISTER_FIELD, (field, name))
    return next(index for index in await list_field_indexes(conn) if index.field == field)


async def drop_field_index(conn: AsyncConnection[Any], field: str) -> bool:
    """Drop the index of ``field``; False if it had none. ``conn`` in autocommit mode."""
    cursor = await conn.execute(FORGET_FIELD, (field,))
    row = await cursor.fetchone()
    name = row[0] if row else field_index_name(field)
    await conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(sql.Identifier(name)))
    return row is not None


async def list_field_indexes(conn: AsyncConnection[Any]) -> list[FieldIndex]:
    """Every registered field index, by field."""
    cursor = await conn.execute(LIST_FIELDS)
    return [FieldIndex(f, n, int(b), bool(v)) for f, n, b, v in await cursor.fetchall()]


async def read_indexed_fields(conn: AsyncConnection[Any]) -> frozenset[str]:
    """The fields whose index queries may use."""
    return frozenset(index.field for index in await list_field_indexes(conn) if index.valid)


async def autovacuum_is_off(conn: AsyncConnection[Any]) -> bool:
    """Whether the server runs without autovacuum."""
    cursor = await conn.execute(SHOW_AUTOVACUUM)
    row = await cursor.fetchone()
    return bool(row and row[0])


async def run_upkeep(
    conn: AsyncConnection[Any], *, watermark: int, retention: float
) -> UpkeepReport:
    """One pass: sweep the log up to the horizon, then vacuum what churned. ``conn`` in
    autocommit mode (VACUUM cannot run in a transaction)."""
    cursor = await conn.execute(TRY_LOCK, (UPKEEP_LOCK_KEY,))
    row = await cursor.fetchone()
    if not (row and row[0]):
        horizon = await _horizon(conn)
        return UpkeepReport(False, horizon, ())
    try:
        horizon = await _sweep(conn, watermark, retention)
        vacuumed = await _vacuum(conn)
    finally:
        await conn.execute(UNLOCK, (UPKEEP_LOCK_KEY,))
    return UpkeepReport(True, horizon, vacuumed)


async def _horizon(conn: AsyncConnection[Any]) -> int:
    cursor = await conn.execute(READ_RETENTION)
    row = await cursor.fetchone()
    return int(row[0]) if row else 0


async def _sweep(conn: AsyncConnection[Any], watermark: int, retention: float) -> int:
    now_us = time.time_ns() // 1000
    async with conn.transaction():
        cursor = await conn.execute(READ_RETENTION + " FOR UPDATE")
        row = await cursor.fetchone()
        assert row is not None
        old = int(row[0])
        marks = [(int(at), int(rev)) for at, rev in orjson.loads(row[1])]
        new, marks = next_horizon(old, marks, now_us, watermark, retention)
        if new > old:
            params = {"old": old, "new": new}
            await conn.execute(SWEEP_SUPERSEDED, params)
            await conn.execute(SWEEP_TOMBSTONES, params)
        await conn.execute(WRITE_RETENTION, (new, orjson.dumps(marks).decode()))
    return new


def next_horizon(
    old: int, marks: list[tuple[int, int]], now_us: int, watermark: int, retention: float
) -> tuple[int, list[tuple[int, int]]]:
    """The horizon after a sweep at ``now_us`` (the newest noted rev at least ``retention``
    seconds old, never lower than ``old``) and the notes to keep. About
    :data:`MARKS_PER_HORIZON` notes are taken per retention period, whatever the sweep rate."""
    span = int(retention * 1_000_000)
    if not marks or now_us - marks[-1][0] >= span // MARKS_PER_HORIZON:
        marks = [*marks, (now_us, watermark)]
    cutoff = now_us - span
    new = max([old, *(rev for at, rev in marks if at <= cutoff)])
    # Keep the newest due note (the horizon) and every later one.
    kept = [(at, rev) for at, rev in marks if at > cutoff or rev >= new]
    return new, kept[-MAX_MARKS:]


async def _vacuum(conn: AsyncConnection[Any]) -> tuple[str, ...]:
    cursor = await conn.execute(DEAD_ROWS, (list(CHURNED_TABLES),))
    done = []
    for table, dead, live in await cursor.fetchall():
        if dead >= VACUUM_MIN_DEAD and dead >= VACUUM_DEAD_FRACTION * live:
            await conn.execute(sql.SQL("VACUUM (ANALYZE) {}").format(sql.Identifier(table)))
            done.append(str(table))
            _log.debug("vacuumed %s (%d dead rows)", table, dead)
    return tuple(done)
