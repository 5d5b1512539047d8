"""The relay as an ASGI app: :func:`create_app` builds it over a central store (never at import).

Endpoints: ``POST /relay/immediate`` (one record), ``POST /relay/batch`` (many; gzip or zstd
body), ``POST /relay/query``, ``GET /relay/changes``, ``GET /relay/agents``, ``GET /health``,
``GET /metrics``, ``POST /relay/heartbeat(s)`` and ``GET /relay/analytics`` (:mod:`._analytics`),
and the dashboard at ``GET /`` with ``/docs`` (:mod:`.dashboard`). Writes answer only after the
durable commit. Every refused request gets a 4xx ``{"error": code, "detail": ...}`` and changes
nothing; a central store that cannot be reached gives 503.

With ``relay.auth`` on, every endpoint but ``/health`` and the API docs needs a bearer token
(401 without a valid one): a token writes only its own agent's records, reads what its ACL
grants, and ``/metrics`` and ``/relay/analytics`` need an admin token (403 otherwise); see
:mod:`._auth`. The dashboard also takes the session cookie of its login form. Before any route,
:mod:`._http_guard` refuses foreign ``Host`` and ``Origin`` headers and non-JSON ``POST``
bodies. :mod:`._server` runs the app.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager, suppress
from typing import Any

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from commander_os._version import __version__
from commander_os.config import RelayConfig
from commander_os.errors import ConfigError
from commander_os.protocol import (
    Ack,
    BatchRequest,
    ChangeRecord,
    DeliveryRequest,
    DeliveryResponse,
    ErrorBody,
    Heartbeat,
    QueryRequest,
    QueryResponse,
    kv_field_problem,
)
from commander_os.relay._analytics import add_analytics_routes
from commander_os.relay._auth import load_secret
from commander_os.relay._body import RequestProblem, check_query, parse_model, read_body
from commander_os.relay._feed import MAX_WAIT_SECONDS, changes_page
from commander_os.relay._guard import Caller, Guard
from commander_os.relay._health import health_response
from commander_os.relay._http import body_doc as _body_doc
from commander_os.relay._http import error_response, json_response, page_json
from commander_os.relay._http_guard import install_http_guard
from commander_os.relay._ingest import deliver, ingest, is_delivery
from commander_os.relay._logging import AccessLog
from commander_os.relay._metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from commander_os.relay._reads import run_query, unknown_agent_hints
from commander_os.relay._state import RelayState
from commander_os.relay.central import CentralStore, CentralStoreUnavailable, store_for_config
from commander_os.relay.central._backup import backup_loop
from commander_os.relay.dashboard import DASHBOARD_PATHS, add_dashboard_routes

__all__ = ["create_app"]

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
        "/relay/heartbeat",
        "/relay/heartbeats",
        "/relay/analytics",
        "/docs",
        "/openapi.json",
        *DASHBOARD_PATHS,
    }
)


class _MetricsMiddleware:
    """Counts every answer by endpoint and status (unknown paths count as "other"), and the
    requests in flight."""

    def __init__(self, app: ASGIApp, state: RelayState) -> None:
        self.app = app
        self.metrics = state.metrics

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

        in_flight = self.metrics.in_flight
        in_flight.inc()
        try:
            await self.app(scope, receive, send_counting)
        finally:
            in_flight.dec()
            self.metrics.count_request(path, status)


# ----------------------------------------------------------------------- app plumbing


def _install_openapi(app: FastAPI, models: Sequence[type[Any]]) -> None:
    # Hoist the $defs of hand-documented bodies into components so their $refs resolve.
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            for model in models:
                defs = model.model_json_schema(ref_template="#/components/schemas/{model}")
                for name, definition in defs.get("$defs", {}).items():
                    components.setdefault(name, definition)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    body = operation.get("requestBody", {}).get("content", {})
                    schema_doc = body.get("application/json", {}).get("schema", {})
                    for part in [schema_doc, *schema_doc.get("anyOf", [])]:
                        part.pop("$defs", None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def _install_error_handlers(app: FastAPI) -> None:
    async def problem(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestProblem)
        return error_response(exc.status, exc.error, exc.detail, **(exc.headers or {}))

    async def unavailable(_: Request, exc: Exception) -> Response:
        return error_response(503, "store_unavailable", str(exc), **{"retry-after": "1"})

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        codes = {404: "not_found", 405: "method_not_allowed"}
        return error_response(exc.status_code, codes.get(exc.status_code, "http_error"), exc.detail)

    async def invalid_params(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError | ValidationError)
        detail = [
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in list(exc.errors())[:20]
        ]
        return error_response(422, "invalid_request", detail)

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
                "COMMANDER_OS_RELAY_SECRET), or start the relay with serve(), which uses "
                "<agent_storage_dir>/relay.secret"
            )
        secret = load_secret(config)
    return Guard(secret if config.auth else None, limits=config.limits)


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


# ---------------------------------------------------------------------------- routes


def _add_write_routes(app: FastAPI, state: RelayState, admit: Any) -> None:
    limits = state.config.limits

    @app.post("/relay/immediate", response_model=Ack, openapi_extra=_body_doc(ChangeRecord))
    async def relay_immediate(request: Request, caller: Caller = admit) -> Response:
        """Apply one change record of the token's agent; answers after the durable commit."""
        body = await read_body(request, limits)
        return _ack_response(await ingest(state, caller, body, ChangeRecord))

    @app.post(
        "/relay/batch",
        response_model=Ack | DeliveryResponse,
        openapi_extra=_body_doc(BatchRequest, DeliveryRequest),
    )
    async def relay_batch(request: Request, caller: Caller = admit) -> Response:
        """Apply many records (gzip or zstd body), answering after the durable commit.

        Either the records of one agent (``{"agent_id", "records"}``, one ack), or a delivery
        (``{"segments": [...]}``: the next changes of many agents' stores, each judged by the
        identity rule, one ack per segment). A body naming an agent the token may not write
        is refused whole."""
        body = await read_body(request, limits)
        if is_delivery(body):
            return _ack_response(await deliver(state, caller, body))
        return _ack_response(await ingest(state, caller, body, BatchRequest))


def _ack_response(content: bytes) -> Response:
    """An acknowledgement, already encoded, as a 200 answer."""
    return Response(content, media_type="application/json")


def _add_read_routes(app: FastAPI, state: RelayState, admit: Any) -> None:
    limits = state.config.limits

    @app.post("/relay/query", response_model=QueryResponse, openapi_extra=_body_doc(QueryRequest))
    async def relay_query(request: Request, caller: Caller = admit) -> Response:
        """One page of records matching every filter, in change order (only agents the token
        may read; naming another is 403)."""
        query = parse_model(QueryRequest, await read_body(request, limits))
        check_query(query)
        if (problem := kv_field_problem(query)) is not None:
            raise RequestProblem(422, "field_cannot_match", problem)
        allowed = caller.restrict_query(query)
        answer = await run_query(state, allowed, "query", caller)
        body = page_json(answer.records, answer.next_cursor)
        if hints := await unknown_agent_hints(state, allowed, answer):
            body["hints"] = hints
        return json_response(body)

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

        async def page(query: QueryRequest) -> QueryResponse:
            return await run_query(state, query, "changes", caller)

        records, cursor = await changes_page(
            state.changes,
            page,
            caller.restrict_query(request),
            wait,
            source=state.store.query,
            head=state.store.feed_head,
            limit_cap=state.config.limits.max_query_limit,
        )
        return json_response(page_json(records, cursor))

    @app.get("/relay/agents")
    async def relay_agents(caller: Caller = admit) -> Response:
        """Every agent the token may read: last seen, highest version, record counts."""
        with caller.query_slot():
            found = await state.store.agents()
        agents = [a for a in found if caller.may_read(a.agent_id)]
        return json_response({"agents": [a.model_dump() for a in agents]})


def _add_operator_routes(app: FastAPI, state: RelayState, admit: Any) -> None:
    @app.get("/health")
    async def health(request: Request) -> Response:
        """200 when the central store answers and can commit, else 503 (``degraded`` or
        ``unavailable``). Open to all; details (backend, counters) only for an admin token
        when auth is on."""
        return await health_response(state, request)

    # Not response_class=PlainTextResponse: that would document the JSON errors as text/plain.
    @app.get(
        "/metrics", responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}}
    )
    async def metrics(caller: Caller = admit) -> Response:
        """Prometheus text exposition (admin token when auth is on)."""
        caller.require_admin()
        if state.analytics is not None:
            await state.analytics.refresh(state.store)
        return Response(state.metrics.render(), media_type=METRICS_CONTENT_TYPE)


def create_app(
    config: RelayConfig, *, store: CentralStore | None = None, secret: bytes | None = None
) -> FastAPI:
    """The relay as an ASGI app, serving ``store`` (default: the one ``config`` describes).

    The app opens the store at startup and, if it built the store itself, closes it at
    shutdown. A store passed in is opened (``open()`` is idempotent) but left for the caller
    to close — useful for in-process tests through ``httpx.ASGITransport``, which does not run
    the lifespan: open the store yourself then.

    With ``config.auth`` on, tokens are checked with ``secret`` (default: ``config.secret``;
    :func:`~commander_os.relay.serve` passes the one from ``<agent_storage_dir>/relay.secret``).
    Raises :class:`ConfigError` when auth is on and there is no secret.
    """
    state = RelayState(
        config,
        store or store_for_config(config),
        owns_store=store is None,
        guard=_make_guard(config, secret),
    )

    # Commits through other relays on the same database wake this relay's feed too.
    state.store.add_change_listener(state.changes.notify)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await state.store.open()
        backups = asyncio.create_task(backup_loop(config)) if config.backup_interval else None
        try:
            yield
        finally:
            if backups is not None:
                backups.cancel()
                with suppress(asyncio.CancelledError):
                    await backups
            if state.owns_store:
                await state.store.close()

    app = FastAPI(
        title="Commander OS relay",
        version=__version__,
        lifespan=lifespan,
        # The relay serves its own /docs (no CDN: it works offline); ReDoc would need one.
        docs_url=None,
        redoc_url=None,
        responses={"4XX": {"model": ErrorBody}, "503": {"model": ErrorBody}},
    )
    app.state.relay = state
    install_http_guard(app, config)  # first, so the metrics count its refusals too
    app.add_middleware(_MetricsMiddleware, state=state)
    if config.access_log:  # outermost: it also sees what the guard refused
        app.add_middleware(AccessLog)
    _install_error_handlers(app)
    _install_openapi(app, [ChangeRecord, BatchRequest, DeliveryRequest, QueryRequest, Heartbeat])
    admit = Depends(_caller_dependency(state.guard))
    _add_write_routes(app, state, admit)
    _add_read_routes(app, state, admit)
    _add_operator_routes(app, state, admit)
    add_analytics_routes(app, state, admit)
    add_dashboard_routes(app, state)
    return app
