"""RelayClient: the agent's side of the relay protocol, over httpx.

One client keeps its connections alive across calls. Every httpx error and every unexpected
answer is mapped here, once, to our :class:`~commander_os.errors.RelayError` tree:

* cannot connect, timed out, 5xx, 429,
  404 / 405 (no relay endpoint there)  -> :class:`RelayUnavailable` (retry later)
* 401 / 403                            -> :class:`RelayAuthError`
* any other 4xx                        -> :class:`RelayRejected` (retrying will not help)
* an answer that is not what we expect -> :class:`RelayProtocolError`

With several relay URLs the client fails over: when one is unavailable it tries the next, and
stays with the first one that answers.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import zstandard

from commander_os.config import StorageConfig, read_token
from commander_os.errors import (
    RelayAuthError,
    RelayError,
    RelayProtocolError,
    RelayRejected,
    RelayUnavailable,
)

__all__ = ["COMPRESS_OVER_BYTES", "RelayClient"]

#: Batch bodies above this size travel zstd-compressed.
COMPRESS_OVER_BYTES = 8192
_JSON = {"content-type": "application/json"}


class RelayClient:
    """Talks to one relay, or fails over along several.

    ``http`` may be given (for example an ``httpx.Client`` bound to an in-process app through
    ``httpx.WSGITransport``-like transports, or one with fault-injecting transport); otherwise
    one is made with ``timeout``, ``token`` (sent as a bearer token) and ``verify`` (a CA file
    path, or True for the system store).
    """

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        http: httpx.Client | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        verify: bool | str | Path = True,
    ) -> None:
        self.urls = [urls] if isinstance(urls, str) else list(urls)
        if not self.urls:
            raise ValueError("RelayClient needs at least one relay URL")
        self.urls = [url.rstrip("/") for url in self.urls]
        self._current = 0
        self._lock = threading.Lock()
        headers = {"user-agent": "commander-os-storage"}
        if token:
            headers["authorization"] = f"Bearer {token}"
        if http is None:
            verify_arg: Any = str(verify) if isinstance(verify, Path) else verify
            if isinstance(verify_arg, str):
                import ssl

                verify_arg = ssl.create_default_context(cafile=verify_arg)
            http = httpx.Client(
                timeout=httpx.Timeout(timeout, connect=min(timeout, 3.0)),
                headers=headers,
                verify=verify_arg,
                limits=httpx.Limits(max_keepalive_connections=4, keepalive_expiry=30),
            )
        else:
            http.headers.update(headers)
        self._http = http
        self._compressor = zstandard.ZstdCompressor(level=1)

    @classmethod
    def from_config(cls, config: StorageConfig) -> RelayClient:
        """A client for the relay(s) of an agent's config: URLs, token, timeout and CA file."""
        return cls(
            config.relay_urls(),
            token=read_token(config),
            timeout=config.request_timeout,
            verify=config.htpc_ca_file or True,
        )

    @property
    def url(self) -> str:
        """The relay URL currently in use."""
        return self.urls[self._current]

    # ---------------------------------------------------------------------------- writes

    def push(self, agent_id: str, records: Sequence[dict[str, Any]]) -> dict[str, Any]:
        """Send change records of ``agent_id``; return the relay's ack once it committed them.

        One record goes to ``/relay/immediate``, several to ``/relay/batch`` (zstd-compressed
        when large).
        """
        if len(records) == 1:
            return _expect_dict(self._post("/relay/immediate", orjson.dumps(records[0])))
        body = orjson.dumps({"agent_id": agent_id, "records": records})
        headers = dict(_JSON)
        if len(body) > COMPRESS_OVER_BYTES:
            body = self._compressor.compress(body)
            headers["content-encoding"] = "zstd"
        return _expect_dict(self._post("/relay/batch", body, headers))

    # ----------------------------------------------------------------------------- reads

    def query(self, **filters: Any) -> dict[str, Any]:
        """One page of ``/relay/query`` results: ``{"records": [...], "next_cursor": ...}``.

        ``filters`` are the fields of :class:`~commander_os.protocol.QueryRequest`;
        ``None`` values are left out.
        """
        body = {name: value for name, value in filters.items() if value is not None}
        return _expect_dict(self._post("/relay/query", orjson.dumps(body)))

    def query_all(
        self, *, max_records: int | None = None, **filters: Any
    ) -> Iterator[dict[str, Any]]:
        """Every record matching ``filters``, following ``next_cursor`` page after page."""
        seen = 0
        cursor = filters.pop("cursor", None)
        while True:
            page = self.query(cursor=cursor, **filters)
            for record in page["records"]:
                yield record
                seen += 1
                if max_records is not None and seen >= max_records:
                    return
            cursor = page.get("next_cursor")
            if not cursor:
                return

    def agents(self) -> list[dict[str, Any]]:
        """``GET /relay/agents``: every agent the relay knows."""
        answer = self._request("GET", "/relay/agents")
        return list(answer["agents"]) if isinstance(answer, dict) else list(answer)

    def health(self) -> dict[str, Any]:
        """``GET /health`` of the relay in use."""
        return _expect_dict(self._request("GET", "/health"))

    # -------------------------------------------------------------------------- plumbing

    def _post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> Any:
        return self._request("POST", path, content=body, headers=headers or _JSON)

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        """Send to the current relay; on RelayUnavailable move along the list once round."""
        first_error: RelayUnavailable | None = None
        for _ in range(len(self.urls)):
            url = self.url
            try:
                return self._send_once(method, url + path, **kwargs)
            except RelayUnavailable as exc:
                first_error = first_error or exc
                with self._lock:
                    if self.urls[self._current] == url:
                        self._current = (self._current + 1) % len(self.urls)
        assert first_error is not None
        raise first_error

    def _send_once(self, method: str, url: str, **kwargs: Any) -> Any:
        try:
            response = self._http.request(method, url, **kwargs)
        except httpx.TimeoutException as exc:
            raise RelayUnavailable(f"relay at {url} timed out: {exc}") from exc
        except httpx.TransportError as exc:
            raise RelayUnavailable(f"relay at {url} unreachable: {exc}") from exc
        return _decode(response)

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> RelayClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _expect_dict(answer: Any) -> dict[str, Any]:
    if not isinstance(answer, dict):
        raise RelayProtocolError(f"the relay answered {answer!r:.200}, expected a JSON object")
    return answer


def _decode(response: httpx.Response) -> Any:
    status = response.status_code
    try:
        body = orjson.loads(response.content) if response.content else None
    except orjson.JSONDecodeError:
        body = None
        if status < 400:
            raise RelayProtocolError(
                f"relay answered {status} with a body that is not JSON: {response.text[:200]!r}"
            ) from None
    if status < 300:
        return body
    detail = (
        body.get("detail", body.get("error")) if isinstance(body, dict) else response.text[:500]
    )
    reason = body.get("error") if isinstance(body, dict) else None
    message = f"relay answered {status} to {response.request.method} {response.request.url.path}"
    if reason:
        message += f": {reason}"
    if detail and detail != reason:
        shown = "; ".join(map(str, detail)) if isinstance(detail, list) else str(detail)
        message += f" ({shown[:500]})"
    if status == 429 or status >= 500:
        raise RelayUnavailable(message)
    if status in (404, 405):
        # No such endpoint: this URL is not (or not yet) a relay. That is a configuration
        # problem to fail over from and retry, never a verdict on the records sent.
        raise RelayUnavailable(f"{message} (is this URL a Commander OS relay?)")
    if status in (401, 403):
        raise RelayAuthError(message, status=status, detail=detail)
    if 400 <= status < 500:
        raise RelayRejected(message, status=status, detail=detail)
    raise RelayError(message)
