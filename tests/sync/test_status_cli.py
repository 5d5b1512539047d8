"""``commander-os status`` explains a growing queue: read from another process, while the
store's own process keeps failing to reach its relay (a real relay, killed)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
from sync_helpers import wait_until
from test_sync_cli import cli, queue_up

from commander_os.relay._process import RelayProcess
from commander_os.storage.agent_storage import AgentStorage


def _reported_down(store: AgentStorage) -> bool:
    with store.reading() as conn:
        row = conn.execute("SELECT last_error, reachable FROM _sync_targets").fetchone()
    return row is not None and row[0] is not None and row[1] == 0


def test_status_says_why_the_queue_grows(
    relay: RelayProcess, make_agent: Callable[..., AgentStorage], tmp_path: Path
) -> None:
    store = make_agent("grows", relay.url, sync_interval=0.2, close_timeout=0)
    store.set("shipped", 1)
    assert store.wait_for_sync(15)
    relay.kill()
    store.set_many({f"k{i}": i for i in range(5)})
    wait_until(lambda: _reported_down(store), what="the failure kept in the store")
    data = tmp_path / "agents"

    result = cli("status", "--data-dir", str(data), "--json")
    assert result.returncode == 0, result.stderr
    (report,) = orjson.loads(result.stdout)
    assert report["agent_id"] == "grows"
    assert report["sync_queue_size"] == 5
    assert report["oldest_pending_age"] > 0
    assert report["reachable"] is False
    assert report["last_sync"] is not None  # it did sync, before the relay went away
    assert "unreachable" in report["last_error"]
    (target,) = report["targets"]
    assert target["urls"] == [relay.url]
    assert target["reachable"] is False
    assert target["queued"] == 5
    assert "unreachable" in target["last_error"]
    wal = store.db_path.with_name(store.db_path.name + "-wal")
    assert wal.exists()
    assert report["size_bytes"] == store.db_path.stat().st_size + wal.stat().st_size

    table = cli("status", "--data-dir", str(data))
    assert table.returncode == 0, table.stderr
    assert "unreachable" in table.stdout
    assert f"grows -> {relay.url}: 5 queued" in table.stdout

    over = cli("status", "--data-dir", str(data), "--max-queue", "4")
    assert over.returncode == 3
    assert "over threshold: 5 changes queued (--max-queue 4)" in over.stdout
    assert cli("status", "--data-dir", str(data), "--max-queue", "5").returncode == 0
    lagging = cli("status", "--data-dir", str(data), "--max-lag", "0", "--json")
    assert lagging.returncode == 3
    assert orjson.loads(lagging.stdout)[0]["alerts"]
    assert cli("status", "--data-dir", str(data), "--max-lag", "3600").returncode == 0


def test_status_reads_local_data_dir_from_the_config(tmp_path: Path) -> None:
    data = tmp_path / "elsewhere"
    with AgentStorage("cfg", data / "cfg", enable_htpc=False) as store:
        store.set("a", 1)
    config = tmp_path / "storage.yaml"
    config.write_text(f"agent_storage:\n  local_data_dir: {data}\n")
    result = cli("status", "--config", str(config), "--json")
    assert result.returncode == 0, result.stderr
    assert [report["agent_id"] for report in orjson.loads(result.stdout)] == ["cfg"]


def test_sync_shows_count_rate_and_time_left(relay: RelayProcess, tmp_path: Path) -> None:
    data = tmp_path / "agents"
    queue_up(data, "progress", {f"k{i}": i for i in range(30)})
    result = cli("sync", "--data-dir", str(data), "--relay", relay.url, "--to-other-relay")
    assert result.returncode == 0, result.stderr
    assert "synced 30 change(s) from 1 store(s)" in result.stdout
    assert "30/30" in result.stderr  # the progress is on stderr: stdout keeps the result
    assert "changes/s" in result.stderr
    assert "eta" in result.stderr
