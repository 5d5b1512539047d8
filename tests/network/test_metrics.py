"""``/metrics`` through prometheus_client: valid exposition, the series operators expect, and
per-agent series bounded however many agents there are."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from commander_os.config import RelayConfig
from commander_os.protocol import format_ts
from commander_os.relay import create_app
from commander_os.relay.central import store_for_config

pytestmark = pytest.mark.anyio

PROMTOOL_ENV = "COMMANDER_OS_PROMTOOL"


def _record(agent: str, key: str, version: int) -> dict[str, object]:
    return {
        "agent_id": agent,
        "table": "kv",
        "key": key,
        "op": "upsert",
        "data": {"n": version},
        "version": version,
        "ts": format_ts(time.time()),
    }


async def _busy_relay_metrics(tmp_path: Path, *, max_agents: int, agents: int) -> str:
    config = RelayConfig(agent_storage_dir=tmp_path / "relay", metrics_max_agents=max_agents)
    store = store_for_config(config)
    await store.open()
    try:
        app = create_app(config, store=store)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as relay:
            for n in range(agents):
                agent = f"agent-{n}"
                rows = [_record(agent, f"k{i}", i + 1) for i in range(n + 1)]
                await relay.post("/relay/batch", json={"agent_id": agent, "records": rows})
            beat = {"agent_id": "quiet", "queue_size": 5000, "dead_letters": 3}
            assert (await relay.post("/relay/heartbeat", json=beat)).status_code == 200
            where = [{"field": "n", "op": "gt", "value": 1}]
            await relay.post("/relay/query", json={"agent_id": "agent-1", "where": where})
            answer = await relay.get("/metrics")
            assert answer.status_code == 200
            assert answer.headers["content-type"].startswith("text/plain; version=0.0.4")
            return answer.text
    finally:
        await store.close()


def _samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found.setdefault(sample.name, []).append((sample.labels, sample.value))
    return found


async def test_metrics_parse_and_carry_what_operators_need(tmp_path: Path) -> None:
    samples = _samples(await _busy_relay_metrics(tmp_path, max_agents=50, agents=3))
    for name in (
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "python_info",
        "commander_relay_requests_in_flight",
        "commander_relay_uptime_seconds",
        "commander_relay_alert_max_queue",
        "commander_relay_alert_max_lag_seconds",
        "commander_relay_alert_max_silence_seconds",
        "commander_relay_query_shape_seconds_bucket",
        "commander_relay_query_rows_examined_per_query",
        "commander_relay_slow_queries_total",
    ):
        assert name in samples, name
    records = {labels["agent"]: value for labels, value in samples["commander_relay_agent_records"]}
    assert records == {"agent-0": 1, "agent-1": 2, "agent-2": 3, "quiet": 0}
    queue = {labels["agent"]: value for labels, value in samples["commander_relay_agent_queue"]}
    assert queue == {"quiet": 5000}
    assert "quiet" in {
        labels["agent"]
        for labels, _ in samples["commander_relay_agent_last_heartbeat_timestamp_seconds"]
    }
    lag = {labels["agent"] for labels, _ in samples["commander_relay_agent_lag_seconds"]}
    assert lag == {"agent-0", "agent-1", "agent-2"}
    health = {labels["health"]: value for labels, value in samples["commander_relay_agents"]}
    assert health["behind"] >= 1  # quiet: 5,000 queued, nothing delivered
    shapes = {labels["shape"] for labels, _ in samples["commander_relay_query_shape_seconds_count"]}
    assert shapes == {"query agent where(n gt)"}


async def test_per_agent_series_are_capped_with_an_other_bucket(tmp_path: Path) -> None:
    samples = _samples(await _busy_relay_metrics(tmp_path, max_agents=2, agents=6))
    records = {labels["agent"]: value for labels, value in samples["commander_relay_agent_records"]}
    assert len(records) == 3  # two agents, and "other"
    assert "quiet" in records  # not healthy: exported first
    assert sum(records.values()) == sum(range(1, 7))  # nothing lost in the pooling
    assert records["other"] > 0


async def test_promtool_finds_the_metrics_clean(tmp_path: Path) -> None:
    text = await _busy_relay_metrics(tmp_path, max_agents=50, agents=3)
    promtool = os.environ.get(PROMTOOL_ENV) or shutil.which("promtool")
    if not promtool:
        message = (
            "\n" + "#" * 78 + "\n## promtool NOT FOUND: `promtool check metrics` did not run "
            f"(set {PROMTOOL_ENV} or install Debian's prometheus; .ci/run does).\n" + "#" * 78
        )
        print(message)
        pytest.skip("promtool is not installed (the exposition was still parsed above)")
    done = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "", done.stdout  # no lint warning either
    assert done.stderr.strip() == "", done.stderr
