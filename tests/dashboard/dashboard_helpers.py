"""Helpers for the dashboard tests (tests/dashboard is on sys.path): tokens, records, seeding."""

from __future__ import annotations

import time
from typing import Any

import httpx

from commander_os.protocol import format_ts, make_version
from commander_os.relay._auth import issue_token

SECRET = "dashboard-secret-0123456789abcdef-0123456789"


def token(agent_id: str, **claims: Any) -> str:
    """A token of the test relays' secret."""
    return issue_token(SECRET.encode(), agent_id, **claims)


def bearer(value: str) -> dict[str, str]:
    return {"authorization": f"Bearer {value}"}


def records(
    agent_id: str, count: int, *, incarnation: int = 1, age: float = 0.5, start: int = 0
) -> list[dict[str, Any]]:
    """``count`` records of ``agent_id``: every 600th has ``value.status`` "rare", the rest
    "common"; two tables (kv and notes). ``age`` seconds old, for replication lag."""
    written = format_ts(time.time() - age)
    return [
        {
            "agent_id": agent_id,
            "table": "notes" if i % 3 == 0 else "kv",
            "key": f"item/{i:05d}",
            "op": "upsert",
            "data": {"value": {"status": "rare" if i % 600 == 7 else "common", "n": i}},
            "version": make_version(incarnation, i + 1),
            "ts": written,
        }
        for i in range(start, start + count)
    ]


def push(client: httpx.Client, agent_id: str, rows: list[dict[str, Any]]) -> None:
    """Send ``rows`` in batches of 500 with ``agent_id``'s own token."""
    for start in range(0, len(rows), 500):
        body = {"agent_id": agent_id, "records": rows[start : start + 500]}
        answer = client.post("/relay/batch", json=body, headers=bearer(token(agent_id)))
        answer.raise_for_status()


#: The scanning query the relay should hint an index for.
RARE_QUERY = {
    "agent_id": "planner",
    "table": "kv",
    "where": [{"field": "value.status", "op": "eq", "value": "rare"}],
}


def seed(client: httpx.Client) -> None:
    """Several agents: planner (2,400 records, scanned by a hot field filter), recruiter,
    scout (lagging 90 s), and offline-agent, known only from a heartbeat with a backlog."""
    push(client, "planner", records("planner", 2400, incarnation=2))
    push(client, "recruiter", records("recruiter", 60))
    push(client, "scout", records("scout", 30, incarnation=3, age=90))
    beat = {
        "agent_id": "offline-agent",
        "queue_size": 3000,
        "oldest_pending_age": 812.5,
        "dead_letters": 2,
        "last_error": "connection refused",
    }
    answer = client.post("/relay/heartbeat", json=beat, headers=bearer(token("offline-agent")))
    answer.raise_for_status()
    planner = bearer(token("planner"))
    client.post("/relay/heartbeat", json={"agent_id": "planner", "queue_size": 2}, headers=planner)
    for _ in range(6):
        client.post("/relay/query", json=RARE_QUERY, headers=planner).raise_for_status()
        client.post(
            "/relay/query", json={"agent_id": "planner", "key": "item/00001"}, headers=planner
        )
