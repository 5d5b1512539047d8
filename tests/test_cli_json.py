"""``--json`` on every command that prints data, as a flag, in one style: one JSON document on
stdout (a list for rows, an object for one result); ``--config`` on every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer

from commander_os.cli import app
from commander_os.storage.agent_storage import AgentStorage

#: Commands that print no data, and why.
NO_JSON = {"relay serve": "runs the relay until stopped; its output is its log"}
#: Commands that read no config, and why.
NO_CONFIG = {"bench": "measures fixed sizes on scratch folders; no setting applies"}


# Typer's commands are click's (vendored inside typer in recent versions): walked by duck typing.
def _commands(group: Any, prefix: str = "") -> dict[str, Any]:
    found: dict[str, Any] = {}
    ctx = typer.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        assert command is not None
        path = f"{prefix}{name}"
        if hasattr(command, "list_commands"):
            found.update(_commands(command, f"{path} "))
        else:
            found[path] = command
    return found


COMMANDS = _commands(typer.main.get_command(app))


def _option(command: Any, flag: str) -> Any:
    for param in command.params:
        if flag in getattr(param, "opts", ()) and param.param_type_name == "option":
            return param
    return None


def test_the_enumeration_finds_every_command() -> None:
    assert {"status", "sync", "query", "dead-letters list", "relay export", "bench"} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_that_prints_data_has_a_json_flag(name: str) -> None:
    option = _option(COMMANDS[name], "--json")
    if name in NO_JSON:
        assert option is None
        return
    assert option is not None, f"{name} has no --json"
    assert option.is_flag, f"{name}: --json must be a flag (not take a value)"


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_takes_config(name: str) -> None:
    if name not in NO_CONFIG:
        assert _option(COMMANDS[name], "--config") is not None, f"{name} has no --config"


def _run(*args: str, cwd: Path) -> Any:
    result = subprocess.run(
        [sys.executable, "-m", "commander_os", *args, "--json"],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "COLUMNS": "200"},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)  # exactly one document: nothing else on stdout


def test_json_output_is_one_document_in_one_style(tmp_path: Path) -> None:
    with AgentStorage("solo", tmp_path / "agents" / "solo", enable_htpc=False) as store:
        store.set("a", 1)
    agents, relay = str(tmp_path / "agents"), str(tmp_path / "relay")
    status = _run("status", "--data-dir", agents, cwd=tmp_path)
    assert isinstance(status, list)
    assert status[0]["agent_id"] == "solo"
    assert isinstance(status[0]["size_bytes"], int)
    assert _run("dead-letters", "list", "--data-dir", agents, cwd=tmp_path) == []
    migrated = _run("relay", "migrate", "--data-dir", relay, cwd=tmp_path)
    assert migrated["ready"] is True
    out = tmp_path / "export.jsonl"
    exported = _run("relay", "export", "--data-dir", relay, "--out", str(out), cwd=tmp_path)
    assert exported["exported"] == 0
    imported = _run("relay", "import", str(out), "--data-dir", relay, cwd=tmp_path)
    assert imported["imported"] == 0
    created = _run("token", "create", "solo", "--data-dir", relay, "--expires", "1d", cwd=tmp_path)
    assert created["agent_id"] == "solo"
    assert created["expires_at"].endswith("+00:00")
    verified = _run("token", "verify", created["token"], "--data-dir", relay, cwd=tmp_path)
    assert verified["valid"] is True
    assert verified["agent_id"] == "solo"
    assert verified["expires_at"] == created["expires_at"]
