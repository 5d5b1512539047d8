"""A bad agent id gets the same explanation everywhere: from a store, the CLI and the relay.

The relay's 422 for an ``agent_id`` in a write, a batch, a query or the change feed says what
:func:`~commander_os.identifiers.validate_agent_id` says (what a valid id looks like), not the
raw pattern it failed.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from commander_os.errors import InvalidAgentId
from commander_os.identifiers import AGENT_ID_PATTERN, validate_agent_id
from commander_os.protocol import format_ts
from commander_os.storage.agent_storage import AgentStorage

pytestmark = pytest.mark.anyio

BAD = "My Agent"


def explanation(agent_id: Any) -> str:
    with pytest.raises(InvalidAgentId) as caught:
        validate_agent_id(agent_id)
    return str(caught.value)


def record(agent_id: Any) -> dict[str, Any]:
    return {
        "agent_id": agent_id,
        "table": "kv",
        "key": "k",
        "op": "upsert",
        "data": {"v": 1},
        "version": 10,
        "ts": format_ts(1_764_210_000),
    }


def refused_with(answer: httpx.Response, *details: str) -> None:
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["error"] == "invalid_request"
    assert body["detail"] == list(details)
    assert AGENT_ID_PATTERN not in answer.text


@pytest.mark.parametrize("agent_id", [BAD, "../etc", "x" * 65, "", 5], ids=repr)
async def test_queries_explain_a_bad_agent_id(relay: httpx.AsyncClient, agent_id: Any) -> None:
    why = explanation(agent_id)
    refused_with(await relay.post("/relay/query", json={"agent_id": agent_id}), f"agent_id: {why}")
    listed = {"agent_id": ["agent-a", agent_id]}
    refused_with(await relay.post("/relay/query", json=listed), f"agent_id: {why}")


async def test_writes_explain_a_bad_agent_id(relay: httpx.AsyncClient) -> None:
    why = explanation(BAD)
    answer = await relay.post("/relay/immediate", content=orjson.dumps(record(BAD)))
    refused_with(answer, f"agent_id: {why}")
    body = {"agent_id": BAD, "records": [record(BAD)]}
    answer = await relay.post("/relay/batch", content=orjson.dumps(body))
    refused_with(answer, f"agent_id: {why}", f"records.0.agent_id: {why}")


async def test_the_change_feed_explains_a_bad_agent_id(relay: httpx.AsyncClient) -> None:
    answer = await relay.get("/relay/changes", params={"agent_id": "A/B"})
    refused_with(answer, f"agent_id: {explanation('A/B')}")


def test_stores_and_the_cli_say_the_same(tmp_path: Path) -> None:
    why = explanation(BAD)
    with pytest.raises(InvalidAgentId) as caught:
        AgentStorage(BAD, tmp_path, enable_htpc=False)
    assert str(caught.value) == why
    result = subprocess.run(
        [sys.executable, "-m", "commander_os", "token", "create", BAD],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "", "NO_COLOR": "1", "COLUMNS": "300"},
        cwd=tmp_path,
    )
    assert result.returncode == 2
    assert why in " ".join(result.stderr.replace("│", " ").split())
