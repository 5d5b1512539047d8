"""RelayClient and AsyncRelayClient: the agent's side of the relay protocol, over httpx.

A client keeps its connections alive across calls (shorter than the relay keeps them, so it
never reuses one the relay is closing), never follows redirects, caps the size of answers, and
maps every failure to our :class:`~commander_os.errors.RelayError` tree (:mod:`._answers`).

With several relay URLs (a fail-over list in front of one central store) the client fails over:
when one is unavailable it tries the next, and stays with the first one that answers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import ssl
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import zstandard

from commander_os.config import StorageConfig, read_token
from commander_os.errors import RelayError, RelayProtocolError, RelayUnavailable
from commander_os.protocol import RELAY_KEEPALIVE_SECONDS, SegmentAck
from commander_os.storage._delivery._answers import (
    DEFAULT_MAX_RESPONSE_BYTES,
    check_acks,
    decode_answer,
    expect_dict,
)

__all__ = ["COMPRESS_OVER_BYTES", "KEEPALIVE_SECONDS", "AsyncRelayClient", "RelayClient"]

#: Request bodies above this size travel zstd-compressed.
COMPRESS_OVER_BYTES = 8192
#: How long an idle connection is kept: below the relay's own keep-alive, so the client never
#: sends on a connection the relay is closing ("Server disconnected").
KEEPALIVE_SECONDS = RELAY_KEEPALIVE_SECONDS * 2 / 3
#: Reads one async client keeps on the wire at once: the relay's default
#: ``limits.max_concurrent_queries`` per caller, so a burst queues here instead of being refused.
DEFAULT_MAX_CONCURRENT_READS = 8
_JSON = {"content-type": "application/json"}
_log = logging.getLogger("commander_os.client")
_USER_AGENT = "commander-os-storage"


def _verify(verify: bool | str | Path) -> Any:
    if isinstance(verify, (str, Path)):
        return _ssl_context(str(verify))
    return _ssl_context(None) if verify else False


@functools.lru_cache(maxsize=16)
def _ssl_context(cafile: str | None) -> ssl.SSLContext:
    """One TLS context per CA file for the whole process. Building one reads and parses a CA
    bundle (~25 ms here): once per client, that made every new client (one per store, and per
    event loop for the async reads) pay it, on the event loop for the async ones."""
    if cafile is None:
        return httpx.create_ssl_context()
    return ssl.create_default_context(cafile=cafile)


def _headers(token: str | None) -> dict[str, str]:
    headers = {"user-agent": _USER_AGENT}
    if token:
        headers["authorization"] = f"Bearer {token}"
    return headers


def _timeout(seconds: float) -> httpx.Timeout:
    return httpx.Timeout(seconds, connect=min(seconds, 3.0))


def _limits() -> httpx.Limits:
    return httpx.Limits(max_keepalive_connections=8, keepalive_expiry=KEEPALIVE_SECONDS)


class _Endpoints:
    """The relay URLs of one client, and which one is in use (shared by both clients)."""

    def __init__(self, urls: str | Sequence[str]) -> None:
        listed = [urls] if isinstance(urls, str) else list(urls)
        if not listed:
            raise ValueError("a relay client needs at least one relay URL")
        self.urls = [url.rstrip("/") for url in listed]
        self.current = 0
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.urls[self.current]

    def failed(self, url: str) -> None:
        """``url`` was unavailable: move along the list (unless another call already did)."""
        with self._lock:
            if self.urls[self.current] == url:
                self.current = (self.current + 1) % len(self.urls)


def _compress(body: bytes, compressor: zstandard.ZstdCompressor) -> tuple[bytes, dict[str, str]]:
    if len(body) > COMPRESS_OVER_BYTES:
        return compressor.compress(body), {**_JSON, "content-encoding": "zstd"}
    return body, dict(_JSON)


def _too_large(url: str, limit: int) -> RelayProtocolError:
    return RelayProtocolError(f"relay at {url} answered more than {limit} bytes; refused")


def warn_hints(page: dict[str, Any]) -> None:
    """Log the relay's hints about a query (an agent it never heard of, ...) as warnings: an
    empty answer to a misspelt id should not pass in silence."""
    hints = page.get("hints")
    if isinstance(hints, list):
        for hint in hints[:20]:
            _log.warning("relay query: %s", str(hint)[:500])


class _Pages:
    """Follows ``next_cursor`` page after page, refusing a relay that repeats a cursor."""

    def __init__(self, filters: dict[str, Any], max_records: int | None) -> None:
        self.cursor = filters.pop("cursor", None)
        self.filters = filters
        self.left = max_records
        self.seen: set[str] = set()

    def body(self) -> bytes:
        fields = {**self.filters, "cursor": self.cursor}
        return orjson.dumps({name: value for name, value in fields.items() if value is not None})

    def take(self, page: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
        """The records of ``page`` to yield, and whether another page must be asked for."""
        warn_hints(page)
        records = page.get("records")
        if not isinstance(records, list):
            raise RelayProtocolError("the relay's query answer has no 'records' list")
        if self.left is not None:
            records = records[: self.left]
            self.left -= len(records)
        cursor = page.get("next_cursor")
        if not cursor or (self.left is not None and self.left <= 0):
            return records, False
        if cursor in self.seen or cursor == self.cursor:
            raise RelayProtocolError(f"the relay repeated cursor {str(cursor)[:40]!r}: stopped")
        self.seen.add(cursor)
        self.cursor = cursor
        return records, True


class RelayClient:
    """Talks to one relay, or fails over along several (blocking calls).

    ``http`` may be given (for example an ``httpx.Client`` bound to an in-process app, or one
    with a fault-injecting transport); otherwise one is made with ``timeout``, ``token`` (sent
    as a bearer token) and ``verify`` (a CA file path, or True for the system store).
    ``max_response_bytes`` bounds every answer.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        http: httpx.Client | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        verify: bool | str | Path = True,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self._endpoints = _Endpoints(urls)
        self.max_response_bytes = max_response_bytes
        if http is None:
            http = httpx.Client(timeout=_timeout(timeout), verify=_verify(verify), limits=_limits())
        http.headers.update(_headers(token))
        self._http = http
        self._compressor = zstandard.ZstdCompressor(level=1)

    @classmethod
    def from_config(cls, config: StorageConfig, urls: Sequence[str] | None = None) -> RelayClient:
        """A client for the relay(s) of an agent's config: URLs, token, timeout and CA file."""
        return cls(
            list(urls) if urls is not None else config.relay_urls(),
            token=read_token(config),
            timeout=config.request_timeout,
            verify=config.htpc_ca_file or True,
        )

    @property
    def urls(self) -> list[str]:
        """The relay URLs, in fail-over order."""
        return self._endpoints.urls

    @property
    def url(self) -> str:
        """The relay URL currently in use."""
        return self._endpoints.url

    # ---------------------------------------------------------------------------- writes

    def deliver(self, segments: Sequence[dict[str, Any]]) -> list[SegmentAck]:
        """Send delivery segments (``protocol._delivery``); their validated acks.

        Raises :class:`~commander_os.errors.RelayProtocolError` when the answer does not
        acknowledge exactly the segments sent.
        """
        body, headers = _compress(orjson.dumps({"segments": segments}), self._compressor)
        answer = self._request("POST", "/relay/batch", content=body, headers=headers)
        return check_acks(answer, segments)

    def push(self, agent_id: str, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Send plain change records of ``agent_id`` (no identity checks); the relay's ack.

        One record goes to ``/relay/immediate``, several to ``/relay/batch``.
        """
        if len(records) == 1:
            return expect_dict(self._post("/relay/immediate", orjson.dumps(records[0])))
        body = orjson.dumps({"agent_id": agent_id, "records": records})
        content, headers = _compress(body, self._compressor)
        return expect_dict(self._request("POST", "/relay/batch", content=content, headers=headers))

    def heartbeats(self, heartbeats: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Report the outbox state of several stores in one request (``protocol._heartbeat``)."""
        body = orjson.dumps({"heartbeats": heartbeats})
        content, headers = _compress(body, self._compressor)
        return expect_dict(
            self._request("POST", "/relay/heartbeats", content=content, headers=headers)
        )

    # ----------------------------------------------------------------------------- reads

    def query(self, **filters: Any) -> dict[str, Any]:
        """One page of ``/relay/query`` results: ``{"records": [...], "next_cursor": ...}``.

        ``filters`` are the fields of :class:`~commander_os.protocol.QueryRequest`; ``None``
        values are left out.
        """
        body = {name: value for name, value in filters.items() if value is not None}
        page = expect_dict(self._post("/relay/query", orjson.dumps(body)))
        warn_hints(page)
        return page

    def query_all(
        self, *, max_records: int | None = None, **filters: Any
    ) -> Iterator[dict[str, Any]]:
        """Every record matching ``filters``, following ``next_cursor`` page after page."""
        pages = _Pages(filters, max_records)
        while True:
            records, more = pages.take(expect_dict(self._post("/relay/query", pages.body())))
            yield from records
            if not more:
                return

    def agents(self) -> list[dict[str, Any]]:
        """``GET /relay/agents``: every agent the relay knows."""
        answer = expect_dict(self._request("GET", "/relay/agents"))
        return list(answer.get("agents", []))

    def health(self) -> dict[str, Any]:
        """``GET /health`` of the relay in use."""
        return expect_dict(self._request("GET", "/health"))

    # -------------------------------------------------------------------------- plumbing

    def _post(self, path: str, body: bytes) -> Any:
        return self._request("POST", path, content=body, headers=_JSON)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send to the current relay; on RelayUnavailable move along the list once round."""
        first_error: RelayUnavailable | None = None
        for _ in range(len(self._endpoints.urls)):
            url = self._endpoints.url
            try:
                return self._send_once(method, url, path, **kwargs)
            except RelayUnavailable as exc:
                first_error = first_error or exc
                self._endpoints.failed(url)
        assert first_error is not None
        raise first_error

    def _send_once(self, method: str, url: str, path: str, **kwargs: Any) -> Any:
        for attempt in (1, 2):
            try:
                with self._http.stream(method, url + path, **kwargs) as response:
                    content = self._read(response, url)
                    return decode_answer(response.status_code, content, method, path)
            except httpx.RemoteProtocolError as exc:
                # A kept-alive connection the relay had just closed: once more, on a new one.
                if attempt == 2:
                    raise RelayUnavailable(f"relay at {url} dropped the connection: {exc}") from exc
            except httpx.TimeoutException as exc:
                raise RelayUnavailable(f"relay at {url} timed out: {exc}") from exc
            except httpx.TransportError as exc:
                raise RelayUnavailable(f"relay at {url} unreachable: {exc}") from exc
        raise RelayError("unreachable")  # pragma: no cover - the loop returns or raises

    def _read(self, response: httpx.Response, url: str) -> bytes:
        limit = self.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(url, limit)
        chunks: list[bytes] = []
        size = 0
        for chunk in response.iter_bytes():
            size += len(chunk)
            if size > limit:
                raise _too_large(url, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> RelayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _Throttled(Exception):
    """The relay answered 429: it is there, but busy with this caller's other requests."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


class AsyncRelayClient:
    """:class:`RelayClient`'s reads for event loops, on ``httpx.AsyncClient`` (no thread per
    call): ``query``, ``query_all``, ``agents`` and ``health`` as coroutines.

    Many concurrent calls are fine: at most ``max_concurrent`` are on the wire at once (the
    relay runs 8 queries per caller by default and refuses the ninth with 429), the others wait
    their turn on the loop; a 429 all the same (other clients of the same caller) is retried
    with a short backoff until ``timeout`` has passed.
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        http: httpx.AsyncClient | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        verify: bool | str | Path = True,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_concurrent: int = DEFAULT_MAX_CONCURRENT_READS,
    ) -> None:
        self._endpoints = _Endpoints(urls)
        self.max_response_bytes = max_response_bytes
        self._timeout = timeout
        self._slots = asyncio.Semaphore(max_concurrent)
        if http is None:
            http = httpx.AsyncClient(
                timeout=_timeout(timeout), verify=_verify(verify), limits=_limits()
            )
        http.headers.update(_headers(token))
        self._http = http

    @classmethod
    def from_config(
        cls, config: StorageConfig, urls: Sequence[str] | None = None
    ) -> AsyncRelayClient:
        """A client for the relay(s) of an agent's config (or ``urls`` with its token, ...)."""
        return cls(
            list(urls) if urls is not None else config.relay_urls(),
            token=read_token(config),
            timeout=config.request_timeout,
            verify=config.htpc_ca_file or True,
        )

    async def query(self, **filters: Any) -> dict[str, Any]:
        """One page of ``/relay/query`` results."""
        body = {name: value for name, value in filters.items() if value is not None}
        page = expect_dict(await self._request("POST", "/relay/query", orjson.dumps(body)))
        warn_hints(page)
        return page

    async def query_all(
        self, *, max_records: int | None = None, **filters: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """Every record matching ``filters``, following ``next_cursor``."""
        pages = _Pages(filters, max_records)
        while True:
            page = expect_dict(await self._request("POST", "/relay/query", pages.body()))
            records, more = pages.take(page)
            for record in records:
                yield record
            if not more:
                return

    async def agents(self) -> list[dict[str, Any]]:
        """``GET /relay/agents``."""
        return list(expect_dict(await self._request("GET", "/relay/agents")).get("agents", []))

    async def health(self) -> dict[str, Any]:
        """``GET /health`` of the relay in use."""
        return expect_dict(await self._request("GET", "/health"))

    async def _request(self, method: str, path: str, body: bytes | None = None) -> Any:
        async with self._slots:
            deadline = time.monotonic() + self._timeout
            pause = 0.01
            while True:
                try:
                    return await self._fail_over(method, path, body)
                except _Throttled as exc:
                    if time.monotonic() + pause > deadline:
                        raise exc.error from None
                await asyncio.sleep(pause * (0.5 + random.random()))  # noqa: S311 - jitter
                pause = min(pause * 2, 1.0)

    async def _fail_over(self, method: str, path: str, body: bytes | None) -> Any:
        first_error: RelayUnavailable | None = None
        for _ in range(len(self._endpoints.urls)):
            url = self._endpoints.url
            try:
                return await self._send_once(method, url, path, body)
            except RelayUnavailable as exc:
                first_error = first_error or exc
                self._endpoints.failed(url)
        assert first_error is not None
        raise first_error

    async def _send_once(self, method: str, url: str, path: str, body: bytes | None) -> Any:
        kwargs: dict[str, Any] = {} if body is None else {"content": body, "headers": _JSON}
        for attempt in (1, 2):
            try:
                async with self._http.stream(method, url + path, **kwargs) as response:
                    content = await self._read(response, url)
                    if response.status_code == 429:
                        try:
                            decode_answer(429, content, method, path)
                        except RelayError as error:
                            raise _Throttled(error) from None
                    return decode_answer(response.status_code, content, method, path)
            except httpx.RemoteProtocolError as exc:
                # A kept-alive connection the relay had just closed: once more, on a new one.
                if attempt == 2:
                    raise RelayUnavailable(f"relay at {url} dropped the connection: {exc}") from exc
            except httpx.TimeoutException as exc:
                raise RelayUnavailable(f"relay at {url} timed out: {exc}") from exc
            except httpx.TransportError as exc:
                raise RelayUnavailable(f"relay at {url} unreachable: {exc}") from exc
        raise RelayError("unreachable")  # pragma: no cover - the loop returns or raises

    async def _read(self, response: httpx.Response, url: str) -> bytes:
        limit = self.max_response_bytes
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            raise _too_large(url, limit)
        chunks: list[bytes] = []
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > limit:
                raise _too_large(url, limit)
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRelayClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
