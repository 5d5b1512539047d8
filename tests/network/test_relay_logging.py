"""The relay's logs (a real relay process): text or JSON lines, an optional access log that
never holds a token or a query string."""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest

from commander_os.config import RelayConfig, load_relay_config
from commander_os.relay import RelayProcess
from commander_os.relay._logging import logging_config

SECRET_QUERY = "cursor-that-must-not-be-logged"
TOKEN = "Bearer tok-never-in-a-log-0123456789abcdef"


def _wait_for(relay: RelayProcess, needle: str) -> list[str]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = list(relay.output)
        if any(needle in line for line in lines):
            return lines
        time.sleep(0.05)
    raise AssertionError(f"no log line with {needle!r} in {list(relay.output)}")


def test_json_lines_and_an_access_log_without_secrets(tmp_path: Path) -> None:
    env = {"COMMANDER_OS_RELAY_LOG_FORMAT": "json", "COMMANDER_OS_RELAY_ACCESS_LOG": "true"}
    with RelayProcess(data_dir=tmp_path / "relay", env=env) as relay:
        headers = {"authorization": TOKEN}
        assert httpx.get(relay.url + "/health", headers=headers).status_code == 200
        httpx.get(f"{relay.url}/relay/changes?after={SECRET_QUERY}", headers=headers)
        lines = _wait_for(relay, '"/relay/changes"')
    logged = [json.loads(line) for line in lines if line.startswith("{")]
    assert logged, lines
    warning = next(entry for entry in logged if "relay.auth is off" in entry["message"])
    assert warning["level"] == "WARNING"
    assert warning["logger"] == "commander_os.relay"
    assert "time" in warning
    access = [entry for entry in logged if entry["logger"] == "commander_os.relay.access"]
    health = next(entry for entry in access if entry["path"] == "/health")
    assert health["method"] == "GET"
    assert health["status"] == 200
    assert health["bytes"] > 0
    assert health["duration_ms"] >= 0
    text = "\n".join(lines)
    assert SECRET_QUERY not in text
    assert "tok-never-in-a-log" not in text


def test_text_is_the_default_and_the_access_log_is_off(tmp_path: Path) -> None:
    with RelayProcess(data_dir=tmp_path / "relay") as relay:
        assert httpx.get(relay.url + "/health").status_code == 200
        lines = _wait_for(relay, "relay.auth is off")
    warning = next(line for line in lines if "relay.auth is off" in line)
    assert " WARNING commander_os.relay: " in warning
    assert not any("/health" in line for line in lines)


def test_log_format_is_a_checked_setting() -> None:
    assert load_relay_config(environ={"COMMANDER_OS_RELAY_LOG_FORMAT": "json"}).log_format == (
        "json"
    )
    with pytest.raises(ValueError, match="log_format"):
        load_relay_config(environ={"COMMANDER_OS_RELAY_LOG_FORMAT": "xml"})
    config = logging_config(RelayConfig(log_format="json", log_level="debug"))
    assert config["loggers"]["commander_os"]["level"] == "DEBUG"
