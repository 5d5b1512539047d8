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


def test_a_busy_port_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    from commander_os.relay._process import RelayProcess

    with RelayProcess(data_dir=tmp_path / "first") as relay:
        port = str(relay.port)
        for args in (
            ("relay", "serve", "--port", port, "--data-dir", str(tmp_path / "second")),
            ("demo", "--port", port, "--no-keep-running", "--data-dir", str(tmp_path / "demo")),
        ):
            result = run_cli(*args, cwd=tmp_path)
            assert result.returncode == 1, args
            assert f"cannot listen on 127.0.0.1:{port}: the port is already in use" in (
                result.stderr
            )
            assert "Traceback" not in result.stderr


def test_relay_errors_reach_the_user_with_their_explanation(tmp_path: Path) -> None:
    from commander_os.relay._process import RelayProcess

    with RelayProcess(data_dir=tmp_path / "relay") as relay:
        result = run_cli("query", "--relay", relay.url, "--where", "value.theme like dark")
    assert result.returncode == 1
    assert "422" in result.stderr
    assert "where.0.op" in result.stderr  # the relay's detail, not only its error code
    assert "Traceback" not in result.stderr


def test_export_refuses_a_folder_without_a_central_store(tmp_path: Path) -> None:
    missing = tmp_path / "no-relay-here"
    result = run_cli("relay", "export", "--data-dir", str(missing), "--out", str(tmp_path / "o"))
    assert result.returncode == 1
    assert "no central store" in result.stderr
    assert not missing.exists()


def test_status_lists_an_unreadable_store_and_fails(tmp_path: Path) -> None:
    store = AgentStorage("good", tmp_path / "good", enable_htpc=False)
    store.close()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "bad.db").write_bytes(b"not a database " * 40)
    result = run_cli("status", "--data-dir", str(tmp_path), "--json")
    assert result.returncode == 1
    reports = {report["agent_id"]: report for report in json.loads(result.stdout)}
    assert reports["good"]["local_db"] is True
    assert reports["bad"]["local_db"] is False
    assert reports["bad"]["error"]
