"""Typical mistakes get an answer that says so (a real relay): an agent the relay never heard
of, a ``where`` field on the key-value table without ``value.``, an invalid agent id."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from test_sync_cli import cli

from commander_os.errors import InvalidAgentId, RelayRejected
from commander_os.relay._process import RelayProcess
from commander_os.storage.agent_storage import AgentStorage


def _hints(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "commander_os.client"]


def test_an_agent_the_relay_never_heard_of_is_a_hint_and_a_warning(
    shared_relay: RelayProcess,
    make_agent: Callable[..., AgentStorage],
    agent_id: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = make_agent(agent_id, shared_relay.url)
    store.set("theme", "dark")
    assert store.wait_for_sync(15)
    caplog.set_level(logging.WARNING, logger="commander_os.client")

    assert store.query_network(agent_id=agent_id)  # a known agent: no hint
    assert _hints(caplog) == []

    typo = agent_id[:-1] + "x"
    assert store.query_network(agent_id=typo) == []
    (hint,) = _hints(caplog)
    assert repr(typo) in hint
    assert "misspelt" in hint
    page = store.relay.query(agent_id=[agent_id, typo])
    assert [record["agent_id"] for record in page["records"]] == [agent_id]
    assert len(page["hints"]) == 1
    assert repr(typo) in page["hints"][0]

    caplog.clear()

    async def main() -> None:
        try:
            assert await store.aquery_network(agent_id=typo) == []
        finally:
            await store.close()

    asyncio.run(main())
    assert len(_hints(caplog)) == 1

    shown = cli("query", "--relay", shared_relay.url, "--agent", typo, "--json")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == "[]"
    assert "misspelt" in shown.stderr


def test_a_kv_field_without_value_is_a_422_with_the_fix(
    shared_relay: RelayProcess, make_agent: Callable[..., AgentStorage], agent_id: str
) -> None:
    store = make_agent(agent_id, shared_relay.url)
    with pytest.raises(RelayRejected, match=r"did you mean 'value\.theme'") as caught:
        store.query_network(table="kv", where=[("theme", "eq", "dark")])
    assert caught.value.status == 422
    assert store.query_network(table="kv", where=[("value.theme", "eq", "dark")]) == []
    # Other tables hold their columns at the top of data: no such rule there.
    assert store.query_network(table="notes", where=[("theme", "eq", "dark")]) == []


def test_an_invalid_agent_id_is_refused_before_it_is_sent(
    make_agent: Callable[..., AgentStorage], dead_relay_url: str, agent_id: str
) -> None:
    store = make_agent(agent_id, dead_relay_url, close_timeout=0)
    with pytest.raises(InvalidAgentId, match="use 1-64 lowercase ASCII letters"):
        store.query_network(agent_id="My Agent")
    with pytest.raises(InvalidAgentId, match="use 1-64 lowercase ASCII letters"):
        store.get_remote("My Agent", "k")
