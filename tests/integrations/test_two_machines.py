"""End to end with a real relay: a LangGraph thread started on machine A (its own process and
data folder) resumes on machine B (another data folder, another agent id)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from commander_os.integrations.examples import langgraph_two_machines as example
from commander_os.integrations.langgraph import CommanderSaver, CommanderStore
from commander_os.relay import RelayProcess
from commander_os.storage import RelayClient

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    process = RelayProcess(data_dir=tmp_path / "relay")
    process.start()
    yield process
    process.stop()


def run_machine_a(data_dir: Path, url: str) -> str:
    code = f"""
        from pathlib import Path
        from commander_os.integrations.examples import langgraph_two_machines as example
        print(example.machine_a(Path({str(data_dir)!r}), {url!r}, ["buy milk", "call Grace"]))
    """
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_a_thread_resumes_on_another_machine(relay: RelayProcess, tmp_path: Path) -> None:
    assert run_machine_a(tmp_path / "machine-a", relay.url) == "['buy milk', 'call Grace']"
    result = example.machine_b(tmp_path / "machine-b", relay.url, "book the train")
    assert result["pulled"] >= 2
    assert result["notes"] == ["buy milk", "call Grace", "book the train"]
    assert result["turn"] == 3  # the counter went on from machine A's state
    assert result["memories_of_a"] == ["buy milk", "call Grace"]
    with RelayClient(relay.url) as client:
        tables = {
            (record["agent_id"], record["table"])
            for record in client.query_all(key_prefix=None, limit=1000)
        }
    # B's continuation is B's own data on the relay, A's stays A's.
    assert (example.AGENT_B, "lg_checkpoints") in tables
    assert (example.AGENT_A, "lg_store") in tables
    assert (example.AGENT_B, "lg_store") in tables


def test_search_network_filters_and_pages_across_agents(
    relay: RelayProcess, tmp_path: Path
) -> None:
    run_machine_a(tmp_path / "machine-a", relay.url)
    with CommanderStore.open("reader", tmp_path / "reader", htpc_url=relay.url) as store:
        found = store.search_network(("memories",), filter={"turn": {"$gte": 2}})
        assert [(item.agent_id, item.value["text"]) for item in found] == [
            (example.AGENT_A, "call Grace")
        ]
        every = store.search_network(("memories", example.USER), limit=1, offset=1)
        assert [item.key for item in every] == ["turn-2"]
        assert store.search_network(("memories", "nobody")) == []
        assert store.search_network(("memo",)) == []  # a label prefix is not a namespace prefix


def test_pulling_an_unknown_thread_changes_nothing(relay: RelayProcess, tmp_path: Path) -> None:
    with CommanderSaver.open("lonely", tmp_path / "lonely", htpc_url=relay.url) as saver:
        assert saver.pull_thread("nobody", "no-thread") == 0
        assert saver.get_tuple({"configurable": {"thread_id": "no-thread"}}) is None
