"""Fixtures of the integration tests (LangGraph and LangChain on an agent's store).

``external/`` holds LangChain's standard store tests and LangGraph's checkpointer conformance
suite; they run in their own pytest session and environment (``make test-integrations``), so
the main suite never collects them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from commander_os.integrations import IntegrationStorage

collect_ignore = ["external"]


@pytest.fixture
def make_integration_storage(tmp_path: Path) -> Iterator[Callable[..., IntegrationStorage]]:
    """Factory for ``IntegrationStorage`` in ``tmp_path`` (local only unless told)."""
    opened: list[IntegrationStorage] = []

    def make(agent_id: str = "lg-agent", **settings: Any) -> IntegrationStorage:
        settings.setdefault("enable_htpc", False)
        store = IntegrationStorage(agent_id, tmp_path / "agents" / agent_id, **settings)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
