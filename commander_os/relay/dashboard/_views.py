"""What the dashboard shows, gathered for one viewer: agents, charts, analytics, records.

A viewer is a :class:`~commander_os.relay._guard.Caller`: an admin (or anyone, with auth off)
sees everything; any other token sees the agents it may read, their records and charts, and
no query analytics (shapes name the fields other agents' queries filter on).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any
from urllib.parse import urlencode

import orjson
from pydantic import ValidationError

from commander_os._version import __version__
from commander_os.protocol import QueryRequest, StoredRecord, split_version
from commander_os.relay._analytics import DataAnalytics
from commander_os.relay._body import RequestProblem
from commander_os.relay._guard import Caller
from commander_os.relay._reads import run_query
from commander_os.relay._state import RelayState

__all__ = ["RecordFilter", "agent_rows", "charts", "is_admin", "overview", "records_page"]

#: Records per page of the browser, by default and at most.
PAGE_SIZE = 25
MAX_PAGE_SIZE = 200


def is_admin(caller: Caller) -> bool:
    """Whether the viewer sees everything (admin token, or auth off)."""
    return caller.claims is None or caller.claims.admin


def who(caller: Caller) -> dict[str, Any] | None:
    """The signed-in identity, for the page header (None with auth off)."""
    claims = caller.claims
    return None if claims is None else {"agent_id": claims.agent_id, "admin": claims.admin}


async def agent_rows(state: RelayState, caller: Caller) -> list[dict[str, Any]]:
    """Every agent the viewer may read, with health (heartbeat-only agents included)."""
    analytics = state.analytics
    if analytics is not None:
        await analytics.refresh(state.store)
        rows = analytics.agent_rows()
    else:
        rows = DataAnalytics(state.config.alerts).agents_view(await state.store.agents())
    return [row for row in rows if caller.may_read(row["agent_id"])]


async def overview(state: RelayState, caller: Caller) -> dict[str, Any]:
    """The overview page's data: relay, settings, agents and (admins) query analytics."""
    rows = await agent_rows(state, caller)
    analytics = state.analytics
    queries = None
    if analytics is not None and is_admin(caller):
        await analytics.queries.refresh_plans(state.store)
        queries = analytics.queries.report()
    config = state.config
    return {
        "now": time.time(),
        "relay": {
            "version": __version__,
            "uptime_seconds": state.metrics.uptime(),
            "backend": state.store.backend,
            "auth": state.guard.enabled,
            "analytics": analytics is not None,
        },
        "settings": {"slow_query_ms": config.slow_query_ms, **config.alerts.model_dump()},
        "user": who(caller),
        "agents": rows,
        "queries": queries,
    }


async def charts(state: RelayState, caller: Caller) -> dict[str, Any]:
    """The last hour's series (empty with analytics off)."""
    analytics = state.analytics
    if analytics is None:
        return {"enabled": False}
    rows = await agent_rows(state, caller)
    return {"enabled": True, **analytics.data.charts(rows)}


@dataclass(frozen=True)
class RecordFilter:
    """The record browser's form, as it travels in the page's URL (never a token)."""

    agent: str = ""
    table: str = ""
    prefix: str = ""
    key: str = ""
    field: str = ""
    op: str = "eq"
    value: str = ""
    deleted: bool = False
    limit: int = PAGE_SIZE
    cursor: str = ""

    @classmethod
    def from_params(cls, params: Mapping[str, str]) -> RecordFilter:
        """The filter in a request's query parameters (unknown ones are ignored)."""
        known = {f.name for f in fields(cls)}
        values: dict[str, Any] = {k: v.strip() for k, v in params.items() if k in known}
        values["deleted"] = values.get("deleted", "") in ("1", "on", "true")
        try:
            values["limit"] = max(1, min(MAX_PAGE_SIZE, int(values.get("limit") or PAGE_SIZE)))
        except ValueError:
            raise RequestProblem(422, "invalid_request", "limit must be a number") from None
        return cls(**values)

    def query(self) -> QueryRequest:
        """The query this filter asks for; 422 naming the problem when it is invalid."""
        body: dict[str, Any] = {"limit": self.limit, "include_deleted": self.deleted}
        for name, setting in (("agent_id", self.agent), ("table", self.table)):
            if setting:
                body[name] = setting
        if self.key:
            body["key"] = self.key
        elif self.prefix:
            body["key_prefix"] = self.prefix
        if self.field:
            body["where"] = [{"field": self.field, "op": self.op, "value": self._value()}]
        if self.cursor:
            body["cursor"] = self.cursor
        try:
            return QueryRequest.model_validate(body)
        except ValidationError as exc:
            problems = [
                f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                for e in exc.errors(include_url=False, include_input=False)
            ]
            raise RequestProblem(422, "invalid_request", problems) from None

    def _value(self) -> Any:
        """The field filter's value: JSON when it reads as JSON (``3``, ``true``, ``"x"``),
        else the text itself; ``in`` also takes ``a, b, c``; ``exists`` a yes or no."""
        text = self.value
        if self.op == "exists":
            return text.lower() not in ("false", "0", "no")
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = text
        if self.op == "in" and not isinstance(value, list):
            value = [part.strip() for part in text.split(",") if part.strip()]
        return value

    def link(self, **changes: Any) -> str:
        """The browser's URL for this filter with ``changes``."""
        changed = replace(self, **changes)
        params = {
            f.name: getattr(changed, f.name)
            for f in fields(changed)
            if getattr(changed, f.name) not in ("", False) and f.name != "op"
        }
        if changed.field:
            params["op"] = changed.op
        if changed.deleted:
            params["deleted"] = "1"
        if params.get("limit") == PAGE_SIZE:
            del params["limit"]
        return "/dashboard/records" + ("?" + urlencode(params) if params else "")


async def records_page(state: RelayState, caller: Caller, wanted: RecordFilter) -> dict[str, Any]:
    """One page of the record browser: the records, readable, and the next page's cursor."""
    request = caller.restrict_query(wanted.query())
    answer = await run_query(state, request, "dashboard", caller)
    return {
        "records": [readable_record(record) for record in answer.records],
        "next_cursor": answer.next_cursor,
    }


def readable_record(record: StoredRecord) -> dict[str, Any]:
    """A stored record with its version split into incarnation and sequence number."""
    incarnation, seq = split_version(record.version)
    return {
        "agent_id": record.agent_id,
        "table": record.table,
        "key": record.key,
        "data": record.data,
        "version": record.version,
        "incarnation": incarnation,
        "seq": seq,
        "ts": record.ts.timestamp(),
        "deleted": record.deleted,
        "rev": record.rev,
    }
