"""The dashboard's pages: the layout, the login form and the overview shell.

Pages load ``/dashboard/static/dashboard.css`` and ``dashboard.js`` and hold no inline script
or style (the Content-Security-Policy allows none). Every text is escaped (:func:`~._format.e`).
"""

from __future__ import annotations

from typing import Any

from commander_os.relay.dashboard._format import e, number, seconds
from commander_os.relay.dashboard._live import live_sections

__all__ = ["STATIC", "login_page", "overview_page", "page"]

STATIC = "/dashboard/static"
REFRESH_SECONDS = 5

_LAYOUT = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · Commander OS relay</title>
<link rel="icon" type="image/svg+xml" href="{static}/favicon.svg">
<link rel="stylesheet" href="{static}/vendor/uPlot.min.css">
<link rel="stylesheet" href="{static}/dashboard.css">
</head><body>
<header class="top"><a class="brand" href="/">Commander OS relay</a>
<nav>{nav}</nav><div class="user">{user}</div></header>
<main>{body}</main>
{scripts}
</body></html>
"""


def _nav(current: str) -> str:
    links = [("/", "Overview"), ("/dashboard/records", "Records"), ("/docs", "API docs")]
    return "".join(
        f'<a href="{href}"{" aria-current=page" if href == current else ""}>{e(text)}</a>'
        for href, text in links
    )


def _user(user: dict[str, Any] | None, csrf: str | None) -> str:
    if user is None:
        return '<span class="muted">auth off (loopback)</span>'
    role = "admin" if user["admin"] else "reader"
    return (
        f'<span>{e(user["agent_id"])} <span class="badge">{role}</span></span>'
        '<form method="post" action="/dashboard/logout" class="inline">'
        f'<input type="hidden" name="csrf" value="{e(csrf or "")}">'
        '<button type="submit">Log out</button></form>'
    )


def page(
    title: str,
    body: str,
    *,
    current: str = "",
    user: dict[str, Any] | None = None,
    csrf: str | None = None,
    scripts: tuple[str, ...] = (),
    signed_in: bool = True,
) -> str:
    """A whole page around ``body`` (already HTML)."""
    tags = "".join(f'<script src="{STATIC}/{e(name)}"></script>' for name in scripts)
    return _LAYOUT.format(
        title=e(title),
        static=STATIC,
        nav=_nav(current) if signed_in else "",
        user=_user(user, csrf) if signed_in else "",
        body=body,
        scripts=tags,
    )


def login_page(nonce: str, *, error: str | None = None, auth: bool = True) -> str:
    """The login form: a token goes in the POST body, never in a URL."""
    problem = f'<p class="error" role="alert">{e(error)}</p>' if error else ""
    if not auth:
        body = (
            '<section class="card login"><h1>No login needed</h1>'
            "<p>This relay runs without auth (loopback only): "
            '<a href="/">open the dashboard</a>.</p></section>'
        )
        return page("Log in", body, signed_in=False)
    body = f"""<section class="card login"><h1>Log in</h1>{problem}
<form method="post" action="/dashboard/login" autocomplete="off">
<input type="hidden" name="csrf" value="{e(nonce)}">
<label for="token">Token</label>
<input id="token" name="token" type="password" required autofocus spellcheck="false"
 autocomplete="current-password">
<button type="submit">Log in</button></form>
<p class="muted">An admin token (<code>commander-os token create ops --admin</code>) shows
everything; any other token shows the agents it may read.</p></section>"""
    return page("Log in", body, signed_in=False)


def _thresholds(view: dict[str, Any]) -> str:
    settings = view["settings"]
    return (
        '<p class="thresholds">Alert thresholds: queue &gt; '
        f"<b>{number(settings['max_queue'])}</b> · lag &gt; "
        f"<b>{e(seconds(settings['max_lag_seconds']))}</b> · silence &gt; "
        f"<b>{e(seconds(settings['max_silence_seconds']))}</b> · slow query &ge; "
        f"<b>{number(settings['slow_query_ms'])} ms</b></p>"
    )


_CHARTS = """<section class="card"><h2>Last hour</h2>{note}<div class="charts">
<figure><figcaption>Ingest (records/s)</figcaption><div class="chart" id="chart-ingest"></div>
</figure>
<figure><figcaption>Query latency (ms)</figcaption><div class="chart" id="chart-latency"></div>
</figure>
<figure><figcaption>Lag per agent (s)</figcaption><div class="chart" id="chart-lag"></div>
</figure>
<figure><figcaption>Queue per agent (changes)</figcaption><div class="chart" id="chart-queue">
</div></figure></div></section>"""


def overview_page(view: dict[str, Any], csrf: str | None) -> str:
    """The overview: thresholds, charts, then the sections the page refreshes by itself."""
    relay = view["relay"]
    note = (
        ""
        if relay["analytics"]
        else '<p class="muted">Analytics are off on this relay (relay.analytics: false).</p>'
    )
    body = (
        f"<h1>Overview</h1>{_thresholds(view)}{_CHARTS.format(note=note)}"
        f'<div id="live" data-refresh="{REFRESH_SECONDS}">{live_sections(view)}</div>'
        f'<footer class="muted">relay {e(relay["version"])} · {e(relay["backend"])} · up '
        f"{e(seconds(relay['uptime_seconds']))} · refreshes every {REFRESH_SECONDS} s · "
        '<span id="refreshed">rendered by the relay</span></footer>'
    )
    return page(
        "Overview",
        body,
        current="/",
        user=view["user"],
        csrf=csrf,
        scripts=("vendor/uPlot.iife.min.js", "dashboard.js"),
    )
