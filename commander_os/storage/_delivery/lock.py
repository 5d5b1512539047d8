"""The ship lock: one process at a time ships a store's outbox.

An exclusive, non-blocking OS file lock on ``<db>.sync-lock`` (filelock: ``flock`` on POSIX,
``LockFileEx`` on Windows). The OS releases it the moment the holder dies, so another process
takes over without waiting for a lease to expire, and holding it costs no disk writes (a lease
row would cost an fsync per renewal at ``synchronous=FULL``). filelock also keeps a forked
child from releasing its parent's lock.
"""

from __future__ import annotations

from pathlib import Path

import filelock

__all__ = ["ShipLock"]


class ShipLock:
    """Non-blocking exclusive lock saying "this process ships the outbox of this store"."""

    def __init__(self, db_path: Path) -> None:
        self.path = db_path.with_name(db_path.name + ".sync-lock")
        self._lock = filelock.FileLock(self.path, mode=0o600, blocking=False, is_singleton=False)

    @property
    def held(self) -> bool:
        """True while this process holds the lock."""
        return self._lock.is_locked

    def acquire(self) -> bool:
        """Take the lock if it is free; True if held afterwards."""
        if self._lock.is_locked:
            return True
        try:
            self._lock.acquire()
        except filelock.Timeout:
            return False
        return True

    def release(self) -> None:
        """Let another process ship."""
        if self._lock.is_locked:
            self._lock.release()
