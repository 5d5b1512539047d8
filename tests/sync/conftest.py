"""Fixtures for the sync tests: real relay processes on loopback, agents in ``tmp_path``.

The helpers the tests share (relay state, fault figures, child processes) are in
``sync_helpers.py``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sync_helpers import Child

from commander_os.relay._process import RelayProcess
from commander_os.storage.agent_storage import AgentStorage

# ----------------------------------------------------------------------------- relays


@pytest.fixture(scope="module")
def shared_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """One relay for a whole module; tests keep apart by using their own agent ids."""
    relay = RelayProcess(data_dir=tmp_path_factory.mktemp("shared-relay"))
    relay.start()
    yield relay
    relay.stop()


@pytest.fixture
def relay(tmp_path: Path) -> Iterator[RelayProcess]:
    """A relay of this test alone (fault tests kill and restart it)."""
    process = RelayProcess(data_dir=tmp_path / "relay")
    process.start()
    yield process
    process.stop()


@pytest.fixture
def agent_id(request: pytest.FixtureRequest) -> str:
    """An agent id unique to this test (the shared relay holds many tests' data)."""
    name = request.node.name.lower()
    cleaned = "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")
    return f"{cleaned[:40].strip('-')}-{os.getpid() % 10000}-{time.monotonic_ns() % 10**6}"


@pytest.fixture
def make_agent(tmp_path: Path) -> Iterator[Callable[..., AgentStorage]]:
    """Factory: an ``AgentStorage`` with sync on, in ``tmp_path``; closes them all."""
    opened: list[AgentStorage] = []

    def make(agent_id: str, url: str, **settings: Any) -> AgentStorage:
        settings.setdefault("sync_interval", 0.5)
        settings.setdefault("request_timeout", 10.0)
        store = AgentStorage(
            agent_id, tmp_path / "agents" / agent_id, htpc_url=url, enable_htpc=True, **settings
        )
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def spawn() -> Iterator[Callable[..., Child]]:
    """Start child processes; any still running at the end of the test are killed."""
    started: list[Child] = []

    def start(code: str, *args: str) -> Child:
        child = Child(code, *args)
        started.append(child)
        return child

    yield start
    for child in started:
        child.close()
