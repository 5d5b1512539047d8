"""Slow and surplus clients: header and body deadlines, a header size cap, a connection bound.

uvicorn closes idle kept-alive connections (``timeout_keep_alive``) but gives a client that
sends its request slowly all the time it wants: 200 "slowloris" connections trickling header
bytes, or declaring a body and never sending it, stayed open indefinitely, each holding a file
descriptor and some memory. We keep uvicorn (with httptools, it is the fastest server we
measured) and hand it this protocol class (uvicorn's ``http=`` option): uvicorn's own httptools
protocol plus, per connection,

* a **header deadline** (``limits.header_timeout``): from the connection's start, or from the
  first byte of the next request on a kept-alive connection, to the end of the headers; then
  ``408`` and the connection is closed;
* a **header size cap** (``limits.max_header_bytes``, checked per read, so a read's worth
  beyond it): ``431`` and closed, so a client cannot grow the header list without bound;
* a **body deadline** (``limits.body_timeout``): from the end of the headers to the end of the
  body; then ``408`` (unless the route answered already, as it does at once on an unknown
  path, leaving the body to be drained) and closed; the route reading the body sees a
  disconnect;
* a **connection bound** (``limits.max_connections``): a connection beyond it is closed as soon
  as it is accepted, before anything is read, so the relay cannot run out of file descriptors.

A deadline is a number on the connection, set and cleared as the request goes through its
phases (no timer per request: two timers a request cost more than all the checks of
:mod:`._http_guard`); one sweep per server, every :data:`SWEEP_SECONDS`, closes the
connections past theirs. The hooks are httptools' parser callbacks and asyncio's protocol
methods, which uvicorn's class implements; each override calls uvicorn's and adds only that.
``python -m benchmarks.slow_clients`` measures it (see the README's Security section).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from commander_os.config import LimitsConfig

__all__ = ["SWEEP_SECONDS", "GuardedHttpToolsProtocol", "guarded_protocol"]

#: Seconds between two sweeps for connections past their deadline: a deadline is kept within
#: this much.
SWEEP_SECONDS = 0.25
#: Seconds between two log lines about connections refused past the bound.
_REFUSAL_LOG_SECONDS = 10.0
_log = logging.getLogger("commander_os.relay")


def _answer(status: str, error: str, detail: str) -> bytes:
    """A complete HTTP/1.1 answer with the relay's JSON error body; it closes the connection."""
    body = orjson.dumps({"error": error, "detail": detail})
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_HEADERS_TIMEOUT = _answer(
    "408 Request Timeout", "header_timeout", "the request headers did not arrive in time"
)
_BODY_TIMEOUT = _answer(
    "408 Request Timeout", "body_timeout", "the request body did not arrive in time"
)
_HEADERS_TOO_LARGE = _answer(
    "431 Request Header Fields Too Large",
    "headers_too_large",
    "the request line and headers are too large",
)


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the deadlines and bounds of the module docstring.

    The limits are class attributes: :func:`guarded_protocol` makes a subclass per config,
    since uvicorn builds protocols itself with its own arguments.
    """

    header_timeout: ClassVar[float] = LimitsConfig().header_timeout
    body_timeout: ClassVar[float] = LimitsConfig().body_timeout
    max_header_bytes: ClassVar[int] = LimitsConfig().max_header_bytes
    max_connections: ClassVar[int] = LimitsConfig().max_connections
    #: Connections closed at accept because the bound was reached (this process, all apps).
    refused_connections: ClassVar[int] = 0
    _last_refusal_log: ClassVar[float] = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        #: Loop time by which the current phase must end (inf: no phase is timed).
        self._due = math.inf
        self._expired: Callable[[], None] = self._headers_too_slow
        self._in_headers = True
        self._header_bytes = 0
        self._refused = False

    # -- asyncio protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._time(self.header_timeout, self._headers_too_slow)
        _Sweep.watch(self.loop, self.connections)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._close(_HEADERS_TOO_LARGE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._due = math.inf
        if not self._refused:
            super().connection_lost(exc)

    # -- httptools parser callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        if self._due == math.inf:  # the next request on a kept-alive connection
            self._header_bytes = 0
            self._time(self.header_timeout, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._time(self.body_timeout, self._body_too_slow)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._due = math.inf
        super().on_message_complete()

    # -- deadlines ----------------------------------------------------------------------------

    def _time(self, seconds: float, expired: Callable[[], None]) -> None:
        self._due = self.loop.time() + seconds
        self._expired = expired

    def check_deadline(self, now: float) -> None:
        """Close this connection if its current phase ran past its deadline (the sweep)."""
        if now >= self._due:
            self._due = math.inf
            self._expired()

    def _headers_too_slow(self) -> None:
        self._close(_HEADERS_TIMEOUT)

    def _body_too_slow(self) -> None:
        # The route waiting for this body sees a disconnect; what it answers then is dropped.
        cycle = self.cycle
        self._close(_BODY_TIMEOUT, answer=cycle is not None and not cycle.response_started)

    def _close(self, message: bytes, *, answer: bool | None = None) -> None:
        """Send ``message`` (by default: unless a response is under way here), then close."""
        if self.transport.is_closing():
            return
        if answer is None:
            answer = self.cycle is None or self.cycle.response_complete
        if answer:
            self.transport.write(message)
        self.transport.close()

    def _refuse(self, transport: asyncio.Transport) -> None:
        self._refused = True
        transport.close()
        cls = GuardedHttpToolsProtocol
        cls.refused_connections += 1
        now = time.monotonic()
        if now - cls._last_refusal_log >= _REFUSAL_LOG_SECONDS:
            cls._last_refusal_log = now
            _log.warning(
                "relay: %d connections open (limits.max_connections); closing new ones (%d so far)",
                self.max_connections,
                cls.refused_connections,
            )


class _Sweep:
    """One per server (its set of open connections): closes those past their deadline."""

    _running: ClassVar[dict[int, _Sweep]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        self.loop = loop
        self.connections = connections

    @classmethod
    def watch(cls, loop: asyncio.AbstractEventLoop, connections: set[Any]) -> None:
        """Make sure the connections of one server are swept (from their first one on)."""
        if id(connections) not in cls._running:
            sweep = cls._running[id(connections)] = _Sweep(loop, connections)
            loop.call_later(SWEEP_SECONDS, sweep.run)

    def run(self) -> None:
        now = self.loop.time()
        for protocol in list(self.connections):
            if isinstance(protocol, GuardedHttpToolsProtocol):
                protocol.check_deadline(now)
        if self.connections:
            self.loop.call_later(SWEEP_SECONDS, self.run)
        else:  # idle: the next connection starts a sweep again
            del self._running[id(self.connections)]


def guarded_protocol(limits: LimitsConfig) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=`` option, with ``limits``' deadlines."""
    return type(
        "RelayHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout": limits.header_timeout,
            "body_timeout": limits.body_timeout,
            "max_header_bytes": limits.max_header_bytes,
            "max_connections": limits.max_connections,
        },
    )
