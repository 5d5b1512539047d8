"""The commit-order watermark: how far the change order may be read without skipping a rev.

Revisions come from a PostgreSQL sequence (``records_rev_seq``), which hands out numbers without
any lock a second writer could wait on, but does not make them *visible* in order: transactions
holding revs 10 and 11 may commit 11 first. A reader that had just read 11 and moved its cursor
past it would never see 10. Reads of the change order (queries and the feed) therefore stop at
the **watermark**: the highest rev ``W`` such that every rev at or below it belongs to a finished
transaction (committed, or rolled back and gone for good).

How ``W`` is found, with nothing shared but the sequence itself. A writer makes its transaction
take a transaction id (``pg_current_xact_id()``) *before* it draws revs. One *tick* sends, in one
pipeline, two statements: ``S`` = the highest rev drawn so far, then the ids of the relays'
writer transactions running at that moment (``backend_xid`` of ``pg_stat_activity``, read from
the server's table of running transactions; a snapshot's in-progress list would miss ids above
its ``xmax``, and would hold other applications' transactions too). Only relay writer sessions
(``application_name`` "commander-os relay writers", plus the store's schema) may draw revs. Any rev
``<= S`` was drawn before ``S`` was read, by a transaction whose id was assigned earlier still,
so it is in that list, or it had already finished. ``S`` becomes safe once none of those ids is
running any more at a later tick (at once, if none was running). Ticks cost one round trip
and are shared by every reader of the relay; a reader that needs its read to include everything
committed before it asked (read-your-writes, across relays too) waits for a tick that started
after it asked (:meth:`Watermark.fresh`).

The cost of the scheme: a write transaction that stays open on the database (of this store or
not) holds the watermark back until it ends. :meth:`Watermark.fresh` waits at most
``max_wait`` seconds for it, then answers with the watermark it has (never past a rev that may
still commit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

__all__ = ["Tick", "Watermark"]

_log = logging.getLogger("commander_os.relay.central")

#: Seconds between ticks while a candidate waits for transactions to finish.
PENDING_RETICK_SECONDS = 0.002
#: Candidates kept while transactions hold the watermark back (bounds memory, not safety).
MAX_PENDING = 256
#: Seconds between ticks when no reader asks (catches commits nobody told us about).
IDLE_TICK_SECONDS = 1.0


#: One tick: the highest rev drawn (read first), then the ids of transactions running after it.
Tick = Callable[[], Awaitable[tuple[int, frozenset[int]]]]


class Watermark:
    """The settled prefix of the rev order for one store (see the module docstring).

    ``tick`` runs one tick on a connection of the caller's. :attr:`value` only grows.
    """

    def __init__(self, tick: Tick, *, max_wait: float = 1.0) -> None:
        self._tick = tick
        self.max_wait = max_wait
        self.value = 0
        #: (tick number, S, transactions in progress after S was read): S is safe once
        #: they have all finished.
        self._pending: list[tuple[int, int, frozenset[int]]] = []
        self._wanted = asyncio.Event()
        self._started = 0
        self._done = 0
        self._ticked = asyncio.Condition()
        self._task: asyncio.Task[None] | None = None
        #: Why the last tick failed (None after a good one); readers then keep the old value.
        self.error: str | None = None

    def start(self) -> None:
        """Start ticking on the running event loop."""
        self._task = asyncio.create_task(self._run(), name="central-watermark")

    async def stop(self) -> None:
        """Stop ticking. Idempotent."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def poke(self) -> None:
        """Something committed (here or on another relay): tick soon."""
        self._wanted.set()

    async def fresh(self) -> int:
        """The watermark, including every rev committed before this call (read-your-writes),
        unless a transaction older than the call stays open past ``max_wait``."""
        target = self._started + 1  # the first tick to start after this call
        self._wanted.set()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.max_wait), self._ticked:
                await self._ticked.wait_for(lambda: self._covers(target))
        return self.value

    def _covers(self, target: int) -> bool:
        # A candidate leaves the pending list once it, or a later one, is safe.
        return self._done >= target and all(tick > target for tick, _, _ in self._pending)

    async def _run(self) -> None:
        while True:
            delay = PENDING_RETICK_SECONDS if self._pending else IDLE_TICK_SECONDS
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wanted.wait()
            self._wanted.clear()
            self._started += 1
            try:
                last, running = await self._tick()
            except Exception as exc:  # the database away: readers keep the value they have
                self.error = str(exc) or type(exc).__name__
                _log.debug("watermark tick failed: %s", self.error)
                async with self._ticked:
                    self._done = self._started
                    self._ticked.notify_all()
                await asyncio.sleep(IDLE_TICK_SECONDS / 10)
                continue
            self.error = None
            async with self._ticked:
                self._advance(self._started, last, running)
                self._ticked.notify_all()

    def _advance(self, tick: int, last: int, running: frozenset[int]) -> None:
        self._done = tick
        if self._pending and self._pending[-1][2] == running:
            # Waiting on the same transactions as the last candidate: this one replaces it,
            # keeping its tick number (readers waiting for that tick wait for this one).
            self._pending[-1] = (self._pending[-1][0], last, running)
        elif len(self._pending) < MAX_PENDING:
            # Past the cap a candidate is dropped: only progress is lost, a later tick makes up.
            self._pending.append((tick, last, running))
        safe = [
            (number, candidate)
            for number, candidate, waited in self._pending
            # A finished transaction never runs again: disjoint means all of them ended.
            if not waited or (number < tick and waited.isdisjoint(running))
        ]
        if safe:
            # Safety of S is a statement about every rev <= S: a later safe candidate
            # covers every earlier one, settled or not.
            newest = max(number for number, _ in safe)
            self.value = max(self.value, *(candidate for _, candidate in safe))
            self._pending = [entry for entry in self._pending if entry[0] > newest]
