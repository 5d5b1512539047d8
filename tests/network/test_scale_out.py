"""Scale-out: several relay processes on one PostgreSQL database, agents spread over them.

Every agent writes keys ``w00000, w00001, ...`` (value ``{"n": n}``) through its own relay, and
lists the other relays to fail over to. While they write, snapshots through any live relay must
show, for each agent, a *prefix* of its writes (write ``n`` visible means every earlier one is):
that is per-agent order, and it holds across relays only because revisions become visible in
commit order. Midway one relay is SIGKILLed; its agents move on to the others. At the end every
acknowledged write must be visible exactly once through every relay (the killed one restarted).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pg_helpers import database_url, scratch_schema, with_search_path

from commander_os.relay._process import RelayProcess
from commander_os.storage.agent_storage import AgentStorage

pytestmark = pytest.mark.postgres

RELAYS = 3
AGENTS = 6
WRITES_PER_AGENT = 300


@dataclass
class Figures:
    acked: int = 0
    lost: int = 0
    duplicates: int = 0
    order_violations: int = 0
    snapshots: int = 0
    problems: list[str] = field(default_factory=list)

    def report(self, title: str) -> None:
        print(
            f"[{title}] acknowledged writes {self.acked}: lost {self.lost}, duplicates "
            f"{self.duplicates}, order violations {self.order_violations} "
            f"({self.snapshots} snapshots during the run)"
        )
        for problem in self.problems[:10]:
            print("   ", problem)


@pytest.fixture
def relays(tmp_path: Path) -> Iterator[list[RelayProcess]]:
    """RELAYS relay processes sharing one fresh PostgreSQL schema."""
    url = database_url()
    with scratch_schema(url, create=True) as schema:
        shared = with_search_path(url, schema)
        processes = [
            RelayProcess(data_dir=tmp_path / f"relay{i}", extra_args=("--database-url", shared))
            for i in range(RELAYS)
        ]
        try:
            for process in processes:
                process.start()
            yield processes
        finally:
            for process in processes:
                process.stop()


def agent_writes(http: httpx.Client, url: str, agent_id: str) -> list[int]:
    """The write numbers of ``agent_id`` visible through ``url``, in rev order."""
    numbers: list[int] = []
    cursor = None
    while True:
        body = {"agent_id": agent_id, "table": "kv", "key_prefix": "w", "limit": 1000}
        if cursor:
            body["cursor"] = cursor
        page = http.post(url + "/relay/query", json=body, timeout=10).json()
        numbers += [record["data"]["value"]["n"] for record in page["records"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return numbers


def check_prefix(numbers: list[int], agent_id: str, figures: Figures) -> None:
    """Visible writes must be 0..m in rev order: no gap (order) and no repeat (duplicate)."""
    if len(set(numbers)) != len(numbers):
        figures.duplicates += len(numbers) - len(set(numbers))
        figures.problems.append(f"{agent_id}: a write is visible twice")
    if numbers != list(range(len(numbers))):
        figures.order_violations += 1
        figures.problems.append(f"{agent_id}: visible writes are not a prefix: {numbers[:20]}")


def write_all(store: AgentStorage, acked: list[int], stop: threading.Event) -> None:
    for n in range(WRITES_PER_AGENT):
        if stop.is_set():
            return
        store.set(f"w{n:05d}", {"n": n, "agent": store.agent_id})
        acked.append(n)
        time.sleep(random.uniform(0, 0.004))


def test_relays_share_one_database_and_agents_fail_over(
    relays: list[RelayProcess], tmp_path: Path
) -> None:
    urls = [relay.url for relay in relays]
    agents = []
    for i in range(AGENTS):
        mine = urls[i % RELAYS]
        agents.append(
            AgentStorage(
                f"scale-{i}",
                tmp_path / "agents" / f"scale-{i}",
                htpc_url=mine,
                htpc_urls=[u for u in urls if u != mine],
                sync_interval=0.2,
                request_timeout=5.0,
            )
        )
    acked: dict[str, list[int]] = {store.agent_id: [] for store in agents}
    stop = threading.Event()
    writers = [
        threading.Thread(target=write_all, args=(store, acked[store.agent_id], stop))
        for store in agents
    ]
    figures = Figures()
    try:
        for thread in writers:
            thread.start()
        with httpx.Client() as http:
            killed = False
            while any(thread.is_alive() for thread in writers):
                done = sum(len(numbers) for numbers in acked.values())
                if not killed and done > AGENTS * WRITES_PER_AGENT // 3:
                    relays[0].kill()  # mid-stream: its agents must fail over
                    killed = True
                live = urls[1:] if killed else urls
                url = random.choice(live)
                for store in agents:
                    numbers = agent_writes(http, url, store.agent_id)
                    check_prefix(numbers, store.agent_id, figures)
                figures.snapshots += 1
            for thread in writers:
                thread.join()
            assert killed, "the relay was never killed: writes finished too fast"
            for store in agents:
                assert store.wait_for_sync(60), f"{store.agent_id} did not drain"
            relays[0].restart()  # stateless: comes back knowing everything
            for relay in relays:
                for store in agents:
                    numbers = agent_writes(http, relay.url, store.agent_id)
                    check_prefix(numbers, store.agent_id, figures)
                    figures.lost += len(set(acked[store.agent_id]) - set(numbers))
            figures.acked = sum(len(numbers) for numbers in acked.values())
    finally:
        stop.set()
        for thread in writers:
            thread.join()
        for store in agents:
            store.close()
    figures.report(f"{RELAYS} relays on PostgreSQL, {AGENTS} agents, one relay SIGKILLed")
    assert figures.acked == AGENTS * WRITES_PER_AGENT
    assert (figures.lost, figures.duplicates, figures.order_violations) == (0, 0, 0)
