"""The change feed's long-poll, fanned out: one query per commit serves every waiter of a relay.

:class:`ChangeNotifier` keeps a *window* of the newest changes, read by one task (the hub):
each time a commit is announced (by this relay's ingest, or by another relay on the same
PostgreSQL through the store's change listeners), the hub reads what was committed after the
window's head, once, whatever the number of waiters, and wakes them. A waiter whose cursor is
inside the window is answered from it (filtered by its agents and table); one behind the window
(catching up) queries the store, as before, until its cursor reaches the window.

The window holds each record once, at its newest rev (a change of a key drops the older entry),
so an answer from it equals what a store query after the same cursor returns: no gap (the hub
reads every rev in order, up to the store's commit-order watermark), no duplicate, each agent's
order kept.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from commander_os.errors import InvalidCursor
from commander_os.protocol import QueryRequest, QueryResponse, StoredRecord, decode_cursor
from commander_os.protocol import encode_cursor as _encode_cursor

__all__ = ["MAX_WAIT_SECONDS", "ChangeNotifier", "changes_page"]

_log = logging.getLogger("commander_os.relay")

#: Longest long-poll of ``/relay/changes`` (seconds); also bounds how long shutdown may wait.
MAX_WAIT_SECONDS = 30.0
#: Commits nobody announced (another relay without a change listener) are found this often.
RECHECK_SECONDS = 1.0
#: Changes the window keeps; a waiter further behind queries the store.
WINDOW_RECORDS = 20_000
#: Records the hub reads per query.
HUB_PAGE = 1000

Query = Callable[[QueryRequest], Awaitable[QueryResponse]]
Head = Callable[[], Awaitable[int]]
Identity = tuple[str, str, str]


class ChangeNotifier:
    """Announces commits and keeps the window of newest changes (see the module docstring).

    The window is read by whichever waiter looks first after an announcement; the others
    await that same read (:meth:`refresh`): no task of its own, so nothing to start or stop.
    """

    def __init__(self, *, window: int = WINDOW_RECORDS) -> None:
        #: Set (and replaced) at each announced commit.
        self.event = asyncio.Event()
        self.window = window
        #: The window covers revs in (base, head]; None until first read (or after a failure).
        self.base: int | None = None
        self.head = 0
        #: Queries the window's reads ran (one per announced commit at most, whatever the
        #: number of waiters).
        self.reads = 0
        self._revs: list[int] = []
        self._records: dict[int, StoredRecord] = {}
        self._newest: dict[Identity, int] = {}
        self._dirty = True
        self._reading: asyncio.Future[None] | None = None

    def notify(self) -> None:
        """A commit happened (here or, announced by the store, on another relay)."""
        self._dirty = True
        event, self.event = self.event, asyncio.Event()
        event.set()

    async def refresh(self, source: Query, head: Head) -> None:
        """Read what was committed since the window's head, once for every caller waiting
        now (``source`` queries the store; ``head`` is the highest rev readers may read, where
        a new window starts). A failure empties the window: waiters then query the store."""
        if self._reading is None or self._reading.done():
            if not self._dirty:
                return
            self._dirty = False
            self._reading = asyncio.ensure_future(self._read(source, head))
            # A read nobody awaits any more must not log "exception never retrieved".
            self._reading.add_done_callback(lambda done: done.cancelled() or done.exception())
        with contextlib.suppress(Exception):
            await asyncio.shield(self._reading)

    async def _read(self, source: Query, head: Head) -> None:
        try:
            if self.base is None:
                self.base = self.head = await head()
            while True:
                self.reads += 1
                request = QueryRequest(
                    cursor=_encode_cursor(self.head), include_deleted=True, limit=HUB_PAGE
                )
                page = await source(request)
                for record in page.records:
                    self._add(record)
                if len(page.records) < HUB_PAGE:
                    break
        except Exception as exc:  # the store away, or the window fell past retention
            _log.debug("change feed window dropped: %s", exc)
            self.base, self._revs, self._records, self._newest = None, [], {}, {}
            self._dirty = True
            raise
        if len(self._records) > self.window:
            self._evict()

    def _add(self, record: StoredRecord) -> None:
        ident = (record.agent_id, record.table, record.key)
        older = self._newest.get(ident)
        if older is not None:
            self._records.pop(older, None)  # the newest rev only, as a store query answers
        self._newest[ident] = record.rev
        self._records[record.rev] = record
        self._revs.append(record.rev)
        self.head = record.rev

    def _evict(self) -> None:
        """Drop the older half of the window (and revs whose record moved on)."""
        live = [rev for rev in self._revs if rev in self._records]
        cut = len(live) - self.window // 2
        for rev in live[:cut]:
            record = self._records.pop(rev)
            ident = (record.agent_id, record.table, record.key)
            if self._newest.get(ident) == rev:
                del self._newest[ident]
        self._revs = live[cut:]
        self.base = live[cut - 1]

    def answer(self, after: int, request: QueryRequest, limit: int) -> list[StoredRecord] | None:
        """Up to ``limit`` changes after rev ``after`` matching ``request``'s agents and
        table, from the window; None when ``after`` is not inside it."""
        if self.base is None or after < self.base:
            return None
        agents = request.agent_ids()
        wanted = None if agents is None else set(agents)
        found: list[StoredRecord] = []
        for rev in self._revs[bisect.bisect_right(self._revs, after) :]:
            record = self._records.get(rev)
            if record is None:
                continue
            if wanted is not None and record.agent_id not in wanted:
                continue
            if request.table is not None and record.table != request.table:
                continue
            found.append(record)
            if len(found) == limit:
                break
        return found


def _start(request: QueryRequest, has_window: bool) -> tuple[int, bool]:
    """Where a page starts (the cursor's rev) and whether the window may answer it."""
    if request.cursor is None:
        return 0, False
    try:
        return decode_cursor(request.cursor), has_window
    except InvalidCursor:
        return 0, False  # the store's query refuses it, with the caller's answer


async def _wait_for_news(notifier: ChangeNotifier, event: asyncio.Event, remaining: float) -> None:
    """Sleep until a commit is announced, at most ``remaining`` (and a re-check) seconds."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=min(remaining, RECHECK_SECONDS))
    if not event.is_set():
        notifier.notify()  # nothing announced for a while: look anyway


async def changes_page(
    notifier: ChangeNotifier,
    query: Query,
    request: QueryRequest,
    wait: float,
    *,
    source: Query | None = None,
    head: Head | None = None,
    limit_cap: int | None = None,
) -> tuple[list[StoredRecord], str | None]:
    """The next page after ``request.cursor``, waiting up to ``wait`` seconds for one.

    With ``source`` and ``head`` (the store's unrestricted query and its readable head) pages
    come from the notifier's window when the cursor is inside it; else, and at the deadline
    (so a reader that does not wait sees what was just committed), from ``query``.
    """
    deadline = time.monotonic() + min(wait, MAX_WAIT_SECONDS)
    limit = request.limit if limit_cap is None else min(request.limit, limit_cap)
    window = (source, head) if source is not None and head is not None else None
    after, windowed = _start(request, window is not None)
    while True:
        event = notifier.event  # taken before looking, so no announcement slips between
        records: list[StoredRecord] | None = None
        if windowed and window is not None:
            await notifier.refresh(*window)
            records = notifier.answer(after, request, limit)
        remaining = deadline - time.monotonic()
        if not records and (records is None or remaining <= 0):
            base = notifier.base  # before the query: an empty answer read at least up to it
            records = list((await query(request)).records)
            remaining = deadline - time.monotonic()
            if not records and base is not None and window is not None:
                # Nothing matching up to the window's start: the window answers from here.
                after, windowed = max(after, base), True
        if records or remaining <= 0:
            break
        await _wait_for_news(notifier, event, remaining)
    cursor = _encode_cursor(records[-1].rev) if records else request.cursor
    return records, cursor
