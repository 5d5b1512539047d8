"""The relay's endpoints, in-process through httpx.ASGITransport."""

from __future__ import annotations

import asyncio
import gzip
from typing import Any

import httpx
import orjson
import pytest
import zstandard

import commander_os
from commander_os.protocol import format_ts
from commander_os.relay.central import CentralStore

pytestmark = pytest.mark.anyio


def wire(key: str, version: int, data: Any = None, *, agent_id: str = "agent-a") -> dict[str, Any]:
    record: dict[str, Any] = {
        "agent_id": agent_id,
        "table": "kv",
        "key": key,
        "op": "upsert" if data is not None else "delete",
        "version": version,
        "ts": format_ts(1_764_210_000.5 + version),
    }
    if data is not None:
        record["data"] = data
    return record


async def test_immediate_acks_after_commit_and_is_queryable(relay: httpx.AsyncClient) -> None:
    answer = await relay.post("/relay/immediate", json=wire("config", 3, {"value": {"t": "d"}}))
    assert answer.status_code == 200
    assert answer.json() == {
        "agent_id": "agent-a",
        "highest_version": 3,
        "applied": 1,
        "ignored": 0,
    }
    page = (await relay.post("/relay/query", json={"agent_id": "agent-a", "key": "config"})).json()
    (record,) = page["records"]
    assert record["data"] == {"value": {"t": "d"}}
    assert (record["version"], record["deleted"], record["table"]) == (3, False, "kv")
    assert record["ts"] == format_ts(1_764_210_003.5)
    assert page["next_cursor"] is None


@pytest.mark.parametrize("encoding", ["identity", "gzip", "zstd"])
async def test_batch_accepts_plain_gzip_and_zstd_bodies(
    relay: httpx.AsyncClient, encoding: str
) -> None:
    body = orjson.dumps(
        {"agent_id": "agent-a", "records": [wire(f"k{i}", i + 1, {"i": i}) for i in range(40)]}
    )
    headers = {"content-type": "application/json"}
    if encoding == "gzip":
        body, headers["content-encoding"] = gzip.compress(body), "gzip"
    elif encoding == "zstd":
        body, headers["content-encoding"] = zstandard.ZstdCompressor().compress(body), "zstd"
    answer = await relay.post("/relay/batch", content=body, headers=headers)
    assert answer.status_code == 200, answer.text
    assert answer.json() == {
        "agent_id": "agent-a",
        "highest_version": 40,
        "applied": 40,
        "ignored": 0,
    }
    replay = await relay.post("/relay/batch", content=body, headers=headers)
    assert replay.json()["ignored"] == 40


async def test_deletes_propagate(relay: httpx.AsyncClient) -> None:
    await relay.post("/relay/immediate", json=wire("k", 1, {"v": 1}))
    await relay.post("/relay/immediate", json=wire("k", 2))
    visible = (await relay.post("/relay/query", json={})).json()["records"]
    assert visible == []
    (tomb,) = (await relay.post("/relay/query", json={"include_deleted": True})).json()["records"]
    assert (tomb["deleted"], tomb["data"]) == (True, None)


async def test_concurrent_batches_are_all_acknowledged(relay: httpx.AsyncClient) -> None:
    async def push(agent: int) -> dict[str, Any]:
        records = [wire(f"k{i}", i + 1, {"i": i}, agent_id=f"agent-{agent}") for i in range(50)]
        answer = await relay.post(
            "/relay/batch", json={"agent_id": f"agent-{agent}", "records": records}
        )
        assert answer.status_code == 200
        return dict(answer.json())

    acks = await asyncio.gather(*(push(n) for n in range(12)))
    assert all(ack["applied"] == 50 for ack in acks)
    agents = (await relay.get("/relay/agents")).json()["agents"]
    assert len(agents) == 12
    assert all(a["record_count"] == 50 and a["tables"] == {"kv": 50} for a in agents)


async def test_query_pages_with_cursor_and_clamps_limit(relay: httpx.AsyncClient) -> None:
    records = [wire(f"k{i:03d}", i + 1, {"i": i}) for i in range(50)]
    await relay.post("/relay/batch", json={"agent_id": "agent-a", "records": records})
    await relay.post("/relay/batch", json={"agent_id": "agent-a", "records": records[:10]})
    seen: list[str] = []
    cursor = None
    while True:
        page = (await relay.post("/relay/query", json={"limit": 15, "cursor": cursor})).json()
        seen += [r["key"] for r in page["records"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == [f"k{i:03d}" for i in range(50)]
    # The test relay caps queries at 100 records (limits.max_query_limit); 1000 is clamped.
    for prefix in ("x", "y"):
        more = [wire(f"{prefix}{i}", i + 1, {}, agent_id="agent-b") for i in range(40)]
        answer = await relay.post("/relay/batch", json={"agent_id": "agent-b", "records": more})
        assert answer.status_code == 200
    page = (await relay.post("/relay/query", json={"limit": 1000})).json()
    assert len(page["records"]) == 100
    assert page["next_cursor"] is not None


async def test_where_filters_over_http(relay: httpx.AsyncClient) -> None:
    await relay.post(
        "/relay/batch",
        json={
            "agent_id": "agent-a",
            "records": [
                wire("a", 1, {"value": {"theme": "dark", "skills": ["go", "sql"]}}),
                wire("b", 2, {"value": {"theme": "light", "skills": ["sql"]}}),
            ],
        },
    )
    query = {
        "where": [
            {"field": "value.skills", "op": "contains", "value": "sql"},
            {"field": "value.theme", "op": "ne", "value": "light"},
        ]
    }
    page = (await relay.post("/relay/query", json=query)).json()
    assert [r["key"] for r in page["records"]] == ["a"]


async def test_change_feed_follows_rev_order_and_long_polls(relay: httpx.AsyncClient) -> None:
    await relay.post("/relay/immediate", json=wire("a", 1, {}))
    await relay.post("/relay/immediate", json=wire("b", 2))  # a tombstone is a change too
    feed = (await relay.get("/relay/changes")).json()
    assert [(r["key"], r["deleted"]) for r in feed["records"]] == [("a", False), ("b", True)]
    cursor = feed["next_cursor"]
    empty = (await relay.get("/relay/changes", params={"after": cursor})).json()
    assert empty == {"records": [], "next_cursor": cursor}

    waiting = asyncio.create_task(relay.get("/relay/changes", params={"after": cursor, "wait": 10}))
    await asyncio.sleep(0.1)
    assert not waiting.done()
    await relay.post("/relay/immediate", json=wire("c", 3, {}))
    answer = (await asyncio.wait_for(waiting, 5)).json()
    assert [r["key"] for r in answer["records"]] == ["c"]


async def test_change_feed_filters_by_agent(relay: httpx.AsyncClient) -> None:
    await relay.post("/relay/immediate", json=wire("a", 1, {}, agent_id="agent-a"))
    await relay.post("/relay/immediate", json=wire("b", 1, {}, agent_id="agent-b"))
    feed = (await relay.get("/relay/changes", params={"agent_id": "agent-b"})).json()
    assert [r["agent_id"] for r in feed["records"]] == ["agent-b"]


async def test_health_reports_store_version_and_uptime(relay: httpx.AsyncClient) -> None:
    answer = await relay.get("/health")
    assert answer.status_code == 200
    health = answer.json()
    assert health["status"] == "ok"
    assert health["version"] == commander_os.__version__
    assert health["backend"] == "sqlite"
    assert health["central_store"]["reachable"] is True
    assert health["uptime_seconds"] >= 0


async def test_health_is_503_when_the_store_is_down(
    relay: httpx.AsyncClient, relay_store: CentralStore
) -> None:
    await relay_store.close()
    answer = await relay.get("/health")
    assert answer.status_code == 503
    assert answer.json()["central_store"]["reachable"] is False


async def test_metrics_count_requests_records_and_latency(relay: httpx.AsyncClient) -> None:
    await relay.post("/relay/batch", json={"agent_id": "agent-a", "records": [wire("a", 1, {})]})
    await relay.post("/relay/immediate", json=wire("a", 1, {}))
    await relay.post("/relay/query", json={})
    await relay.post("/relay/query", content=b"{nope")
    text = (await relay.get("/metrics")).text
    assert 'commander_relay_requests_total{endpoint="/relay/batch",status="200"} 1' in text
    assert 'commander_relay_requests_total{endpoint="/relay/query",status="400"} 1' in text
    assert "commander_relay_records_applied_total 1" in text
    assert "commander_relay_records_ignored_total 1" in text
    assert "commander_relay_apply_seconds_count 2" in text
    assert 'commander_relay_query_seconds_bucket{le="+Inf"} 1' in text


async def test_dashboard_lists_agents_escaped(relay: httpx.AsyncClient) -> None:
    await relay.post("/relay/immediate", json={**wire("k", 1, {}), "table": "notes"})
    page = await relay.get("/")
    assert page.status_code == 200
    assert "agent-a" in page.text
    assert "notes: 1" in page.text


async def test_openapi_documents_the_request_bodies(relay: httpx.AsyncClient) -> None:
    spec = (await relay.get("/openapi.json")).json()
    for path in ("/relay/immediate", "/relay/batch", "/relay/query"):
        assert "requestBody" in spec["paths"][path]["post"]
    assert "ChangeRecord" in spec["components"]["schemas"]
    assert "FieldFilter" in spec["components"]["schemas"]
    assert (await relay.get("/docs")).status_code == 200
