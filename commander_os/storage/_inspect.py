"""Looking at agent stores from outside: find them, report on them, drain their queues.

Used by ``commander-os status`` and ``commander-os sync``. A store is read through its file
alone, without its storage class, so these work for any agent's schema. Encrypted stores are
read with the ``encryption_key`` given; one that key does not open is still listed, so that
its report says why it could not be read instead of leaving it out.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from commander_os import _sqlite as db
from commander_os.config import StorageConfig, read_encryption_key
from commander_os.errors import CommanderStorageError, EncryptionError, StorageError
from commander_os.storage import _outbox as outbox
from commander_os.storage._migrations import SELECT_CURRENT_VERSION
from commander_os.storage.base_storage import DB_SUFFIX

__all__ = ["drain_store", "find_stores", "inspect_store", "inspect_stores"]

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
    """Health of one store read from its file: queue size, dead letters, schema version.

    ``encryption_key`` opens an encrypted store (a plain one is read without it); the report
    says ``encrypted`` and, if the store could not be read, ``error``.
    """
    report: dict[str, Any] = {"agent_id": path.stem, "path": str(path), "local_db": False}
    try:
        report["size_bytes"] = path.stat().st_size
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
            report["integrity"] = conn.execute("PRAGMA quick_check").fetchone()[0]
        finally:
            conn.close()
        report["local_db"] = report["integrity"] == "ok"
    except _REPORTED_ERRORS as exc:
        report["error"] = str(exc)
    return report


def inspect_stores(data_dir: Path, *, encryption_key: str | None = None) -> list[dict[str, Any]]:
    """:func:`inspect_store` for every store under ``data_dir``."""
    return [
        inspect_store(path, encryption_key=encryption_key)
        for path in find_stores(data_dir, encryption_key=encryption_key)
    ]


def drain_store(
    path: Path, config: StorageConfig, *, on_progress: Callable[[int], object] | None = None
) -> int:
    """Ship every queued change of the store at ``path``; return how many were acked.

    An encrypted store is opened with the config's ``encryption_key`` (or key file). Raises
    :class:`~commander_os.errors.RelayError` if the relay cannot take them,
    :class:`~commander_os.errors.EncryptionError` if the store cannot be opened with that key.
    """
    from commander_os.identifiers import validate_agent_id
    from commander_os.storage._delivery.client import RelayClient
    from commander_os.storage._delivery.worker import SyncWorker

    agent_id = validate_agent_id(path.stem)
    key = read_encryption_key(config) if db.is_encrypted(path) else None
    client = RelayClient.from_config(config)
    worker = SyncWorker(
        agent_id=agent_id,
        db_path=path,
        config=config,
        client=client,
        connect=lambda: db.connect(
            path,
            durability=config.durability,
            encryption_key=key,
            follow_symlinks=config.follow_symlinks,
        ),
    )
    total = 0
    try:
        while shipped := worker.sync_once():
            total += shipped
            if on_progress is not None:
                on_progress(total)
    finally:
        worker.stop()
    return total
