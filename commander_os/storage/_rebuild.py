"""Writing the relay's records of an agent back into its local tables.

Used by both restores: a store rebuilt from the relay (every row) and a store restored from a
local backup, brought up to date with what its original wrote after the backup (rows newer
than the backup). A relay record carries a row as the capture triggers shipped it: every
column, JSON columns embedded as JSON, BLOBs as hex text (``_outbox._decoded``); this module
undoes exactly that.

Rows are written with the capture triggers removed for the duration of the transaction (they
are put back before it commits): the relay already holds these rows, so queueing them would
only ship them back. Foreign keys are checked at commit (``defer_foreign_keys``), so tables can
be filled in any order, and rows are upserted, never replaced (``INSERT OR REPLACE`` deletes
first, and a delete cascades to child rows).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import orjson

from commander_os.storage import _outbox as outbox
from commander_os.storage._delivery.client import RelayClient
from commander_os.storage._outbox import SyncedTable

__all__ = ["Applied", "RowEncoder", "apply_records", "captures_suspended", "relay_records"]

#: ``encoder(table, row)``: the row as the storage class keeps it (e.g. compressed values).
RowEncoder = Callable[[str, dict[str, Any]], dict[str, Any]]
#: Records asked for per ``/relay/query`` page (the relay's cap).
PAGE = 1000


@dataclass
class Applied:
    """What a restore wrote into the local tables."""

    upserts: int = 0
    deletes: int = 0
    #: Bytes of relay data read (the JSON of every record), for throughput reports.
    records_read: int = 0

    def add(self, other: Applied) -> None:
        """Count ``other`` in."""
        self.upserts += other.upserts
        self.deletes += other.deletes
        self.records_read += other.records_read


@dataclass(frozen=True)
class _Column:
    name: str
    blob: bool
    not_null: bool


def _columns(conn: sqlite3.Connection, table: str) -> dict[str, _Column]:
    quoted = outbox.quote(table)
    return {
        row[1]: _Column(row[1], "BLOB" in str(row[2]).upper(), bool(row[3]))
        for row in conn.execute(f"PRAGMA table_info({quoted})")
    }


@contextmanager
def captures_suspended(conn: sqlite3.Connection) -> Iterator[dict[str, SyncedTable]]:
    """Inside a write transaction: the synced tables, their capture triggers removed until the
    block ends (then reinstalled, for tables that exist)."""
    tables = outbox.registered_tables(conn)
    for name in tables:
        outbox.drop_triggers(conn, name)
    try:
        yield tables
    finally:
        for table in tables.values():
            if conn.execute(outbox.TABLE_EXISTS, (table.name,)).fetchone() is not None:
                outbox.install_triggers(conn, table)


def relay_records(
    client: RelayClient, agent_id: str, table: str, *, include_deleted: bool
) -> Iterator[dict[str, Any]]:
    """Every record the relay holds of ``agent_id``'s ``table`` (deletions too if asked)."""
    yield from client.query_all(
        agent_id=agent_id, table=table, include_deleted=include_deleted or None, limit=PAGE
    )


def apply_records(
    conn: sqlite3.Connection,
    table: SyncedTable,
    records: Iterable[dict[str, Any]],
    *,
    newer_than: int = -1,
    encoder: RowEncoder | None = None,
) -> Applied:
    """Write the relay ``records`` of ``table`` whose version is above ``newer_than`` into the
    local table (upserts, and deletes for tombstones); call inside a write transaction with
    captures suspended."""
    columns = _columns(conn, table.name)
    applied = Applied()
    for record in records:
        applied.records_read += 1
        if int(record.get("version", 0)) <= newer_than:
            continue
        data = record.get("data")
        if record.get("deleted") or data is None:
            applied.deletes += _delete(conn, table, str(record["key"]))
            continue
        row = _local_row(table, columns, data)
        if encoder is not None:
            row = encoder(table.name, row)
        _upsert(conn, table, row)
        applied.upserts += 1
    return applied


def _local_row(
    table: SyncedTable, columns: dict[str, _Column], data: dict[str, Any]
) -> dict[str, Any]:
    row: dict[str, Any] = {}
    for name, value in data.items():
        column = columns.get(name)
        if column is None:
            continue  # a column the local schema no longer has
        if name in table.json_columns:
            if value is None and not column.not_null:
                row[name] = None
            else:
                row[name] = orjson.dumps(value).decode()
        elif column.blob and isinstance(value, str):
            row[name] = bytes.fromhex(value)
        else:
            row[name] = value
    return row


def _upsert(conn: sqlite3.Connection, table: SyncedTable, row: dict[str, Any]) -> None:
    names = list(row)
    quoted = [outbox.quote(name) for name in names]
    key = ", ".join(outbox.quote(column) for column in table.primary_key)
    updates = [
        f"{q} = excluded.{q}"
        for n, q in zip(names, quoted, strict=True)
        if n not in table.primary_key
    ]
    action = f"DO UPDATE SET {', '.join(updates)}" if updates else "DO NOTHING"
    sql = (
        f"INSERT INTO {outbox.quote(table.name)} ({', '.join(quoted)}) "
        f"VALUES ({', '.join('?' * len(names))}) ON CONFLICT ({key}) {action}"
    )
    conn.execute(sql, [row[name] for name in names])


def _delete(conn: sqlite3.Connection, table: SyncedTable, key: str) -> int:
    values = outbox.key_values(table, key)
    if values is None:
        return 0
    where = " AND ".join(f"{outbox.quote(column)} = ?" for column in table.primary_key)
    return conn.execute(f"DELETE FROM {outbox.quote(table.name)} WHERE {where}", values).rowcount
