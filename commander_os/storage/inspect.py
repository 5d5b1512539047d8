"""Looking at agent stores from outside: find them, report on them, drain their queues.

Used by ``commander-os status`` and ``commander-os sync``. A store is read through its file
alone, without its storage class, so these work for any agent's schema.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from commander_os.config import StorageConfig
from commander_os.errors import CommanderStorageError, StorageError
from commander_os.storage import db, outbox
from commander_os.storage.base_storage import DB_SUFFIX
from commander_os.storage.migrations import SELECT_CURRENT_VERSION

__all__ = ["drain_store", "find_stores", "inspect_store", "inspect_stores"]

IS_AGENT_STORE = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_sync_queue'"


def find_stores(data_dir: Path) -> list[Path]:
    """Every agent database (``*.db`` holding a sync queue) under ``data_dir``, sorted."""
    if not data_dir.is_dir():
        raise StorageError(f"{data_dir} is not a folder")
    found = []
    for path in sorted(data_dir.rglob(f"*{DB_SUFFIX}")):
        if not path.is_file():
            continue
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
            try:
                if conn.execute(IS_AGENT_STORE).fetchone():
                    found.append(path)
            finally:
                conn.close()
        except sqlite3.Error:
            continue
    return found


def inspect_store(path: Path) -> dict[str, Any]:
    """Health of one store read from its file: queue size, dead letters, schema version."""
    report: dict[str, Any] = {"agent_id": path.stem, "path": str(path), "local_db": False}
    try:
        report["size_bytes"] = path.stat().st_size
        conn = db.connect(path, read_only=True, busy_timeout=5.0)
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
    except (OSError, sqlite3.Error, CommanderStorageError) as exc:
        report["error"] = str(exc)
    return report


def inspect_stores(data_dir: Path) -> list[dict[str, Any]]:
    """:func:`inspect_store` for every store under ``data_dir``."""
    return [inspect_store(path) for path in find_stores(data_dir)]


def drain_store(
    path: Path, config: StorageConfig, *, on_progress: Callable[[int], object] | None = None
) -> int:
    """Ship every queued change of the store at ``path``; return how many were acked.

    Raises :class:`~commander_os.errors.RelayError` if the relay cannot take them.
    """
    from commander_os.identifiers import validate_agent_id
    from commander_os.network.client import RelayClient
    from commander_os.storage.sync import SyncWorker, read_token

    agent_id = validate_agent_id(path.stem)
    client = RelayClient(
        config.relay_urls(),
        token=read_token(config),
        timeout=config.request_timeout,
        verify=config.htpc_ca_file or True,
    )
    worker = SyncWorker(
        agent_id=agent_id,
        db_path=path,
        config=config,
        client=client,
        connect=lambda: db.connect(path, durability=config.durability),
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
