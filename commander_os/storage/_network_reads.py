"""Reading other agents' data through the relay: the arguments of ``query_network``, and the
async clients that ``aquery_network`` and friends use.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from contextlib import suppress
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple

from commander_os.config import StorageConfig
from commander_os.errors import RelayUnavailable
from commander_os.identifiers import validate_agent_id
from commander_os.storage._delivery.client import AsyncRelayClient, RelayClient
from commander_os.storage._delivery.targets import Target, config_targets

if TYPE_CHECKING:
    from commander_os.storage._delivery.link import StoreLink

__all__ = ["AsyncReads", "NetworkReads", "Where", "query_filters"]

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


def _no_target_answered(failures: list[RelayUnavailable]) -> RelayUnavailable:
    """The error of a read no target could answer: the one failure, or all of them."""
    if len(failures) == 1:
        return failures[0]
    error = RelayUnavailable("no target could answer: " + "; ".join(map(str, failures)))
    error.__cause__ = failures[-1]
    return error


class NetworkReads:
    """The network reads of a store (mixed into :class:`~.base_storage.BaseStorage`): every
    agent's data through the relay, blocking or as coroutines, falling back along targets."""

    # Set by BaseStorage.__init__.
    config: StorageConfig
    _lock: threading.RLock
    _link: StoreLink | None
    _relay: RelayClient | None
    _replica_readers: dict[str, RelayClient]
    _async_reads: AsyncReads

    if TYPE_CHECKING:

        def _require_open(self) -> sqlite3.Connection: ...

    @property
    def relay(self) -> RelayClient:
        """A client for the configured relay(s), for network-wide reads."""
        with self._lock:
            if self._relay is None:
                self._relay = RelayClient.from_config(self.config)
            return self._relay

    def _make_async_client(self, store: Target) -> AsyncRelayClient:
        self._require_open()
        return AsyncRelayClient.from_config(self.config, urls=list(store.urls))

    def query_network(
        self,
        *,
        agent_id: str | Sequence[str] | None = None,
        table: str | None = None,
        key: str | None = None,
        key_prefix: str | None = None,
        where: Sequence[Where] | Where = (),
        updated_since: datetime | str | None = None,
        include_deleted: bool = False,
        page_size: int = 100,
        max_records: int | None = None,
        target: str | None = None,
    ) -> list[dict[str, Any]]:
        """Query every agent's data on the relay (``/relay/query``), following cursors.

        ``where`` clauses are ``{"field": "value.theme", "op": "eq", "value": "dark"}`` dicts
        or ``("value.theme", "eq", "dark")`` tuples. Returns the records (``agent_id, table,
        key, data, version, ts, deleted``). With ``replicate_to`` the query goes to the first
        healthy target and falls back to the next one that answers; ``target`` (the URL of
        one of its relays) names the one to ask. Raises
        :class:`~commander_os.errors.RelayError` when no target can answer.
        """
        filters = query_filters(
            agent_id=agent_id,
            table=table,
            key=key,
            key_prefix=key_prefix,
            where=where,
            updated_since=updated_since,
            include_deleted=include_deleted,
            page_size=page_size,
        )
        failures: list[RelayUnavailable] = []
        for client in self._read_clients(target):
            try:
                # Whole, or again from the start on the next target: a cursor of one central
                # store means nothing to another.
                return list(client.query_all(max_records=max_records, **filters))
            except RelayUnavailable as exc:
                failures.append(exc)
        raise _no_target_answered(failures)

    async def aquery_network(
        self,
        *,
        agent_id: str | Sequence[str] | None = None,
        table: str | None = None,
        key: str | None = None,
        key_prefix: str | None = None,
        where: Sequence[Where] | Where = (),
        updated_since: datetime | str | None = None,
        include_deleted: bool = False,
        page_size: int = 100,
        max_records: int | None = None,
        target: str | None = None,
    ) -> list[dict[str, Any]]:
        """:meth:`query_network` as a coroutine on ``httpx.AsyncClient``: the event loop keeps
        running while the relay answers (no thread per call). Falls back along the targets as
        :meth:`query_network` does."""
        filters = query_filters(
            agent_id=agent_id,
            table=table,
            key=key,
            key_prefix=key_prefix,
            where=where,
            updated_since=updated_since,
            include_deleted=include_deleted,
            page_size=page_size,
        )
        failures: list[RelayUnavailable] = []
        for store in self._read_targets(target):
            client = await self._async_reads.client(store)
            try:
                pages = client.query_all(max_records=max_records, **filters)
                return [record async for record in pages]
            except RelayUnavailable as exc:
                failures.append(exc)
        raise _no_target_answered(failures)

    def get_network_record(
        self, agent_id: str, table: str, key: str, *, target: str | None = None
    ) -> dict[str, Any] | None:
        """The relay's record of one row of any agent (``data``, ``version``, ``ts``, ...).

        None when the relay holds no such row or holds its deletion. Raises
        :class:`~commander_os.errors.RelayError` if the relay cannot be asked. ``target`` as
        in :meth:`query_network`.
        """
        records = self.query_network(
            agent_id=agent_id, table=table, key=key, max_records=1, target=target
        )
        return records[0] if records else None

    async def aget_network_record(
        self, agent_id: str, table: str, key: str, *, target: str | None = None
    ) -> dict[str, Any] | None:
        """:meth:`get_network_record` as a coroutine (no thread per call)."""
        records = await self.aquery_network(
            agent_id=agent_id, table=table, key=key, max_records=1, target=target
        )
        return records[0] if records else None

    def _read_targets(self, target: str | None) -> list[Target]:
        """The targets a network read tries, in order: ``target``'s alone, or every target,
        those whose deliveries succeed first (configuration order otherwise)."""
        stores = config_targets(self.config)
        if target is not None:
            wanted = target.rstrip("/")
            stores = [store for store in stores if wanted in store.urls]
            if not stores:
                names = ", ".join(t.name for t in config_targets(self.config))
                raise ValueError(f"target {target!r} is not one of this store's ({names})")
        link = self._link
        if link is not None and target is None:
            failing = {name for name, lane in link.lanes.items() if lane.failures}
            stores.sort(key=lambda store: store.name in failing)  # stable: config order kept
        return stores

    def _read_clients(self, target: str | None) -> list[RelayClient]:
        """The blocking clients of :meth:`_read_targets`."""
        return [self._reader(store) for store in self._read_targets(target)]

    def _reader(self, store: Target) -> RelayClient:
        if store.name == self.config.relay_urls()[0]:
            return self.relay
        with self._lock:
            client = self._replica_readers.get(store.name)
            if client is None:
                client = RelayClient.from_config(self.config, urls=list(store.urls))
                self._replica_readers[store.name] = client
            return client
