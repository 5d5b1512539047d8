"""The record browser: filter by agent, table, key prefix and one field; page forward by cursor.

Modelled on a table browser such as datasette: the filter lives in the URL (bookmarkable, the
back button works), each page links to the next with the relay's keyset cursor, and a key opens
the record whole. Queries run through the relay's query path, so they count in the analytics.
"""

from __future__ import annotations

from typing import Any

import orjson

from commander_os.protocol import FilterOp
from commander_os.relay.dashboard._format import age, e, moment, version
from commander_os.relay.dashboard._views import RecordFilter

__all__ = ["records_body"]

PREVIEW_CHARS = 160


def _options(values: list[str], chosen: str, *, anything: str) -> str:
    options = [f'<option value="">{e(anything)}</option>']
    for value in values:
        selected = " selected" if value == chosen else ""
        options.append(f'<option value="{e(value)}"{selected}>{e(value)}</option>')
    return "".join(options)


def _form(wanted: RecordFilter, agents: list[str], tables: list[str]) -> str:
    ops = "".join(
        f'<option value="{op.value}"{" selected" if op.value == wanted.op else ""}>'
        f"{op.value}</option>"
        for op in FilterOp
    )
    deleted = " checked" if wanted.deleted else ""
    return f"""<form method="get" action="/dashboard/records" class="filters card">
<label>Agent <select name="agent">{_options(agents, wanted.agent, anything="any agent")}</select>
</label><label>Table <select name="table">{_options(tables, wanted.table, anything="any table")}
</select></label><label>Key prefix <input name="prefix" value="{e(wanted.prefix)}"></label>
<label>Key <input name="key" value="{e(wanted.key)}" placeholder="exact key"></label>
<label>Field <input name="field" value="{e(wanted.field)}" placeholder="value.status"></label>
<label>Op <select name="op">{ops}</select></label>
<label>Value <input name="value" value="{e(wanted.value)}" placeholder='"dark" or 3'></label>
<label class="check"><input type="checkbox" name="deleted" value="1"{deleted}> deletions</label>
<label>Per page <input name="limit" type="number" min="1" max="200" value="{wanted.limit}">
</label><button type="submit">Filter</button>
<a href="/dashboard/records">Clear</a></form>"""


def _preview(record: dict[str, Any]) -> str:
    if record["deleted"]:
        return '<span class="muted">deleted</span>'
    text = orjson.dumps(record["data"]).decode()
    if len(text) > PREVIEW_CHARS:
        text = text[:PREVIEW_CHARS] + "…"
    return f"<code>{e(text)}</code>"


def _row(record: dict[str, Any], wanted: RecordFilter, now: float) -> str:
    open_link = wanted.link(
        agent=record["agent_id"], table=record["table"], key=record["key"], cursor="", prefix=""
    )
    return (
        f"<tr><td>{e(record['agent_id'])}</td><td>{e(record['table'])}</td>"
        f'<td><a href="{e(open_link)}">{e(record["key"])}</a></td>'
        f"<td>{version(record['version'], record['incarnation'], record['seq'])}</td>"
        f"<td>{age(record['ts'], now)}</td><td>{_preview(record)}</td></tr>"
    )


def _detail(record: dict[str, Any]) -> str:
    data = orjson.dumps(record["data"], option=orjson.OPT_INDENT_2).decode()
    return f"""<section class="card record"><h2>{e(record["agent_id"])} / {e(record["table"])} /
{e(record["key"])}</h2><dl><dt>Version</dt>
<dd>{version(record["version"], record["incarnation"], record["seq"])}
<span class="muted">({record["version"]})</span></dd>
<dt>Written</dt><dd>{moment(record["ts"])}</dd><dt>Change order (rev)</dt>
<dd>{record["rev"]}</dd><dt>State</dt><dd>{"deleted" if record["deleted"] else "live"}</dd></dl>
<pre class="json">{e(data)}</pre></section>"""


def _pager(wanted: RecordFilter, next_cursor: str | None, shown: int) -> str:
    links = []
    if wanted.cursor:
        links.append(f'<a href="{e(wanted.link(cursor=""))}">« first page</a>')
    if next_cursor:
        links.append(f'<a rel="next" href="{e(wanted.link(cursor=next_cursor))}">next page »</a>')
    return f'<nav class="pager"><span>{shown} record(s) on this page</span>{"".join(links)}</nav>'


def records_body(
    wanted: RecordFilter,
    page: dict[str, Any] | None,
    *,
    agents: list[str],
    tables: list[str],
    now: float,
    error: str | None = None,
) -> str:
    """The browser's page body: the form, then the records (or the problem with the filter)."""
    parts = ["<h1>Records</h1>", _form(wanted, agents, tables)]
    if error is not None:
        parts.append(f'<p class="error" role="alert">{e(error)}</p>')
    if page is None:
        return "".join(parts)
    records = page["records"]
    if wanted.key and len(records) == 1:
        parts.append(_detail(records[0]))
    rows = "".join(_row(record, wanted, now) for record in records)
    if not rows:
        rows = '<tr><td colspan="6" class="muted">No record matches.</td></tr>'
    parts.append(
        '<section class="card"><div class="scroll"><table id="records"><thead><tr><th>Agent</th>'
        "<th>Table</th><th>Key</th><th>Version</th><th>Written</th><th>Data</th></tr></thead>"
        f"<tbody>{rows}</tbody></table></div>"
        f"{_pager(wanted, page['next_cursor'], len(records))}</section>"
    )
    return "".join(parts)
