"""LangGraph's filter dialect (``{"field": value}``, ``{"field": {"$gt": 3}}``) as SQL.

Two dialects, both built on :func:`~commander_os.protocol.sqlite_filters.filter_sql`:

- :func:`store_filter_sql`, the ``BaseStore.search(filter=...)`` dialect: operators ``$eq $ne
  $gt $gte $lt $lte``, and a dict without ``$`` keys matches the fields it names inside an object
  (nested, as ``InMemoryStore`` does); a list matches an array element by element.
- :func:`equality_filter_sql`, the checkpointer ``list(filter=...)`` dialect: each metadata key
  equals the given value exactly.

Values compare as JSON: numbers numerically (``1`` equals ``1.0``), but ``true`` is not ``1``
(Python's ``True == 1`` does not carry over). ``None`` matches a null *or missing* field, because
LangGraph's reference store reads fields with ``dict.get``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from commander_os.protocol.sqlite_filters import filter_sql, json_path

__all__ = ["equality_filter_sql", "store_filter_sql"]

Path = tuple[str | int, ...]
Clause = tuple[str, list[Any]]

_RANGE = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}
_OPERATORS = frozenset({"$eq", "$ne", *_RANGE})


def store_filter_sql(filter: Mapping[str, Any], *, column: str) -> Clause:
    """The ``BaseStore.search`` filter as one SQL predicate on the JSON in ``column``.

    Raises ``ValueError`` for an unknown ``$`` operator or a field name SQLite cannot address.
    """
    return _all([_match(column, (key,), value) for key, value in filter.items()])


def equality_filter_sql(filter: Mapping[str, Any], *, column: str) -> Clause:
    """Every ``key: value`` of ``filter`` equal in the JSON object in ``column``."""
    return _all([_equal(column, (key,), value) for key, value in filter.items()])


def _all(clauses: Sequence[Clause]) -> Clause:
    if not clauses:
        return "1", []
    params: list[Any] = []
    for _, extra in clauses:
        params += extra
    return "(" + " AND ".join(sql for sql, _ in clauses) + ")", params


def _type_is(column: str, path: Path, json_type: str) -> Clause:
    return f"json_type({column}, ?) IS '{json_type}'", [json_path(path)]


def _match(column: str, path: Path, wanted: Any) -> Clause:
    if isinstance(wanted, Mapping):
        if any(isinstance(key, str) and key.startswith("$") for key in wanted):
            return _all([_operator(column, path, op, value) for op, value in wanted.items()])
        nested = [_match(column, (*path, key), value) for key, value in wanted.items()]
        return _all([_type_is(column, path, "object"), *nested])
    if isinstance(wanted, (list, tuple)):
        return _array(column, path, wanted, _match)
    return _loose_eq(column, path, wanted)


def _operator(column: str, path: Path, op: Any, value: Any) -> Clause:
    if op not in _OPERATORS:
        raise ValueError(f"unsupported filter operator {op!r}; use one of {sorted(_OPERATORS)}")
    if op == "$eq":
        return _equal(column, path, value)
    if op == "$ne":
        sql, params = _equal(column, path, value)
        return f"NOT {sql}", params
    return filter_sql(json_path(path), _RANGE[op], value, column=column)


def _equal(column: str, path: Path, wanted: Any) -> Clause:
    """Exact equality; None also matches a missing field."""
    if wanted is None:
        return _loose_eq(column, path, None)
    return _exact(column, path, wanted)


def _loose_eq(column: str, path: Path, wanted: Any) -> Clause:
    if wanted is None:
        return f"ifnull(json_type({column}, ?), 'null') = 'null'", [json_path(path)]
    return _scalar_eq(column, path, wanted)


def _scalar_eq(column: str, path: Path, wanted: Any) -> Clause:
    if isinstance(wanted, (str, int, float)) or wanted is None:
        return filter_sql(json_path(path), "eq", wanted, column=column)
    # Anything else (a datetime, a set, ...) is never stored as JSON, so it never matches.
    return "0", []


def _exact(column: str, path: Path, wanted: Any) -> Clause:
    if isinstance(wanted, Mapping):
        size = f"(SELECT count(*) FROM json_each({column}, ?)) = ?", [json_path(path), len(wanted)]
        fields = [_exact(column, (*path, key), value) for key, value in wanted.items()]
        return _all([_type_is(column, path, "object"), size, *fields])
    if isinstance(wanted, (list, tuple)):
        return _array(column, path, wanted, _exact)
    return _scalar_eq(column, path, wanted)


def _array(
    column: str, path: Path, wanted: Sequence[Any], element: Callable[[str, Path, Any], Clause]
) -> Clause:
    length = f"json_array_length({column}, ?) IS ?", [json_path(path), len(wanted)]
    items = [element(column, (*path, index), value) for index, value in enumerate(wanted)]
    return _all([_type_is(column, path, "array"), length, *items])
