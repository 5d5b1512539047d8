"""Looking at agent stores from outside: find them, report on them, drain their queues.

Used by ``commander-os status`` and ``commander-os sync``. A store is read through its file
alone, without its storage class, so these work for any agent's schema. Encrypted stores are
read with the ``encryption_key`` given; one that key does not open is still listed, so that
its report says why it could not be read instead of leaving it out.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

from commander_os import _sqlite as db
from commander_os.config import StorageConfig, read_encryption_key
from commander_os.errors import (
    CommanderStorageError,
    ConfigError,
    EncryptionError,
    StorageBusy,
    StorageError,
)
from commander_os.identifiers import validate_agent_id
from commander_os.storage import _dead_letters as dead_letters
from commander_os.storage import _outbox as outbox
from commander_os.storage._dead_letters import DeadLetter
from commander_os.storage._delivery import identity, targets
from commander_os.storage._delivery.shipper import Shipper
from commander_os.storage._delivery.status import iso
from commander_os.storage._migrations import SELECT_CURRENT_VERSION
from commander_os.storage.base_storage import DB_SUFFIX

__all__ = ["drain_store", "find_stores", "handle_dead_letters", "inspect_store", "inspect_stores"]

IS_AGENT_STORE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sync_queue'"
#: What inspect_store() puts in the report instead of raising.
_REPORTED_ERRORS: tuple[type[Exception], ...] = (OSError, *db.Error, CommanderStorageError)


def find_stores(data_dir: Path, *, encryption_key: str | None = None) -> list[Path]:
    """Every agent database (``*.db`` holding a sync queue) under ``data_dir``, sorted.

    Encrypted files are opened with ``encryption_key``; those it cannot open are included
    (they may be agent stores; :func:`inspect_store` then reports the key problem).
    """
    if not data_dir.is_dir():
        raise StorageError(f"{data_dir} is not a folder")
    return [
        path
        for path in sorted(data_dir.rglob(f"*{DB_SUFFIX}"))
        if path.is_file() and _is_agent_store(path, encryption_key)
    ]


def _is_agent_store(path: Path, encryption_key: str | None) -> bool:
    key = encryption_key if db.is_encrypted(path) else None
    try:
        conn = db.open_file(path, encryption_key=key, read_only=True, timeout=5.0)
    except (EncryptionError, StorageError):
        return True  # a wrong key, or a refused link: status reports it
    except db.Error:
        return False
    try:
        return conn.execute(IS_AGENT_STORE).fetchone() is not None
    except db.DatabaseError:
        # Damaged, or not a database at all: a *.db file in an agent folder that cannot be
        # read must show up in status as not OK, never vanish from the report.
        return True
    finally:
        conn.close()


def inspect_store(path: Path, *, encryption_key: str | None = None) -> dict[str, Any]:
    """Health of one store read from its file: queue size, dead letters, schema version, and
    per relay target what the last delivery attempt said (kept in the store by whichever
    process ships it).

    ``encryption_key`` opens an encrypted store (a plain one is read without it); the report
    says ``encrypted`` and, if the store could not be read, ``error``. ``size_bytes`` counts
    the database and its ``-wal`` file.
    """
    report: dict[str, Any] = {"agent_id": path.stem, "path": str(path), "local_db": False}
    try:
        report["size_bytes"] = _size_with_wal(path)
        encrypted = bool(db.is_encrypted(path))
        report["encrypted"] = encrypted
        key = encryption_key if encrypted else None
        conn = db.connect(path, read_only=True, busy_timeout=5.0, encryption_key=key)
        try:
            report["schema_version"] = int(conn.execute(SELECT_CURRENT_VERSION).fetchone()[0])
            report["sync_queue_size"] = outbox.queue_size(conn)
            report["dead_letters"] = outbox.dead_letter_count(conn)
            oldest = outbox.oldest_pending_time(conn)
            report["oldest_pending_age"] = None if oldest is None else time.time() - oldest
            report.update(_delivery_report(conn))
            report["integrity"] = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
        report["local_db"] = report["integrity"] == "ok"
    except _REPORTED_ERRORS as exc:
        report["error"] = str(exc)
    return report


def _size_with_wal(path: Path) -> int:
    wal = path.with_name(path.name + "-wal")
    return path.stat().st_size + (wal.stat().st_size if wal.exists() else 0)


def _delivery_report(conn: sqlite3.Connection) -> dict[str, Any]:
    """Per target: reachability, last sync, last error, its queue and the age of its oldest
    change; for the store, the newest error of any target and its lag (the oldest age)."""
    now = time.time()
    rows: list[dict[str, Any]] = []
    for cursor in targets.load(conn).values():
        waiting = int(conn.execute(outbox.COUNT_PENDING, (cursor.acked,)).fetchone()[0])
        oldest = conn.execute(outbox.OLDEST_PENDING, (cursor.acked,)).fetchone()[0]
        rows.append(
            {
                "target": cursor.name,
                "urls": list(cursor.urls),
                "reachable": cursor.reachable,
                "last_sync": iso(cursor.last_success),
                "last_attempt": iso(cursor.last_attempt),
                "last_error": cursor.last_error,
                "queued": waiting,
                "oldest_pending_age": None if oldest is None else max(0.0, now - oldest),
                "acked_seq": cursor.acked,
                "needs_full_resync": cursor.repair,
            }
        )
    errors = [row for row in rows if row["last_error"]]
    conflict = identity.conflict(conn)
    return {
        "targets": rows,
        "last_error": max(errors, key=lambda row: row["last_attempt"] or "")["last_error"]
        if errors
        else None,
        "reachable": _all_reachable([row["reachable"] for row in rows]),
        "last_sync": min((row["last_sync"] or "" for row in rows), default=None) or None,
        "conflict": conflict,
    }


def _all_reachable(states: list[bool | None]) -> bool | None:
    """False if a target was unreachable at its last attempt, True if all were reached."""
    if False in states:
        return False
    return True if states and None not in states else None


def inspect_stores(data_dir: Path, *, encryption_key: str | None = None) -> list[dict[str, Any]]:
    """:func:`inspect_store` for every store under ``data_dir``."""
    return [
        inspect_store(path, encryption_key=encryption_key)
        for path in find_stores(data_dir, encryption_key=encryption_key)
    ]


def handle_dead_letters(
    path: Path,
    action: Literal["list", "retry", "purge"],
    *,
    seqs: Sequence[int] | None = None,
    encryption_key: str | None = None,
) -> list[DeadLetter]:
    """List, retry or purge the dead letters of the store at ``path`` (``seqs``: only those);
    the letters concerned. Retry and purge commit in one write transaction."""
    key = encryption_key if db.is_encrypted(path) else None
    if action == "list":
        conn = db.connect(path, read_only=True, busy_timeout=5.0, encryption_key=key)
        try:
            return dead_letters.list_dead(conn, seqs)
        finally:
            conn.close()
    conn = db.connect(path, busy_timeout=5.0, encryption_key=key)
    try:
        with db.write_transaction(conn, f"{action} of dead letters"):
            if action == "retry":
                return dead_letters.retry_dead(conn, seqs)
            return dead_letters.purge_dead(conn, seqs)
    finally:
        conn.close()


class _FileStore:
    """A store opened through its file alone (no storage class), for the shipper."""

    def __init__(self, path: Path, config: StorageConfig, key: str | None) -> None:
        self.agent_id = validate_agent_id(path.stem)
        self.config = config
        self.db_path = path
        self._conn = db.connect(
            path,
            durability=config.durability,
            encryption_key=key,
            follow_symlinks=config.follow_symlinks,
        )
        self._lock = threading.RLock()

    @contextmanager
    def shipping_connection(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._conn

    def close(self) -> None:
        self._conn.close()


def _drain_targets(store: _FileStore, relay: str | None, move: bool) -> list[targets.Target]:
    """Where to ship: the relays the store remembers; or ``relay`` if it is one of them, or if
    the operator confirmed (``move``) that the store's changes belong there from now on."""
    with store.shipping_connection() as conn:
        remembered = [targets.Target(c.name, c.urls) for c in targets.load(conn).values()]
    if relay is None:
        return remembered or targets.config_targets(store.config)
    relay = relay.rstrip("/")
    chosen = [target for target in remembered if relay in target.urls]
    if chosen or not remembered:
        return chosen or [targets.Target(relay, (relay,))]
    shown = ", ".join(" ".join(target.urls) for target in remembered)
    if not move or len(remembered) != 1:
        raise ConfigError(
            f"{store.db_path}: this store ships to {shown}, not to {relay}; its changes would "
            "leave its outbox for a relay that never had the rest of its data. If its central "
            "store really moved there, add --to-other-relay"
        )
    moved = targets.Target(relay, (relay,))
    with store.shipping_connection() as conn, db.write_transaction(conn, "moving a target"):
        targets.move(conn, remembered[0].name, moved)
    return [moved]


def drain_store(
    path: Path,
    config: StorageConfig,
    *,
    relay: str | None = None,
    to_other_relay: bool = False,
    on_progress: Callable[[int, int], object] | None = None,
) -> int:
    """Ship every queued change of the store at ``path``; return how many were acked.

    The changes go to the relays the store remembers shipping to (its config's when it never
    shipped); ``relay`` names one of them, or, with ``to_other_relay``, another one. An
    encrypted store is opened with the config's key. ``on_progress(done, total)`` is called as
    batches are acknowledged (``total``: what was queued at the start). Raises
    :class:`~commander_os.errors.RelayError` if the relay cannot take them,
    :class:`~commander_os.errors.StorageBusy` if another process is shipping the store,
    :class:`~commander_os.errors.ConfigError` for a relay the store does not ship to.
    """
    key = read_encryption_key(config) if db.is_encrypted(path) else None
    store = _FileStore(path, config, key)
    shipper = Shipper(background=False)
    link = None
    try:
        link = shipper.attach(store, _drain_targets(store, relay, to_other_relay))
        if not link.active:
            raise StorageBusy(f"{path}: another process is shipping this store right now")
        with store.shipping_connection() as conn:
            before = outbox.queue_size(conn)

        def progress() -> None:
            if on_progress is not None:
                with store.shipping_connection() as conn:
                    on_progress(before - outbox.queue_size(conn), before)

        progress()
        shipper.flush(link, None, fail_fast=True, progress=progress)
        with store.shipping_connection() as conn:
            return before - outbox.queue_size(conn)
    finally:
        if link is not None:
            shipper.detach(link)  # releases the ship lock: the store's own process may go on
        shipper.close()
        store.close()
