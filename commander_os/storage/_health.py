"""What ``health_check()`` reports: the seed's keys plus what an operator needs."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

from commander_os import _sqlite as db
from commander_os.errors import StorageClosed
from commander_os.storage import _outbox as outbox
from commander_os.storage._migrations import current_version

__all__ = ["local_health", "seed_keys"]

#: What health_check() reports instead of raising.
HEALTH_ERRORS: tuple[type[Exception], ...] = (*db.Error, StorageClosed)


def seed_keys(agent_id: str, htpc_enabled: bool) -> dict[str, Any]:
    """The keys the seed documents, before the store is looked at."""
    return {
        "agent_id": agent_id,
        "local_db": False,
        "htpc_enabled": htpc_enabled,
        "sync_queue_size": None,
        "timestamp": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def local_health(conn: sqlite3.Connection) -> dict[str, Any]:
    """Queue size, dead letters, oldest pending age and schema version of an open store."""
    oldest = outbox.oldest_pending_time(conn)
    return {
        "sync_queue_size": outbox.queue_size(conn),
        "dead_letters": outbox.dead_letter_count(conn),
        "schema_version": current_version(conn),
        "oldest_pending_age": None if oldest is None else max(0.0, time.time() - oldest),
        "local_db": True,
    }
