"""Translate a :class:`~commander_os.protocol.QueryRequest` into one SQLite statement.

Only bound parameters reach SQL: every value, every JSON path and every limit is a ``?``. Field
filters come from :mod:`commander_os.protocol.sqlite_filters`, shared with local stores; their
semantics are the contract's (``_base.py``).
"""

from __future__ import annotations

from typing import Any

from commander_os.identifiers import prefix_upper_bound
from commander_os.protocol import (
    FieldFilter,
    FilterOp,
    QueryRequest,
    decode_cursor,
    parse_field_path,
    ts_to_micros,
)
from commander_os.protocol.sqlite_filters import filter_sql, json_path
from commander_os.relay.central._base import ROW_COLUMNS

__all__ = ["EXAMINED_FUNCTION", "build_query", "index_expression"]

_SELECT = f"SELECT {ROW_COLUMNS} FROM records"
#: A function of the reader connections that counts the rows a statement steps through. As
#: the first term of the WHERE clause, over ``rev`` (the rowid, in every index), SQLite
#: evaluates it for each index entry or row it visits, before any other filter rejects it.
EXAMINED_FUNCTION = "cos_examined"


#: Candidate rows the rev-order walk reads per row asked for, and at most (as on PostgreSQL:
#: ``_postgres_query.py`` explains the walk-then-index statement).
WALK_ROWS_PER_ROW = 20
MAX_WALK_ROWS = 4000
_WALK_THEN_INDEX = f"""
WITH hits AS MATERIALIZED (
    SELECT {ROW_COLUMNS} FROM (
        SELECT {ROW_COLUMNS} FROM records WHERE {{base}} ORDER BY rev LIMIT ?
    ) WHERE {{filters}} ORDER BY rev LIMIT ?
), edge AS MATERIALIZED (
    SELECT CASE WHEN count(*) = ? THEN max(rev) END AS rev FROM (
        SELECT rev FROM records WHERE {{base}} ORDER BY rev LIMIT ?
    )
)
SELECT * FROM hits
UNION ALL
SELECT * FROM (
    SELECT {ROW_COLUMNS} FROM records
    WHERE {{base}} AND {{hints}} AND {{filters}}
      AND rev > (SELECT rev FROM edge) AND (SELECT count(*) FROM hits) < ?
    ORDER BY rev LIMIT ?
)
ORDER BY rev LIMIT ?
"""


def index_expression(field: str) -> str:
    """The expression a field index holds and the queries name (a literal path: SQLite uses
    an expression index only for the very same expression)."""
    segments = parse_field_path(field)
    if not all(isinstance(segment, str) for segment in segments):
        raise ValueError(f"field {field!r} holds an array position: it cannot be indexed")
    return "json_extract(data, '" + json_path(segments).replace("'", "''") + "')"


def _hint(clause: FieldFilter, indexed: frozenset[str]) -> tuple[str, list[Any]] | None:
    """An index-served prefilter for ``eq``/``in`` on an indexed field: it only narrows the
    candidates (json_extract gives 1 for true, and 1 equals 1.0); the exact test still runs."""
    if clause.field not in indexed or clause.op not in (FilterOp.EQ, FilterOp.IN):
        return None
    values = clause.value if clause.op is FilterOp.IN else [clause.value]
    bound: list[Any] = []
    for value in values:
        if value is None or isinstance(value, dict | list):
            return None  # json_extract cannot be compared with these: no index help
        bound.append(int(value) if isinstance(value, bool) else value)
    if not bound:
        return None
    try:
        expression = index_expression(clause.field)
    except ValueError:
        return None
    return f"{expression} IN ({', '.join('?' * len(bound))})", bound


def _walkable(request: QueryRequest) -> bool:
    agents = request.agent_ids()
    if request.key is not None or request.key_prefix or request.updated_since is not None:
        return False
    if agents is None:
        return request.table is None
    return len(set(agents)) == 1 and request.table is not None


def _identity_filters(request: QueryRequest, where: list[str], params: list[Any]) -> None:
    agents = request.agent_ids()
    if agents is not None:
        unique = list(dict.fromkeys(agents))
        marks = ", ".join("?" * len(unique))
        where.append("agent_id = ?" if len(unique) == 1 else f"agent_id IN ({marks})")
        params += unique
    if request.table is not None:
        where.append("tbl = ?")
        params.append(request.table)
    if request.key is not None:
        where.append("key = ?")
        params.append(request.key)
    if request.key_prefix:
        where.append("key >= ?")
        params.append(request.key_prefix)
        upper = prefix_upper_bound(request.key_prefix)
        if upper is not None:
            where.append("key < ?")
            params.append(upper)


def build_query(
    request: QueryRequest,
    *,
    limit: int,
    valid_json_only: bool = False,
    count_rows: bool = False,
    indexed: frozenset[str] = frozenset(),
) -> tuple[str, list[Any]]:
    """SQL and parameters selecting up to ``limit`` rows after the request's cursor, by rev.

    ``valid_json_only`` skips rows whose data is not valid JSON before the field filters run
    (SQLite's JSON functions fail the whole statement on one such row). It costs a validation
    per row examined, so the store adds it only when a query met such a row. ``count_rows``
    calls :data:`EXAMINED_FUNCTION` on every row the statement examines (query analytics).
    ``indexed`` names the fields with an index: ``eq``/``in`` on them walk, then use it.
    """
    where: list[str] = [f"{EXAMINED_FUNCTION}(rev)"] if count_rows else []
    params: list[Any] = []
    _identity_filters(request, where, params)
    if not request.include_deleted:
        where.append("deleted = 0")
    if request.updated_since is not None:
        where.append("received >= ?")
        params.append(ts_to_micros(request.updated_since))
    if request.cursor is not None:
        where.append("rev > ?")
        params.append(decode_cursor(request.cursor))
    if valid_json_only and request.where:
        where.append("json_valid(data)")
    filters: list[str] = []
    filter_params: list[Any] = []
    for clause in request.where:
        sql, extra = filter_sql(json_path(parse_field_path(clause.field)), clause.op, clause.value)
        filters.append(sql)
        filter_params += extra
    hints = [hint for clause in request.where if (hint := _hint(clause, indexed))]
    if hints and _walkable(request):
        return _walk_then_index(where, params, filters, filter_params, hints, limit)
    where += filters
    params += filter_params
    text = _SELECT
    if where:
        text += " WHERE " + " AND ".join(where)
    text += " ORDER BY rev LIMIT ?"
    params.append(limit)
    return text, params


def _walk_then_index(
    base: list[str],
    base_params: list[Any],
    filters: list[str],
    filter_params: list[Any],
    hints: list[tuple[str, list[Any]]],
    limit: int,
) -> tuple[str, list[Any]]:
    base_sql = " AND ".join(base) or "1"
    window = min(WALK_ROWS_PER_ROW * limit, MAX_WALK_ROWS)
    text = _WALK_THEN_INDEX.format(
        base=base_sql,
        filters=" AND ".join(filters),
        hints=" AND ".join(sql for sql, _ in hints),
    )
    hint_params = [value for _, values in hints for value in values]
    params = [
        *base_params, window, *filter_params, limit,  # hits
        window, *base_params, window,  # edge
        *base_params, *hint_params, *filter_params, limit, limit,  # found
        limit,
    ]  # fmt: skip
    return text, params
