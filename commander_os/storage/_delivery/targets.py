"""Delivery targets: where a store's changes go, and the cursor each target keeps.

A **target** is one central store, reached through one relay or a fail-over list of relays in
front of it: ``htpc_url`` + ``htpc_urls``, then each ``replicate_to`` entry. Every target gets
every change (replication); the relays of one target share its store (fail-over). Each target
has a cursor in the store's ``_sync_targets`` table: the seq it acknowledged, the incarnation
it acknowledged it under, whether it needs the store's whole state (a new target, or one that
lost data), and what the last attempt said (so another process, or ``commander-os status``,
can tell why a queue grows).
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

import orjson

from commander_os.config import StorageConfig
from commander_os.storage import _outbox as outbox

__all__ = [
    "Cursor",
    "Target",
    "advance",
    "config_targets",
    "ensure",
    "load",
    "move",
    "note",
    "set_repair",
]

SELECT_CURSORS = (
    "SELECT name, urls, acked, acked_incarnation, repair, last_success, last_attempt, "
    "last_error, reachable FROM _sync_targets ORDER BY name"
)
INSERT_CURSOR = "INSERT INTO _sync_targets (name, urls, acked, repair) VALUES (?, ?, ?, ?)"
UPDATE_URLS = "UPDATE _sync_targets SET urls = ? WHERE name = ?"
DELETE_CURSOR = "DELETE FROM _sync_targets WHERE name = ?"
ADVANCE = (
    "UPDATE _sync_targets SET acked = max(acked, ?), acked_incarnation = ?, last_success = ?, "
    "last_attempt = ?, last_error = NULL, reachable = 1 WHERE name = ?"
)
NOTE = "UPDATE _sync_targets SET last_attempt = ?, last_error = ?, reachable = ? WHERE name = ?"
SET_REPAIR = "UPDATE _sync_targets SET repair = ? WHERE name = ?"
MIN_PENDING = "SELECT min(seq) FROM _sync_queue WHERE op != 'mark'"
CAPTURED = "SELECT value FROM _sync_meta WHERE key = 'captured'"


@dataclass(frozen=True, slots=True)
class Target:
    """One central store: its name (the cursor's key) and the relays in front of it."""

    name: str
    urls: tuple[str, ...]


def config_targets(config: StorageConfig) -> list[Target]:
    """The targets an agent's config names: ``htpc_url`` (with its fail-over ``htpc_urls``)
    first, then each ``replicate_to`` entry. A target is named after its first relay."""
    return [Target(urls[0], tuple(urls)) for urls in config.target_urls()]


@dataclass(frozen=True, slots=True)
class Cursor:
    """A target's row of ``_sync_targets``."""

    name: str
    urls: tuple[str, ...]
    acked: int
    acked_incarnation: int
    repair: bool
    last_success: float | None
    last_attempt: float | None
    last_error: str | None
    reachable: bool | None


def load(conn: sqlite3.Connection) -> dict[str, Cursor]:
    """Every target's cursor, by name."""
    cursors = {}
    for name, urls, acked, incarnation, repair, success, attempt, error, reachable in conn.execute(
        SELECT_CURSORS
    ):
        cursors[name] = Cursor(
            name,
            tuple(orjson.loads(urls)),
            int(acked),
            int(incarnation),
            bool(repair),
            success,
            attempt,
            error,
            None if reachable is None else bool(reachable),
        )
    return cursors


def ensure(
    conn: sqlite3.Connection, targets: list[Target], *, has_data: bool
) -> tuple[dict[str, Cursor], dict[str, Cursor]]:
    """Register ``targets`` (keeping existing cursors) and drop the others; call inside a write
    transaction. Returns ``(cursors, dropped)``.

    A cursor whose relay never acknowledged anything (a wrong URL, fixed since) passes to a new
    target: what it queued goes there instead. Otherwise a target new to a store that already
    has targets starts at the newest seq and needs the store's whole state (``repair``). The
    first target of a store starts before its oldest queued change; it needs the whole state
    only if the store holds data it never captured (sync was off until now).
    """
    existing = load(conn)
    wanted = {target.name for target in targets}
    unused = [c for name, c in existing.items() if name not in wanted and c.last_success is None]
    for target in targets:
        if target.name in existing:
            if existing[target.name].urls != target.urls:
                conn.execute(UPDATE_URLS, (_urls(target), target.name))
        elif unused:
            move(conn, unused.pop(0).name, target)
        else:
            _register(conn, target, first=not existing, has_data=has_data)
    current = load(conn)
    dropped = {name: cursor for name, cursor in current.items() if name not in wanted}
    for name in dropped:
        conn.execute(DELETE_CURSOR, (name,))
    return load(conn), dropped


def _urls(target: Target) -> str:
    return orjson.dumps(list(target.urls)).decode()


def _register(conn: sqlite3.Connection, target: Target, *, first: bool, has_data: bool) -> None:
    if first:
        oldest = conn.execute(MIN_PENDING).fetchone()[0]
        acked = outbox.last_seq(conn) if oldest is None else int(oldest) - 1
        repair = has_data and conn.execute(CAPTURED).fetchone() is None
    else:
        acked, repair = outbox.last_seq(conn), True
    if repair and acked == 0:
        acked = outbox.reserve_seq(conn)  # repair pieces need a seq of their own
    conn.execute(INSERT_CURSOR, (target.name, _urls(target), acked, int(repair)))


def move(conn: sqlite3.Connection, name: str, target: Target) -> None:
    """Point the cursor ``name`` at ``target``'s relays (the operator moved the store's central
    store there: what it acknowledged stays acknowledged). Call inside a write transaction."""
    conn.execute(
        "UPDATE _sync_targets SET name = ?, urls = ? WHERE name = ?",
        (target.name, _urls(target), name),
    )


def advance(conn: sqlite3.Connection, name: str, acked: int, incarnation: int) -> int:
    """Target ``name`` acknowledged everything up to ``acked``; drop what every target has.

    Returns how many queued changes were dropped. Call inside a write transaction.
    """
    now = time.time()
    conn.execute(ADVANCE, (acked, incarnation, now, now, name))
    return outbox.ack(conn, outbox.floor(conn))


def note(conn: sqlite3.Connection, name: str, error: str | None, reachable: bool | None) -> None:
    """Record the outcome of an attempt that did not advance the cursor."""
    reached = None if reachable is None else int(reachable)
    conn.execute(NOTE, (time.time(), None if error is None else error[:2000], reached, name))


def set_repair(conn: sqlite3.Connection, name: str, on: bool) -> None:
    """Mark whether target ``name`` needs the store's whole state."""
    conn.execute(SET_REPAIR, (int(on), name))
