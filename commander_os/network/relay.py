"""The HTPC relay: an ASGI app over a central store, and the server that runs it.

Build the app with :func:`create_app` (never at import time); run it with :func:`serve`, or from
a shell::

    python -m commander_os.network.relay --config config/relay.yaml --port 0

which prints ``relay listening on http://127.0.0.1:PORT`` once it accepts connections (the real
port when ``--port 0`` asked for an ephemeral one). SIGTERM / SIGINT shut it down gracefully:
in-flight requests finish, the central store's writer drains, the database closes.

Endpoints: ``POST /relay/immediate`` (one record), ``POST /relay/batch`` (many; gzip or zstd
body), ``POST /relay/query``, ``GET /relay/changes``, ``GET /relay/agents``, ``GET /health``,
``GET /metrics``, ``GET /`` (dashboard), ``/docs`` (OpenAPI). Writes answer only after the
durable commit. Every refused request gets a 4xx ``{"error": code, "detail": ...}`` and changes
nothing; a central store that cannot be reached gives 503.

With ``relay.auth`` on, every endpoint but ``/health`` and the API docs needs a bearer token
(401 without a valid one): a token writes only its own agent's records, reads what its ACL
grants, and ``/metrics`` and the dashboard need an admin token (403 otherwise); see
:mod:`commander_os.network.auth`. The relay refuses to listen beyond loopback without auth.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import gc
import html
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

import commander_os
from commander_os.config import RelayConfig, load_relay_config
from commander_os.errors import ConfigError, ValueTooLarge
from commander_os.network.auth import load_secret
from commander_os.network.central import CentralStore, store_for_config
from commander_os.network.central.base import (
    CentralStoreUnavailable,
    EncodedRecord,
    InvalidCursor,
    QueryTimeout,
    encode_cursor,
)
from commander_os.network.metrics import RelayMetrics
from commander_os.network.protocol import (
    Ack,
    AgentSummary,
    BatchRequest,
    ChangeRecord,
    ErrorBody,
    QueryRequest,
    QueryResponse,
    StoredRecord,
)
from commander_os.network.relay_body import (
    RequestProblem,
    check_query,
    check_records,
    parse_model,
    read_body,
)
from commander_os.network.relay_fastpath import fast_batch, fast_record
from commander_os.network.relay_guard import Caller, Guard, claimed_agents

__all__ = ["LISTENING_PREFIX", "create_app", "main", "serve"]

#: The first words of the line printed once the relay accepts connections.
LISTENING_PREFIX = "relay listening on "
#: Longest long-poll of ``/relay/changes`` (seconds); also bounds how long shutdown may wait.
MAX_WAIT_SECONDS = 30.0
_KNOWN_PATHS = frozenset(
    {
        "/",
        "/health",
        "/metrics",
        "/relay/immediate",
        "/relay/batch",
        "/relay/query",
        "/relay/changes",
        "/relay/agents",
    }
)
_JSON_OPTIONS = orjson.OPT_UTC_Z
#: Allocations between two young-generation collections in a relay process (default 700).
GC_YOUNG_THRESHOLD = 50_000
_log = logging.getLogger("commander_os.relay")


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        orjson.dumps(content, option=_JSON_OPTIONS),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _error(status: int, error: str, detail: Any = None, **headers: str) -> Response:
    return _json({"error": error, "detail": detail}, status, headers or None)


def _record_json(record: StoredRecord) -> dict[str, Any]:
    return {
        "agent_id": record.agent_id,
        "table": record.table,
        "key": record.key,
        "data": record.data,
        "version": record.version,
        "ts": record.ts,
        "deleted": record.deleted,
        "rev": record.rev,
    }


class _Changes:
    """Wakes long-polling ``/relay/changes`` readers after each commit made through this relay."""

    def __init__(self) -> None:
        self.event = asyncio.Event()

    def notify(self) -> None:
        event, self.event = self.event, asyncio.Event()
        event.set()


@dataclass
class _State:
    config: RelayConfig
    store: CentralStore
    owns_store: bool
    guard: Guard
    metrics: RelayMetrics = field(default_factory=RelayMetrics)
    changes: _Changes = field(default_factory=_Changes)


class _MetricsMiddleware:
    """Counts every answer by endpoint and status (unknown paths count as "other")."""

    def __init__(self, app: ASGIApp, metrics: RelayMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"] if scope["path"] in _KNOWN_PATHS else "other"
        status = 500

        async def send_counting(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_counting)
        finally:
            self.metrics.count_request(path, status)


# ----------------------------------------------------------------------------- handlers


async def _apply(
    state: _State, records: Sequence[ChangeRecord] | None, encoded: list[EncodedRecord] | None
) -> list[Ack]:
    """Apply validated models, or records the fast path already encoded; count and notify."""
    if not state.config.enable_storage_sync:
        raise CentralStoreUnavailable("storage sync is disabled on this relay")
    started = time.perf_counter()
    try:
        if encoded is not None:
            acks = await state.store.apply_encoded(encoded)
        else:
            acks = await state.store.apply(records or [])
    except ValueTooLarge as exc:
        raise RequestProblem(413, "value_too_large", str(exc)) from None
    except ValueError as exc:  # data that cannot be stored as JSON (e.g. a 70-bit integer)
        raise RequestProblem(422, "invalid_value", str(exc)) from None
    state.metrics.apply_latency.observe(time.perf_counter() - started)
    for ack in acks:
        state.metrics.count_records(ack.applied, ack.ignored)
    state.changes.notify()
    return acks


async def _query(state: _State, request: QueryRequest) -> QueryResponse:
    cap = state.config.limits.max_query_limit
    if request.limit > cap:
        request = request.model_copy(update={"limit": cap})
    started = time.perf_counter()
    try:
        answer = await state.store.query(request)
    except InvalidCursor as exc:
        raise RequestProblem(400, "invalid_cursor", str(exc)) from None
    except QueryTimeout as exc:
        raise RequestProblem(422, "query_timeout", str(exc)) from None
    state.metrics.query_latency.observe(time.perf_counter() - started)
    return answer


def _page_json(records: list[StoredRecord], next_cursor: str | None) -> dict[str, Any]:
    return {"records": [_record_json(r) for r in records], "next_cursor": next_cursor}


async def _changes_page(
    state: _State, request: QueryRequest, wait: float
) -> tuple[list[StoredRecord], str | None]:
    deadline = time.monotonic() + min(wait, MAX_WAIT_SECONDS)
    while True:
        event = state.changes.event  # taken before the query, so no commit slips between
        page = await _query(state, request)
        remaining = deadline - time.monotonic()
        if page.records or remaining <= 0:
            break
        # Re-check at least every second: writes through other relays do not wake us.
        with suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout=min(remaining, 1.0))
    cursor = encode_cursor(page.records[-1].rev) if page.records else request.cursor
    return page.records, cursor


async def _health(state: _State) -> Response:
    store = await state.store.health()
    body = {
        "status": "ok" if store.ok else "unavailable",
        "version": commander_os.__version__,
        "uptime_seconds": round(state.metrics.uptime(), 3),
        "backend": store.backend,
        "central_store": {"reachable": store.ok, **store.detail},
        "storage_sync_enabled": state.config.enable_storage_sync,
    }
    return _json(body, 200 if store.ok else 503)


_DASHBOARD = """<!doctype html><html><head><meta charset="utf-8"><title>Commander OS relay</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .7em;text-align:left}}</style></head><body>
<h1>Commander OS relay</h1><p>version {version} &middot; up {uptime:.0f} s &middot;
<a href="/docs">API</a> &middot; <a href="/metrics">metrics</a> &middot;
<a href="/health">health</a></p><table><tr><th>agent</th><th>records</th><th>tables</th>
<th>highest version</th><th>last seen</th></tr>{rows}</table></body></html>"""


def _dashboard(state: _State, agents: list[AgentSummary]) -> str:
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{html.escape(str(cell))}</td>"
            for cell in (
                a.agent_id,
                a.record_count,
                ", ".join(f"{t}: {n}" for t, n in a.tables.items()),
                a.highest_version,
                a.last_seen.isoformat() if a.last_seen else "",
            )
        )
        + "</tr>"
        for a in agents
    )
    return _DASHBOARD.format(
        version=html.escape(commander_os.__version__), uptime=state.metrics.uptime(), rows=rows
    )


# ----------------------------------------------------------------------------- the app


def _body_doc(model: type[Any]) -> dict[str, Any]:
    """OpenAPI ``requestBody`` for a route that parses its body itself (for speed)."""
    schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def _install_openapi(app: FastAPI, models: Sequence[type[Any]]) -> None:
    # Hoist the $defs of hand-documented bodies into components so their $refs resolve.
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                for name, definition in (
                    model.model_json_schema(ref_template="#/components/schemas/{model}")
                    .get("$defs", {})
                    .items()
                ):
                    components.setdefault(name, definition)
                paths = schema.get("paths", {})
                for path in paths.values():
                    for operation in path.values():
                        body = operation.get("requestBody", {}).get("content", {})
                        body.get("application/json", {}).get("schema", {}).pop("$defs", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _install_error_handlers(app: FastAPI) -> None:
    async def problem(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestProblem)
        return _error(exc.status, exc.error, exc.detail, **(exc.headers or {}))

    async def unavailable(_: Request, exc: Exception) -> Response:
        return _error(503, "store_unavailable", str(exc), **{"retry-after": "1"})

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), exc.detail)

    async def invalid_params(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError | ValidationError)
        detail = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in list(exc.errors())[:20]
        ]
        return _error(422, "invalid_request", detail)

    app.add_exception_handler(RequestProblem, problem)
    app.add_exception_handler(CentralStoreUnavailable, unavailable)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid_params)
    app.add_exception_handler(ValidationError, invalid_params)


def _make_guard(config: RelayConfig, secret: bytes | None) -> Guard:
    if config.auth and secret is None:
        if not config.secret:
            raise ConfigError(
                "relay.auth is on but no secret was given: set relay.secret (or "
                "COMMANDER_OS_SECRET), or start the relay with serve(), which uses "
                "<agent_storage_dir>/relay.secret"
            )
        secret = load_secret(config)
    return Guard(secret if config.auth else None, rate=config.limits.requests_per_second)


def _caller_dependency(guard: Guard) -> Callable[..., Awaitable[Caller]]:
    """The FastAPI dependency that admits a request; with auth on it also documents the
    bearer scheme in the OpenAPI spec."""

    def client_of(request: Request) -> str | None:
        return request.client.host if request.client else None

    if not guard.enabled:

        async def open_caller(request: Request) -> Caller:
            return guard.admit(None, client_of(request))

        return open_caller

    bearer = HTTPBearer(auto_error=False, description="an agent token: commander-os token create")

    async def token_caller(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
    ) -> Caller:
        token = credentials.credentials if credentials is not None else None
        return guard.admit(token, client_of(request))

    return token_caller


def _check_own_records(caller: Caller, body: bytes) -> None:
    """403 before parsing for a write body that names another agent (a mixed batch, too)."""
    if caller.claims is not None:
        caller.check_write(claimed_agents(body) or ())


def create_app(
    config: RelayConfig, *, store: CentralStore | None = None, secret: bytes | None = None
) -> FastAPI:
    """The relay as an ASGI app, serving ``store`` (default: the one ``config`` describes).

    The app opens the store at startup and, if it built the store itself, closes it at
    shutdown. A store passed in is opened (``open()`` is idempotent) but left for the caller
    to close — useful for in-process tests through ``httpx.ASGITransport``, which does not run
    the lifespan: open the store yourself then.

    With ``config.auth`` on, tokens are checked with ``secret`` (default: ``config.secret``;
    :func:`serve` passes the one from ``<agent_storage_dir>/relay.secret``). Raises
    :class:`ConfigError` when auth is on and there is no secret.
    """
    state = _State(
        config,
        store or store_for_config(config),
        owns_store=store is None,
        guard=_make_guard(config, secret),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.store.open()
        try:
            yield
        finally:
            if state.owns_store:
                await state.store.close()

    app = FastAPI(
        title="Commander OS relay",
        version=commander_os.__version__,
        lifespan=lifespan,
        responses={"4XX": {"model": ErrorBody}, "503": {"model": ErrorBody}},
    )
    app.state.relay = state
    app.add_middleware(_MetricsMiddleware, metrics=state.metrics)
    _install_error_handlers(app)
    _install_openapi(app, [ChangeRecord, BatchRequest, QueryRequest])
    limits = config.limits
    # Well-formed write bodies skip the models when the store takes encoded records.
    fast = state.store.accepts_encoded()
    admit = Depends(_caller_dependency(state.guard))

    @app.post("/relay/immediate", response_model=Ack, openapi_extra=_body_doc(ChangeRecord))
    async def relay_immediate(request: Request, caller: Caller = admit) -> Response:
        """Apply one change record of the token's agent; answers after the durable commit."""
        body = await read_body(request, limits)
        encoded = fast_record(body, limits) if fast else None
        if encoded is not None:
            caller.check_write(record.agent_id for record in encoded)
            (ack,) = await _apply(state, None, encoded)
        else:
            _check_own_records(caller, body)
            record = parse_model(ChangeRecord, body)
            check_records([record], limits)
            caller.check_write([record.agent_id])
            (ack,) = await _apply(state, [record], None)
        return _json(ack.model_dump())

    @app.post("/relay/batch", response_model=Ack, openapi_extra=_body_doc(BatchRequest))
    async def relay_batch(request: Request, caller: Caller = admit) -> Response:
        """Apply many records of the token's agent (gzip or zstd body); one ack after the
        commit. A batch naming any other agent is refused whole."""
        body = await read_body(request, limits)
        encoded = fast_batch(body, limits) if fast else None
        if encoded is not None:
            caller.check_write(record.agent_id for record in encoded)
            (ack,) = await _apply(state, None, encoded)
        else:
            _check_own_records(caller, body)
            batch = parse_model(BatchRequest, body)
            check_records(batch.records, limits)
            caller.check_write([batch.agent_id, *(r.agent_id for r in batch.records)])
            (ack,) = await _apply(state, batch.records, None)
        return _json(ack.model_dump())

    @app.post("/relay/query", response_model=QueryResponse, openapi_extra=_body_doc(QueryRequest))
    async def relay_query(request: Request, caller: Caller = admit) -> Response:
        """One page of records matching every filter, in change order (only agents the token
        may read; naming another is 403)."""
        query = parse_model(QueryRequest, await read_body(request, limits))
        check_query(query)
        answer = await _query(state, caller.restrict_query(query))
        return _json(_page_json(answer.records, answer.next_cursor))

    @app.get("/relay/changes", response_model=QueryResponse)
    async def relay_changes(
        after: str | None = Query(None, max_length=200, description="cursor of the last page"),
        limit: int = Query(100, ge=1, le=1000),
        wait: float = Query(0.0, ge=0, le=MAX_WAIT_SECONDS, description="long-poll seconds"),
        agent_id: str | None = Query(None),
        table: str | None = Query(None),
        caller: Caller = admit,
    ) -> Response:
        """Changes after ``after`` in commit order (deletes included); always returns a cursor."""
        request = QueryRequest(
            agent_id=agent_id, table=table, cursor=after, limit=limit, include_deleted=True
        )
        records, cursor = await _changes_page(state, caller.restrict_query(request), wait)
        return _json(_page_json(records, cursor))

    @app.get("/relay/agents")
    async def relay_agents(caller: Caller = admit) -> Response:
        """Every agent the token may read: last seen, highest version, record counts."""
        agents = [a for a in await state.store.agents() if caller.may_read(a.agent_id)]
        return _json({"agents": [a.model_dump() for a in agents]})

    @app.get("/health")
    async def health() -> Response:
        """200 when the central store answers, else 503; version, uptime, backend. Open to
        all (no records in it)."""
        return await _health(state)

    # Not response_class=PlainTextResponse: that would document the JSON errors as text/plain.
    @app.get(
        "/metrics", responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}}
    )
    async def metrics(caller: Caller = admit) -> Response:
        """Prometheus text exposition (admin token when auth is on)."""
        caller.require_admin()
        return PlainTextResponse(state.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard(caller: Caller = admit) -> Response:
        caller.require_admin()
        return HTMLResponse(_dashboard(state, await state.store.agents()))

    return app


# ----------------------------------------------------------------------------- the server


def _check_startable(config: RelayConfig) -> list[str]:
    """Refuse unsafe settings with a fix; return warnings for risky but allowed ones."""
    if config.tls is not None:
        for name, path in (("certfile", config.tls.certfile), ("keyfile", config.tls.keyfile)):
            if not path.is_file():
                raise ConfigError(f"relay.tls.{name}: {path} is not a readable file")
    if not config.auth:
        if not config.is_loopback():
            raise ConfigError(
                f"relay.host: refusing to listen on non-loopback address {config.host!r} "
                "without auth: anyone who can reach it could write as any agent. Set "
                "'auth: true' (and 'tls:') in relay.yaml and give each agent a token from "
                "'commander-os token create AGENT_ID', or listen on 127.0.0.1"
            )
        return [
            "relay.auth is off: every local process may read and write as any agent "
            "(acceptable on loopback for development; set 'auth: true' otherwise)"
        ]
    if config.tls is None and not config.is_loopback():
        return [
            f"relay.tls is not set: tokens and records cross the network to {config.host} in "
            "clear text; set tls.certfile and tls.keyfile in relay.yaml"
        ]
    return []


async def serve_async(
    config: RelayConfig, *, on_ready: Callable[[str], Awaitable[None] | None] | None = None
) -> None:
    """Run the relay until SIGTERM / SIGINT, then shut down gracefully.

    ``on_ready(url)`` is called once the socket accepts connections, with the bound port.
    Raises :class:`ConfigError` for unsafe settings (no auth beyond loopback, missing TLS files,
    a short secret); with auth on and no ``relay.secret``, the secret file is created on first
    start.
    """
    for warning in _check_startable(config):
        _log.warning("relay: warning: %s", warning)
    secret = load_secret(config, create=True) if config.auth else None
    # Open the central store before listening: a bad database_url or an unreachable database
    # then fails fast with one clear line (CentralStoreUnavailable), not a uvicorn traceback.
    store = store_for_config(config)
    await store.open()
    try:
        await _run_server(config, create_app(config, store=store, secret=secret), on_ready)
    finally:
        await store.close()


async def _run_server(
    config: RelayConfig,
    app: FastAPI,
    on_ready: Callable[[str], Awaitable[None] | None] | None,
) -> None:
    import uvicorn

    tls: dict[str, Any] = {}
    if config.tls is not None:
        tls = {"ssl_certfile": str(config.tls.certfile), "ssl_keyfile": str(config.tls.keyfile)}
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            access_log=False,  # one log line per request would cost more than the request
            server_header=False,
            timeout_graceful_shutdown=int(MAX_WAIT_SECONDS) + 5,
            **tls,
        )
    )
    # Bind here rather than in uvicorn: a busy port then raises one clear OSError instead of
    # uvicorn's sys.exit(1) buried in a task traceback.
    sock = _bind(config.host, config.port)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        port = server.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if config.tls else "http"
        host = f"[{config.host}]" if ":" in config.host else config.host
        result = on_ready(f"{scheme}://{host}:{port}") if on_ready else None
        if result is not None:
            await result
    await task
    if not server.started:
        raise OSError(f"relay could not start on {config.host}:{config.port}")


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port``, or an OSError that says what is wrong."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bare, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(f"cannot listen on {host}:{port}: the port is already in use") from None
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed, else asyncio's. With uvloop (and httptools,
    which uvicorn picks by itself when installed) ingest ran ~20% more records/s."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve(config: RelayConfig) -> None:
    """Run the relay in the foreground (blocking); prints ``relay listening on URL``."""

    def announce(url: str) -> None:
        print(LISTENING_PREFIX + url, flush=True)

    # uvicorn re-raises the signal that stopped it after its graceful shutdown; with these
    # handlers in place that re-raise is a no-op and the process exits with status 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    thresholds = gc.get_threshold()
    # A batch of 1,000 records parses into ~3,000 short-lived containers: at the default
    # threshold (700) every request ran several collections, each re-walking the ~300k objects
    # of the imported modules (~25% of the ingest CPU). Move those out of the collector's
    # sight (freeze) and collect the young generation less often; cycles are still collected.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *thresholds[1:])
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve_async(config, on_ready=announce))
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m commander_os.network.relay [--config FILE] [--host H] [--port P]
    [--data-dir DIR]``: run the relay; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m commander_os.network.relay")
    parser.add_argument("--config", help="relay.yaml (default: built-in defaults)")
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (0 = any free port)")
    parser.add_argument("--data-dir", help="agent_storage_dir: where the central store lives")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("COMMANDER_OS_DATABASE_URL"),
        help="PostgreSQL central store URL (default: $COMMANDER_OS_DATABASE_URL; else SQLite)",
    )
    args = parser.parse_args(argv)
    overrides = {"host": args.host, "port": args.port, "agent_storage_dir": args.data_dir}
    if args.database_url:
        overrides.update(backend="postgresql", database_url=args.database_url)
    try:
        config = load_relay_config(args.config, overrides=overrides)
        serve(config)
    except (ConfigError, CentralStoreUnavailable, OSError) as exc:
        print(f"relay: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
