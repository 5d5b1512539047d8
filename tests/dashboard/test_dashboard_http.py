"""The dashboard over HTTP with auth on: login, session cookie, CSRF, views, headers, /docs."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from dashboard_helpers import SECRET, bearer, records, token

from commander_os.relay._auth import issue_token, verify_token
from commander_os.relay.dashboard._session import SESSION_COOKIE, SESSION_SECONDS, Sessions

pytestmark = pytest.mark.anyio

HTML = {"accept": "text/html,application/xhtml+xml"}


def _csrf(page: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', page)
    assert match, "no CSRF field in the page"
    return match.group(1)


async def login(client: httpx.AsyncClient, value: str) -> httpx.Response:
    """Fill in the login form as a browser does."""
    form = await client.get("/dashboard/login")
    return await client.post(
        "/dashboard/login", data={"token": value, "csrf": _csrf(form.text)}, headers=HTML
    )


async def test_a_browser_without_a_session_is_sent_to_the_login_form(
    dash: httpx.AsyncClient,
) -> None:
    answer = await dash.get("/", headers=HTML)
    assert answer.status_code == 303
    assert answer.headers["location"] == "/dashboard/login"
    assert (await dash.get("/dashboard/records", headers=HTML)).status_code == 303
    api = await dash.get("/")  # not a browser: the API's 401, as JSON
    assert api.status_code == 401
    assert api.json()["error"] == "unauthorized"
    assert (await dash.get("/dashboard/fragment/live")).status_code == 401


async def test_login_sets_an_httponly_strict_session_without_the_token(
    dash: httpx.AsyncClient,
) -> None:
    admin = token("ops", admin=True)
    form = await dash.get("/dashboard/login")
    login_cookie = form.headers["set-cookie"]
    assert "HttpOnly" in login_cookie
    assert "SameSite=strict" in login_cookie or "samesite=strict" in login_cookie.lower()
    answer = await dash.post(
        "/dashboard/login", data={"token": admin, "csrf": _csrf(form.text)}, headers=HTML
    )
    assert answer.status_code == 303
    assert answer.headers["location"] == "/"
    cookie = next(c for c in answer.headers.get_list("set-cookie") if c.startswith("cos_session="))
    assert "httponly" in cookie.lower()
    assert "samesite=strict" in cookie.lower()
    assert f"max-age={SESSION_SECONDS}" in cookie.lower()
    assert admin not in cookie
    assert admin.split(".")[2] not in cookie  # not even the signature
    page = await dash.get("/", headers=HTML)
    assert page.status_code == 200
    assert "ops" in page.text
    assert 'action="/dashboard/logout"' in page.text


async def test_login_refuses_a_missing_csrf_a_bad_token_and_a_foreign_origin(
    dash: httpx.AsyncClient,
) -> None:
    admin = token("ops", admin=True)
    no_csrf = await dash.post("/dashboard/login", data={"token": admin}, headers=HTML)
    assert no_csrf.status_code == 403
    assert "cos_session" not in no_csrf.headers.get("set-cookie", "")
    forged = token("ops", admin=True)[:-4] + "AAAA"
    bad = await login(dash, forged)
    assert bad.status_code == 401
    assert "Not a valid token" in bad.text
    assert forged not in bad.text  # never echoed
    form = await dash.get("/dashboard/login")
    foreign = await dash.post(
        "/dashboard/login",
        data={"token": admin, "csrf": _csrf(form.text)},
        headers={**HTML, "origin": "http://evil.test"},
    )
    assert foreign.status_code == 403
    assert (await dash.get("/", headers=HTML)).status_code == 303  # still signed out


async def test_a_token_in_the_url_logs_nobody_in(dash: httpx.AsyncClient) -> None:
    admin = token("ops", admin=True)
    await dash.get(f"/dashboard/login?token={admin}")
    assert (await dash.get(f"/?token={admin}", headers=HTML)).status_code == 303


async def test_logout_needs_the_csrf_token_and_revokes_the_session(
    dash: httpx.AsyncClient,
) -> None:
    await login(dash, token("ops", admin=True))
    page = await dash.get("/", headers=HTML)
    stolen = dash.cookies["cos_session"]
    refused = await dash.post("/dashboard/logout", data={"csrf": "wrong"}, headers=HTML)
    assert refused.status_code == 403
    assert (await dash.get("/", headers=HTML)).status_code == 200  # still signed in
    out = await dash.post("/dashboard/logout", data={"csrf": _csrf(page.text)}, headers=HTML)
    assert out.status_code == 303
    assert (await dash.get("/", headers=HTML)).status_code == 303
    # The old cookie, replayed, is refused too.
    dash.cookies.set("cos_session", stolen, domain="localhost.local")
    assert (await dash.get("/", headers=HTML)).status_code == 303


async def test_a_forged_or_expired_session_cookie_is_refused() -> None:
    now = [1_000_000.0]
    key = b"k" * 32
    sessions = Sessions(key, clock=lambda: now[0])
    claims = verify_token(key, issue_token(key, "ops", admin=True, now=now[0]), now=now[0])
    value, _ = sessions.issue(claims)
    assert sessions.read(value) is not None
    assert sessions.read(value[:-2] + "xx") is None
    assert Sessions(b"j" * 32, clock=lambda: now[0]).read(value) is None  # another secret
    now[0] += SESSION_SECONDS + 1
    assert sessions.read(value) is None


async def test_a_read_token_sees_only_what_it_may_read_and_no_query_shapes(
    dash: httpx.AsyncClient,
) -> None:
    for agent in ("agent-a", "agent-b"):
        answer = await dash.post(
            "/relay/batch",
            json={"agent_id": agent, "records": records(agent, 3)},
            headers=bearer(token(agent)),
        )
        assert answer.status_code == 200
    await login(dash, token("agent-a", read=[]))
    page = await dash.get("/", headers=HTML)
    assert page.status_code == 200
    assert "agent-a" in page.text
    assert "agent-b" not in page.text
    assert "Query shapes" not in page.text
    browse = await dash.get("/dashboard/records?agent=agent-b", headers=HTML)
    assert browse.status_code == 403
    assert "may not read" in browse.text
    every = await dash.get("/dashboard/records", headers=HTML)
    assert "agent-a" in every.text
    assert "agent-b" not in every.text


async def test_security_headers_on_every_page(dash: httpx.AsyncClient) -> None:
    await login(dash, token("ops", admin=True))
    for path in (
        "/",
        "/dashboard/login",
        "/dashboard/records",
        "/health",
        "/docs",
        "/dashboard/static/dashboard.js",
        "/relay/agents",
    ):
        answer = await dash.get(path, headers=HTML)
        csp = answer.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp, path
        assert "unsafe-inline" not in csp, path
        assert "script-src 'self'" in csp, path
        assert answer.headers["x-frame-options"] == "DENY", path
        assert answer.headers["x-content-type-options"] == "nosniff", path


async def test_pages_hold_no_inline_script_or_style(dash: httpx.AsyncClient) -> None:
    await login(dash, token("ops", admin=True))
    for path in ("/", "/dashboard/login", "/dashboard/records", "/docs"):
        text = (await dash.get(path, headers=HTML)).text
        assert "<style" not in text, path
        assert " style=" not in text, path
        assert re.search(r"<script(?![^>]*\bsrc=)[^>]*>", text) is None, path
        assert "cdn" not in text.lower(), path


async def test_docs_work_offline(dash: httpx.AsyncClient) -> None:
    page = await dash.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources
    assert all(source.startswith("/") for source in sources), sources  # nothing external
    for source in sources:
        assert (await dash.get(source)).status_code == 200, source
    assert (await dash.get("/redoc")).status_code == 404  # it would need a CDN


async def test_record_browser_filters_pages_and_opens_a_record(dash: httpx.AsyncClient) -> None:
    answer = await dash.post(
        "/relay/batch",
        json={"agent_id": "planner", "records": records("planner", 40, incarnation=2)},
        headers=bearer(token("planner")),
    )
    assert answer.status_code == 200
    await login(dash, token("ops", admin=True))
    first = await dash.get(
        "/dashboard/records?agent=planner&table=kv&prefix=item/000&limit=5", headers=HTML
    )
    assert first.status_code == 200
    keys = re.findall(r">(item/\d+)</a>", first.text)
    assert len(keys) == 5
    assert "inc 2 · seq" in first.text  # readable versions
    following = re.search(r'rel="next" href="([^"]+)"', first.text)
    assert following, "no next page link"
    link = following.group(1).replace("&amp;", "&")
    assert "cursor" in parse_qs(urlsplit(link).query)
    second = await dash.get(link, headers=HTML)
    more = re.findall(r">(item/\d+)</a>", second.text)
    assert more
    assert not set(more) & set(keys)
    field = await dash.get(
        "/dashboard/records?agent=planner&field=value.n&op=gte&value=38", headers=HTML
    )
    assert sorted(re.findall(r">(item/\d+)</a>", field.text)) == ["item/00038", "item/00039"]
    one = await dash.get("/dashboard/records?agent=planner&table=kv&key=item/00002", headers=HTML)
    assert "&quot;n&quot;: 2" in one.text  # the whole record, pretty-printed
    assert "(8589934595)" in one.text  # and its raw version beside inc 2 / seq 3


async def test_bad_browser_filters_are_4xx_with_the_problem(dash: httpx.AsyncClient) -> None:
    await login(dash, token("ops", admin=True))
    for query in ("field=no%20spaces&value=1", "limit=lots", "cursor=zzz", "op=nope&field=a"):
        answer = await dash.get(f"/dashboard/records?{query}", headers=HTML)
        assert 400 <= answer.status_code < 500, query
        assert 'class="error"' in answer.text, query


async def test_heartbeat_only_agent_shows_on_the_dashboard_as_behind(
    dash: httpx.AsyncClient,
) -> None:
    beat = {"agent_id": "offline-agent", "queue_size": 3000, "dead_letters": 2}
    sent = await dash.post("/relay/heartbeat", json=beat, headers=bearer(token("offline-agent")))
    assert sent.status_code == 200
    await login(dash, token("ops", admin=True))
    view = (await dash.get("/dashboard/api/overview")).json()
    (row,) = [r for r in view["agents"] if r["agent_id"] == "offline-agent"]
    assert row["health"] == "behind"
    assert any("3,000 changes queued" in reason for reason in row["reasons"])
    live = await dash.get("/dashboard/fragment/live")
    assert 'data-agent="offline-agent"' in live.text
    assert "health-behind" in live.text
    charts = (await dash.get("/dashboard/api/charts")).json()
    assert charts["agents"]["offline-agent"]["queue"][-1] == 3000
    assert len(charts["starts"]) == len(charts["ingest_per_second"])


async def test_sessions_of_one_secret_work_on_every_relay_sharing_it(
    dash: httpx.AsyncClient,
) -> None:
    # The cookie holds signed claims, not a server-side id: a second relay (same secret)
    # accepts it, as relays behind a load balancer must.
    await login(dash, token("ops", admin=True))
    other = Sessions(SECRET.encode())
    session = other.read(dash.cookies[SESSION_COOKIE])
    assert session is not None
    assert session.claims.admin
    assert session.claims.agent_id == "ops"


async def test_heartbeats_follow_the_write_rights_and_analytics_is_admin_only(
    dash: httpx.AsyncClient,
) -> None:
    beat = {"agent_id": "victim", "queue_size": 1}
    assert (await dash.post("/relay/heartbeat", json=beat)).status_code == 401
    other = await dash.post("/relay/heartbeat", json=beat, headers=bearer(token("attacker")))
    assert other.status_code == 403
    admin = bearer(token("ops", admin=True))
    assert (await dash.post("/relay/heartbeat", json=beat, headers=admin)).status_code == 403
    # A body naming another agent is 403 even where it is malformed too.
    bad = await dash.post(
        "/relay/heartbeat",
        json={"agent_id": "victim", "queue_size": -5},
        headers=bearer(token("x")),
    )
    assert bad.status_code == 403
    own = await dash.post("/relay/heartbeat", json=beat, headers=bearer(token("victim")))
    assert own.status_code == 200
    assert (await dash.get("/relay/analytics")).status_code == 401
    reader = await dash.get("/relay/analytics", headers=bearer(token("victim")))
    assert reader.status_code == 403
    report = await dash.get("/relay/analytics", headers=admin)
    assert report.status_code == 200
    assert [row["agent_id"] for row in report.json()["agents"]] == ["victim"]
