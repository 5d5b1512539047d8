"""The change feed's long-poll: wake waiting readers after each commit made through this relay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress

from commander_os.protocol import QueryRequest, QueryResponse, StoredRecord, encode_cursor

__all__ = ["MAX_WAIT_SECONDS", "ChangeNotifier", "changes_page"]

#: Longest long-poll of ``/relay/changes`` (seconds); also bounds how long shutdown may wait.
MAX_WAIT_SECONDS = 30.0
#: Writes through other relays on the same database do not wake us: re-check this often.
RECHECK_SECONDS = 1.0


class ChangeNotifier:
    """Wakes long-polling ``/relay/changes`` readers after each commit made through this relay."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def notify(self) -> None:
        """A commit happened: wake everyone waiting now."""
        event, self.event = self.event, asyncio.Event()
        event.set()


async def changes_page(
    notifier: ChangeNotifier,
    query: Callable[[QueryRequest], Awaitable[QueryResponse]],
    request: QueryRequest,
    wait: float,
) -> tuple[list[StoredRecord], str | None]:
    """The next page after ``request.cursor``, waiting up to ``wait`` seconds for one."""
    deadline = time.monotonic() + min(wait, MAX_WAIT_SECONDS)
    while True:
        event = notifier.event  # taken before the query, so no commit slips between
        page = await query(request)
        remaining = deadline - time.monotonic()
        if page.records or remaining <= 0:
            break
        with suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=min(remaining, RECHECK_SECONDS))
    cursor = encode_cursor(page.records[-1].rev) if page.records else request.cursor
    return page.records, cursor
