"""``commander-os dead-letters list|retry|purge``: a real relay refuses a record; the operator
sees why, fixes the row, and retries it (or purges it)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
from sync_helpers import relay_records
from test_sync_cli import cli, queue_up

from commander_os.config import StorageConfig
from commander_os.relay._process import RelayProcess
from commander_os.storage._inspect import drain_store, inspect_store
from commander_os.storage.agent_storage import AgentStorage


def _poison() -> Any:
    value: Any = 1
    for _ in range(80):  # deeper than the relay's max_json_depth (64)
        value = [value]
    return value


def _dead_lettered(shared_relay: RelayProcess, data: Path, agent: str) -> Path:
    path = queue_up(data, agent, {"poison": _poison(), "fine": 1})
    config = StorageConfig(htpc_url=shared_relay.url, max_retry_count=1)
    assert drain_store(path, config, relay=shared_relay.url, to_other_relay=True) == 2
    assert inspect_store(path)["dead_letters"] == 1
    return path


def test_list_then_fix_and_retry(shared_relay: RelayProcess, tmp_path: Path) -> None:
    data = tmp_path / "agents"
    path = _dead_lettered(shared_relay, data, "dl-retry")

    listed = cli("dead-letters", "list", "--data-dir", str(data), "--json")
    assert listed.returncode == 0, listed.stderr
    (letter,) = orjson.loads(listed.stdout)
    assert letter["agent_id"] == "dl-retry"
    assert letter["table"] == "kv"
    assert letter["key"] == ["poison"]
    assert letter["op"] == "upsert"
    assert "json_too_deep" in letter["error"]
    assert letter["failed_at"].endswith("+00:00")
    table = cli("dead-letters", "list", "--data-dir", str(data))
    assert "json_too_deep" in table.stdout

    with AgentStorage("dl-retry", path.parent, enable_htpc=False) as store:
        store.set("poison", {"fixed": True})  # the operator repairs the row first
    retried = cli("dead-letters", "retry", "--data-dir", str(data), "--agent", "dl-retry", "--json")
    assert retried.returncode == 0, retried.stderr
    assert orjson.loads(retried.stdout)["count"] == 1
    report = inspect_store(path)
    assert report["dead_letters"] == 0
    assert report["sync_queue_size"] >= 1
    synced = cli("sync", "--data-dir", str(data), "--json")
    assert synced.returncode == 0, synced.stderr
    assert orjson.loads(synced.stdout)["synced"] >= 1
    on_relay = relay_records(shared_relay.url, ["dl-retry"])
    assert on_relay[("dl-retry", "poison")]["data"]["value"] == {"fixed": True}


def test_purge_needs_confirmation_and_forgets(shared_relay: RelayProcess, tmp_path: Path) -> None:
    data = tmp_path / "agents"
    path = _dead_lettered(shared_relay, data, "dl-purge")
    refused = cli("dead-letters", "purge", "--data-dir", str(data))
    assert refused.returncode == 2
    assert "--yes" in refused.stderr
    assert inspect_store(path)["dead_letters"] == 1
    purged = cli("dead-letters", "purge", "--data-dir", str(data), "--yes", "--json")
    assert purged.returncode == 0, purged.stderr
    assert orjson.loads(purged.stdout)["count"] == 1
    assert inspect_store(path)["dead_letters"] == 0
    assert orjson.loads(cli("dead-letters", "list", "--data-dir", str(data), "--json").stdout) == []


def test_seq_needs_one_agent_and_bad_ids_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "agents"
    queue_up(data, "dl-none", {"a": 1})
    no_agent = cli("dead-letters", "retry", "--data-dir", str(data), "--seq", "1")
    assert no_agent.returncode == 2
    assert "one --agent" in no_agent.stderr
    bad = cli("dead-letters", "list", "--data-dir", str(data), "--agent", "../etc")
    assert bad.returncode == 1
    assert "Traceback" not in bad.stderr
