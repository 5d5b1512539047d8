"""Opening SQLite connections: every pragma is set here and nowhere else.

Connections run in autocommit mode (``isolation_level=None``) so that transactions are exactly
the ones we begin: ``BEGIN IMMEDIATE`` for writes (see :func:`begin_write`), because a deferred
transaction that reads and then writes fails with "database is locked" when another process
wrote in between, whatever the busy timeout.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Literal

from commander_os.errors import StorageBusy, StorageError

__all__ = ["Durability", "begin_write", "connect", "is_busy_error", "translate_error"]

Durability = Literal["full", "normal"]

_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
# Opening can race another process that is switching the file to WAL or recovering it; those
# return SQLITE_BUSY without calling the busy handler, so we retry them ourselves.
_OPEN_RETRY_SECONDS = 0.005


def is_busy_error(exc: BaseException) -> bool:
    """True for SQLite's "database is locked" / "database is busy" errors."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc)
    return "database is locked" in text or "database is busy" in text


def translate_error(exc: sqlite3.Error, what: str) -> StorageError:
    """Map a foreign sqlite3 error to ours, once, at the boundary."""
    if is_busy_error(exc):
        return StorageBusy(f"{what}: the database stayed locked by another connection ({exc})")
    return StorageError(f"{what}: {exc}")


def connect(
    path: Path,
    *,
    durability: Durability = "full",
    busy_timeout: float = 30.0,
    read_only: bool = False,
) -> sqlite3.Connection:
    """Open ``path`` with our pragmas: WAL, ``synchronous``, ``busy_timeout``, foreign keys.

    Raises :class:`~commander_os.errors.StorageError` if the file cannot be opened as a
    database, :class:`~commander_os.errors.StorageBusy` if it stays locked.
    """
    target = f"file:{path}?mode=ro" if read_only else str(path)
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            conn = sqlite3.connect(
                target,
                timeout=busy_timeout,
                isolation_level=None,
                check_same_thread=False,
                cached_statements=256,
                uri=read_only,
            )
            try:
                _apply_pragmas(conn, durability, busy_timeout, read_only)
            except BaseException:
                conn.close()
                raise
            return conn
        except sqlite3.Error as exc:
            if is_busy_error(exc) and time.monotonic() < deadline:
                time.sleep(_OPEN_RETRY_SECONDS)
                continue
            raise translate_error(exc, f"cannot open database {path}") from exc


def _apply_pragmas(
    conn: sqlite3.Connection, durability: Durability, busy_timeout: float, read_only: bool
) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    if not read_only:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"could not switch the database to WAL mode (got {mode!r})")
    conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[durability]}")
    conn.execute("PRAGMA foreign_keys = ON")
    # Without it, a row that INSERT OR REPLACE evicts (through any UNIQUE constraint) fires no
    # DELETE trigger, so its removal would never reach the relay.
    conn.execute("PRAGMA recursive_triggers = ON")
    # Keeps the WAL from growing without bound between checkpoints under steady writes.
    conn.execute("PRAGMA journal_size_limit = 67108864")


def begin_write(conn: sqlite3.Connection) -> None:
    """Start a write transaction that holds the write lock from its first statement."""
    conn.execute("BEGIN IMMEDIATE")
