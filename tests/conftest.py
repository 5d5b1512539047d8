"""Shared fixtures: stores in ``tmp_path``, a subprocess runner, and the ``--full`` option."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from commander_os.storage.agent_storage import AgentStorage

REPO_ROOT = Path(__file__).resolve().parent.parent


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--full",
        action="store_true",
        default=False,
        help="run soak tests at full size (also: COMMANDER_OS_SOAK=1)",
    )


@pytest.fixture(scope="session")
def full_run(pytestconfig: pytest.Config) -> bool:
    """True when the long versions of soak tests were asked for."""
    return bool(pytestconfig.getoption("--full")) or os.environ.get("COMMANDER_OS_SOAK") == "1"


@pytest.fixture
def dead_relay_url() -> str:
    """A loopback URL nobody listens on: with it, every queued change stays queued."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def make_storage(tmp_path: Path) -> Iterator[Callable[..., AgentStorage]]:
    """Factory for ``AgentStorage`` in ``tmp_path`` (local only unless told); closes them all."""
    opened: list[Any] = []

    def make(
        agent_id: str = "test-agent",
        *,
        data_dir: Path | None = None,
        cls: type[Any] = AgentStorage,
        enable_htpc: bool = False,
        **settings: Any,
    ) -> Any:
        # A store closing with changes queued for a relay that is not there would keep trying
        # for close_timeout: these tests look at the queue itself, not at closing.
        settings.setdefault("close_timeout", 0)
        store = cls(
            agent_id,
            data_dir if data_dir is not None else tmp_path / "agents" / agent_id,
            enable_htpc=enable_htpc,
            **settings,
        )
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()


@pytest.fixture
def run_python() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run a Python snippet with the repo's interpreter; returns the completed process."""

    def run(
        code: str, *, cwd: Path, timeout: float = 60, check: bool = True, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        result = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code)],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            **kwargs,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"snippet failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            )
        return result

    return run
