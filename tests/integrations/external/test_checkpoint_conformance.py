"""LangGraph's checkpointer conformance suite on ``CommanderSaver``, every capability."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from langgraph.checkpoint.base import BaseCheckpointSaver
from langgraph.checkpoint.conformance import checkpointer_test, validate
from langgraph.checkpoint.conformance.capabilities import ALL_CAPABILITIES

from commander_os.integrations.langgraph import CommanderSaver


@checkpointer_test(name="CommanderSaver")
async def commander_saver() -> AsyncIterator[BaseCheckpointSaver[str]]:
    # The suite calls this factory without arguments, once per capability.
    folder = Path(tempfile.mkdtemp(prefix="commander-conformance-"))
    saver = CommanderSaver.open("conformance", folder, enable_htpc=False)
    try:
        yield saver
    finally:
        saver.close()
        shutil.rmtree(folder, ignore_errors=True)


@pytest.mark.parametrize("capability", sorted(c.value for c in ALL_CAPABILITIES))
async def test_capability(capability: str) -> None:
    report = await validate(commander_saver, capabilities={capability})
    result = report.results[capability]
    assert result.detected, f"{capability} is not implemented"
    assert result.passed, "\n".join(result.failures)
    assert result.tests_passed > 0
    assert result.tests_failed == 0
