"""Translate a :class:`~commander_os.network.protocol.QueryRequest` into one PostgreSQL statement.

Only bound parameters reach SQL: values, JSON paths and limits are all ``%s``; the statement text
is assembled from the fixed fragments below. Semantics are the contract's (``central/base.py``):

* The field is extracted as JSONB (``data #> path``, or a ``strict`` jsonpath when the path has
  array indexes, so ``a.0`` never reads an object key ``"0"``). JSONB equality is type-strict
  (``1`` is not ``"1"`` nor ``true``; ``1`` equals ``1.0``), which is exactly ``eq``.
* ``eq``, ``in`` and non-string ``contains`` on a path without array indexes add a containment
  test ``data @> {"a": {"b": value}}`` that the GIN index can answer; the exact test stays beside
  it, so the index only narrows the candidates and never changes the result.
* ``ne`` is ``NOT coalesce(eq, false)``: rows without the field match it.
* Strings compare in the "C" collation (code-point order), numbers as JSON numbers.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from commander_os.network.central.base import decode_cursor, parse_field_path, ts_to_micros
from commander_os.network.central.sqlite_query import prefix_upper_bound
from commander_os.network.protocol import FieldFilter, FilterOp, QueryRequest

__all__ = ["SELECT_COLUMNS", "build_query", "filter_sql", "json_text"]

SELECT_COLUMNS = "rev, agent_id, tbl, key, version, ts, deleted, data"
_SELECT = f"SELECT {SELECT_COLUMNS} FROM records"

_BY_PATH = "(data #> %s::text[])"
_BY_JSONPATH = "jsonb_path_query_first(data, %s::jsonpath, '{}', true)"
_CONTAINS_DOC = "data @> %s::jsonb"
_EQ = "({x} = %s::jsonb)"
_IN = "({x} = ANY(%s::text[]::jsonb[]))"
_NUM_CMP = "(jsonb_typeof({x}) = 'number' AND {x} {op} %s::jsonb)"
_IS_NUMBER = "(jsonb_typeof({x}) = 'number')"
_TEXT_CMP = "(jsonb_typeof({x}) = 'string' AND ({x} #>> '{}') COLLATE \"C\" {op} %s)"
_PREFIX = "(jsonb_typeof({x}) = 'string' AND starts_with({x} #>> '{}', %s))"
_EXISTS = "({x} IS NOT NULL)"
_MISSING = "({x} IS NULL)"
_HAS_ELEMENT = "(jsonb_typeof({x}) = 'array' AND {x} @> %s::jsonb)"
_CONTAINS_TEXT = (
    "(CASE jsonb_typeof({x}) WHEN 'array' THEN {x} @> %s::jsonb"
    " WHEN 'string' THEN strpos({x} #>> '{}', %s) > 0 ELSE false END)"
)
_NEVER = "false"
_SLOTS = re.compile(r"\{x\}|%s")

_COMPARE = {FilterOp.LT: "<", FilterOp.LTE: "<=", FilterOp.GT: ">", FilterOp.GTE: ">="}


def json_text(value: Any) -> str:
    """A finite JSON scalar as JSON text (integers of any size included)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # orjson stops at 64 bits; JSONB numbers do not
    return orjson.dumps(value).decode()


def _finite(value: Any) -> bool:
    return not (isinstance(value, float) and not math.isfinite(value))


class _Field:
    """A dotted field path: its JSONB extraction (SQL + params) and, if any, its index doc."""

    def __init__(self, field: str) -> None:
        self.segments = parse_field_path(field)
        self.plain = all(isinstance(s, str) for s in self.segments)
        self.sql: str
        self.param: list[str] | str
        if self.plain:
            self.sql, self.param = _BY_PATH, [str(s) for s in self.segments]
        else:
            parts = "".join(f"[{s}]" if isinstance(s, int) else f'."{s}"' for s in self.segments)
            self.sql, self.param = _BY_JSONPATH, "strict $" + parts

    def expr(self, template: str, *values: Any) -> tuple[str, list[Any]]:
        """Fill ``template``: each ``{x}`` becomes the extraction (bringing its path parameter),
        each ``%s`` takes the next of ``values``; parameters follow the order of the text."""
        pending = iter(values)
        params = [
            self.param if token.group() == "{x}" else next(pending)
            for token in _SLOTS.finditer(template)
        ]
        return template.replace("{x}", self.sql), params

    def doc(self, value: Any) -> str | None:
        """``{"a": {"b": value}}`` as JSON text, for a GIN-served ``data @>`` test."""
        if not self.plain:
            return None
        nested = value
        for segment in reversed(self.segments):
            nested = {segment: nested}
        return orjson.dumps(nested, default=_big_int).decode()


def _big_int(value: Any) -> Any:
    raise TypeError(f"not JSON: {value!r}")


def _with_index(docs: list[str | None], exact: tuple[str, list[Any]]) -> tuple[str, list[Any]]:
    """Put a GIN-served containment test (any of ``docs``) in front of the exact test."""
    sql, params = exact
    if not docs or any(doc is None for doc in docs):
        return sql, params
    hint = " OR ".join([_CONTAINS_DOC] * len(docs))
    return f"(({hint}) AND {sql})", [*docs, *params]


def _doc(field: _Field, value: Any) -> str | None:
    try:
        return field.doc(value)
    except (TypeError, orjson.JSONEncodeError):
        return None  # e.g. an integer past 64 bits: no index help, the exact test still runs


def _eq(field: _Field, value: Any) -> tuple[str, list[Any]]:
    if not _finite(value):
        return _NEVER, []
    exact = field.expr(_EQ, json_text(value))
    return _with_index([_doc(field, value)], exact)


def _in(field: _Field, values: list[Any]) -> tuple[str, list[Any]]:
    finite = list(dict.fromkeys(json_text(v) for v in values if _finite(v)))
    if not finite:
        return _NEVER, []
    exact = field.expr(_IN, finite)
    docs = [_doc(field, v) for v in values if _finite(v)]
    return _with_index(docs, exact)


def _compare(field: _Field, op: FilterOp, value: Any) -> tuple[str, list[Any]]:
    symbol = _COMPARE[op]
    if isinstance(value, str):
        return field.expr(_TEXT_CMP.replace("{op}", symbol), value)
    if isinstance(value, float) and math.isnan(value):
        return _NEVER, []
    if isinstance(value, float) and math.isinf(value):
        below = (value > 0) == (op in (FilterOp.LT, FilterOp.LTE))
        return field.expr(_IS_NUMBER) if below else (_NEVER, [])
    return field.expr(_NUM_CMP.replace("{op}", symbol), json_text(value))


def _contains(field: _Field, value: Any) -> tuple[str, list[Any]]:
    if not _finite(value):
        return _NEVER, []
    element = "[" + json_text(value) + "]"
    if isinstance(value, str):
        return field.expr(_CONTAINS_TEXT, element, value)
    exact = field.expr(_HAS_ELEMENT, element)
    return _with_index([_doc(field, [value])], exact)


def filter_sql(clause: FieldFilter) -> tuple[str, list[Any]]:
    """One ``where`` clause as an SQL predicate and its parameters."""
    field = _Field(clause.field)
    op, value = clause.op, clause.value
    if op is FilterOp.EQ:
        return _eq(field, value)
    if op is FilterOp.NE:
        sql, params = _eq(field, value)
        return f"NOT coalesce({sql}, false)", params
    if op in _COMPARE:
        return _compare(field, op, value)
    if op is FilterOp.IN:
        return _in(field, value)
    if op is FilterOp.CONTAINS:
        return _contains(field, value)
    if op is FilterOp.EXISTS:
        return field.expr(_EXISTS if value else _MISSING)
    # FilterOp.PREFIX: validated to carry a string.
    return field.expr(_PREFIX, value)


def _identity_filters(request: QueryRequest, where: list[str], params: list[Any]) -> None:
    agents = request.agent_ids()
    if agents is not None:
        unique = list(dict.fromkeys(agents))
        if len(unique) == 1:
            where.append("agent_id = %s")
            params.append(unique[0])
        else:
            where.append("agent_id = ANY(%s::text[])")
            params.append(unique)
    if request.table is not None:
        where.append("tbl = %s")
        params.append(request.table)
    if request.key is not None:
        where.append("key = %s")
        params.append(request.key)
    if request.key_prefix:
        where.append("key >= %s")
        params.append(request.key_prefix)
        upper = prefix_upper_bound(request.key_prefix)
        if upper is not None:
            where.append("key < %s")
            params.append(upper)


def build_query(request: QueryRequest, *, limit: int) -> tuple[str, list[Any]]:
    """SQL and parameters selecting up to ``limit`` rows after the request's cursor, by rev."""
    where: list[str] = []
    params: list[Any] = []
    _identity_filters(request, where, params)
    if not request.include_deleted:
        where.append("NOT deleted")
    if request.updated_since is not None:
        where.append("ts >= %s")
        params.append(ts_to_micros(request.updated_since))
    if request.cursor is not None:
        where.append("rev > %s")
        params.append(decode_cursor(request.cursor))
    for clause in request.where:
        sql, extra = filter_sql(clause)
        where.append(sql)
        params += extra
    text = _SELECT
    if where:
        text += " WHERE " + " AND ".join(where)
    text += " ORDER BY rev LIMIT %s"
    params.append(limit)
    return text, params
