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
* a **body deadline**: the route reading the body answers ``408`` after ``limits.body_timeout``
  (:func:`~commander_os.relay._body.read_body`); :data:`BODY_GRACE_SECONDS` later the
  connection is closed whatever happens, which covers bodies no route reads (a ``POST`` to an
  unknown path is answered at once and its body would otherwise be drained forever);
* a **connection bound** (``limits.max_connections``): a connection beyond it is closed as soon
  as it is accepted, before anything is read, so the relay cannot run out of file descriptors.

The hooks are httptools' parser callbacks and asyncio's protocol methods, which uvicorn's class
implements; each override calls uvicorn's first or last and only adds a timer. Measured on the
2-vCPU development machine (``benchmarks/slow_clients.py``): no difference in requests per
second beyond noise, and 200 slowloris connections closed within 0.1 s of their deadline while
ordinary requests kept being answered.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, ClassVar

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from commander_os.config import LimitsConfig

__all__ = ["BODY_GRACE_SECONDS", "GuardedHttpToolsProtocol", "guarded_protocol"]

#: Seconds between the route's 408 for a stalled body and the server closing the connection.
BODY_GRACE_SECONDS = 1.0
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
    body_deadline: ClassVar[float] = LimitsConfig().body_timeout + BODY_GRACE_SECONDS
    max_header_bytes: ClassVar[int] = LimitsConfig().max_header_bytes
    max_connections: ClassVar[int] = LimitsConfig().max_connections
    #: Connections closed at accept because the bound was reached (this process, all apps).
    refused_connections: ClassVar[int] = 0
    _last_refusal_log: ClassVar[float] = 0.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_headers = True
        self._header_bytes = 0
        self._refused = False

    # -- asyncio protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._arm(self.header_timeout, self._headers_too_slow)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._in_headers and not self.transport.is_closing():
            self._header_bytes += len(data)
            if self._header_bytes > self.max_header_bytes:
                self._close(_HEADERS_TOO_LARGE)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        if not self._refused:
            super().connection_lost(exc)

    # -- httptools parser callbacks -----------------------------------------------------------

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_headers = True
        if self._deadline is None:  # the next request on a kept-alive connection
            self._header_bytes = 0
            self._arm(self.header_timeout, self._headers_too_slow)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._arm(self.body_deadline, self._body_too_slow)
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    # -- deadlines ----------------------------------------------------------------------------

    def _arm(self, seconds: float, expired: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_too_slow(self) -> None:
        self._deadline = None
        self._close(_HEADERS_TIMEOUT)

    def _body_too_slow(self) -> None:
        # The route had its chance to answer 408 (read_body); whatever state it is in, the
        # client's time is up. Its task sees a disconnect.
        self._deadline = None
        if not self.transport.is_closing():
            self.transport.close()

    def _close(self, answer: bytes) -> None:
        """Send ``answer`` unless a response is under way on this connection, then close."""
        if self.transport.is_closing():
            return
        if self.cycle is None or self.cycle.response_complete:
            self.transport.write(answer)
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


def guarded_protocol(limits: LimitsConfig) -> type[GuardedHttpToolsProtocol]:
    """The protocol class for uvicorn's ``http=`` option, with ``limits``' deadlines."""
    return type(
        "RelayHttpProtocol",
        (GuardedHttpToolsProtocol,),
        {
            "header_timeout": limits.header_timeout,
            "body_deadline": limits.body_timeout + BODY_GRACE_SECONDS,
            "max_header_bytes": limits.max_header_bytes,
            "max_connections": limits.max_connections,
        },
    )
