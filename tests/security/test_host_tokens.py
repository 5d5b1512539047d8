"""Host tokens: one token for the agents of a host, checked by the relay record by record.

A host token (``commander-os token create web-1 --writes-prefix web-1.``) writes its own agent
and every agent whose id starts with the prefix, in any mix, in one multi-agent request. A
request naming any other agent is refused whole (403) and changes nothing; so is a heartbeat
batch. The end-to-end test runs the process's shipper with one host token for several stores,
one of them outside the prefix: that one is refused (its changes stay queued) while the others
are delivered.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from security_helpers import SECRET, bearer, token

from commander_os.protocol import QueryRequest
from commander_os.relay import RelayProcess
from commander_os.relay._auth import issue_token, verify_token
from commander_os.relay.central import CentralStore
from commander_os.storage.agent_storage import AgentStorage

HOST, PREFIX = "web-1", "web-1."
_ids = itertools.count(1)


def segment(agent: str, seqs: list[int], incarnation: int = 0) -> dict[str, Any]:
    """A delivery segment of ``agent`` (incarnation 0 asks for one)."""
    return {
        "agent_id": agent,
        "incarnation": incarnation,
        "acked": 0,
        "base": 0,
        "segment_id": next(_ids),
        "records": [
            {
                "table": "kv",
                "key": f"k{seq}",
                "op": "upsert",
                "data": {"value": seq},
                "seq": seq,
                "ts": "2026-11-27T02:33:27.123456Z",
            }
            for seq in seqs
        ],
    }


async def agents_held(store: CentralStore) -> set[str]:
    page = await store.query(QueryRequest(include_deleted=True, limit=1000))
    return {record.agent_id for record in page.records}


def test_a_host_token_writes_its_prefix_and_nothing_else() -> None:
    claims = verify_token(SECRET.encode(), token(HOST, write_prefix=PREFIX))
    assert claims.write_prefix == PREFIX
    assert claims.can_write(HOST)
    assert claims.can_write("web-1.planner")
    assert not claims.can_write("web-10.planner")  # the prefix ends with its dot
    assert not claims.can_write("web-2.planner")
    plain = verify_token(SECRET.encode(), token("web-1.planner"))
    assert plain.write_prefix is None
    assert not plain.can_write("web-1.critic")
    for bad in ("", ".web", "WEB-1.", "web 1", "x" * 64):
        with pytest.raises(ValueError, match="write prefix"):
            issue_token(SECRET.encode(), HOST, write_prefix=bad)


@pytest.mark.anyio
async def test_multi_agent_batches_under_a_host_token(
    auth_relay: httpx.AsyncClient, auth_store: CentralStore
) -> None:
    host = bearer(token(HOST, write_prefix=PREFIX))
    mine = [segment(f"{PREFIX}{name}", [1]) for name in ("planner", "critic")]
    answer = await auth_relay.post("/relay/batch", json={"segments": mine}, headers=host)
    assert answer.status_code == 200, answer.text
    acks = answer.json()["acks"]
    assert [ack["verdict"] for ack in acks] == ["reincarnate", "reincarnate"]
    applied = [
        segment(seg["agent_id"], [1, 2], ack["incarnation"])
        for seg, ack in zip(mine, acks, strict=True)
    ]
    answer = await auth_relay.post("/relay/batch", json={"segments": applied}, headers=host)
    assert [ack["verdict"] for ack in answer.json()["acks"]] == ["applied", "applied"]
    assert await agents_held(auth_store) == {"web-1.planner", "web-1.critic"}

    # One foreign segment, anywhere in the request: refused whole, nothing of it applied.
    for foreign in ("web-2.planner", "web-10.planner", "other"):
        mixed = [segment(f"{PREFIX}late", [1]), segment(foreign, [1])]
        answer = await auth_relay.post("/relay/batch", json={"segments": mixed}, headers=host)
        assert answer.status_code == 403, answer.text
        assert foreign in answer.json()["detail"]
    legacy = {"agent_id": "other", "records": []}
    answer = await auth_relay.post("/relay/batch", json=legacy, headers=host)
    assert answer.status_code == 403
    assert await agents_held(auth_store) == {"web-1.planner", "web-1.critic"}

    # A token of one agent of the host writes that agent only.
    agent = bearer(token("web-1.planner"))
    answer = await auth_relay.post(
        "/relay/batch", json={"segments": [segment("web-1.critic", [9])]}, headers=agent
    )
    assert answer.status_code == 403


@pytest.mark.anyio
async def test_heartbeat_batches_follow_the_same_rights(auth_relay: httpx.AsyncClient) -> None:
    host = bearer(token(HOST, write_prefix=PREFIX))
    beats = [{"agent_id": f"{PREFIX}{i}", "queue_size": i} for i in range(3)]
    answer = await auth_relay.post("/relay/heartbeats", json={"heartbeats": beats}, headers=host)
    assert answer.status_code == 200, answer.text
    assert answer.json()["count"] == 3
    foreign = [*beats, {"agent_id": "other", "queue_size": 1}]
    answer = await auth_relay.post("/relay/heartbeats", json={"heartbeats": foreign}, headers=host)
    assert answer.status_code == 403


@pytest.fixture
def auth_relay_process(tmp_path: Path) -> Iterator[RelayProcess]:
    env = {"COMMANDER_OS_RELAY_AUTH": "true", "COMMANDER_OS_RELAY_SECRET": SECRET}
    relay = RelayProcess(data_dir=tmp_path / "relay", env=env)
    relay.start()
    yield relay
    relay.stop()


def test_one_host_token_ships_its_agents_and_never_an_intruder(
    auth_relay_process: RelayProcess, tmp_path: Path
) -> None:
    url = auth_relay_process.url
    host_token = token(HOST, write_prefix=PREFIX)
    names = [f"{PREFIX}a", f"{PREFIX}b", "intruder"]
    stores = {
        name: AgentStorage(
            name,
            tmp_path / name,
            htpc_url=url,
            enable_htpc=True,
            htpc_token=host_token,
            close_timeout=0,
            sync_interval=0.2,
        )
        for name in names
    }
    try:
        for name, store in stores.items():
            store.set("k", {"from": name})
        assert stores[f"{PREFIX}a"].wait_for_sync(30)
        assert stores[f"{PREFIX}b"].wait_for_sync(30)
        intruder = stores["intruder"]
        assert not intruder.wait_for_sync(1.0)
        assert intruder.get_sync_queue_size() == 1  # refused, kept: never dead-lettered
        assert intruder.health_check()["dead_letters"] == 0
    finally:
        for store in stores.values():
            store.close()
    admin = {"authorization": f"Bearer {token('ops', admin=True)}"}
    agents = httpx.get(url + "/relay/agents", headers=admin, timeout=10).json()
    held = {row["agent_id"] for row in (agents["agents"] if isinstance(agents, dict) else agents)}
    assert {f"{PREFIX}a", f"{PREFIX}b"} <= held
    assert "intruder" not in held


def test_the_command_line_issues_and_describes_a_host_token(tmp_path: Path) -> None:
    import subprocess
    import sys

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "commander_os", *args, "--data-dir", str(tmp_path)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=60)

    made = cli("token", "create", HOST, "--writes-prefix", PREFIX)
    assert made.returncode == 0, made.stderr
    described = cli("token", "verify", made.stdout.strip())
    assert described.returncode == 0, described.stderr
    assert f"for {HOST} (host: writes {PREFIX}*)" in described.stdout
    refused = cli("token", "create", HOST, "--writes-prefix", "")
    assert refused.returncode != 0
    assert "write prefix" in refused.stderr
