"""Relays on one PostgreSQL wake each other: each commit is announced with NOTIFY, and each
relay LISTENs for the others' announcements.

A NOTIFY sent inside the write transaction would take PostgreSQL's notification-queue lock at
commit, one commit at a time across the server: exactly the global serial section the store
avoids. So announcements go out after the commit, on a connection of their own, coalesced (one
in flight at a time; commits meanwhile are covered by the next). A lost announcement only
delays the others until their next re-check.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
from psycopg import AsyncConnection, sql

__all__ = ["Announcer"]

_log = logging.getLogger("commander_os.relay.central")

NOTIFY = "SELECT pg_notify(%s, %s)"
#: Seconds before a lost listener connection is opened again.
RELISTEN_SECONDS = 1.0

Connect = Callable[[], Awaitable[AsyncConnection[Any]]]


class Announcer:
    """Announces this store's commits on ``channel`` and calls ``heard`` for the others'."""

    def __init__(self, channel: str, connect: Connect, heard: Callable[[], None]) -> None:
        self.channel = channel
        self._connect = connect
        self._heard = heard
        #: Our own announcements carry this, so we do not wake ourselves.
        self._instance = uuid.uuid4().hex
        self._listen_task: asyncio.Task[None] | None = None
        self._send_task: asyncio.Task[None] | None = None
        self._again = False
        self._conn: AsyncConnection[Any] | None = None

    def start(self) -> None:
        """Start listening (on the running event loop)."""
        self._listen_task = asyncio.create_task(self._listen(), name="central-listen")

    async def stop(self) -> None:
        """Stop listening and announcing. Idempotent."""
        for task in (self._listen_task, self._send_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._listen_task = self._send_task = None
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.close()

    def announce(self) -> None:
        """A commit happened here: tell the other relays (soon, coalesced)."""
        if self._send_task is not None and not self._send_task.done():
            self._again = True
            return
        self._send_task = asyncio.create_task(self._send(), name="central-notify")

    async def _send(self) -> None:
        self._again = True
        while self._again:
            self._again = False
            try:
                conn = self._conn
                if conn is None or conn.closed:
                    conn = self._conn = await self._connect()
                await conn.execute(NOTIFY, (self.channel, self._instance))
            except psycopg.Error as exc:  # the others find the commit on their next re-check
                _log.debug("change announcement failed: %s", exc)
                self._conn = None
                return

    async def _listen(self) -> None:
        while True:
            try:
                conn = await self._connect()
                try:
                    await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    async for note in conn.notifies():
                        if note.payload != self._instance:
                            self._heard()
                finally:
                    await conn.close()
            except psycopg.Error as exc:
                _log.debug("change listener lost its connection: %s", exc)
            await asyncio.sleep(RELISTEN_SECONDS)
