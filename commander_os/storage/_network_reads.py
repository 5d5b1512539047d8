"""Reading other agents' data through the relay: the arguments of ``query_network``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

__all__ = ["Where", "query_filters"]

#: A ``where`` clause: ``{"field": ..., "op": ..., "value": ...}`` or ``(field, op, value)``.
Where = Mapping[str, Any] | tuple[str, str, Any]


def _clauses(where: Sequence[Where] | Where) -> list[dict[str, Any]]:
    if isinstance(where, tuple) and len(where) == 3 and isinstance(where[0], str):
        where = [where]  # one ("field", "op", value) clause given without its list
    return [
        dict(clause)
        if isinstance(clause, Mapping)
        else {"field": clause[0], "op": clause[1], "value": clause[2]}
        for clause in where
    ]


def query_filters(
    *,
    agent_id: str | Sequence[str] | None,
    table: str | None,
    key: str | None,
    key_prefix: str | None,
    where: Sequence[Where] | Where,
    updated_since: datetime | str | None,
    include_deleted: bool,
    page_size: int,
) -> dict[str, Any]:
    """The fields of a ``/relay/query`` request for ``query_network``'s arguments."""
    since = updated_since.isoformat() if isinstance(updated_since, datetime) else updated_since
    agents = agent_id if agent_id is None or isinstance(agent_id, str) else list(agent_id)
    return {
        "agent_id": agents,
        "table": table,
        "key": key,
        "key_prefix": key_prefix,
        "where": _clauses(where) or None,
        "updated_since": since,
        "include_deleted": include_deleted or None,
        "limit": page_size,
    }
