"""Query and data analytics: shapes, percentiles, rows examined, index hints, the slow log,
per-agent counters and health, heartbeats, and analytics switched off."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import httpx
import pytest
from relay_helpers import make_record

from commander_os.config import AlertsConfig, RelayConfig
from commander_os.protocol import (
    Ack,
    AgentSummary,
    EncodedRecord,
    Heartbeat,
    QueryRequest,
    TargetHeartbeat,
    make_version,
)
from commander_os.relay import create_app
from commander_os.relay._analytics._data import DataAnalytics, Health
from commander_os.relay._analytics._queries import (
    COUNT_EVERY,
    COUNT_FIRST,
    MAX_SHAPES,
    QueryAnalytics,
    shape_key,
    shape_label,
)
from commander_os.relay._analytics._series import BUCKETS, SeriesSet
from commander_os.relay.central import CentralStore, store_for_config

pytestmark = pytest.mark.anyio


def _wire(key: str, version: int, data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    record = make_record(key, version, data, **extra)
    return {**record.model_dump(mode="json"), "ts": record.ts.isoformat()}


async def _push(relay: httpx.AsyncClient, agent: str, count: int, table: str = "kv") -> None:
    rows = [
        _wire(
            f"k{i:04d}",
            i + 1,
            {"value": {"status": "rare" if i == 7 else "common", "n": i}},
            agent_id=agent,
            table=table,
        )
        for i in range(count)
    ]
    for start in range(0, len(rows), 50):
        body = {"agent_id": agent, "records": rows[start : start + 50]}
        assert (await relay.post("/relay/batch", json=body)).status_code == 200


# ----------------------------------------------------------------------------- shapes


def test_a_shape_keeps_filters_and_operators_but_no_values() -> None:
    one = QueryRequest.model_validate(
        {"agent_id": "a", "table": "kv", "where": [{"field": "value.x", "op": "eq", "value": 1}]}
    )
    other = QueryRequest.model_validate(
        {"agent_id": "b", "table": "t", "where": [{"field": "value.x", "op": "eq", "value": "z"}]}
    )
    assert shape_key("query", one) == shape_key("query", other)
    label = shape_label(shape_key("query", one))
    assert label == "query agent table where(value.x eq)"
    assert "1" not in label
    ranged = QueryRequest.model_validate(
        {
            "agent_id": ["a", "b"],
            "key_prefix": "p/",
            "where": [
                {"field": "b", "op": "gte", "value": 1},
                {"field": "a", "op": "in", "value": [1]},
            ],
        }
    )
    assert shape_label(shape_key("changes", ranged)) == (
        "changes agents key_prefix where(a in, b gte)"
    )


def test_percentiles_sampling_and_the_slow_log(caplog: pytest.LogCaptureFixture) -> None:
    queries = QueryAnalytics(slow_query_ms=50, clock=lambda: 1000.0)
    request = QueryRequest(agent_id="a")
    stats = queries.stats_for("query", request)
    counted = 0
    with caplog.at_level(logging.WARNING, logger="commander_os.relay.slow_query"):
        for i in range(100):
            wants = stats.wants_count()
            counted += wants
            queries.record(stats, request, (i + 1) / 1000, 1, 10 if wants else None)
    assert counted == COUNT_FIRST + len(
        [n for n in range(COUNT_FIRST, 100) if n % COUNT_EVERY == 0]
    )
    shape = queries.report()["shapes"][0]
    assert shape["count"] == 100
    assert shape["p50_ms"] == 50.0
    assert shape["p95_ms"] == 95.0
    assert shape["p99_ms"] == 99.0
    assert shape["rows_examined_per_query"] == 10.0
    assert shape["rows_returned_per_query"] == 1.0
    slow = queries.report()["slow_queries"]
    assert len(slow) == 51  # 50 ms and above
    assert slow[0]["ms"] == 100.0  # newest first
    assert "a" not in slow[0]["shape"].split()  # the agent's name is a value: never shown
    assert "slow query: 100.0 ms, query agent" in caplog.text


def test_shapes_past_the_cap_are_pooled() -> None:
    queries = QueryAnalytics(slow_query_ms=1000)
    for i in range(MAX_SHAPES + 10):
        request = QueryRequest(where=[{"field": f"f{i}", "op": "exists", "value": True}])
        queries.record(queries.stats_for("query", request), request, 0.001, 0, None)
    assert len(queries.shapes) == MAX_SHAPES + 1
    other = [s for s in queries.report()["shapes"] if s["shape"] == "other shapes"]
    assert other[0]["count"] == 10


async def test_sqlite_counts_the_rows_a_query_examines(relay_store: CentralStore) -> None:
    records = [
        make_record(f"k{i:04d}", i + 1, {"n": i}, table="kv" if i % 2 else "other")
        for i in range(300)
    ]
    await relay_store.apply(records)
    by_table = QueryRequest(
        agent_id="agent-a", table="kv", where=[{"field": "n", "op": "eq", "value": 11}]
    )
    page, examined = await relay_store.query_counted(by_table)
    assert [r.key for r in page.records] == ["k0011"]
    assert examined == 150  # every row of the agent's table, through its index
    page, examined = await relay_store.query_counted(QueryRequest(agent_id="agent-a", key="k0001"))
    assert examined == 1
    plan = await relay_store.explain(by_table)
    assert any("records_agent_table_rev" in step for step in plan.steps)


async def test_every_store_explains_its_plan(central_store: CentralStore) -> None:
    await central_store.apply([make_record(f"k{i}", i + 1, {"n": i}) for i in range(50)])
    plan = await central_store.explain(
        QueryRequest(agent_id="agent-a", table="kv", where=[{"field": "n", "op": "lt", "value": 3}])
    )
    assert plan.backend == central_store.backend
    assert plan.steps
    assert all(isinstance(step, str) and step for step in plan.steps)
    if central_store.backend == "postgresql":
        assert plan.examined == 50  # EXPLAIN ANALYZE: the rows it read


async def test_a_hot_scanning_filter_gets_an_index_hint(relay: httpx.AsyncClient) -> None:
    await _push(relay, "agent-a", 400)
    query = {
        "agent_id": "agent-a",
        "where": [{"field": "value.status", "op": "eq", "value": "rare"}],
    }
    for _ in range(5):
        answer = await relay.post("/relay/query", json=query)
        assert [r["key"] for r in answer.json()["records"]] == ["k0007"]
        assert (
            await relay.post("/relay/query", json={"agent_id": "agent-a", "key": "k0001"})
        ).status_code == 200
    report = (await relay.get("/relay/analytics")).json()
    shapes = {shape["shape"]: shape for shape in report["queries"]["shapes"]}
    scan = shapes["query agent where(value.status eq)"]
    assert scan["count"] == 5
    assert scan["rows_examined_per_query"] == 400
    assert scan["rows_returned_per_query"] == 1
    assert scan["scans"] is True
    (hint,) = scan["index_hints"]
    assert hint["field"] == "value.status"
    assert hint["command"] == "commander-os relay index add value.status"
    assert "indexed_fields" in hint["text"]
    assert scan["slowest"]["plan"]  # the store's plan for the slowest
    lookup = shapes["query agent key"]
    assert lookup["scans"] is False
    assert lookup["index_hints"] == []
    assert "rare" not in str(report["queries"])  # values never appear


# ------------------------------------------------------------------------ data analytics


def _encoded(agent: str, table: str, count: int, ts_us: int) -> list[EncodedRecord]:
    return [
        EncodedRecord(agent, table, f"k{i}", i + 1, ts_us, False, '{"v":' + str(i) + "}")
        for i in range(count)
    ]


def test_writes_are_counted_per_agent_and_table_with_lag() -> None:
    clock = [10_000.0]
    data = DataAnalytics(AlertsConfig(), clock=lambda: clock[0])
    written = int((clock[0] - 4.0) * 1e6)
    mixed = _encoded("a", "kv", 3, written) + _encoded("a", "notes", 2, written)
    data.on_write(mixed, [Ack(agent_id="a", highest_version=3, applied=5, ignored=0)])
    activity = data.agents["a"]
    assert activity.records == 5
    assert activity.tables == {"kv": [3, 21], "notes": [2, 14]}  # {"v":0} is 7 bytes
    assert activity.bytes == 35
    assert activity.lag_seconds == pytest.approx(4.0)
    assert data.charts([{"agent_id": "a"}])["ingest_per_second"][-1] == pytest.approx(5 / 30)


def test_health_follows_the_alert_thresholds() -> None:
    clock = [50_000.0]
    alerts = AlertsConfig(max_queue=100, max_lag_seconds=10, max_silence_seconds=60)
    data = DataAnalytics(alerts, clock=lambda: clock[0])
    now_us = int(clock[0] * 1e6)
    data.on_write(
        _encoded("fresh", "kv", 1, now_us),
        [Ack(agent_id="fresh", highest_version=1, applied=1, ignored=0)],
    )
    data.on_write(
        _encoded("laggy", "kv", 1, now_us - 30_000_000),
        [Ack(agent_id="laggy", highest_version=1, applied=1, ignored=0)],
    )
    data.on_heartbeat(Heartbeat(agent_id="backlog", queue_size=3000, dead_letters=2))
    data.on_heartbeat(Heartbeat(agent_id="erring", queue_size=1, last_error="relay answered 503"))
    data.on_heartbeat(
        Heartbeat(
            agent_id="replicated",
            queue_size=40,
            targets=[
                TargetHeartbeat(name="http://127.0.0.1:8001", queue_size=0),
                TargetHeartbeat(name="http://127.0.0.1:8101", queue_size=40, oldest_pending_age=90),
                TargetHeartbeat(name="http://127.0.0.1:8201", queue_size=40, last_error="refused"),
            ],
        )
    )

    def summary(agent: str, seen: float) -> AgentSummary:
        from datetime import UTC, datetime

        return AgentSummary(
            agent_id=agent,
            last_seen=datetime.fromtimestamp(seen, tz=UTC),
            highest_version=make_version(2, 5),
            record_count=1,
            tables={"kv": 1},
        )

    stored = [
        summary("fresh", clock[0]),
        summary("laggy", clock[0]),
        summary("gone", clock[0] - 600),
        summary("erring", clock[0]),
    ]
    rows = {row["agent_id"]: row for row in data.agents_view(stored)}
    assert rows["fresh"]["health"] == Health.OK
    assert rows["laggy"]["health"] == Health.BEHIND
    assert rows["laggy"]["reasons"] == ["lag 30 s (limit 10 s)"]
    assert rows["backlog"]["health"] == Health.BEHIND
    assert rows["backlog"]["delivered"] is False
    assert "3,000 changes queued (limit 100)" in rows["backlog"]["reasons"]
    assert "2 dead letters" in rows["backlog"]["reasons"]
    assert rows["gone"]["health"] == Health.SILENT
    assert rows["gone"]["reasons"][0].startswith("silent for 10 min")
    assert rows["erring"]["health"] == Health.WARNING
    # Replication: each lagging target is named, with why.
    assert rows["replicated"]["reasons"][-2:] == [
        "target http://127.0.0.1:8101: 40 queued, oldest 90 s",
        "target http://127.0.0.1:8201: refused",
    ]
    assert rows["fresh"]["incarnation"] == 2
    assert rows["fresh"]["seq"] == 5
    assert [r["agent_id"] for r in data.agents_view(stored)][:2] == ["backlog", "laggy"]


def test_series_buckets_roll_over() -> None:
    series = SeriesSet(("n",), width=10.0)
    series.add("n", 100.0, 2)
    series.add("n", 105.0, 3)
    series.peak("n", 111.0, 7)
    points = series.points("n", 111.0)
    assert len(points) == BUCKETS
    assert points[-2:] == [5.0, 7.0]
    later = 111.0 + 10.0 * BUCKETS
    series.add("n", later, 1)
    assert series.points("n", later)[-1] == 1.0  # the old bucket was reset, not added to
    assert series.points("n", later).count(None) == BUCKETS - 1


# ----------------------------------------------------------------------------- heartbeats


async def test_a_heartbeat_only_agent_is_known_and_behind(relay: httpx.AsyncClient) -> None:
    beat = {
        "agent_id": "offline-agent",
        "queue_size": 3000,
        "oldest_pending_age": 812.5,
        "dead_letters": 2,
        "last_error": "connection refused",
        "targets": [{"name": "http://127.0.0.1:8001", "queue_size": 3000}],
    }
    answer = await relay.post("/relay/heartbeat", json=beat)
    assert answer.status_code == 200
    assert answer.json()["kept"] is True
    assert answer.json()["agent_id"] == "offline-agent"
    report = (await relay.get("/relay/analytics")).json()
    (row,) = [r for r in report["agents"] if r["agent_id"] == "offline-agent"]
    assert row["health"] == "behind"
    assert row["records"] == 0
    assert row["heartbeat"]["queue_size"] == 3000
    assert row["heartbeat"]["targets"][0]["name"] == "http://127.0.0.1:8001"
    again = {**beat, "queue_size": 10, "dead_letters": 0, "last_error": None}
    await relay.post("/relay/heartbeat", json=again)
    report = (await relay.get("/relay/analytics")).json()
    (row,) = [r for r in report["agents"] if r["agent_id"] == "offline-agent"]
    assert row["heartbeat"]["queue_size"] == 10  # the latest one is kept


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"", 400),
        (b"{nope", 400),
        (b'{"agent_id": "a"}', 422),
        (b'{"agent_id": "a", "queue_size": -1}', 422),
        (b'{"agent_id": "a", "queue_size": 1, "oldest_pending_age": "soon"}', 422),
        (b'{"agent_id": "../etc", "queue_size": 1}', 422),
        (b'{"agent_id": "a", "queue_size": 1, "extra": 1}', 422),
        (b'{"agent_id": "a", "queue_size": 1, "last_error": "' + b"x" * 2000 + b'"}', 422),
        (b'{"agent_id": "a", "queue_size": 1, "targets": [{}]}', 422),
    ],
)
async def test_bad_heartbeats_are_refused_with_4xx(
    relay: httpx.AsyncClient, body: bytes, status: int
) -> None:
    answer = await relay.post("/relay/heartbeat", content=body)
    assert answer.status_code == status
    assert "error" in answer.json()


async def test_analytics_off_keeps_nothing_and_costs_nothing(tmp_path: Path) -> None:
    config = RelayConfig(agent_storage_dir=tmp_path / "relay", analytics=False)
    store = store_for_config(config)
    await store.open()
    try:
        app = create_app(config, store=store)
        assert app.state.relay.analytics is None
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as relay:
            await _push(relay, "agent-a", 10)
            assert (
                await relay.post("/relay/query", json={"agent_id": "agent-a"})
            ).status_code == 200
            beat = await relay.post("/relay/heartbeat", json={"agent_id": "a", "queue_size": 1})
            assert beat.json()["kept"] is False
            assert (await relay.get("/relay/analytics")).json()["enabled"] is False
            page = await relay.get("/")
            assert "agent-a" in page.text
            assert "Analytics are off" in page.text
    finally:
        await store.close()


async def test_every_store_gets_its_scanning_shape_hinted(
    central_store: CentralStore, tmp_path: Path
) -> None:
    app = create_app(RelayConfig(agent_storage_dir=tmp_path / "relay"), store=central_store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as relay:
        await _push(relay, "agent-a", 300)
        query = {"where": [{"field": "value.n", "op": "eq", "value": 299}]}
        for _ in range(4):
            assert len((await relay.post("/relay/query", json=query)).json()["records"]) == 1
        report = (await relay.get("/relay/analytics")).json()
    (shape,) = report["queries"]["shapes"]
    assert shape["rows_examined_per_query"] >= 200  # SQLite counts; PostgreSQL's plan measures
    assert shape["scans"] is True
    assert shape["index_hints"][0]["command"] == "commander-os relay index add value.n"


async def test_a_fault_in_the_counting_never_fails_a_committed_write(
    relay: httpx.AsyncClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_: object) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(DataAnalytics, "on_write", broken)
    with caplog.at_level(logging.ERROR, logger="commander_os.relay.analytics"):
        answer = await relay.post("/relay/immediate", json=_wire("k", 1, {"v": 1}))
    assert answer.status_code == 200
    assert answer.json()["applied"] == 1
    assert "analytics could not count a write" in caplog.text
