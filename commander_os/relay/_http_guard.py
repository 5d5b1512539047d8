"""Which HTTP requests the relay looks at all: forwarded addresses, Host, Origin, Content-Type.

ASGI middleware in front of every route (:func:`install_http_guard`, one line in
``create_app``). Its checks hold with auth on or off; they matter most for the no-auth loopback
mode, where any process on the machine, and any web page the developer opens, can send the
relay requests:

1. **Forwarded addresses.** ``X-Forwarded-For`` names the client only when the request comes
   from one of ``relay.trusted_proxies``; the rightmost address not itself a trusted proxy is
   the client. From anyone else the header is ignored, so a spoofed one cannot dodge the rate
   limits, which key on the client address.
2. **Host.** A ``Host`` header must name the relay: one of ``relay.allowed_hosts`` (loopback
   names by default), the address it listens on, or anything when the list holds ``*``. A web
   page whose own name was re-pointed at 127.0.0.1 (DNS rebinding) sends its own name, and gets
   400. A request without ``Host`` (HTTP/1.0) cannot come from a browser and passes.
3. **Origin.** A browser's cross-origin request carries an ``Origin`` other than the relay's
   own, or ``Sec-Fetch-Site: cross-site``/``same-site``: 403. The relay serves no CORS, so only
   its own pages (the dashboard, ``/docs``) may call it from a browser.
4. **Content-Type.** Every ``POST`` must say ``application/json`` (415 otherwise). A web page
   can send a "simple" cross-origin POST (``text/plain``, a form) without asking first; a JSON
   one needs a CORS preflight, which this relay never grants. ``Content-Encoding`` (gzip, zstd)
   is separate and unaffected. The one exception is the dashboard's own HTML forms under
   ``/dashboard/``: they post ``application/x-www-form-urlencoded`` and each carries a CSRF
   token the dashboard checks, on top of the Origin check above.

Refusals are the relay's usual JSON errors, answered before any route runs: nothing changes.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from commander_os.config import RelayConfig
from commander_os.relay._http import error_response

__all__ = ["HttpGuard", "install_http_guard"]

#: Addresses that mean "every interface": the relay cannot be reached by these names.
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})  # noqa: S104 (names, not a bind)
_JSON = "application/json"
_FORM = "application/x-www-form-urlencoded"
_DASHBOARD_FORMS = "/dashboard/"
_CROSS_SITE = frozenset({b"cross-site", b"same-site"})
_Problem = tuple[int, str, str]


def install_http_guard(app: FastAPI, config: RelayConfig) -> None:
    """Put :class:`HttpGuard` in front of ``app`` (before any middleware added later)."""
    app.add_middleware(HttpGuard, config=config)


def _host_name(value: str) -> str:
    """The name in a ``Host`` value, without port or IPv6 brackets, lowercased."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        return value.rsplit(":", 1)[0]
    return value


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """An IP address from an ``X-Forwarded-For`` entry (``1.2.3.4``, ``[::1]:80``), or None."""
    text = text.strip()
    if text.startswith("["):
        text = text[1 : text.find("]")]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


class HttpGuard:
    """The checks of the module docstring, as ASGI middleware."""

    def __init__(self, app: ASGIApp, config: RelayConfig) -> None:
        self.app = app
        names = set(config.allowed_hosts)
        names.add(_host_name(config.host))
        self.any_host = "*" in names
        self.suffixes = tuple(name[1:] for name in names if name.startswith("*."))
        self.hosts = frozenset(names - _WILDCARDS)
        self.proxies = [
            ipaddress.ip_network(entry, strict=False) for entry in config.trusted_proxies
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])  # the last of repeated names wins; XFF is joined
        if self.proxies:
            scope = self._forwarded(scope)
        problem = self._problem(scope["method"], scope["path"], headers)
        if problem is not None:
            status, error, detail = problem
            await error_response(status, error, detail)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    # -- checks -------------------------------------------------------------------------------

    def _problem(self, method: str, path: str, headers: dict[bytes, bytes]) -> _Problem | None:
        host = headers.get(b"host")
        if host is not None and not self._allowed(_host_name(host.decode("latin-1"))):
            return (
                400,
                "invalid_host",
                f"Host {host.decode('latin-1')[:100]!r} is not a name of this relay; add it "
                "to relay.allowed_hosts if it is",
            )
        if not self._same_origin(headers, host):
            return (
                403,
                "forbidden_origin",
                "requests from web pages of another origin are refused (the relay serves no CORS)",
            )
        if method == "POST" and not _acceptable_body(path, headers.get(b"content-type")):
            return (
                415,
                "unsupported_media_type",
                "send the body as JSON with 'Content-Type: application/json' (a compressed body "
                "adds 'Content-Encoding: gzip' or 'zstd')",
            )
        return None

    def _allowed(self, name: str) -> bool:
        if self.any_host or name in self.hosts:
            return True
        return any(name.endswith(suffix) for suffix in self.suffixes)

    @staticmethod
    def _same_origin(headers: dict[bytes, bytes], host: bytes | None) -> bool:
        if headers.get(b"sec-fetch-site", b"").lower() in _CROSS_SITE:
            return False
        origin = headers.get(b"origin")
        if origin is None:
            return True
        # "null" (a sandboxed page, a file) has no host, so it never matches.
        try:
            netloc = urlsplit(origin.decode("latin-1").strip()).netloc.lower()
        except ValueError:  # e.g. "http://[::1": not an origin a browser sends
            return False
        return host is not None and netloc != "" and netloc == host.decode("latin-1").lower()

    # -- forwarded addresses ------------------------------------------------------------------

    def _forwarded(self, scope: Scope) -> Scope:
        """``scope`` with ``client`` set to the forwarded client, when a trusted proxy says so."""
        peer = scope.get("client")
        if not peer or not self._trusted(_address(peer[0])):
            return scope
        entries = b",".join(v for k, v in scope["headers"] if k == b"x-forwarded-for")
        if not entries:
            return scope
        client = self._client_of(entries.decode("latin-1").split(","))
        return scope if client is None else {**scope, "client": (client, 0)}

    def _client_of(self, entries: list[str]) -> str | None:
        # Right to left: each trusted proxy appended the address it got the request from; the
        # first one that is not a trusted proxy is the client. Entries further left were
        # written by the client itself and are never believed.
        address = None
        for entry in reversed(entries):
            address = _address(entry)
            if address is None:
                return None  # garbage where a proxy wrote: keep the peer's address
            if not self._trusted(address):
                break
        # Every entry trusted: the client sits in a proxy's network; the leftmost is it.
        return None if address is None else str(address)

    def _trusted(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
        return address is not None and any(address in network for network in self.proxies)


def _acceptable_body(path: str, content_type: bytes | None) -> bool:
    """JSON everywhere; a URL-encoded form only for the dashboard's CSRF-protected forms."""
    if content_type is None:
        return False
    media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
    return media == _JSON or (media == _FORM and path.startswith(_DASHBOARD_FORMS))
