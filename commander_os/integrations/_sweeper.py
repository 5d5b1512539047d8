"""One TTL sweeper thread per process, shared by every store that asks for one.

Stores sweep lazily on their own writes, so an idle store needs no thread at all. A store that
wants expired items gone even while nobody writes (``ttl={"sweep_interval_minutes": N}``, or
``start_ttl_sweeper()``) registers here; one daemon thread serves all registered stores at
their intervals and exits when the last one leaves. ``Sweepable.sweep_ttl()`` is the unit of
work, so tests call it directly instead of waiting for the thread.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
import weakref
from typing import Protocol

from commander_os.errors import CommanderStorageError

__all__ = ["SHARED_SWEEPER", "Sweepable", "Sweeper"]

log = logging.getLogger(__name__)


class Sweepable(Protocol):
    """What the sweeper needs of a store."""

    def sweep_ttl(self) -> int:
        """Delete expired items; return how many."""
        ...


class Sweeper:
    """Calls ``sweep_ttl()`` of registered stores every ``interval`` seconds, on one thread."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._due: list[tuple[float, int]] = []  # (monotonic due time, token), a heap
        self._stores: dict[int, tuple[weakref.ref[Sweepable], float]] = {}
        self._tokens: dict[int, int] = {}  # id(store) -> its current token
        self._counter = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, store: Sweepable, interval: float) -> None:
        """Sweep ``store`` every ``interval`` seconds (replacing an earlier registration)."""
        if interval <= 0:
            raise ValueError(f"sweep interval must be positive, not {interval}")
        with self._wake:
            self._forget(id(store))
            token = next(self._counter)
            self._tokens[id(store)] = token
            self._stores[token] = (weakref.ref(store), interval)
            heapq.heappush(self._due, (time.monotonic() + interval, token))
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="commander-ttl-sweeper", daemon=True
                )
                self._thread.start()
            self._wake.notify()

    def remove(self, store: Sweepable) -> bool:
        """Stop sweeping ``store``; False if it was not registered."""
        with self._wake:
            found = self._forget(id(store))
            self._wake.notify()
            return found

    def registered(self) -> int:
        """How many stores are swept."""
        with self._wake:
            return len(self._stores)

    def _forget(self, store_id: int) -> bool:
        token = self._tokens.pop(store_id, None)
        return token is not None and self._stores.pop(token, None) is not None

    def _run(self) -> None:
        while True:
            with self._wake:
                store = self._next_store()
                if store is None:
                    self._thread = None
                    return
            self._sweep(store)

    def _next_store(self) -> Sweepable | None:
        # Called with the lock held: wait until a registered store is due, or none is left.
        while self._stores:
            due, token = self._due[0]
            if token not in self._stores:
                heapq.heappop(self._due)
                continue
            delay = due - time.monotonic()
            if delay > 0:
                self._wake.wait(delay)
                continue
            heapq.heappop(self._due)
            ref, interval = self._stores[token]
            store = ref()
            if store is None:
                del self._stores[token]
                continue
            heapq.heappush(self._due, (time.monotonic() + interval, token))
            return store
        return None

    def _sweep(self, store: Sweepable) -> None:
        try:
            store.sweep_ttl()
        except CommanderStorageError as exc:
            # A closed or busy store: try again next interval (a closed one unregisters itself).
            log.warning("TTL sweep of %r failed: %s", store, exc)


#: The process-wide sweeper.
SHARED_SWEEPER = Sweeper()
