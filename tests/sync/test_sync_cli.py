"""The command line against a real relay: ``sync``, ``query``, ``status``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
from sync_helpers import REPO_ROOT, WAIT, relay_records

from commander_os.config import StorageConfig
from commander_os.relay._process import RelayProcess
from commander_os.storage._inspect import drain_store
from commander_os.storage.agent_storage import AgentStorage


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "commander_os", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT,
    )


def queue_up(data_dir: Path, agent_id: str, values: dict[str, Any]) -> Path:
    with AgentStorage(
        agent_id, data_dir / agent_id, htpc_url=dead_url(), enable_htpc=True, close_timeout=0
    ) as s:
        s.set_many(values)
        return s.db_path


def test_sync_drains_every_store(shared_relay: RelayProcess, tmp_path: Path) -> None:
    data = tmp_path / "agents"
    queue_up(data, "cli-sync-a", {f"k{i}": i for i in range(120)})
    queue_up(data, "cli-sync-b", {"x": {"deep": [1, 2]}, "y": "z"})
    refused = cli("sync", "--data-dir", str(data), "--relay", shared_relay.url)
    assert refused.returncode == 1  # the stores ship to another relay: never silently moved
    assert "add --to-other-relay" in refused.stderr
    assert relay_records(shared_relay.url, ["cli-sync-a", "cli-sync-b"]) == {}
    result = cli("sync", "--data-dir", str(data), "--relay", shared_relay.url, "--to-other-relay")
    assert result.returncode == 0, result.stderr
    assert f"synced 122 change(s) from 2 store(s) to {shared_relay.url}" in result.stdout
    on_relay = relay_records(shared_relay.url, ["cli-sync-a", "cli-sync-b"])
    assert len(on_relay) == 122
    assert on_relay[("cli-sync-b", "x")]["data"]["value"] == {"deep": [1, 2]}
    status = orjson.loads(cli("status", "--data-dir", str(data), "--json").stdout)
    assert [report["sync_queue_size"] for report in status] == [0, 0]
    again = cli("sync", "--data-dir", str(data))  # they remember where they ship now
    assert "synced 0 change(s) from 2 store(s)" in again.stdout


def test_sync_with_the_relay_down_fails_cleanly_and_keeps_the_queue(tmp_path: Path) -> None:
    data = tmp_path / "agents"
    queue_up(data, "cli-down", {"a": 1, "b": 2})
    result = cli("sync", "--data-dir", str(data))
    assert result.returncode == 1
    assert "error:" in result.stderr
    assert "unreachable" in result.stderr
    assert "Traceback" not in result.stderr
    status = orjson.loads(cli("status", "--data-dir", str(data), "--json").stdout)
    assert status[0]["sync_queue_size"] == 2


def test_query_prints_records_as_json_and_as_a_table(
    shared_relay: RelayProcess, tmp_path: Path
) -> None:
    data = tmp_path / "agents"
    queue_up(
        data, "cli-query", {f"user:{i}": {"theme": "dark" if i % 2 else "light"} for i in range(5)}
    )
    moved = cli("sync", "--data-dir", str(data), "--relay", shared_relay.url, "--to-other-relay")
    assert moved.returncode == 0
    result = cli(
        "query", "--relay", shared_relay.url, "--table", "kv", "--agent", "cli-query", "--json"
    )
    assert result.returncode == 0, result.stderr
    records = orjson.loads(result.stdout)  # one JSON document: the list of records
    assert sorted(r["key"] for r in records) == [f"user:{i}" for i in range(5)]
    assert all(r["agent_id"] == "cli-query" and r["table"] == "kv" for r in records)
    dark = cli(
        "query",
        "--relay",
        shared_relay.url,
        "--agent",
        "cli-query",
        "--where",
        'value.theme eq "dark"',
        "--json",
    )
    assert sorted(record["key"] for record in orjson.loads(dark.stdout)) == [
        "user:1",
        "user:3",
    ]
    table = cli("query", "--relay", shared_relay.url, "--agent", "cli-query", "--limit", "3")
    assert table.returncode == 0, table.stderr
    assert "3 record(s)" in table.stdout
    assert "cli-query" in table.stdout


def test_status_shows_queue_sizes_and_dead_letters(
    shared_relay: RelayProcess, tmp_path: Path
) -> None:
    data = tmp_path / "agents"
    queue_up(data, "cli-status-queued", {f"k{i}": i for i in range(7)})
    poison: Any = 1
    for _ in range(80):
        poison = [poison]
    path = queue_up(data, "cli-status-dead", {"poison": poison, "fine": 1})
    config = StorageConfig(htpc_url=shared_relay.url, max_retry_count=1)
    # "fine" delivered, the poison dead-lettered at its first refusal:
    assert drain_store(path, config, relay=shared_relay.url, to_other_relay=True) == 2
    result = cli("status", "--data-dir", str(data), "--json")
    assert result.returncode == 0, result.stderr
    reports = {r["agent_id"]: r for r in orjson.loads(result.stdout)}
    assert reports["cli-status-queued"]["sync_queue_size"] == 7
    assert reports["cli-status-queued"]["dead_letters"] == 0
    assert reports["cli-status-dead"]["sync_queue_size"] == 0
    assert reports["cli-status-dead"]["dead_letters"] == 1
    table = cli("status", "--data-dir", str(data))
    assert table.returncode == 0, table.stderr
    rows = {
        line.split()[1]: line
        for line in table.stdout.splitlines()
        if "cli-status-" in line and line.startswith("│")  # the table's rows, not the notes
    }
    assert set(rows) == {"cli-status-dead", "cli-status-queued"}
    assert " 7 " in rows["cli-status-queued"]
    assert " 1 " in rows["cli-status-dead"]
