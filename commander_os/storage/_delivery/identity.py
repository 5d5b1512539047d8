"""The store's side of the identity rule: its incarnation, claims, conflicts and retirement.

Kept in ``_sync_meta`` so that every process opening the store sees the same:

* ``incarnation``: granted by a relay; 0 (or absent) means "none confirmed yet": the next
  delivery asks for one;
* ``claim``: an explicit claim waits to reach the relays (``BaseStorage.claim()``);
* ``conflict``: a relay answered that another store took the agent over (JSON: which relay,
  its incarnation, when); deliveries stop until the agent is claimed or the store retired;
* ``retired``: this store no longer ships the agent's changes.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

import orjson

from commander_os.storage._outbox import read_meta, write_meta

__all__ = [
    "clear_conflict",
    "conflict",
    "incarnation",
    "is_retired",
    "record_conflict",
    "set_claim",
    "set_incarnation",
    "set_retired",
    "wants_claim",
]

DELETE_META = "DELETE FROM _sync_meta WHERE key = ?"


def incarnation(conn: sqlite3.Connection) -> int:
    """The store's confirmed incarnation (0: none yet)."""
    value = read_meta(conn, "incarnation")
    return 0 if value is None else int(value)


def set_incarnation(conn: sqlite3.Connection, value: int) -> None:
    """Take the incarnation a relay granted; call inside a write transaction."""
    write_meta(conn, "incarnation", value)


def wants_claim(conn: sqlite3.Connection) -> bool:
    """True while an explicit claim has not reached the relays."""
    return read_meta(conn, "claim") == "1"


def set_claim(conn: sqlite3.Connection, on: bool) -> None:
    """Ask the relays to hand the agent to this store (or stop asking)."""
    if on:
        write_meta(conn, "claim", 1)
    else:
        conn.execute(DELETE_META, ("claim",))


def conflict(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """What a relay said when it fenced this store, or None."""
    value = read_meta(conn, "conflict")
    return None if value is None else dict(orjson.loads(value))


def record_conflict(conn: sqlite3.Connection, target: str, relay_incarnation: int) -> None:
    """A relay fenced this store: another store holds the agent at ``relay_incarnation``."""
    detail = {
        "target": target,
        "relay_incarnation": relay_incarnation,
        "incarnation": incarnation(conn),
        "since": time.time(),
    }
    write_meta(conn, "conflict", orjson.dumps(detail).decode())


def clear_conflict(conn: sqlite3.Connection) -> None:
    """Forget a conflict (the store claimed the agent)."""
    conn.execute(DELETE_META, ("conflict",))


def is_retired(conn: sqlite3.Connection) -> bool:
    """True once the store was retired."""
    return read_meta(conn, "retired") == "1"


def set_retired(conn: sqlite3.Connection) -> None:
    """Retire the store: it no longer ships the agent's changes."""
    write_meta(conn, "retired", 1)
