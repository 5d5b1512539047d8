"""Helpers shared by the security tests (tests/security is on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import httpx
import orjson

from commander_os.config import LimitsConfig
from commander_os.protocol import EncodedRecord, QueryRequest, format_ts
from commander_os.relay._auth import issue_token
from commander_os.relay.central import CentralStore

#: The relay secret of the in-process relays; tokens signed with ANOTHER_SECRET are forged.
SECRET = "test-secret-0123456789abcdef-0123456789"
ANOTHER_SECRET = "another-secret-0123456789abcdef-012345"

#: What every client of a relay sends with a body (the relay refuses other content types).
JSON_HEADERS = {"content-type": "application/json"}

#: Small limits, so hostile-input tests need no big payloads.
TEST_LIMITS = LimitsConfig(
    max_body_bytes=64 * 1024,
    max_batch_records=50,
    max_value_bytes=4096,
    max_json_depth=8,
    max_query_limit=100,
    # These tests count 401s for invalid tokens; test_limits.py tests the failure bucket.
    auth_failures_per_minute=None,
)


def token(agent_id: str, *, secret: str = SECRET, **claims: Any) -> str:
    """A token for ``agent_id`` signed with ``secret`` (``read=``, ``admin=``, ...)."""
    return issue_token(secret.encode(), agent_id, **claims)


def bearer(value: str | None) -> dict[str, str]:
    """Headers carrying ``value`` as a bearer token (none for ``None``)."""
    return {} if value is None else {"authorization": f"Bearer {value}"}


def record(
    agent_id: str = "agent-a", key: str = "k", version: int = 10, **changes: Any
) -> dict[str, Any]:
    """A valid change record as JSON."""
    base: dict[str, Any] = {
        "agent_id": agent_id,
        "table": "kv",
        "key": key,
        "op": "upsert",
        "data": {"value": key},
        "version": version,
        "ts": format_ts(1_764_210_000),
    }
    base.update(changes)
    return base


def files_under(root: Path) -> set[Path]:
    """Every file below ``root`` (recursively)."""
    found: set[Path] = set()
    for folder, _, names in os.walk(root):
        found.update(Path(folder) / name for name in names)
    return found


def relay_client(app: Any, *, client: tuple[str, int] = ("127.0.0.1", 40000)) -> httpx.AsyncClient:
    """An httpx client bound in-process to ``app``, calling from ``client`` (address, port)."""
    transport = httpx.ASGITransport(app=app, client=client)
    return httpx.AsyncClient(transport=transport, base_url="http://localhost", headers=JSON_HEADERS)


async def all_records(store: CentralStore) -> list[tuple[Any, ...]]:
    """Every stored record (tombstones too) as comparable tuples: what "unchanged" compares."""
    page = await store.query(QueryRequest(include_deleted=True, limit=1000))
    return [(r.agent_id, r.table, r.key, r.version, r.deleted, r.data) for r in page.records]


#: Records of heavy_records(): enough that HEAVY_QUERY runs for a second on SQLite and for
#: tens of milliseconds on PostgreSQL, on the development machine.
HEAVY_RECORDS = 20_000
#: A query no index can help: every clause walks a 100-element array or indexes into it, and
#: all but the last hold for every record, so every clause runs on every record.
HEAVY_QUERY: dict[str, Any] = {
    "where": [{"field": "tags", "op": "contains", "value": 99}] * 8
    + [{"field": "tags.99", "op": "gte", "value": 0}] * 7
    + [{"field": "tags.98", "op": "gt", "value": 999}],
    "limit": 10,
}


async def load_heavy(store: CentralStore, count: int = HEAVY_RECORDS) -> None:
    """Store ``count`` records that HEAVY_QUERY has to examine one by one."""
    data = orjson.dumps({"tags": list(range(100))}).decode()
    ts = 1_764_210_000_000_000
    records = [
        EncodedRecord("agent-a", "kv", f"k{i}", i + 1, ts, False, data) for i in range(count)
    ]
    for start in range(0, count, 5000):
        await store.apply_encoded(records[start : start + 5000])
