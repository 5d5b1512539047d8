"""End to end: agents write locally, a real relay process receives each write once in effect.

One relay serves the whole module; each test uses agent ids of its own.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sync_helpers import WAIT, Child, Ledger, compare_with_relay, relay_records, wait_until

from commander_os.errors import RelayError
from commander_os.relay._process import RelayProcess
from commander_os.storage.agent_storage import AgentStorage

MakeAgent = Callable[..., AgentStorage]


def free_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_seed_quick_start_against_a_real_relay(
    shared_relay: RelayProcess, tmp_path: Path, agent_id: str
) -> None:
    """The seed's Quick Start, verbatim but for the URL, and its health output."""

    async def quick_start() -> dict:
        storage = AgentStorage(
            agent_id=agent_id,
            data_dir=tmp_path / "data" / "agents" / agent_id,
            htpc_url=shared_relay.url,
            enable_htpc=True,
        )
        storage.set("config", {"setting": "value"})
        config = storage.get("config")
        assert config == {"setting": "value"}
        assert storage.wait_for_sync(WAIT)
        health = storage.health_check()
        await storage.close()
        return health

    health = asyncio.run(quick_start())
    print(health)
    assert health["agent_id"] == agent_id
    assert health["local_db"] is True
    assert health["htpc_enabled"] is True
    assert health["sync_queue_size"] == 0
    datetime.fromisoformat(health["timestamp"])
    assert health["relay"]["reachable"] is True
    assert health["relay"]["last_error"] is None
    assert health["relay"]["last_sync"] is not None
    record = relay_records(shared_relay.url, [agent_id])[(agent_id, "config")]
    assert record["data"]["value"] == {"setting": "value"}
    assert record["deleted"] is False


def test_several_agents_write_update_delete_exactly_once(
    shared_relay: RelayProcess, make_agent: MakeAgent, agent_id: str
) -> None:
    ids = [f"{agent_id}-{i}" for i in range(3)]
    stores = {a: make_agent(a, shared_relay.url) for a in ids}
    ledgers = {a: Ledger(a) for a in ids}
    n = 0
    for round_ in range(3):
        for a, store in stores.items():
            for i in range(40):
                key = f"item-{i:03d}"
                if round_ == 2 and i % 4 == 0:
                    store.delete(key)
                    ledgers[a].acked_delete(n, key)
                else:
                    store.set(key, {"n": n, "agent": a, "round": round_})
                    ledgers[a].acked_set(n, key)
                n += 1
    for store in stores.values():
        assert store.wait_for_sync(WAIT)
        assert store.get_sync_queue_size() == 0
    figures = compare_with_relay(shared_relay.url, ledgers, stores)
    figures.assert_clean("end to end, 3 agents")
    on_relay = relay_records(shared_relay.url, ids)
    assert len(on_relay) == 3 * 40
    tombstones = [r for r in on_relay.values() if r["deleted"]]
    assert len(tombstones) == 3 * 10
    assert all(r["data"] is None for r in tombstones)
    # Without include_deleted the tombstones stay hidden.
    live = stores[ids[0]].query_network(agent_id=ids, table="kv", page_size=1000)
    assert len(live) == 3 * 30
    # Each agent's versions on the relay are its own epoch's, and newest-wins per key.
    for a in ids:
        versions = [r["version"] for (owner, _), r in on_relay.items() if owner == a]
        assert len(set(versions)) == len(versions)


def test_queries_across_agents(
    shared_relay: RelayProcess, make_agent: MakeAgent, agent_id: str
) -> None:
    alice = make_agent(f"{agent_id}-alice", shared_relay.url)
    bob = make_agent(f"{agent_id}-bob", shared_relay.url)
    for i in range(250):  # beyond one page at every page size used below
        alice.set(f"user:{i:04d}", {"theme": "dark" if i % 2 else "light", "score": i})
    bob.set_many({f"user:{i:04d}": {"theme": "dark", "score": 1000 + i} for i in range(30)})
    bob.set_many({f"task:{i:04d}": {"done": i % 3 == 0, "tags": ["x", f"t{i}"]} for i in range(30)})
    assert alice.wait_for_sync(WAIT)
    assert bob.wait_for_sync(WAIT)
    both = [alice.agent_id, bob.agent_id]

    # Another agent's key, read through the network.
    one = alice.query_network(agent_id=bob.agent_id, key="task:0003")
    assert [(r["agent_id"], r["key"], r["data"]["value"]["done"]) for r in one] == [
        (bob.agent_id, "task:0003", True)
    ]
    # Pagination beyond one page: every record once, whatever the page size.
    for page_size in (7, 100, 1000):
        records = bob.query_network(agent_id=alice.agent_id, table="kv", page_size=page_size)
        assert sorted(r["key"] for r in records) == [f"user:{i:04d}" for i in range(250)]
    # Agent lists, key prefix, where filters.
    users = alice.query_network(agent_id=both, key_prefix="user:", page_size=50)
    assert len(users) == 280
    dark = alice.query_network(agent_id=both, where=[("value.theme", "eq", "dark")])
    assert len(dark) == 125 + 30
    assert {r["agent_id"] for r in dark} == set(both)
    high = alice.query_network(
        agent_id=both,
        key_prefix="user:",
        where=[{"field": "value.score", "op": "gte", "value": 240}],
    )
    assert sorted(r["data"]["value"]["score"] for r in high) == [
        *range(240, 250),
        *range(1000, 1030),
    ]
    tagged = bob.query_network(agent_id=bob.agent_id, where=[("value.tags", "contains", "t7")])
    assert [r["key"] for r in tagged] == ["task:0007"]
    done = bob.query_network(
        agent_id=bob.agent_id, key_prefix="task:", where=[("value.done", "eq", True)]
    )
    assert len(done) == 10
    capped = alice.query_network(agent_id=both, page_size=10, max_records=25)
    assert len(capped) == 25
    # updated_since: nothing was written after now.
    assert alice.query_network(agent_id=both, updated_since=datetime.now(UTC)) == []


def test_sync_mode_returns_after_the_relay_acked(
    shared_relay: RelayProcess, make_agent: MakeAgent, agent_id: str
) -> None:
    store = make_agent(agent_id, shared_relay.url, sync_mode="sync", sync_timeout=WAIT)
    for i in range(20):
        store.set(f"k{i}", {"n": i})
        # Queryable the moment set() returned: no waiting, no polling.
        found = store.query_network(agent_id=agent_id, key=f"k{i}")
        assert [r["data"]["value"] for r in found] == [{"n": i}]
    store.delete("k3")
    found = store.query_network(agent_id=agent_id, key="k3", include_deleted=True)
    assert [r["deleted"] for r in found] == [True]


def test_sync_mode_with_the_relay_down_returns_after_the_timeout_queued(
    make_agent: MakeAgent, agent_id: str
) -> None:
    store = make_agent(
        agent_id, free_port_url(), sync_mode="sync", sync_timeout=0.3, close_timeout=0
    )
    started = time.monotonic()
    store.set("k", {"n": 1})
    elapsed = time.monotonic() - started
    assert elapsed >= 0.25  # it did wait for the relay (never an upper bound: shared machine)
    assert store.get("k") == {"n": 1}
    assert store.get_sync_queue_size() == 1
    health = store.health_check()
    assert health["relay"]["reachable"] is False
    assert "unreachable" in health["relay"]["last_error"]


def test_local_writes_keep_working_while_the_relay_is_down(
    make_agent: MakeAgent, agent_id: str
) -> None:
    store = make_agent(agent_id, free_port_url(), close_timeout=0)
    for i in range(200):
        store.set(f"k{i}", {"n": i})
    store.delete("k0")
    assert store.get("k199") == {"n": 199}
    assert store.get("k0") is None
    # 201 changes; once the relay failed, the queue keeps each key's newest change only, so
    # k0's set and delete become one.
    assert store.get_sync_queue_size() in (200, 201)
    with pytest.raises(Exception, match="unreachable"):
        asyncio.run(store.process_sync_queue())
    assert store.get_sync_queue_size() == 200


def test_health_check_reports_the_relay(
    tmp_path: Path, make_agent: MakeAgent, agent_id: str
) -> None:
    relay = RelayProcess(data_dir=tmp_path / "own-relay")
    relay.start()
    try:
        store = make_agent(agent_id, relay.url)
        store.set("a", 1)
        assert store.wait_for_sync(WAIT)
        health = store.health_check()
        assert health["relay"]["reachable"] is True
        assert health["relay"]["url"] == relay.url
        assert health["relay"]["last_sync"] is not None
        assert health["sync_queue_size"] == 0
        assert health["oldest_pending_age"] is None
        assert health["dead_letters"] == 0
        relay.kill()
        for i in range(5):
            store.set(f"b{i}", i)
        wait_until(lambda: store.health_check()["relay"]["reachable"] is False, what="unreachable")
        health = store.health_check()
        assert health["sync_queue_size"] == 5
        assert health["relay"]["last_error"]
        assert health["relay"]["consecutive_failures"] >= 1
        assert health["oldest_pending_age"] is not None
        assert health["oldest_pending_age"] >= 0
        relay.restart()
        assert store.wait_for_sync(WAIT)
        wait_until(lambda: store.health_check()["relay"]["reachable"] is True, what="reachable")
        assert store.health_check()["sync_queue_size"] == 0
    finally:
        relay.stop()


def test_process_sync_queue_returns_the_count(
    shared_relay: RelayProcess, tmp_path: Path, agent_id: str
) -> None:
    down = free_port_url()
    data_dir = tmp_path / agent_id
    with AgentStorage(
        agent_id, data_dir, htpc_url=down, enable_htpc=True, close_timeout=0
    ) as store:
        store.set_many({f"k{i}": i for i in range(250)})
        store.delete("k1")
        with pytest.raises(RelayError, match="unreachable"):
            asyncio.run(store.process_sync_queue())
        # 251 changes; with the relay away the queue keeps each key's newest change: k1's set
        # and delete are one.
        queued = store.get_sync_queue_size()
        assert queued == 250
    # Reopened against the live relay: queued changes ship; drain on demand counts them.
    with AgentStorage(agent_id, data_dir, htpc_url=shared_relay.url, enable_htpc=True) as store:
        # The background shipper ships too; what this call returns is what was acknowledged
        # while it ran, whoever shipped it, so at most every outbox row, each counted once.
        synced = asyncio.run(store.process_sync_queue(batch_size=100))
        assert 0 <= synced <= queued
        # It returns only once the queue is empty (it waits for the shipper's batches too).
        assert store.get_sync_queue_size() == 0
        assert store.health_check()["relay"]["shipped_total"] == queued
        assert asyncio.run(store.process_sync_queue()) == 0
    on_relay = relay_records(shared_relay.url, [agent_id])
    assert len(on_relay) == 250
    assert on_relay[(agent_id, "k1")]["deleted"] is True
    assert on_relay[(agent_id, "k249")]["data"]["value"] == 249


def test_write_visible_on_relay_without_explicit_sync(
    shared_relay: RelayProcess, make_agent: MakeAgent, agent_id: str
) -> None:
    """The background worker ships on its own: nobody calls wait or drain."""
    store = make_agent(agent_id, shared_relay.url)
    store.set("hello", {"n": 1})

    def arrived() -> bool:
        return bool(store.query_network(agent_id=agent_id, key="hello"))

    wait_until(arrived, what="the write on the relay")
    assert store.get_sync_queue_size() == 0


def test_wait_for_sync_after_reopening_with_an_empty_queue(
    shared_relay: RelayProcess, tmp_path: Path, agent_id: str
) -> None:
    """Regression: a reopened store waited for acks it had no way to see, and timed out."""
    data_dir = tmp_path / agent_id
    with AgentStorage(
        agent_id, data_dir, htpc_url=free_port_url(), enable_htpc=True, close_timeout=0
    ) as store:
        store.set_many({f"k{i}": i for i in range(10)})
    with AgentStorage(agent_id, data_dir, htpc_url=shared_relay.url, enable_htpc=True) as store:
        assert store.wait_for_sync(WAIT)  # ships what the last session queued
    with AgentStorage(agent_id, data_dir, htpc_url=shared_relay.url, enable_htpc=True) as store:
        assert store.get_sync_queue_size() == 0
        assert store.wait_for_sync(5.0)  # nothing pending: true at once, not after a timeout
    assert len(relay_records(shared_relay.url, [agent_id])) == 10


HOLD_THE_SHIPPER_LOCK = """
import sys
from pathlib import Path
from commander_os.storage.agent_storage import AgentStorage

agent, data_dir, url = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
store = AgentStorage(agent, data_dir, htpc_url=url, enable_htpc=True, sync_interval=0.3)
store.set("from-child", 1)
assert store.wait_for_sync(60)
print("shipping" if store.health_check()["relay"]["shipping"] else "not shipping", flush=True)
sys.stdin.readline()  # until killed
"""


def test_two_processes_on_one_store_only_one_ships_and_the_other_takes_over(
    shared_relay: RelayProcess,
    tmp_path: Path,
    agent_id: str,
    make_agent: MakeAgent,
    spawn: Callable[..., Child],
) -> None:
    data_dir = tmp_path / "agents" / agent_id
    child = spawn(HOLD_THE_SHIPPER_LOCK, agent_id, str(data_dir), shared_relay.url)
    assert child.read_line() == "shipping"
    store = make_agent(agent_id, shared_relay.url)

    def shipped() -> int:
        return int(store.health_check()["relay"]["shipped_total"])

    store.set_many({f"p{i}": i for i in range(10)})
    # The child process ships our writes (it polls for other processes' commits) ...
    assert store.wait_for_sync(WAIT)
    assert shipped() == 0
    assert store.health_check()["relay"]["shipping"] is False
    # ... until it dies: then this process takes the lock and ships.
    child.kill()
    store.set("after", 1)
    assert store.wait_for_sync(WAIT)
    assert shipped() >= 1
    assert store.health_check()["relay"]["shipping"] is True
    keys = sorted(key for _, key in relay_records(shared_relay.url, [agent_id]))
    assert keys == sorted(["from-child", "after", *(f"p{i}" for i in range(10))])


def test_reading_another_agents_key_through_the_relay(
    shared_relay: RelayProcess, make_agent: MakeAgent, agent_id: str
) -> None:
    writer = make_agent(agent_id, shared_relay.url, sync_mode="sync", sync_timeout=WAIT)
    reader = make_agent(agent_id + "-reader", shared_relay.url)
    writer.set("plan", {"step": 1})
    assert reader.get_remote(agent_id, "plan") == {"step": 1}
    assert asyncio.run(reader.aget_remote(agent_id, "plan")) == {"step": 1}
    record = reader.get_network_record(agent_id, "kv", "plan")
    assert record is not None
    assert record["agent_id"] == agent_id
    assert record["data"]["value"] == {"step": 1}
    writer.delete("plan")
    assert reader.get_remote(agent_id, "plan", default="gone") == "gone"
    assert reader.get_remote(agent_id, "never-written") is None
    assert reader.get_network_record(agent_id, "kv", "never-written") is None
