"""Helpers shared by the relay and central-store tests (tests/network is on sys.path)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from commander_os.protocol import ChangeRecord

#: Every store in the contract suite rejects encoded values above this many bytes.
CONTRACT_MAX_VALUE_BYTES = 64 * 1024
#: What every client of a relay sends with a body (the relay refuses other content types).
JSON_HEADERS = {"content-type": "application/json"}


def make_record(
    key: str,
    version: int,
    data: dict[str, Any] | None = None,
    *,
    agent_id: str = "agent-a",
    table: str = "kv",
    op: str | None = None,
    ts: datetime | None = None,
) -> ChangeRecord:
    """A valid change record; ``data=None`` and no ``op`` means a delete."""
    op = op or ("upsert" if data is not None else "delete")
    return ChangeRecord(
        agent_id=agent_id,
        table=table,
        key=key,
        op=op,  # type: ignore[arg-type]
        data=data,
        version=version,
        ts=ts or datetime.now(UTC),
    )
