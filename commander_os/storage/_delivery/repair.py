"""Repair: re-ship a store's whole current state to a target that lost it, deletions included.

Used when a relay went backwards (restored from an older copy: it answers ``regressed``, or
reports an incarnation below the one it acknowledged), and to fill a target new to the store.
Every row of every synced table goes out as an upsert at version ``(incarnation, seq)``, where
``seq`` is what the target had acknowledged: above anything the relay still holds of this store,
below every change still queued. Then every key the relay holds that the store no longer has
goes out as a deletion. Pieces carry ``repair: true``; the relay applies them without moving
its position, and the queue resumes after.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from commander_os.protocol import segment_record_json
from commander_os.storage import _outbox as outbox
from commander_os.storage._delivery.client import RelayClient
from commander_os.storage._delivery.link import StoreLink

__all__ = ["Repair"]


class Repair:
    """The pieces of one repair, produced lazily (see the module docstring)."""

    def __init__(
        self, link: StoreLink, client: RelayClient, seq: int, chunk: int, written_at: float
    ) -> None:
        self.link = link
        self.client = client
        self.seq = seq
        self.chunk = max(1, chunk)
        self.written_at = written_at
        self.shipped = 0
        self._pieces = self._generate()

    def next_records(self) -> list[dict[str, Any]] | None:
        """The records of the next piece, or None once the whole state went out."""
        return next(self._pieces, None)

    def _generate(self) -> Iterator[list[dict[str, Any]]]:
        with self.link.reading() as conn:
            tables = outbox.registered_tables(conn)
        for table in tables.values():
            yield from self._upserts(table)
        for table in tables.values():
            yield from self._deletions(table)

    def _upserts(self, table: outbox.SyncedTable) -> Iterator[list[dict[str, Any]]]:
        after: list[Any] | None = None
        while True:
            with self.link.reading() as conn:
                if conn.execute(outbox.TABLE_EXISTS, (table.name,)).fetchone() is None:
                    return
                rows = outbox.table_chunk(conn, table, after, self.chunk)
            if not rows:
                return
            after = rows[-1][0]
            self.shipped += len(rows)
            yield [self._record(table.name, key, data) for _, key, data in rows]

    def _deletions(self, table: outbox.SyncedTable) -> Iterator[list[dict[str, Any]]]:
        gone: list[dict[str, Any]] = []
        held = self.client.query_all(
            agent_id=self.link.agent_id, table=table.name, include_deleted=False, limit=1000
        )
        for record in held:
            with self.link.reading() as conn:
                present = outbox.has_row(conn, table, record["key"])
            if not present:
                gone.append(self._record(table.name, record["key"], None))
            if len(gone) >= self.chunk:
                yield gone
                gone = []
        if gone:
            yield gone

    def _record(self, table: str, key: str, data: Any) -> dict[str, Any]:
        return segment_record_json(table, key, data, self.seq, self.written_at)
