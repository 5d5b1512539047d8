"""The command line as a user runs it: the installed console script, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import commander_os
from commander_os.storage.agent_storage import AgentStorage

CLI = [sys.executable, "-m", "commander_os"]


def run_cli(
    *args: str, cwd: Path | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False
    )


def test_version_prints_the_package_version() -> None:
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"commander-os {commander_os.__version__}"


def test_status_reports_queue_sizes_of_every_store(tmp_path: Path) -> None:
    for agent_id, writes in (("alpha", 3), ("beta", 0)):
        # Nothing listens on port 9, so every write stays queued.
        store = AgentStorage(agent_id, tmp_path / agent_id, htpc_url="http://127.0.0.1:9")
        for index in range(writes):
            store.set(f"k{index}", index)
        store.close()
    result = run_cli("status", "--data-dir", str(tmp_path), "--json")
    assert result.returncode == 0, result.stderr
    reports = {report["agent_id"]: report for report in json.loads(result.stdout)}
    assert reports["alpha"]["sync_queue_size"] == 3
    assert reports["beta"]["sync_queue_size"] == 0
    assert all(report["local_db"] for report in reports.values())
    table = run_cli("status", "--data-dir", str(tmp_path))
    assert table.returncode == 0
    assert "alpha" in table.stdout
    assert "beta" in table.stdout


def test_status_of_a_missing_folder_is_a_one_line_error(tmp_path: Path) -> None:
    result = run_cli("status", "--data-dir", str(tmp_path / "nowhere"))
    assert result.returncode == 1
    assert "is not a folder" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_runs_two_agents_through_a_real_relay(tmp_path: Path) -> None:
    result = run_cli(
        "demo", "--port", "0", "--no-keep-running", "--data-dir", str(tmp_path), cwd=tmp_path
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "relay listening on http://127.0.0.1:" in result.stdout
    assert "scout reads planner's mission from the relay" in result.stdout
    assert "['findings/room-2']" in result.stdout
    assert "the relay holds 4 records from 2 agents" in result.stdout
