"""What an agent writes to its log (standard ``logging``, named loggers) around a real relay:
one warning per outage, a line for the recovery, 401s, dead letters and incarnations; never a
secret."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from sync_helpers import wait_until

from commander_os.errors import ConfigError
from commander_os.relay._process import RelayProcess
from commander_os.storage.agent_storage import AgentStorage

TOKEN = "tok-do-not-log-9f8e7d6c5b4a39281706"
DELIVERY = "commander_os.delivery"


def _failures(store: AgentStorage) -> int:
    return int(store.health_check()["relay"]["consecutive_failures"])


def _lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith("commander_os") and record.levelno == level
    ]


def test_an_outage_is_one_warning_and_its_recovery_one_line(
    relay: RelayProcess,
    make_agent: Callable[..., AgentStorage],
    agent_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="commander_os")
    store = make_agent(agent_id, relay.url, htpc_token=TOKEN, sync_interval=0.2)
    store.set("before", 1)
    assert store.wait_for_sync(15)
    granted = [line for line in _lines(caplog, logging.INFO) if "granted incarnation" in line]
    assert len(granted) == 1  # the store's first delivery: an incarnation from the relay

    relay.kill()
    for i in range(3):
        store.set(f"during-{i}", i)
    wait_until(lambda: _failures(store) >= 4, what="four failed attempts")
    warnings = [r for r in caplog.records if r.name == DELIVERY and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert relay.url in warnings[0].getMessage()
    assert "retried" in warnings[0].getMessage()

    relay.start()
    assert store.wait_for_sync(30)
    recovered = [line for line in _lines(caplog, logging.INFO) if "recovered" in line]
    assert len(recovered) == 1
    assert "failed attempt" in recovered[0]
    assert all(TOKEN not in record.getMessage() for record in caplog.records)


def test_a_refused_token_is_an_error_logged_once_without_the_token(
    tmp_path: Path,
    make_agent: Callable[..., AgentStorage],
    agent_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="commander_os")
    with RelayProcess(data_dir=tmp_path / "auth", env={"COMMANDER_OS_RELAY_AUTH": "true"}) as r:
        store = make_agent(agent_id, r.url, htpc_token=TOKEN, sync_interval=0.2, close_timeout=0)
        store.set("k", 1)
        wait_until(lambda: _failures(store) >= 3, what="three refused attempts")
        errors = _lines(caplog, logging.ERROR)
        assert len(errors) == 1, errors
        assert "401" in errors[0]
        assert "token" in errors[0]
        store.close()
    assert all(TOKEN not in record.getMessage() for record in caplog.records)
    assert all(TOKEN not in str(record.args) for record in caplog.records)


def test_a_credential_in_the_relay_url_is_refused_before_it_can_be_logged(
    tmp_path: Path,
) -> None:
    with pytest.raises(ConfigError, match="credentials") as caught:
        AgentStorage("a", tmp_path, htpc_url="http://ops:hunter2@127.0.0.1:9", enable_htpc=True)
    assert "hunter2" not in str(caught.value)


def test_a_dead_letter_is_logged_with_the_relays_reason(
    shared_relay: RelayProcess,
    make_agent: Callable[..., AgentStorage],
    agent_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="commander_os")
    store = make_agent(agent_id, shared_relay.url, max_retry_count=1)
    poison: object = 1
    for _ in range(80):  # deeper than the relay's max_json_depth
        poison = [poison]
    store.set("poison", poison)
    wait_until(lambda: store.health_check()["dead_letters"] == 1, what="the dead letter")
    (line,) = [m for m in _lines(caplog, logging.WARNING) if "dead letters" in m]
    assert "kv/poison" in line
    assert "json_too_deep" in line
