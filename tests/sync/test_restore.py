"""Restore drills against a real relay process: a local backup brought up to date from the
relay, and a lost disk rebuilt from the relay alone.

Each drill counts the writes missing from the relay's full dump (every record, deletions
included) and the writes the relay ignored as stale: both must be 0.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from sync_helpers import REPO_ROOT, WAIT, relay_metric, relay_records

from commander_os.agents.recruiter.storage import RecruiterAgentStorage
from commander_os.config import StorageConfig
from commander_os.errors import RelayError
from commander_os.relay import RelayProcess
from commander_os.storage import backups
from commander_os.storage.agent_storage import AgentStorage


def open_store(path: Path, agent: str, url: str, **settings: Any) -> AgentStorage:
    settings.setdefault("close_timeout", 5.0)
    return AgentStorage(agent, path, htpc_url=url, enable_htpc=True, **settings)


def relay_dump(url: str, agent: str) -> dict[str, Any]:
    """The relay's every kv record of ``agent``: its value, or None for a deletion."""
    return {
        key: None if record["deleted"] else record["data"]["value"]
        for (_, key), record in relay_records(url, [agent]).items()
    }


def test_restore_drill_backup_behind_the_relay(relay: RelayProcess, tmp_path: Path) -> None:
    agent, live = "drill", tmp_path / "live"
    expected: dict[str, Any] = {}
    with open_store(live, agent, relay.url) as store:
        store.set_many({f"k{i:02}": f"v1-{i}" for i in range(20)})
        assert store.wait_for_sync(WAIT)
        (tmp_path / "backups").mkdir()
        backup = store.backup(tmp_path / "backups")  # at seq S...
        store.set_many({f"k{i:02}": f"v2-{i}" for i in range(10, 30)})  # ...the relay: S + k
        store.delete("k05")
        assert store.wait_for_sync(WAIT)
        lost_original = store.list_all()
    shutil.rmtree(live)  # the disk is gone; the backup is all that is left

    report = backups.restore_backup(backup, live, config=StorageConfig(htpc_url=relay.url))
    assert report.caught_up
    assert (report.from_relay.upserts, report.from_relay.deletes) == (20, 1)

    with open_store(live, agent, relay.url) as store:
        assert store.list_all() == lost_original  # the changes made after the backup are back
        store.set_many({f"k{i:02}": f"v3-{i}" for i in (0, 1, 2, 25)})
        store.delete("k26")
        assert store.wait_for_sync(WAIT)
        health = store.health_check()
        assert health["conflict"] is None
        assert health["incarnation"] > 0
        final = store.list_all()
    expected = {f"k{i:02}": f"v1-{i}" for i in range(10)}
    expected |= {f"k{i:02}": f"v2-{i}" for i in range(10, 30)}
    expected |= {f"k{i:02}": f"v3-{i}" for i in (0, 1, 2, 25)}
    expected |= {"k05": None, "k26": None}
    dump = relay_dump(relay.url, agent)
    missing = {key: value for key, value in expected.items() if dump.get(key, "?") != value}
    assert missing == {}, f"{len(missing)} writes missing: {missing}"
    assert set(dump) == set(expected)
    assert final == {key: value for key, value in expected.items() if value is not None}
    assert relay_metric(relay.url, "commander_relay_records_ignored_total") == 0


def test_restore_without_the_relay_needs_it_or_says_offline(
    relay: RelayProcess, tmp_path: Path
) -> None:
    agent, live = "drill-offline", tmp_path / "live"
    with open_store(live, agent, relay.url) as store:
        store.set("a", 1)
        assert store.wait_for_sync(WAIT)
        backup = store.backup(tmp_path / f"{agent}.db.zst")
    shutil.rmtree(live)
    dead = StorageConfig(htpc_url="http://127.0.0.1:9", request_timeout=1.0)
    with pytest.raises(RelayError):
        backups.restore_backup(backup, live, config=dead)
    assert not (live / f"{agent}.db").exists()  # nothing half-restored
    report = backups.restore_backup(backup, live, config=dead, catch_up=False)
    assert not report.caught_up
    assert (live / f"{agent}.db").exists()


def _rows(conn: sqlite3.Connection, tables: list[str]) -> dict[str, list[tuple[Any, ...]]]:
    return {t: conn.execute(f'SELECT * FROM "{t}" ORDER BY 1, 2').fetchall() for t in tables}


def _recruit(store: RecruiterAgentStorage) -> None:
    ada = store.add_candidate("Ada", "ada@example.com", skills=["python", "sql"]).id
    bob = store.add_candidate("Bob", "bob@example.com", skills=["go"], years_experience=3.5).id
    req = store.add_requisition("Data engineer", required_skills=["python"]).id
    interview = store.schedule_interview(
        ada, req, "2030-01-02T10:00:00Z", "2030-01-02T11:00:00Z", interviewer="Eve"
    )
    store.complete_interview(interview.id, score=4, feedback="good")
    store.attach_candidate(bob, req)
    gone = store.add_candidate("Gone", "gone@example.com", skills=["x"]).id
    store.delete_candidate(gone)


def _rebuild_drill(
    kind: type[Any], fill: Any, relay: RelayProcess, tmp_path: Path, agent: str
) -> None:
    lost, rebuilt = tmp_path / "lost", tmp_path / "rebuilt"
    settings = {"htpc_url": relay.url, "enable_htpc": True, "close_timeout": 5.0}
    with kind(agent, lost, **settings) as store:
        fill(store)
        assert store.wait_for_sync(WAIT)
        names = sorted(row[0] for row in store.conn.execute("SELECT tbl FROM _synced_tables"))
        original = _rows(store.conn, names)
    shutil.rmtree(lost)  # the disk is gone

    with kind.restore_from_relay(agent, rebuilt, **settings) as store:
        assert _rows(store.conn, names) == original  # row for row
        assert backups.wait_claimed(store, WAIT)
        fill_more = {"after": "rebuild"} if kind is AgentStorage else None
        if fill_more:
            store.set_many(fill_more)
        else:
            store.add_candidate("Cy", "cy@example.com", skills=["rust"])
        assert store.wait_for_sync(WAIT)
        assert store.health_check()["conflict"] is None
    assert relay_metric(relay.url, "commander_relay_records_ignored_total") == 0


def _kv(store: AgentStorage) -> None:
    store.set_many(
        {
            "none": None,
            "true": True,
            "int": -(2**63),
            "big": 2**64 - 1,
            "float": 1.5e-300,
            "text": "h\u00e9llo \u2603",
            "list": [1, "two", [3.0], {"four": None}],
            "dict": {"z": 1, "a": {"nested": [True, False]}},
            "empty": {},
            "large": {"memory": "the user asked about the plan again. " * 400},
        }
    )
    store.set("gone", 1)
    store.delete("gone")


def test_rebuild_kv_from_the_relay_equals_the_lost_store(
    relay: RelayProcess, tmp_path: Path
) -> None:
    _rebuild_drill(AgentStorage, _kv, relay, tmp_path, "kv-agent")


def test_rebuild_recruiter_from_the_relay_equals_the_lost_store(
    relay: RelayProcess, tmp_path: Path
) -> None:
    _rebuild_drill(RecruiterAgentStorage, _recruit, relay, tmp_path, "recruiter")


# ----------------------------------------------------------------------- command line


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [sys.executable, "-m", "commander_os", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=WAIT,
        check=False,
    )


def test_the_backup_commands_end_to_end(relay: RelayProcess, tmp_path: Path) -> None:
    data, out = tmp_path / "agents", tmp_path / "backups"
    with open_store(data / "cli-agent", "cli-agent", relay.url) as store:
        store.set_many({f"k{i}": i for i in range(30)})
        assert store.wait_for_sync(WAIT)
    made = cli("backup", "create", "--data-dir", str(data), "--out", str(out), "--json")
    assert made.returncode == 0, made.stderr
    [info] = orjson.loads(made.stdout)
    assert info["agent_id"] == "cli-agent"
    listed = cli("backup", "list", "--dir", str(out), "--json")
    assert [entry["path"] for entry in orjson.loads(listed.stdout)] == [info["path"]]
    checked = cli("backup", "verify", info["path"], "--json")
    assert checked.returncode == 0, checked.stdout
    assert orjson.loads(checked.stdout)[0]["ok"] is True

    with open_store(data / "cli-agent", "cli-agent", relay.url) as store:
        store.set("late", "after the backup")
        assert store.wait_for_sync(WAIT)
    shutil.rmtree(data / "cli-agent")
    restored = cli(
        "backup", "restore", info["path"], "--data-dir", str(data / "cli-agent"),
        "--relay", relay.url, "--json",
    )  # fmt: skip
    assert restored.returncode == 0, restored.stderr
    assert orjson.loads(restored.stdout)["upserts"] == 1
    with open_store(data / "cli-agent", "cli-agent", relay.url) as store:
        assert store.get("late") == "after the backup"

    damaged = Path(info["path"])
    damaged.write_bytes(damaged.read_bytes()[:-50])
    refused = cli("backup", "verify", str(damaged))
    assert refused.returncode == 1
    assert "FAILED" in refused.stderr


def test_restore_from_relay_command_rebuilds_the_recruiter(
    relay: RelayProcess, tmp_path: Path
) -> None:
    lost = tmp_path / "lost"
    settings = {"htpc_url": relay.url, "enable_htpc": True, "close_timeout": 5.0}
    with RecruiterAgentStorage("hiring", lost, **settings) as store:
        _recruit(store)
        assert store.wait_for_sync(WAIT)
        names = sorted(row[0] for row in store.conn.execute("SELECT tbl FROM _synced_tables"))
        original = _rows(store.conn, names)
    shutil.rmtree(lost)
    spec = "commander_os.agents.recruiter.storage:RecruiterAgentStorage"
    result = cli(
        "restore", "hiring", "--from-relay", relay.url, "--data-dir", str(lost),
        "--storage-class", spec, "--json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    report = orjson.loads(result.stdout)
    assert report["claimed"] is True
    assert report["upserts"] == sum(len(rows) for rows in original.values())
    with RecruiterAgentStorage("hiring", lost, **settings) as store:
        assert _rows(store.conn, names) == original
    bad = cli("restore", "hiring", "--from-relay", relay.url, "--storage-class", "nope:X")
    assert bad.returncode == 2
    assert "cannot load" in bad.stderr


# ------------------------------------------------------------------------------ relay


def test_relay_backup_restore_is_repaired_by_the_agents(
    relay: RelayProcess, tmp_path: Path
) -> None:
    agent, live, out = "relay-drill", tmp_path / "agents" / "relay-drill", tmp_path / "rb"
    data = str(relay.data_dir)
    with open_store(live, agent, relay.url) as store:
        store.set_many({f"k{i}": "before" for i in range(50)})
        assert store.wait_for_sync(WAIT)
        made = cli("relay", "backup", "--data-dir", data, "--out", str(out), "--json")
        assert made.returncode == 0, made.stderr
        backup = orjson.loads(made.stdout)
        assert backup["kind"] == "relay"
        store.set_many({f"k{i}": "after" for i in range(25, 75)})
        store.delete("k0")
        assert store.wait_for_sync(WAIT)
    assert cli("backup", "verify", backup["path"]).returncode == 0
    ok = cli("relay", "verify", "--relay", relay.url, "--data-dir", str(tmp_path / "agents"))
    assert ok.returncode == 0, ok.stdout + ok.stderr

    relay.stop()
    refused = cli("relay", "restore", backup["path"], "--data-dir", data)
    assert refused.returncode == 1
    assert "--force" in refused.stderr
    restored = cli("relay", "restore", backup["path"], "--data-dir", data, "--force")
    assert restored.returncode == 0, restored.stderr
    relay.restart()
    behind = cli("relay", "verify", "--relay", relay.url, "--data-dir", str(tmp_path / "agents"))
    assert behind.returncode == 1  # the restored relay lacks what came after its backup
    assert "relay-drill" in behind.stderr

    with open_store(live, agent, relay.url) as store:
        store.set("new", "after the relay restore")
        assert store.wait_for_sync(WAIT)
        expected = store.list_all()
    dump = {key: value for key, value in relay_dump(relay.url, agent).items() if value is not None}
    assert dump == expected  # repaired by the agent, deletion included
    again = cli("relay", "verify", "--relay", relay.url, "--data-dir", str(tmp_path / "agents"))
    assert again.returncode == 0, again.stderr
    other = RelayProcess(data_dir=tmp_path / "other")
    other.start()
    try:
        differs = cli("relay", "verify", "--relay", relay.url, "--other", other.url, "--json")
        assert differs.returncode == 1
        assert orjson.loads(differs.stdout)["differences"][0]["agent_id"] == agent
        same = cli("relay", "verify", "--relay", relay.url, "--other", relay.url)
        assert same.returncode == 0
    finally:
        other.stop()
