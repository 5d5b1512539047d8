"""Agent-side configuration (YAML + environment) and hostile agent ids."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from commander_os.config import load_storage_config
from commander_os.errors import ConfigError, InvalidAgentId
from commander_os.storage.agent_storage import AgentStorage
from commander_os.storage.base_storage import BaseStorage

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED = REPO_ROOT / "config" / "storage_config.yaml"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("COMMANDER_OS_"):
            monkeypatch.delenv(name)


def write_config(tmp_path: Path, body: str, name: str = "storage_config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(body, encoding="utf-8")
    return path


def test_shipped_config_matches_the_seed_on_loopback() -> None:
    config = load_storage_config(SHIPPED, environ={})
    assert urlsplit(config.htpc_url).hostname == "127.0.0.1"
    assert config.local_data_dir == Path("./data/agents")
    assert config.enable_htpc is True
    assert (config.sync_interval, config.sync_batch_size, config.max_retry_count) == (60, 100, 5)
    assert config.durability == "full"


def test_from_config_uses_local_data_dir_per_agent(tmp_path: Path) -> None:
    path = write_config(
        tmp_path,
        f"agent_storage:\n  local_data_dir: {tmp_path / 'agents'}\n  enable_htpc: false\n",
    )
    with AgentStorage.from_config("my-agent", path) as storage:
        storage.set("k", 1)
        assert storage.db_path == tmp_path / "agents" / "my-agent" / "my-agent.db"
        assert storage.config.enable_htpc is False
    assert (tmp_path / "agents" / "my-agent" / "my-agent.db").is_file()
    with AgentStorage.from_config("my-agent", path, durability="normal") as storage:
        assert storage.get("k") == 1
        assert storage.conn.execute("PRAGMA synchronous").fetchone()[0] == 1


def test_from_config_with_environment_override(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_config(tmp_path, "agent_storage:\n  local_data_dir: /nonexistent/never\n")
    monkeypatch.setenv("COMMANDER_OS_LOCAL_DATA_DIR", str(tmp_path / "env-dir"))
    monkeypatch.setenv("COMMANDER_OS_ENABLE_HTPC", "false")
    with AgentStorage.from_config("env-agent", path) as storage:
        assert storage.db_path == tmp_path / "env-dir" / "env-agent" / "env-agent.db"
        assert "relay" not in storage.health_check()  # nothing ships


def test_environment_overrides_file(tmp_path: Path) -> None:
    path = write_config(tmp_path, "agent_storage:\n  sync_interval: 60\n  enable_htpc: true\n")
    config = load_storage_config(
        path,
        environ={
            "COMMANDER_OS_HTPC_URL": "http://127.0.0.1:9999/",
            "COMMANDER_OS_SYNC_INTERVAL": "2.5",
            "COMMANDER_OS_ENABLE_HTPC": "false",
            "COMMANDER_OS_HTPC_URLS": '["http://127.0.0.1:9998"]',
            "UNRELATED": "x",
        },
    )
    assert config.htpc_url == "http://127.0.0.1:9999"
    assert config.sync_interval == 2.5
    assert config.enable_htpc is False
    assert config.relay_urls() == ["http://127.0.0.1:9999", "http://127.0.0.1:9998"]


def test_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    path = write_config(tmp_path, "agent_storage:\n  enable_htpc: true\n")
    with pytest.raises(ConfigError) as excinfo:
        load_storage_config(path, environ={"COMMANDER_OS_SYNC_BATCH_SIZE": "lots"})
    message = str(excinfo.value)
    assert "COMMANDER_OS_SYNC_BATCH_SIZE" in message
    assert "sync_batch_size" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("body", "key", "what"),
    [
        ("agent_storage:\n  enable_htcp: true\n", "enable_htcp", "unknown setting"),
        ("agent_storage:\n  sync_interval: soon\n", "sync_interval", "number"),
        ("agent_storage:\n  sync_batch_size: 0\n", "sync_batch_size", "greater than"),
        ("agent_storage:\n  htpc_url: ftp://x\n", "htpc_url", "http"),
        ("agent_storage:\n  durability: maybe\n", "durability", "full"),
        ("agent_storage:\n  enable_htpc: [1]\n", "enable_htpc", "bool"),
        ("agent_storage: [1, 2]\n", "agent_storage", "mapping"),
        ("relay:\n  port: 1\n", "agent_storage", "section"),
        ("agent_storage:\n  htpc_url: 'x\n", "", "YAML"),
        ("agent_storage:\n\tbad: tab\n", "", "YAML"),
    ],
)
def test_bad_file_names_file_and_key(tmp_path: Path, body: str, key: str, what: str) -> None:
    path = write_config(tmp_path, body)
    with pytest.raises(ConfigError) as excinfo:
        load_storage_config(path, environ={})
    message = str(excinfo.value)
    assert str(path) in message
    assert key in message
    assert what.lower() in message.lower()
    assert isinstance(excinfo.value, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found") as excinfo:
        load_storage_config(tmp_path / "nope.yaml", environ={})
    assert str(tmp_path / "nope.yaml") in str(excinfo.value)
    with pytest.raises(ConfigError, match="not found"):
        AgentStorage.from_config("agent", tmp_path / "nope.yaml")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_from_config_bad_file_creates_nothing(tmp_path: Path) -> None:
    path = write_config(
        tmp_path, f"agent_storage:\n  local_data_dir: {tmp_path / 'agents'}\n  colour: red\n"
    )
    with pytest.raises(ConfigError, match="colour"):
        AgentStorage.from_config("agent", path)
    assert not (tmp_path / "agents").exists()


def test_bad_keyword_setting_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="colour"):
        AgentStorage("agent", tmp_path / "agents", enable_htpc=False, colour="red")
    assert not (tmp_path / "agents").exists()


# ---------------------------------------------------------------------- hostile agent ids

HOSTILE_IDS: list[Any] = [
    "..",
    ".",
    "a/b",
    "/etc/x",
    "../x",
    "a\\b",
    "a\x00b",
    "x" * 300,
    "x" * 65,
    "",
    " ",
    "Ünïcode",
    "UPPER",
    "-leading",
    "trailing.",
    "a b",
    "a\nb",
    "\uff46\uff55\uff4c\uff4c",  # full-width look-alikes of "full"
    5,
    None,
    b"bytes",
    ["list"],
]


def snapshot(root: Path) -> set[str]:
    return {str(path.relative_to(root)) for path in root.rglob("*")}


@pytest.mark.parametrize("agent_id", HOSTILE_IDS, ids=lambda value: repr(value)[:24])
@pytest.mark.parametrize(
    "opener",
    [
        lambda agent_id, root: AgentStorage(agent_id, root / "agents", enable_htpc=False),
        lambda agent_id, root: AgentStorage(
            agent_id=agent_id, data_dir=root / "agents" / "x", htpc_url="http://127.0.0.1:9"
        ),
        lambda agent_id, root: BaseStorage(agent_id, root / "agents", enable_htpc=False),
        lambda agent_id, root: AgentStorage.from_config(agent_id, root / "cfg.yaml"),
    ],
    ids=["positional", "keywords-sync-on", "base", "from_config"],
)
def test_hostile_agent_id_is_refused_and_touches_nothing(
    tmp_path: Path, agent_id: Any, opener: Callable[[Any, Path], object]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    write_config(root, f"agent_storage:\n  local_data_dir: {root / 'agents'}\n", "cfg.yaml")
    before = snapshot(tmp_path)
    with pytest.raises(InvalidAgentId) as excinfo:
        opener(agent_id, root)
    assert isinstance(excinfo.value, ValueError)
    assert "agent_id" in str(excinfo.value)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("agent_id", ["a", "my-agent", "agent_1.v2", "0", "x" * 64])
def test_acceptable_agent_ids(tmp_path: Path, agent_id: str) -> None:
    with AgentStorage(agent_id, tmp_path, enable_htpc=False) as storage:
        assert storage.db_path == tmp_path / f"{agent_id}.db"
        assert storage.db_path.parent == tmp_path


def test_relay_url_list_from_the_environment_comma_separated_or_yaml() -> None:
    urls = ["http://127.0.0.1:8002", "http://127.0.0.1:8003"]
    comma = load_storage_config(environ={"COMMANDER_OS_HTPC_URLS": ",".join(urls)})
    assert comma.htpc_urls == urls
    listed = load_storage_config(environ={"COMMANDER_OS_HTPC_URLS": f"[{urls[0]}, {urls[1]}]"})
    assert listed.htpc_urls == urls
    with pytest.raises(ConfigError, match="COMMANDER_OS_HTPC_URLS"):
        load_storage_config(environ={"COMMANDER_OS_HTPC_URLS": "ftp://x"})
