"""The README's first command: a relay on 127.0.0.1 and two agents sharing data through it.

The relay is a child process. SIGINT, SIGTERM and SIGHUP (Ctrl-C, ``kill``, a closed terminal)
all stop it before the demo exits, so no relay is left holding the port for the next
``make run``; on Linux it also stops when the demo is killed outright (SIGKILL).
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

from rich.console import Console

from commander_os.relay._process import RelayProcess
from commander_os.storage.agent_storage import AgentStorage

__all__ = ["STOP_SIGNALS", "run_demo"]

#: The signals that stop the demo and its relay (SIGHUP does not exist on Windows).
STOP_SIGNALS = tuple(
    getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name)
)


class _Stopped(Exception):
    """A stop signal arrived."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def _stopping_on_signals() -> Iterator[None]:
    """Turn the stop signals into :class:`_Stopped` (so ``finally`` blocks run) while inside."""
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set handlers; the caller then owns the signals
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise _Stopped(signum)

    previous = {sig: signal.signal(sig, stop) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def run_demo(
    *,
    port: int,
    data_dir: Path,
    keep_running: bool,
    console: Console,
    config: Path | None = None,
) -> dict[str, Any]:
    """Start a relay, let two agents write and query each other, then (optionally) keep
    serving until a stop signal. Returns a summary (relay URL, what the agents saw)."""
    relay = RelayProcess(
        data_dir=data_dir / "relay", port=port, config=config, stop_with_parent=True
    )
    summary: dict[str, Any] = {}
    with _stopping_on_signals():
        try:
            url = relay.start()
            summary["relay"] = url
            console.print(
                f"[bold]relay[/] listening on {url} (central store: {data_dir / 'relay'})"
            )
            summary.update(_converse(url, data_dir / "agents", console))
            if keep_running:
                console.print(
                    f"\nThe relay keeps running at {url} (try: commander-os query --relay {url}"
                    " --table kv). Press Ctrl-C to stop."
                )
                while True:
                    time.sleep(3600)
        except (KeyboardInterrupt, _Stopped) as exc:
            console.print(f"\n{exc or 'SIGINT'}: stopping the relay")
        finally:
            _ignore_stop_signals()  # a second Ctrl-C must not cut the relay's stop short
            relay.stop()
    return summary


def _ignore_stop_signals() -> None:
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)


def _converse(url: str, agents_dir: Path, console: Console) -> dict[str, Any]:
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
        synced_ms = (time.perf_counter() - started) * 1000
        console.print(f"both queues drained to the relay in {synced_ms:.1f} ms")

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
        health = scout.health_check()
        console.print_json(data=health)
        return {
            "local_write_ms": local_ms,
            "synced_ms": synced_ms,
            "mission": mission[0]["data"]["value"],
            "locked_rooms": [record["key"] for record in locked],
            "relay_records": len(everything),
            "relay_agents": sorted(agents),
            "scout_health": health,
        }
    finally:
        planner.close()
        scout.close()
