"""Dead letters: changes a relay refused for good, kept with its reason until an operator acts.

``list`` shows them; ``retry`` queues each again (as a new change of the same row, so the
shipper sends the row as it is now, after whatever fix the operator made); ``purge`` forgets
them. Each works on one store's connection inside the caller's write transaction, so another
process that ships the store sees the retried changes at its next look (``data_version``).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from typing import Any, NamedTuple

import orjson

__all__ = ["DeadLetter", "list_dead", "purge_dead", "retry_dead"]

SELECT_DEAD = (
    "SELECT seq, tbl, pk, op, error, attempts, failed_at FROM _dead_letters "
    "WHERE (? IS NULL OR seq IN (SELECT value FROM json_each(?))) ORDER BY seq"
)
REQUEUE = "INSERT INTO _sync_queue (tbl, pk, op) VALUES (?, ?, ?)"
DELETE_DEAD = "DELETE FROM _dead_letters WHERE seq = ?"


class DeadLetter(NamedTuple):
    """One refused change: its seq, table, key (the wire key: a JSON array), op and reason."""

    seq: int
    table: str
    key: str
    op: str
    error: str
    attempts: int
    failed_at: float

    def as_dict(self) -> dict[str, Any]:
        """The JSON form (``key`` as the row's primary-key values)."""
        return {**self._asdict(), "key": orjson.loads(self.key)}


def list_dead(conn: sqlite3.Connection, seqs: Sequence[int] | None = None) -> list[DeadLetter]:
    """Every dead letter, or those with these ``seqs``, oldest first."""
    wanted = None if seqs is None else orjson.dumps(list(seqs)).decode()
    return [DeadLetter._make(row) for row in conn.execute(SELECT_DEAD, (wanted, wanted))]


def retry_dead(conn: sqlite3.Connection, seqs: Sequence[int] | None = None) -> list[DeadLetter]:
    """Queue these dead letters again (all by default); return them. Call inside a write
    transaction."""
    letters = list_dead(conn, seqs)
    for letter in letters:
        conn.execute(REQUEUE, (letter.table, letter.key, letter.op))
        conn.execute(DELETE_DEAD, (letter.seq,))
    return letters


def purge_dead(conn: sqlite3.Connection, seqs: Sequence[int] | None = None) -> list[DeadLetter]:
    """Forget these dead letters (all by default); return them. Call inside a write
    transaction."""
    letters = list_dead(conn, seqs)
    conn.executemany(DELETE_DEAD, [(letter.seq,) for letter in letters])
    return letters
