"""The overview's live sections (agents, query analytics, slow queries), rendered by the relay
on the first load and again each time the page refreshes them (``/dashboard/fragment/live``)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from commander_os.relay.dashboard._format import UNKNOWN, age, e, ms, number, seconds, version

__all__ = ["live_sections"]

_HEALTH_TEXT = {"ok": "OK", "warning": "warning", "silent": "silent", "behind": "behind"}


def live_sections(view: dict[str, Any]) -> str:
    """Agents, then (for admins, with analytics on) query shapes and the slow-query log."""
    parts = [_summary(view["agents"]), _agents(view["agents"], view["now"])]
    queries = view["queries"]
    if queries is not None:
        parts += [_shapes(queries), _slow_log(queries, view["now"])]
    return "".join(parts)


def _summary(rows: list[dict[str, Any]]) -> str:
    counts = dict.fromkeys(_HEALTH_TEXT, 0)
    for row in rows:
        counts[row["health"]] += 1
    tiles = "".join(
        f'<div class="tile health-{level}"><b>{counts[level]}</b> {e(text)}</div>'
        for level, text in _HEALTH_TEXT.items()
    )
    return f'<section class="tiles" aria-label="agents by health">{tiles}</section>'


def _records_link(agent_id: str) -> str:
    return "/dashboard/records?" + urlencode({"agent": agent_id})


def _heartbeat_cells(beat: dict[str, Any] | None, now: float) -> str:
    if beat is None:
        return f'<td class="muted">no heartbeat</td><td>{UNKNOWN}</td><td>{UNKNOWN}</td>'
    dead = beat["dead_letters"]
    dead_cell = f'<td class="num bad">{number(dead)}</td>' if dead else '<td class="num">0</td>'
    return (
        f'<td class="num">{number(beat["queue_size"])} '
        f'<span class="muted">({age(beat["received_at"], now)})</span></td>'
        f'<td class="num">{e(seconds(beat["oldest_pending_age"]))}</td>{dead_cell}'
    )


def _agent_row(row: dict[str, Any], now: float) -> str:
    health = row["health"]
    tables = ", ".join(f"{t}: {n['records']:,}" for t, n in row["tables"].items()) or UNKNOWN
    reasons = "".join(f"<li>{e(reason)}</li>" for reason in row["reasons"])
    agent = e(row["agent_id"])
    return (
        f'<tr class="agent health-{health}" data-agent="{agent}">'
        f'<td><span class="dot" aria-hidden="true"></span>{e(_HEALTH_TEXT[health])}</td>'
        f'<td><a href="{e(_records_link(row["agent_id"]))}">{agent}</a></td>'
        f'<td class="num">{number(row["records"])}</td><td>{e(tables)}</td>'
        f"<td>{version(row['highest_version'], row['incarnation'], row['seq'])}</td>"
        f"<td>{age(row['last_heard'], now)}</td>"
        f'<td class="num">{e(seconds(row["lag_seconds"]))}</td>'
        f"{_heartbeat_cells(row['heartbeat'], now)}"
        f'<td><ul class="reasons">{reasons}</ul></td></tr>'
    )


def _agents(rows: list[dict[str, Any]], now: float) -> str:
    body = "".join(_agent_row(row, now) for row in rows)
    if not rows:
        body = '<tr><td colspan="11" class="muted">No agent has reached this relay yet.</td></tr>'
    return f"""<section class="card"><h2>Agents</h2><div class="scroll">
<table id="agents"><thead><tr><th>Health</th><th>Agent</th><th>Records</th><th>Tables</th>
<th>Highest version</th><th>Last heard</th><th>Lag</th><th>Queue (heartbeat)</th>
<th>Oldest pending</th><th>Dead letters</th><th>Why</th></tr></thead>
<tbody>{body}</tbody></table></div></section>"""


def _plan(shape: dict[str, Any], index: int) -> str:
    slowest = shape["slowest"]
    if slowest is None:
        return UNKNOWN
    steps = slowest["plan"] or ["(plan not read yet)"]
    examined = slowest["plan_examined"]
    counted = "" if examined is None else f"<br>{number(examined)} rows examined"
    return (
        f'<details id="plan-{index}"><summary>{ms(slowest["ms"])}</summary>'
        f"<pre>{e(chr(10).join(steps))}</pre>{counted}</details>"
    )


def _hints(shape: dict[str, Any]) -> str:
    if not shape["index_hints"]:
        return f'<span class="muted">{UNKNOWN}</span>'
    return "".join(
        f'<div class="hint"><p>{e(hint["text"])}</p><code>{e(hint["command"])}</code></div>'
        for hint in shape["index_hints"]
    )


def _shape_row(shape: dict[str, Any], index: int) -> str:
    examined = shape["rows_examined_per_query"]
    scans = ' class="scans"' if shape["scans"] else ""
    return (
        f"<tr{scans}><td><code>{e(shape['shape'])}</code></td>"
        f'<td class="num">{number(shape["count"])}</td>'
        f'<td class="num">{ms(shape["p50_ms"])}</td><td class="num">{ms(shape["p95_ms"])}</td>'
        f'<td class="num">{ms(shape["p99_ms"])}</td>'
        f'<td class="num">{number(examined)} / {number(shape["rows_returned_per_query"])}</td>'
        f"<td>{_plan(shape, index)}</td><td>{_hints(shape)}</td></tr>"
    )


def _shapes(queries: dict[str, Any]) -> str:
    rows = "".join(_shape_row(shape, i) for i, shape in enumerate(queries["shapes"]))
    if not rows:
        rows = '<tr><td colspan="8" class="muted">No query yet.</td></tr>'
    return f"""<section class="card"><h2>Query shapes</h2>
<p class="muted">Filters without their values, busiest first. Rows examined per query are
counted on a sample; a hot shape that reads many rows for each one it returns gets an index
hint.</p><div class="scroll"><table id="shapes"><thead><tr><th>Shape</th><th>Count</th>
<th>p50</th><th>p95</th><th>p99</th><th>Examined / returned</th><th>Slowest (plan)</th>
<th>Index hint</th></tr></thead><tbody>{rows}</tbody></table></div></section>"""


def _slow_log(queries: dict[str, Any], now: float) -> str:
    rows = "".join(
        f'<tr><td>{age(entry["at"], now)}</td><td class="num">{ms(entry["ms"])}</td>'
        f"<td><code>{e(entry['shape'])}</code></td>"
        f'<td class="num">{number(entry["returned"])}</td>'
        f'<td class="num">{number(entry["examined"])}</td></tr>'
        for entry in queries["slow_queries"][:50]
    )
    if not rows:
        rows = '<tr><td colspan="5" class="muted">No query was slower than the threshold.</td></tr>'
    return f"""<section class="card"><h2>Slow queries
<span class="muted">(&ge; {number(queries["slow_query_ms"])} ms, newest first,
{number(queries["slow_queries_total"])} in all)</span></h2><div class="scroll">
<table id="slow"><thead><tr><th>When</th><th>Time</th><th>Shape</th><th>Returned</th>
<th>Examined</th></tr></thead><tbody>{rows}</tbody></table></div></section>"""
