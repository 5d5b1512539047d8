"""Reading other agents' data through the relay: the arguments of ``query_network``, and the
async clients that ``aquery_network`` and friends use.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import suppress
from datetime import datetime
from typing import Any, NamedTuple

from commander_os.identifiers import validate_agent_id
from commander_os.storage._delivery.client import AsyncRelayClient
from commander_os.storage._delivery.targets import Target

__all__ = ["AsyncReads", "Where", "query_filters"]

#: How long closing a store waits for another thread's event loop to close its connections.
_CLOSE_WAIT_SECONDS = 5.0

#: A ``where`` clause: ``{"field": ..., "op": ..., "value": ...}`` or ``(field, op, value)``.
Where = Mapping[str, Any] | tuple[str, str, Any]


def _clauses(where: Sequence[Where] | Where) -> list[dict[str, Any]]:
    if isinstance(where, tuple) and len(where) == 3 and isinstance(where[0], str):
        where = [where]  # one ("field", "op", value) clause given without its list
    return [
        dict(clause)
        if isinstance(clause, Mapping)
        else {"field": clause[0], "op": clause[1], "value": clause[2]}
        for clause in where
    ]


def query_filters(
    *,
    agent_id: str | Sequence[str] | None,
    table: str | None,
    key: str | None,
    key_prefix: str | None,
    where: Sequence[Where] | Where,
    updated_since: datetime | str | None,
    include_deleted: bool,
    page_size: int,
) -> dict[str, Any]:
    """The fields of a ``/relay/query`` request for ``query_network``'s arguments.

    Raises :class:`~commander_os.errors.InvalidAgentId` for a bad agent id before anything is
    sent (the same explanation a store or the relay gives).
    """
    since = updated_since.isoformat() if isinstance(updated_since, datetime) else updated_since
    agents = agent_id if agent_id is None or isinstance(agent_id, str) else list(agent_id)
    for one in [agents] if isinstance(agents, str) else agents or []:
        validate_agent_id(one)
    return {
        "agent_id": agents,
        "table": table,
        "key": key,
        "key_prefix": key_prefix,
        "where": _clauses(where) or None,
        "updated_since": since,
        "include_deleted": include_deleted or None,
        "limit": page_size,
    }


class AsyncReads:
    """A store's :class:`AsyncRelayClient` per target, one per event loop, made on first use.

    An ``httpx.AsyncClient``'s connections belong to the loop that opened them, so a store used
    from two loops (two ``asyncio.run`` calls, or a loop per thread) gets a client per loop.
    Every read is a coroutine on that loop: no thread per call. Each client is closed when the
    store closes, or when its loop ends (``asyncio.run`` closes the loop's async generators
    before the loop: a small generator per client holds its ``aclose``).
    """

    def __init__(self, make: Callable[[Target], AsyncRelayClient]) -> None:
        self._make = make
        self._clients: dict[tuple[asyncio.AbstractEventLoop, str], asyncio.Task[_Held]] = {}
        self._lock = threading.Lock()

    async def client(self, target: Target) -> AsyncRelayClient:
        """The client of ``target`` on the running event loop."""
        loop = asyncio.get_running_loop()
        with self._lock:
            starting = self._clients.get((loop, target.name))
            if starting is None or _failed(starting):
                for old in [old for old in self._clients if old[0].is_closed()]:
                    del self._clients[old]  # its loop ended and closed it
                starting = loop.create_task(self._start(target))
                self._clients[loop, target.name] = starting
        return (await asyncio.shield(starting)).client

    async def _start(self, target: Target) -> _Held:
        # Made in a worker thread, once per loop: building a client may read a CA bundle.
        client = await asyncio.to_thread(self._make, target)
        held = _Held(client, _closer(client))
        await anext(held.closer)  # started: the loop now closes it at shutdown
        return held

    def close(self) -> None:
        """Close every client on its own loop (from any thread; idempotent)."""
        with self._lock:
            clients, self._clients = self._clients, {}
        try:
            current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            current = None
        for (loop, _), starting in clients.items():
            if loop.is_closed() or not starting.done() or starting.cancelled():
                continue  # a client still being made is closed by its loop at shutdown
            if starting.exception() is not None:
                continue
            held = starting.result()
            if loop is current:
                # Called synchronously from a coroutine on that loop: it cannot be waited for.
                task = loop.create_task(held.closer.aclose())
                task.add_done_callback(_ignore_result)
            elif loop.is_running():
                future = asyncio.run_coroutine_threadsafe(held.closer.aclose(), loop)
                with suppress(Exception):
                    future.result(_CLOSE_WAIT_SECONDS)
            else:
                loop.run_until_complete(held.closer.aclose())


class _Held(NamedTuple):
    client: AsyncRelayClient
    closer: AsyncGenerator[None, None]


async def _closer(client: AsyncRelayClient) -> AsyncGenerator[None, None]:
    try:
        yield
    finally:
        await client.aclose()


def _failed(task: asyncio.Task[_Held]) -> bool:
    """A client that could not be made (the store was closed meanwhile, ...): make it anew."""
    return task.done() and (task.cancelled() or task.exception() is not None)


def _ignore_result(task: asyncio.Task[None]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not log "exception never retrieved"
