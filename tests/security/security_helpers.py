"""Helpers shared by the security tests (tests/security is on sys.path)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from commander_os.config import LimitsConfig
from commander_os.protocol import format_ts
from commander_os.relay._auth import issue_token

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
