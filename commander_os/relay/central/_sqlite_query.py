"""Translate a :class:`~commander_os.protocol.QueryRequest` into one SQLite statement.

Only bound parameters reach SQL: every value, every JSON path and every limit is a ``?``. Field
filters come from :mod:`commander_os.protocol.sqlite_filters`, shared with local stores; their
semantics are the contract's (``_base.py``).
"""

from __future__ import annotations

from typing import Any

from commander_os.identifiers import prefix_upper_bound
from commander_os.protocol import QueryRequest, decode_cursor, parse_field_path, ts_to_micros
from commander_os.protocol.sqlite_filters import filter_sql, json_path
from commander_os.relay.central._base import ROW_COLUMNS

__all__ = ["EXAMINED_FUNCTION", "build_query"]

_SELECT = f"SELECT {ROW_COLUMNS} FROM records"
#: A function of the reader connections that counts the rows a statement steps through. As
#: the first term of the WHERE clause, over ``rev`` (the rowid, in every index), SQLite
#: evaluates it for each index entry or row it visits, before any other filter rejects it.
EXAMINED_FUNCTION = "cos_examined"


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
) -> tuple[str, list[Any]]:
    """SQL and parameters selecting up to ``limit`` rows after the request's cursor, by rev.

    ``valid_json_only`` skips rows whose data is not valid JSON before the field filters run
    (SQLite's JSON functions fail the whole statement on one such row). It costs a validation
    per row examined, so the store adds it only when a query met such a row. ``count_rows``
    calls :data:`EXAMINED_FUNCTION` on every row the statement examines (query analytics).
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
    for clause in request.where:
        sql, extra = filter_sql(json_path(parse_field_path(clause.field)), clause.op, clause.value)
        where.append(sql)
        params += extra
    text = _SELECT
    if where:
        text += " WHERE " + " AND ".join(where)
    text += " ORDER BY rev LIMIT ?"
    params.append(limit)
    return text, params
