"""SQL of :class:`~commander_os.integrations.langgraph.CommanderStore` and row conversion."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from langgraph.store.base import Item, SearchItem

__all__ = [
    "ANY_EXPIRED",
    "DELETE_EXPIRED",
    "DELETE_ITEM",
    "DELETE_VECTORS",
    "HAS_VECTORS",
    "INSERT_VECTOR",
    "ITEM_COLUMNS",
    "LIVE_NAMESPACES",
    "NOT_EXPIRED",
    "REFRESH_TTL",
    "SELECT_ITEM",
    "SELECT_NAMESPACES",
    "UPSERT_ITEM",
    "decode_namespace",
    "encode_namespace",
    "namespace_range",
    "to_datetime",
    "to_item",
    "to_search_item",
]

ITEM_COLUMNS = "s.namespace, s.key, s.value, s.created_at, s.updated_at, s.ttl_minutes"
NOT_EXPIRED = "(s.expires_at IS NULL OR s.expires_at > ?)"

SELECT_ITEM = (
    f"SELECT {ITEM_COLUMNS} FROM lg_store AS s WHERE s.namespace = ? AND s.key = ? "
    f"AND {NOT_EXPIRED}"
)
UPSERT_ITEM = """
INSERT INTO lg_store (namespace, key, value, created_at, updated_at, expires_at, ttl_minutes)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (namespace, key) DO UPDATE SET
    value = excluded.value, updated_at = excluded.updated_at,
    expires_at = excluded.expires_at, ttl_minutes = excluded.ttl_minutes
"""
DELETE_ITEM = "DELETE FROM lg_store WHERE namespace = ? AND key = ?"
DELETE_VECTORS = "DELETE FROM lg_store_vectors WHERE namespace = ? AND key = ?"
INSERT_VECTOR = (
    "INSERT OR REPLACE INTO lg_store_vectors (namespace, key, field, embedding) VALUES (?, ?, ?, ?)"
)
REFRESH_TTL = (
    "UPDATE lg_store SET expires_at = ? + ttl_minutes * 60.0 "
    "WHERE namespace = ? AND key = ? AND ttl_minutes IS NOT NULL"
)
DELETE_EXPIRED = "DELETE FROM lg_store WHERE expires_at IS NOT NULL AND expires_at <= ?"
ANY_EXPIRED = (
    "SELECT EXISTS (SELECT 1 FROM lg_store WHERE expires_at IS NOT NULL AND expires_at <= ?)"
)
LIVE_NAMESPACES = f"SELECT DISTINCT s.namespace FROM lg_store AS s WHERE {NOT_EXPIRED}"
SELECT_NAMESPACES = "SELECT namespace FROM lg_store_namespaces"
HAS_VECTORS = "SELECT EXISTS (SELECT 1 FROM lg_store_vectors)"


def encode_namespace(namespace: Sequence[str]) -> str:
    """``("a", "b")`` as ``"a.b"``; LangGraph forbids dots (and NULs) in labels."""
    return ".".join(namespace)


def decode_namespace(text: str) -> tuple[str, ...]:
    """The inverse of :func:`encode_namespace`."""
    return tuple(text.split("."))


def namespace_range(prefix: Sequence[str], column: str) -> tuple[str, list[Any]]:
    """Rows whose namespace is ``prefix`` or lies under it, as an index-friendly condition."""
    if not prefix:
        return "1", []
    text = encode_namespace(prefix)
    # Every namespace under "a.b" sorts in ["a.b.", "a.b/"): "/" follows "." in code points.
    return f"({column} = ? OR ({column} >= ? AND {column} < ?))", [text, text + ".", text + "/"]


def to_datetime(seconds: float) -> datetime:
    """Unix seconds as an aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


def to_item(row: Sequence[Any]) -> Item:
    """An ``Item`` from ``ITEM_COLUMNS``."""
    return Item(
        namespace=decode_namespace(row[0]),
        key=row[1],
        value=orjson.loads(row[2]),
        created_at=to_datetime(row[3]),
        updated_at=to_datetime(row[4]),
    )


def to_search_item(row: Sequence[Any], score: float | None = None) -> SearchItem:
    """A ``SearchItem`` from ``ITEM_COLUMNS``."""
    return SearchItem(
        namespace=decode_namespace(row[0]),
        key=row[1],
        value=orjson.loads(row[2]),
        created_at=to_datetime(row[3]),
        updated_at=to_datetime(row[4]),
        score=score,
    )
