"""Searching other agents' LangGraph items on the relay (``/relay/query``), under its ACL.

The relay stores each agent's ``lg_store`` rows as records keyed ``["namespace","key"]``, so a
namespace prefix becomes an indexed ``key_prefix``; the parts of a filter the relay's field
filters can express exactly are sent along as ``where`` clauses, and every record is checked
again here with the local store's semantics (:func:`matches`), which is the authority.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import orjson
from langgraph.store.base import SearchItem

from commander_os.integrations._storage import STORE_TABLE
from commander_os.integrations.langgraph._store_sql import (
    decode_namespace,
    encode_namespace,
    to_datetime,
)

if TYPE_CHECKING:
    from commander_os.integrations._core import RelayClient

__all__ = ["NetworkItem", "matches", "relay_where", "search_relay"]

_MISSING: Any = object()
_RANGE = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}
# The relay's field paths: identifier-like segments, at most eight; digits address arrays.
_SEGMENT = re.compile(r"[A-Za-z0-9_]{1,64}")
_MAX_SEGMENTS = 8
_MAX_CLAUSES = 16
_MAX_PAGE = 1000


class NetworkItem(SearchItem):
    """An item found on the relay, with the ``agent_id`` of the agent that wrote it."""

    __slots__ = ("agent_id",)

    def __init__(
        self,
        *,
        agent_id: str,
        namespace: tuple[str, ...],
        key: str,
        value: dict[str, Any],
        created_at: datetime,
        updated_at: datetime,
    ) -> None:
        super().__init__(namespace, key, value, created_at, updated_at)
        self.agent_id = agent_id

    def dict(self) -> dict[str, Any]:
        """The item as plain values, ``agent_id`` included."""
        return {**super().dict(), "agent_id": self.agent_id}


def search_relay(
    relay: RelayClient,
    namespace_prefix: Sequence[str],
    *,
    agent_id: str | Sequence[str] | None,
    filter: Mapping[str, Any] | None,
    limit: int,
    offset: int,
) -> list[NetworkItem]:
    """Up to ``limit`` live items under ``namespace_prefix`` on the relay, after ``offset``."""
    if limit == 0:
        return []
    found: list[NetworkItem] = []
    skipped = 0
    for item in _live_items(relay, namespace_prefix, agent_id, filter, limit + offset):
        if skipped < offset:
            skipped += 1
            continue
        found.append(item)
        if len(found) >= limit:
            break
    return found


def _live_items(
    relay: RelayClient,
    namespace_prefix: Sequence[str],
    agent_id: str | Sequence[str] | None,
    filter: Mapping[str, Any] | None,
    wanted: int,
) -> Iterator[NetworkItem]:
    prefix = encode_namespace(namespace_prefix)
    records = relay.query_all(
        agent_id=agent_id if agent_id is None or isinstance(agent_id, str) else list(agent_id),
        table=STORE_TABLE,
        # '["a.b' starts the key of every item in "a.b", "a.b.c" ... (and "a.bc": checked below).
        key_prefix=orjson.dumps([prefix]).decode()[:-2] if namespace_prefix else None,
        where=relay_where(filter or {}) or None,
        limit=min(max(wanted, 10), _MAX_PAGE),
    )
    now = time.time()
    for record in records:
        data = record.get("data")
        if not isinstance(data, dict):
            continue
        namespace = data["namespace"]
        if namespace_prefix and namespace != prefix and not namespace.startswith(prefix + "."):
            continue
        expires = data.get("expires_at")
        if expires is not None and expires <= now:
            continue
        if filter and not matches(data["value"], filter):
            continue
        yield NetworkItem(
            agent_id=record["agent_id"],
            namespace=decode_namespace(namespace),
            key=data["key"],
            value=data["value"],
            created_at=to_datetime(data["created_at"]),
            updated_at=to_datetime(data["updated_at"]),
        )


# ------------------------------------------------------------------ relay where clauses


def relay_where(filter: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The clauses of ``filter`` the relay evaluates exactly as the local store does.

    A clause the relay cannot express the same way (``None``, lists, whole objects, field
    names outside its path syntax) is simply not sent: :func:`matches` checks it here.
    """
    clauses: list[dict[str, Any]] = []
    _collect(("value",), filter, clauses)
    return clauses[:_MAX_CLAUSES]


def _collect(path: tuple[str, ...], filter: Mapping[str, Any], out: list[dict[str, Any]]) -> None:
    for key, wanted in filter.items():
        field = (*path, key)
        if not _addressable(field):
            continue
        if isinstance(wanted, Mapping) and any(str(k).startswith("$") for k in wanted):
            for op, value in wanted.items():
                _operator_clause(".".join(field), op, value, out)
        elif isinstance(wanted, Mapping):
            _collect(field, wanted, out)
        elif _scalar(wanted):
            out.append({"field": ".".join(field), "op": "eq", "value": wanted})


def _operator_clause(field: str, op: str, value: Any, out: list[dict[str, Any]]) -> None:
    if op in ("$eq", "$ne") and _scalar(value):
        out.append({"field": field, "op": op[1:], "value": value})
    elif (op in _RANGE and _number(value)) or (op in _RANGE and isinstance(value, str)):
        out.append({"field": field, "op": _RANGE[op], "value": value})


def _addressable(field: tuple[str, ...]) -> bool:
    # A digits-only segment would address an array element on the relay, not an object key.
    return len(field) <= _MAX_SEGMENTS and all(
        isinstance(part, str) and _SEGMENT.fullmatch(part) and not part.isdigit() for part in field
    )


def _scalar(value: Any) -> bool:
    return isinstance(value, (str, bool)) or _number(value)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -------------------------------------------------------------- the local semantics in Python


def matches(value: Any, filter: Mapping[str, Any]) -> bool:
    """Whether ``value`` passes ``filter`` with the semantics of the store's SQL filters.

    Raises like the SQL translation does, whatever the value: ``ValueError`` for an unknown
    operator, ``TypeError`` for a range bound that is neither a number nor a string.
    """
    _validate(filter)
    return all(_match(_field(value, key), wanted) for key, wanted in filter.items())


def _validate(wanted: Any) -> None:
    if not isinstance(wanted, Mapping):
        return
    operators = any(isinstance(key, str) and key.startswith("$") for key in wanted)
    for key, value in wanted.items():
        if not operators:
            _validate(value)
        elif key not in ("$eq", "$ne", *_RANGE):
            raise ValueError(f"unsupported filter operator {key!r}")
        elif key in _RANGE and not (_number(value) or isinstance(value, str)):
            raise TypeError(f"{key} compares with a number or a string, not {type(value).__name__}")


def _field(container: Any, key: Any) -> Any:
    return container.get(key, _MISSING) if isinstance(container, dict) else _MISSING


def _match(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, Mapping):
        if any(isinstance(key, str) and key.startswith("$") for key in wanted):
            return all(_operator(actual, op, value) for op, value in wanted.items())
        return isinstance(actual, dict) and all(
            _match(_field(actual, key), value) for key, value in wanted.items()
        )
    if isinstance(wanted, (list, tuple)):
        return _same_array(actual, wanted, _match)
    if wanted is None:
        return actual is _MISSING or actual is None
    return _json_eq(actual, wanted)


def _operator(actual: Any, op: str, value: Any) -> bool:
    if op == "$eq":
        return _equal(actual, value)
    if op == "$ne":
        return not _equal(actual, value)
    comparable = (_number(actual) and _number(value)) or (
        isinstance(actual, str) and isinstance(value, str)
    )
    if not comparable:
        return False
    if op == "$gt":
        return bool(actual > value)
    if op == "$gte":
        return bool(actual >= value)
    if op == "$lt":
        return bool(actual < value)
    return bool(actual <= value)


def _equal(actual: Any, wanted: Any) -> bool:
    if wanted is None:
        return actual is _MISSING or actual is None
    return _exact(actual, wanted)


def _exact(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, Mapping):
        return (
            isinstance(actual, dict)
            and len(actual) == len(wanted)
            and all(key in actual and _exact(actual[key], value) for key, value in wanted.items())
        )
    if isinstance(wanted, (list, tuple)):
        return _same_array(actual, wanted, _exact)
    if wanted is None:
        return actual is None
    return _json_eq(actual, wanted)


def _same_array(actual: Any, wanted: Sequence[Any], element: Any) -> bool:
    return (
        isinstance(actual, list)
        and len(actual) == len(wanted)
        and all(element(a, w) for a, w in zip(actual, wanted, strict=True))
    )


def _json_eq(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, bool) or isinstance(actual, bool):
        return isinstance(wanted, bool) and isinstance(actual, bool) and actual is wanted
    if _number(wanted):
        return _number(actual) and bool(actual == wanted)
    if isinstance(wanted, str):
        return isinstance(actual, str) and actual == wanted
    return False
