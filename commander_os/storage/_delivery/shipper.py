"""The shipper: one per process, delivering the outboxes of every store the process opened.

Stores attach on open and detach on close. Each target gets one :class:`~.route.Route` (one
loop, one HTTP client) for all the stores shipping there; a store owns a cursor per target
(its :class:`~.lane.Lane`), never a thread. An idle store costs nothing but a cheap look for
other processes' commits every ``poll_interval``.

``Shipper.for_process()`` is the process's shipper; after ``fork()`` the child gets a new one
(the parent's threads do not exist there) and its stores attach to it again.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

from commander_os.config import StorageConfig, read_token
from commander_os.errors import RelayError
from commander_os.storage import _outbox as outbox
from commander_os.storage._delivery import targets
from commander_os.storage._delivery.client import RelayClient
from commander_os.storage._delivery.lane import Lane
from commander_os.storage._delivery.link import ShippedStore, StoreLink
from commander_os.storage._delivery.route import Route, RouteSettings

__all__ = ["Shipper"]


@dataclass(frozen=True, slots=True)
class _RouteKey:
    """What makes two stores' deliveries one route."""

    target: targets.Target
    token: str | None
    ca_file: str | None
    timeout: float


class Shipper:
    """Delivers the outboxes of the stores of one process (see the module docstring).

    ``background=False`` runs no threads and sends no heartbeats: tests drive :meth:`step`
    themselves, and see only the requests their steps make.
    """

    _process: ClassVar[Shipper | None] = None
    _process_pid: ClassVar[int] = -1
    _process_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        *,
        background: bool = True,
        client_factory: Callable[[targets.Target, StorageConfig], RelayClient] | None = None,
    ) -> None:
        self.background = background
        self.routes: dict[_RouteKey, Route] = {}
        self._client_factory = client_factory or _client_for
        self._lock = threading.RLock()

    @classmethod
    def for_process(cls) -> Shipper:
        """The shipper of this process (a new one in a forked child)."""
        with cls._process_lock:
            if cls._process is None or cls._process_pid != os.getpid():
                cls._process = cls()
                cls._process_pid = os.getpid()
            return cls._process

    # -- stores ------------------------------------------------------------------------------

    def attach(self, store: ShippedStore, wanted: list[targets.Target] | None = None) -> StoreLink:
        """Start shipping ``store`` to ``wanted`` (default: its config's targets), or, if another
        process ships it, follow its cursors."""
        config = store.config
        wanted = wanted or targets.config_targets(config)
        with self._lock:
            link = StoreLink(store, self._wake_all)
            cursors = link.activate(wanted)
            for target in wanted:
                route = self._route(target, config)
                cursor = cursors.get(target.name)
                lane = Lane(
                    link,
                    target.name,
                    cursor.acked if cursor else 0,
                    cursor.acked_incarnation if cursor else 0,
                    bool(cursor and cursor.repair),
                    config.sync_batch_size,
                )
                lane.route = route
                link.lanes[target.name] = lane
                route.add(lane)
        return link

    def detach(self, link: StoreLink, *, settle_seconds: float = 5.0) -> None:
        """Stop shipping ``link``'s store and let another process take it over.

        Waits (up to ``settle_seconds``) for requests in flight to be answered first: a change
        the relay took while its answer was dropped would come back as a resend from another
        process, which the relay cannot tell from a rollback (it would grant a new incarnation).
        """
        with self._lock:
            for lane in link.lanes.values():
                lane.route.remove(lane)
        if self.background:
            deadline = time.monotonic() + settle_seconds
            with link.changed:
                while any(lane.in_flight for lane in link.lanes.values()):
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    link.changed.wait(min(0.05, remaining))
        else:
            for lane in link.lanes.values():
                while lane.in_flight:
                    lane.route.step()
        link.release()

    def _route(self, target: targets.Target, config: StorageConfig) -> Route:
        # Stores share a route when they ship to the same relays with the same credentials.
        token = read_token(config)
        ca_file = None if config.htpc_ca_file is None else str(config.htpc_ca_file)
        key = _RouteKey(target, token, ca_file, config.request_timeout)
        route = self.routes.get(key)
        if route is None:
            settings = _settings(config)
            if not self.background:
                settings = replace(settings, heartbeat_interval=0.0)
            route = Route(target.name, self._client_factory(target, config), settings)
            self.routes[key] = route
            if self.background:
                route.start()
        return route

    def _wake_all(self) -> None:
        for route in list(self.routes.values()):
            route.wake()

    # -- driving -----------------------------------------------------------------------------

    def step(self) -> bool:
        """One synchronous step of every route (without background threads)."""
        worked = False
        for route in list(self.routes.values()):
            worked |= route.step(wait=True)
        return worked

    def notify(self, link: StoreLink) -> None:
        """``link``'s store committed: its lanes have something to send."""
        for lane in link.lanes.values():
            lane.dirty = True
            lane.route.wake()

    def flush(
        self,
        link: StoreLink,
        timeout: float | None,
        *,
        fail_fast: bool = False,
        progress: Callable[[], object] | None = None,
        every_target: bool = False,
    ) -> bool:
        """Ship everything queued now; True once ``sync_quorum`` targets acknowledged it.

        Retries quickly (not with the usual backoff) until ``timeout``. With ``fail_fast`` a
        failed attempt raises its :class:`RelayError` at once when the targets still answering
        cannot make a quorum. With ``every_target`` (closing) it goes on past the quorum until
        every target that answers has it too.
        """
        with link.reading() as conn:
            # What waits to ship: queued changes (a dead-lettered one never will), or, while a
            # target waits for the store's whole state, everything.
            top = outbox.last_pending_seq(conn)
            if not top and any(lane.needs_repair or lane.repair for lane in link.lanes.values()):
                top = outbox.last_seq(conn)

        def delivered() -> bool:
            if not link.acknowledged(top):
                return False
            # Past the quorum, wait only for targets that answer: one that is away gets the
            # rest when the store opens again.
            return not every_target or all(lane.failures for lane in link.behind(top))

        if delivered() or not link.lanes:
            return True
        deadline = None if timeout is None else time.monotonic() + timeout
        failures = {name: lane.failures for name, lane in link.lanes.items()}
        for lane in link.lanes.values():
            lane.urgent = True
            lane.dirty = True
            lane.route.wake()
        try:
            while not delivered():
                if not self.background:
                    self.step()
                if progress is not None:
                    progress()
                if fail_fast:
                    _raise_new_failure(link, failures)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    return False
                if link.fenced or link.retired or not link.active:
                    return link.acknowledged(top)
                with link.changed:
                    link.changed.wait(0.05 if remaining is None else min(0.05, remaining))
            return True
        finally:
            for lane in link.lanes.values():
                lane.urgent = False

    def close(self) -> None:
        """Stop every route (tests; a process's shipper lives as long as the process)."""
        with self._lock:
            routes, self.routes = list(self.routes.values()), {}
        for route in routes:
            route.stop()


def _client_for(target: targets.Target, config: StorageConfig) -> RelayClient:
    return RelayClient.from_config(config, urls=list(target.urls))


def _raise_new_failure(link: StoreLink, before: dict[str, int]) -> None:
    """Raise the error of a failed attempt once too few targets are left to make a quorum."""
    failed = [
        lane
        for name, lane in link.lanes.items()
        if lane.failures > before.get(name, 0) and lane.last_exception is not None
    ]
    if len(link.lanes) - len(failed) >= link.config.quorum_size():
        return
    for lane in failed[:1]:
        exc = lane.last_exception
        if isinstance(exc, RelayError):
            raise exc
        raise RelayError(f"delivery failed: {type(exc).__name__}: {exc}") from exc


def _settings(config: StorageConfig) -> RouteSettings:
    return RouteSettings(
        pipeline=config.sync_pipeline,
        linger=config.sync_linger,
        backoff_cap=config.sync_interval,
        max_retry_count=config.max_retry_count,
        poll_interval=config.poll_interval,
        request_records=max(1000, config.sync_batch_size),
        heartbeat_interval=config.heartbeat_interval,
    )
