"""The relay's small HTML dashboard at ``/`` (admin only when auth is on)."""

from __future__ import annotations

import html

from commander_os._version import __version__
from commander_os.protocol import AgentSummary

__all__ = ["render_dashboard"]

_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>Commander OS relay</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.3em .7em;text-align:left}}</style></head><body>
<h1>Commander OS relay</h1><p>version {version} &middot; up {uptime:.0f} s &middot;
<a href="/docs">API</a> &middot; <a href="/metrics">metrics</a> &middot;
<a href="/health">health</a></p><table><tr><th>agent</th><th>records</th><th>tables</th>
<th>highest version</th><th>last seen</th></tr>{rows}</table></body></html>"""


def _row(agent: AgentSummary) -> str:
    cells = (
        agent.agent_id,
        agent.record_count,
        ", ".join(f"{t}: {n}" for t, n in agent.tables.items()),
        agent.highest_version,
        agent.last_seen.isoformat() if agent.last_seen else "",
    )
    return "<tr>" + "".join(f"<td>{html.escape(str(cell))}</td>" for cell in cells) + "</tr>"


def render_dashboard(agents: list[AgentSummary], uptime: float) -> str:
    """The dashboard page listing ``agents`` (every text escaped)."""
    return _PAGE.format(
        version=html.escape(__version__),
        uptime=uptime,
        rows="".join(_row(agent) for agent in agents),
    )
