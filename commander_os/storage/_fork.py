"""Fork safety: no store's lock is held across ``fork()``, and children reopen their stores.

SQLite forbids carrying an open connection across ``fork()``; a child that inherited a store
opens a fresh connection (and worker) of its own. A transaction open in another thread at
``fork()`` time would leave the child's SQLite believing this process still holds the write lock
(it cannot tell the parent's lock from its own), so every write in the child would fail with
``StorageBusy``: ``fork()`` therefore waits until no thread is inside a store's lock.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from typing import Protocol

__all__ = ["track"]


class _Forkable(Protocol):
    _lock: threading.RLock

    def _after_fork_in_child(self) -> None: ...


_live: weakref.WeakSet[_Forkable] = weakref.WeakSet()
# Stores whose lock the forking thread holds across fork(), released after it in the parent.
_held: list[_Forkable] = []


def track(store: _Forkable, *, alive: bool = True) -> None:
    """Follow ``store`` across forks (``alive=False`` stops following it)."""
    if alive:
        _live.add(store)
    else:
        _live.discard(store)


def _quiesce_before_fork() -> None:
    # Taking the locks without blocking, and letting go of all of them when one is busy,
    # cannot deadlock with a thread that nests two stores.
    stores = list(_live)
    while True:
        for store in stores:
            if not store._lock.acquire(blocking=False):
                break
            _held.append(store)
        else:
            return
        _release_in_parent()
        time.sleep(0.001)


def _release_in_parent() -> None:
    while _held:
        _held.pop()._lock.release()


def _reopen_in_child() -> None:
    _held.clear()  # the child gets fresh locks
    for store in list(_live):
        store._after_fork_in_child()


os.register_at_fork(
    before=_quiesce_before_fork,
    after_in_parent=_release_in_parent,
    after_in_child=_reopen_in_child,
)
