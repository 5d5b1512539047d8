"""Scheduled backups: one thread per process serves every store that has ``backup_interval``.

A store registers when it opens with a ``backup_interval`` and leaves when it closes; nothing
runs for a store without one, and no store owns a thread (1,000 stores in a process still have
one scheduler). Each backup is :func:`~commander_os.storage.backups.create_backup` into the
store's backup folder, followed by :func:`~commander_os.storage.backups.prune_backups` down to
``backup_keep``. The first backup of a store is due ``backup_interval`` after the newest one
already in its folder (at once if there is none), so restarting a process does not reset the
schedule.

:meth:`BackupScheduler.run_due` is the unit of work: tests drive it with a fake clock and
``background=False`` instead of waiting for the thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from commander_os.errors import CommanderStorageError
from commander_os.storage import backups

if TYPE_CHECKING:
    from commander_os.storage.base_storage import BaseStorage

__all__ = ["BackupScheduler"]

_log = logging.getLogger("commander_os.backup")
#: Seconds to wait before retrying a backup that failed (a busy or full disk).
RETRY_SECONDS = 60.0


class BackupScheduler:
    """Backs up registered stores at their intervals (see the module docstring)."""

    _process: ClassVar[BackupScheduler | None] = None
    _process_pid: ClassVar[int] = -1
    _process_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, *, clock: Callable[[], float] = time.time, background: bool = True) -> None:
        self.clock = clock
        self.background = background
        self._wake = threading.Condition()
        #: id(store) -> (weak reference, interval, due time on ``clock``)
        self._stores: dict[int, tuple[weakref.ref[BaseStorage], float, float]] = {}
        self._thread: threading.Thread | None = None

    @classmethod
    def for_process(cls) -> BackupScheduler:
        """The scheduler of this process (a new one in a forked child)."""
        with cls._process_lock:
            if cls._process is None or cls._process_pid != os.getpid():
                cls._process = cls()
                cls._process_pid = os.getpid()
            return cls._process

    def add(self, store: BaseStorage) -> None:
        """Back ``store`` up every ``store.config.backup_interval`` seconds."""
        interval = store.config.backup_interval
        if not interval:
            return
        due = self._first_due(store, interval)
        with self._wake:
            self._stores[id(store)] = (weakref.ref(store), interval, due)
            if self.background and self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="commander-os-backups", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def remove(self, store: BaseStorage) -> None:
        """Stop backing ``store`` up (it is closing)."""
        with self._wake:
            self._stores.pop(id(store), None)
            self._wake.notify()

    def _first_due(self, store: BaseStorage, interval: float) -> float:
        folder = backups.backup_folder(store.data_dir, store.config)
        newest = backups.list_backups(folder, agent_id=store.agent_id)[:1]
        if not newest:
            return self.clock()
        # Manifest times have microseconds; a float clock rounds either way around them.
        return newest[0].manifest.created_at.timestamp() + interval - 0.001

    # -- the unit of work ------------------------------------------------------------------

    def run_due(self) -> list[Path]:
        """Back up every store whose time has come; the backups written."""
        written = []
        for store in self._take_due():
            path = self._back_up(store)
            if path is not None:
                written.append(path)
        return written

    def _take_due(self) -> list[BaseStorage]:
        now = self.clock()
        due = []
        with self._wake:
            for key, (ref, interval, when) in list(self._stores.items()):
                store = ref()
                if store is None:
                    del self._stores[key]
                elif when <= now:
                    self._stores[key] = (ref, interval, now + interval)
                    due.append(store)
        return due

    def _back_up(self, store: BaseStorage) -> Path | None:
        folder = backups.backup_folder(store.data_dir, store.config)
        try:
            when = datetime.fromtimestamp(self.clock(), UTC)
            info = backups.create_backup(store, folder, created=when)
            removed = backups.prune_backups(folder, store.agent_id, store.config.backup_keep)
        except (CommanderStorageError, OSError) as exc:
            _log.warning("agent %s: scheduled backup failed: %s", store.agent_id, exc)
            self._retry_soon(store)
            return None
        _log.info("agent %s: backup %s (%d older removed)", store.agent_id, info.path, len(removed))
        return info.path

    def _retry_soon(self, store: BaseStorage) -> None:
        with self._wake:
            entry = self._stores.get(id(store))
            if entry is not None:
                ref, interval, _ = entry
                self._stores[id(store)] = (ref, interval, self.clock() + RETRY_SECONDS)

    # -- the thread ------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                if not self._stores:
                    self._thread = None
                    return
                delay = min(when for _, _, when in self._stores.values()) - self.clock()
                if delay > 0:
                    self._wake.wait(min(delay, 3600.0))
                    continue
            self.run_due()
