"""Translate a :class:`~commander_os.protocol.QueryRequest` into one PostgreSQL statement.

Only bound parameters reach SQL: values, JSON paths and limits are all ``%s``; the statement text
is assembled from the fixed fragments below. Semantics are the contract's (``central/base.py``):

* The field is extracted as JSONB (``data #> path``, or a ``strict`` jsonpath when the path has
  array indexes, so ``a.0`` never reads an object key ``"0"``). JSONB equality is type-strict
  (``1`` is not ``"1"`` nor ``true``; ``1`` equals ``1.0``), which is exactly ``eq``.
* ``eq`` and ``in`` on a field declared indexed (``indexed_fields``, ``commander-os relay index
  add``) are answered by its expression index on ``data #> path`` (the same expression as the
  filter's, with the path bound as a constant under ``force_custom_plan``).
* ``ne`` is ``NOT coalesce(eq, false)``: rows without the field match it.
* Strings compare in the "C" collation (code-point order), numbers as JSON numbers.

**Walk first, then the index.** PostgreSQL cannot tell, from the value alone, whether to choose
between walking the ``rev`` order until the page is full (best when many rows
match: 0.5 ms for a value held by 10% of 1M rows) and collecting every index hit then sorting
them by ``rev`` (best for rare values). When the request's other filters are served in ``rev``
order by an index of the change log (no identity filter: ``changes_rev``; one agent:
``changes_agent_rev``, or ``changes_agent_table_rev`` with a table) and a clause has a field
index, one statement does both:

1. ``hits``: walk the first ``WALK_ROWS_PER_ROW * limit`` candidate rows (at most
   ``MAX_WALK_ROWS``) in ``rev`` order and keep the first ``limit`` that match (it stops as
   soon as it has them);
2. only if that window held fewer than ``limit`` matches *and* was full, the index-served query
   (behind an ``OFFSET 0`` fence, so it keeps its own plan) supplies the matches past the
   window's last ``rev``.

The window is a prefix of the candidates, so the result is the same rows in the same order as
the plain query, read in one snapshot.
"""

from __future__ import annotations

import math
import re
from typing import Any

import orjson

from commander_os.identifiers import prefix_upper_bound
from commander_os.protocol import (
    FieldFilter,
    FilterOp,
    QueryRequest,
    decode_cursor,
    parse_field_path,
    ts_to_micros,
)
from commander_os.relay.central._base import ROW_COLUMNS, served_by_index

__all__ = [
    "MAX_WALK_ROWS",
    "WALK_ROWS_PER_ROW",
    "build_query",
    "filter_sql",
    "json_text",
    "served_by_index",
]

SELECT_COLUMNS = ROW_COLUMNS
#: Reads of the rev order go through the view that walks the change log and looks each
#: entry's record up; reads a field index drives go through the plain join.
SOURCE = "records_in_order"
BY_STATE = "records_by_state"
_SELECT = f"SELECT {SELECT_COLUMNS} FROM {SOURCE}"
#: Candidate rows the ``rev``-order walk examines per row asked for (see the module docstring):
#: the walk alone answers filters matching at least 1 in this many candidates...
WALK_ROWS_PER_ROW = 20
#: ...up to this many rows: when the GIN index has to answer, the walk was wasted work (about
#: 1 us a row, twice: the window and its edge). Limit 100 walks 2,020 rows; limit 1,000 would
#: walk 20,020 (6 -> 40 ms for a value held by 0.1% of 1M rows) without this cap.
MAX_WALK_ROWS = 4000
_WALK_THEN_INDEX = f"""
WITH hits AS MATERIALIZED (
    SELECT {SELECT_COLUMNS} FROM (
        SELECT {SELECT_COLUMNS} FROM {SOURCE} WHERE {{base}} ORDER BY rev LIMIT %s
    ) walk WHERE {{filters}} ORDER BY rev LIMIT %s
), edge AS MATERIALIZED (
    SELECT CASE WHEN count(*) = %s THEN max(rev) END AS rev FROM (
        SELECT rev FROM {SOURCE} WHERE {{base}} ORDER BY rev LIMIT %s
    ) window_revs
)
SELECT {SELECT_COLUMNS} FROM hits
UNION ALL (
    SELECT {SELECT_COLUMNS} FROM (
        SELECT {SELECT_COLUMNS} FROM {BY_STATE} WHERE {{base}} AND {{filters}} OFFSET 0
    ) found
    WHERE CASE WHEN (SELECT count(*) FROM hits) < %s
               THEN (SELECT rev FROM edge) IS NOT NULL ELSE false END
      AND rev > (SELECT rev FROM edge)
    ORDER BY rev LIMIT %s
)
ORDER BY rev LIMIT %s
"""

_BY_PATH = "(data #> %s::text[])"
_BY_JSONPATH = "jsonb_path_query_first(data, %s::jsonpath, '{}', true)"
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


def _eq(field: _Field, value: Any) -> tuple[str, list[Any]]:
    if not _finite(value):
        return _NEVER, []
    return field.expr(_EQ, json_text(value))


def _in(field: _Field, values: list[Any]) -> tuple[str, list[Any]]:
    finite = list(dict.fromkeys(json_text(v) for v in values if _finite(v)))
    if not finite:
        return _NEVER, []
    return field.expr(_IN, finite)


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
    return field.expr(_HAS_ELEMENT, element)


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


def _walkable(request: QueryRequest) -> bool:
    """Whether an index returns the request's candidate rows in ``rev`` order, densely.

    A filter the walk would have to skip rows for (a table across agents, several agents, a
    key range, ``updated_since``) could make it read far more than its window: not walked.
    """
    agents = request.agent_ids()
    if request.key is not None or request.key_prefix or request.updated_since is not None:
        return False
    if agents is None:
        return request.table is None
    return len(set(agents)) == 1


def build_query(
    request: QueryRequest,
    *,
    limit: int,
    ceiling: int | None = None,
    indexed: frozenset[str] = frozenset(),
) -> tuple[str, list[Any]]:
    """SQL and parameters selecting up to ``limit`` rows after the request's cursor, by rev,
    none past ``ceiling`` (the commit-order watermark: revs above it may still commit).
    ``indexed`` names the fields that have an index (:func:`served_by_index`)."""
    where: list[str] = []
    params: list[Any] = []
    _identity_filters(request, where, params)
    if ceiling is not None:
        where.append("rev <= %s")
        params.append(ceiling)
    if not request.include_deleted:
        where.append("NOT deleted")
    if request.updated_since is not None:
        where.append("received >= %s")
        params.append(ts_to_micros(request.updated_since))
    if request.cursor is not None:
        where.append("rev > %s")
        params.append(decode_cursor(request.cursor))
    filters: list[str] = []
    filter_params: list[Any] = []
    for clause in request.where:
        sql, extra = filter_sql(clause)
        filters.append(sql)
        filter_params += extra
    if any(served_by_index(clause, indexed) for clause in request.where) and _walkable(request):
        return _walk_then_index(where, params, filters, filter_params, limit)
    where += filters
    params += filter_params
    text = _SELECT
    if where:
        text += " WHERE " + " AND ".join(where)
    text += " ORDER BY rev LIMIT %s"
    params.append(limit)
    return text, params


def _walk_then_index(
    base: list[str],
    base_params: list[Any],
    filters: list[str],
    filter_params: list[Any],
    limit: int,
) -> tuple[str, list[Any]]:
    """The two-step statement of the module docstring (``base`` may be empty)."""
    base_sql = " AND ".join(base) or "true"
    window = min(WALK_ROWS_PER_ROW * limit, MAX_WALK_ROWS)
    text = _WALK_THEN_INDEX.format(base=base_sql, filters=" AND ".join(filters))
    params = [
        *base_params, window, *filter_params, limit,  # hits
        window, *base_params, window,  # edge
        *base_params, *filter_params, limit, limit,  # found
        limit,
    ]  # fmt: skip
    return text, params
