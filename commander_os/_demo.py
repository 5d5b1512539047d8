"""The README's first command: a relay on 127.0.0.1 and two agents sharing data through it."""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from commander_os.relay._process import RelayProcess
from commander_os.storage.agent_storage import AgentStorage

__all__ = ["run_demo"]


def run_demo(*, port: int, data_dir: Path, keep_running: bool, console: Console) -> None:
    """Start a relay, let two agents write and query each other, then (optionally) keep serving."""
    relay = RelayProcess(data_dir=data_dir / "relay", port=port)
    url = relay.start()
    console.print(f"[bold]relay[/] listening on {url} (central store: {data_dir / 'relay'})")
    try:
        _converse(url, data_dir / "agents", console)
        if keep_running:
            console.print(
                f"\nThe relay keeps running at {url} (try: commander-os query --relay {url}"
                " --table kv). Press Ctrl-C to stop."
            )
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        console.print("\nstopping the relay")
    finally:
        relay.stop()


def _converse(url: str, agents_dir: Path, console: Console) -> None:
    planner = AgentStorage("planner", agents_dir / "planner", htpc_url=url)
    scout = AgentStorage("scout", agents_dir / "scout", htpc_url=url)
    try:
        started = time.perf_counter()
        planner.set("mission", {"goal": "map the west wing", "priority": 1})
        planner.set("config", {"theme": "dark", "notifications": True})
        scout.set("findings/room-1", {"status": "clear", "items": ["lamp", "desk"]})
        scout.set("findings/room-2", {"status": "locked", "items": []})
        local_ms = (time.perf_counter() - started) * 1000
        console.print(
            f"[bold]planner[/] and [bold]scout[/] wrote 4 keys locally in {local_ms:.1f} ms"
        )

        for agent in (planner, scout):
            if not agent.wait_for_sync(timeout=10):
                raise RuntimeError(f"{agent.agent_id} could not reach the relay at {url}")
        console.print(
            f"both queues drained to the relay in {(time.perf_counter() - started) * 1000:.1f} ms"
        )

        mission = scout.query_network(agent_id="planner", table="kv", key="mission")
        console.print(
            f"scout reads planner's mission from the relay: {mission[0]['data']['value']}"
        )
        locked = planner.query_network(
            agent_id="scout", table="kv", where=[("value.status", "eq", "locked")]
        )
        console.print(f"planner asks which rooms scout found locked: {[r['key'] for r in locked]}")
        everything = planner.query_network(table="kv")
        agents = {record["agent_id"] for record in everything}
        console.print(f"the relay holds {len(everything)} records from {len(agents)} agents")
        console.print("scout's health_check():")
        console.print_json(data=scout.health_check())
    finally:
        planner.close()
        scout.close()
