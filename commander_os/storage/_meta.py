"""The store's own bookkeeping in ``_sync_meta``: its epoch and the outbox's sequence numbers.

Records carry ``version = epoch << 32 | seq``: ``seq`` is the outbox's monotonic sequence number
and the epoch is fixed per database file.
"""

from __future__ import annotations

import sqlite3
import time

from commander_os.storage import _outbox as outbox

__all__ = ["ensure_epoch", "last_seq", "new_epoch", "read_epoch", "write_epoch"]

#: Epochs count seconds from this moment (2025-01-01 UTC) so that they fit 31 bits for the next
#: sixty-odd years.
EPOCH_BASE = 1735689600
#: Start a new epoch before the local sequence number could overflow its 32 bits.
SEQ_LIMIT = 2**31

SELECT_META = "SELECT value FROM _sync_meta WHERE key = ?"
UPSERT_META = (
    "INSERT INTO _sync_meta (key, value) VALUES (?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value"
)
SELECT_LAST_SEQ = "SELECT seq FROM sqlite_sequence WHERE name = '_sync_queue'"
RESET_SEQ = "UPDATE sqlite_sequence SET seq = 0 WHERE name = '_sync_queue'"


def new_epoch(previous: int = 0) -> int:
    """An epoch greater than ``previous`` and than any epoch begun before now."""
    return max(previous + 1, int(time.time()) - EPOCH_BASE)


def read_epoch(conn: sqlite3.Connection) -> int:
    """The store's current epoch."""
    return int(conn.execute(SELECT_META, ("epoch",)).fetchone()[0])


def write_epoch(conn: sqlite3.Connection, epoch: int) -> None:
    """Set the store's epoch; call inside a write transaction."""
    conn.execute(UPSERT_META, ("epoch", str(epoch)))


def ensure_epoch(conn: sqlite3.Connection) -> None:
    """Give a new store its epoch, and start a new one before ``seq`` overflows 32 bits."""
    row = conn.execute(SELECT_META, ("epoch",)).fetchone()
    seq = conn.execute(SELECT_LAST_SEQ).fetchone()
    if row is None:
        write_epoch(conn, new_epoch())
    elif seq is not None and seq[0] >= SEQ_LIMIT and not outbox.queue_size(conn):
        write_epoch(conn, new_epoch(int(row[0])))
        conn.execute(RESET_SEQ)


def last_seq(conn: sqlite3.Connection) -> int:
    """The newest outbox sequence number handed out (0 for a new store)."""
    row = conn.execute(SELECT_LAST_SEQ).fetchone()
    return 0 if row is None else int(row[0])
