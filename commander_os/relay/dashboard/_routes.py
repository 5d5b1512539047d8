"""The dashboard's routes: pages, their live parts, the login and logout forms, static files.

Who is looking: a bearer token (``Authorization``), else the session cookie of a login, else,
with auth off, anyone (the relay then listens on loopback only). A page asked for without
either redirects a browser to the login form and answers anyone else 401, as the API does.
"""

from __future__ import annotations

import time
from pathlib import Path
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from commander_os.config import LimitsConfig
from commander_os.errors import InvalidToken
from commander_os.relay._auth import verify_token
from commander_os.relay._body import RequestProblem, read_body
from commander_os.relay._guard import Caller
from commander_os.relay._http import json_response
from commander_os.relay._state import RelayState
from commander_os.relay.dashboard import _views as views
from commander_os.relay.dashboard._docs import add_docs_routes, swagger_assets
from commander_os.relay.dashboard._headers import SecurityHeaders
from commander_os.relay.dashboard._live import live_sections
from commander_os.relay.dashboard._pages import STATIC, login_page, overview_page, page
from commander_os.relay.dashboard._records_page import records_body
from commander_os.relay.dashboard._session import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    Session,
    Sessions,
    new_login_nonce,
    same_nonce,
)

__all__ = ["DASHBOARD_PATHS", "add_dashboard_routes"]

DASHBOARD_PATHS = (
    "/dashboard/login",
    "/dashboard/logout",
    "/dashboard/records",
    "/dashboard/fragment/live",
    "/dashboard/api/overview",
    "/dashboard/api/charts",
)
#: A login or logout form is a token and a CSRF value: anything bigger is refused.
_FORM_LIMITS = LimitsConfig(max_body_bytes=80 * 1024)
_NO_STORE = {"cache-control": "no-store"}
_LOGIN_SECONDS = 600


class _Dashboard:
    """The state the routes share: the relay's, and the session keeper."""

    def __init__(self, state: RelayState) -> None:
        self.state = state
        self.sessions = Sessions(state.guard.secret)

    def session(self, request: Request) -> Session | None:
        return self.sessions.read(request.cookies.get(SESSION_COOKIE))

    def viewer(self, request: Request) -> Caller | None:
        """Who is asking; None when nobody signed in (401 for a bad bearer token)."""
        guard = self.state.guard
        client = request.client.host if request.client else None
        header = request.headers.get("authorization")
        if header is not None or not guard.enabled:
            return guard.admit(_bearer(header), client)
        session = self.session(request)
        return None if session is None else guard.admit_claims(session.claims, client)

    def api_viewer(self, request: Request) -> Caller:
        """:meth:`viewer`, or 401 like the API's."""
        caller = self.viewer(request)
        if caller is None:
            raise RequestProblem(
                401, "unauthorized", "log in at /dashboard/login, or send a bearer token"
            )
        return caller

    def csrf(self, request: Request) -> str | None:
        session = self.session(request)
        return None if session is None else self.sessions.csrf_token(session)


def _bearer(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" else None


def _to_login(request: Request) -> Response:
    """A browser goes to the login form; any other client gets the API's 401."""
    if "text/html" in request.headers.get("accept", ""):
        return RedirectResponse("/dashboard/login", status_code=303)
    raise RequestProblem(401, "unauthorized", "log in at /dashboard/login, or send a bearer token")


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=_NO_STORE)


async def _form(request: Request) -> dict[str, str]:
    """A urlencoded form body (bounded), first value of each field."""
    _same_origin(request)
    body = await read_body(request, _FORM_LIMITS)
    fields = parse_qs(body.decode("utf-8", "replace"), max_num_fields=8)
    return {name: values[0] for name, values in fields.items()}


def _same_origin(request: Request) -> None:
    """403 for a form posted from another origin (browsers send Origin on POST)."""
    origin = request.headers.get("origin")
    if origin is None:
        return
    expected = f"{request.url.scheme}://{request.headers.get('host', '')}"
    if origin != expected:
        raise RequestProblem(403, "forbidden", "form posted from another origin")


def add_dashboard_routes(app: FastAPI, state: RelayState) -> None:
    """The dashboard at ``/``, its pages under ``/dashboard/``, ``/docs``, and security
    headers on every answer of ``app``."""
    dashboard = _Dashboard(state)
    app.add_middleware(SecurityHeaders)
    static = Path(__file__).parent / "static"
    app.mount(STATIC, StaticFiles(directory=static), name="dashboard-static")
    add_docs_routes(app, swagger_assets())
    _add_pages(app, dashboard)
    _add_live(app, dashboard)
    _add_login(app, dashboard)


def _add_pages(app: FastAPI, dashboard: _Dashboard) -> None:
    state = dashboard.state

    @app.get("/", include_in_schema=False)
    async def overview(request: Request) -> Response:
        caller = dashboard.viewer(request)
        if caller is None:
            return _to_login(request)
        view = await views.overview(state, caller)
        return _html(overview_page(view, dashboard.csrf(request)))

    @app.get("/dashboard/records", include_in_schema=False)
    async def records(request: Request) -> Response:
        caller = dashboard.viewer(request)
        if caller is None:
            return _to_login(request)
        rows = await views.agent_rows(state, caller)
        agents = [row["agent_id"] for row in rows]
        tables = sorted({table for row in rows for table in row["tables"]})
        status, result, error = 200, None, None
        try:
            wanted = views.RecordFilter.from_params(request.query_params)
            result = await views.records_page(state, caller, wanted)
        except RequestProblem as problem:
            wanted = views.RecordFilter()
            status, error = problem.status, _problem_text(problem)
        body = records_body(
            wanted, result, agents=agents, tables=tables, now=time.time(), error=error
        )
        user, csrf = views.who(caller), dashboard.csrf(request)
        return _html(
            page("Records", body, current="/dashboard/records", user=user, csrf=csrf), status
        )


def _problem_text(problem: RequestProblem) -> str:
    detail = problem.detail
    return "; ".join(map(str, detail)) if isinstance(detail, list) else str(detail)


def _add_live(app: FastAPI, dashboard: _Dashboard) -> None:
    state = dashboard.state

    @app.get("/dashboard/fragment/live", include_in_schema=False)
    async def live(request: Request) -> Response:
        view = await views.overview(state, dashboard.api_viewer(request))
        return _html(live_sections(view))

    @app.get("/dashboard/api/overview", include_in_schema=False)
    async def overview_json(request: Request) -> Response:
        view = await views.overview(state, dashboard.api_viewer(request))
        return json_response(view, headers=_NO_STORE)

    @app.get("/dashboard/api/charts", include_in_schema=False)
    async def charts(request: Request) -> Response:
        body = await views.charts(state, dashboard.api_viewer(request))
        return json_response(body, headers=_NO_STORE)


def _add_login(app: FastAPI, dashboard: _Dashboard) -> None:
    sessions = dashboard.sessions
    secret = dashboard.state.guard.secret

    @app.get("/dashboard/login", include_in_schema=False)
    async def login_form(request: Request) -> Response:
        return _login_answer(request, None, 200, auth=sessions.enabled)

    @app.post("/dashboard/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await _form(request)
        if secret is None:
            return RedirectResponse("/", status_code=303)
        if not same_nonce(request.cookies.get(LOGIN_COOKIE), form.get("csrf")):
            return _login_answer(request, "The form expired; log in again.", 403)
        try:
            claims = verify_token(secret, form.get("token", "").strip())
        except InvalidToken as exc:
            return _login_answer(request, f"Not a valid token for this relay: {exc}.", 401)
        value, max_age = sessions.issue(claims)
        answer = RedirectResponse("/", status_code=303)
        _set_cookie(request, answer, SESSION_COOKIE, value, max_age)
        answer.delete_cookie(LOGIN_COOKIE, path="/dashboard/login")
        return answer

    @app.post("/dashboard/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        form = await _form(request)
        session = dashboard.session(request)
        if session is not None:
            if not sessions.check_csrf(session, form.get("csrf")):
                raise RequestProblem(403, "forbidden", "missing or wrong CSRF token")
            sessions.revoke(session)
        answer = RedirectResponse("/dashboard/login", status_code=303)
        answer.delete_cookie(SESSION_COOKIE, path="/")
        return answer


def _login_answer(
    request: Request, error: str | None, status: int, *, auth: bool = True
) -> Response:
    """The login form with a fresh CSRF nonce (set as a cookie too)."""
    nonce = new_login_nonce()
    answer = _html(login_page(nonce, error=error, auth=auth), status)
    _set_cookie(request, answer, LOGIN_COOKIE, nonce, _LOGIN_SECONDS, path="/dashboard/login")
    return answer


def _set_cookie(
    request: Request, answer: Response, name: str, value: str, max_age: int, path: str = "/"
) -> None:
    answer.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="strict",
    )
