"""An agent host, run as a child process by the scale benchmarks: ``python -m
benchmarks.scale_host COMMAND ...``.

* ``open DIR URL COUNT IDLE OUT``: open ``COUNT`` syncing stores (one folder each under
  ``DIR``) in this one process, time it, then leave them idle for ``IDLE`` seconds and measure
  the process's CPU time meanwhile; close them, open them again (a host restarting) and time
  that too.
* ``load DIR URL COUNT RATE SECONDS RELAY_PID OUT``: open ``COUNT`` syncing stores, then write
  at ``RATE`` writes/s per store for ``SECONDS`` (writer threads, each paced over its share of
  the stores), wait until the relay acknowledged everything, and write the ``CLOCK_MONOTONIC``
  stamp of every ``set()`` return, the achieved rate, and the CPU time of this process and of
  the relay (``/proc/RELAY_PID/stat``) over the whole run.
* ``load-local ...``: the same as ``load`` with the stores local-only (sync off), for the CPU
  the writes cost without replication.
* ``watch URL PREFIX COUNT OUT``: follow the relay's change feed (long-poll) and write the
  ``CLOCK_MONOTONIC`` nanosecond at which each ``agent/key`` of an agent whose id starts with
  ``PREFIX`` became visible, until ``COUNT`` keys were seen. Prints ``ready`` once it follows
  the feed.

One process holds every store, as an agent platform does: what is measured is what one host
costs, with the process's one shipper delivering for all of them.
"""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson

__all__ = ["load", "open_stores", "planned_writes", "watch"]

#: Writer threads at most: agents of a platform write concurrently, not one after the other.
MAX_WRITERS = 16
#: How long the host waits for the relay to acknowledge everything after the last write.
SETTLE_SECONDS = 120.0
#: Longest long-poll of the watcher.
WATCH_WAIT_SECONDS = 5.0


def agent_prefix(command: str, count: int) -> str:
    """What the agent ids of a host of ``count`` stores running ``command`` start with (each
    run has agents of its own: two stores of one agent would be a conflict at the relay)."""
    return f"{command}{count}-"


def _shares(count: int) -> list[range]:
    """Which stores each writer thread writes to."""
    writers = min(MAX_WRITERS, count)
    return [range(n, count, writers) for n in range(writers)]


def planned_writes(count: int, rate: float, seconds: float) -> int:
    """How many writes ``load`` makes (the warm-up writes not counted)."""
    return sum(int(rate * len(share) * seconds) for share in _shares(count))


def _open(directory: Path, url: str, count: int, command: str, *, sync: bool = True) -> list[Any]:
    from commander_os.storage.agent_storage import AgentStorage

    prefix = agent_prefix(command, count)
    return [
        AgentStorage(
            agent_id=f"{prefix}{i:05d}",
            data_dir=directory / f"{prefix}{i:05d}",
            enable_htpc=sync,
            htpc_url=url,
        )
        for i in range(count)
    ]


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _system_seconds() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_stime


def _relay_cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (fields 14 and 15 of ``/proc/PID/stat``)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    fields = text[text.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def open_stores(directory: Path, url: str, count: int, idle: float, out: Path) -> None:
    """Time opening ``count`` stores, their idle CPU, and opening them again."""
    started = time.perf_counter()
    stores = _open(directory, url, count, "open")
    first = time.perf_counter() - started
    time.sleep(min(1.0, idle))  # let the shipper settle after the opening burst
    cpu, wall = _cpu_seconds(), time.monotonic()
    time.sleep(idle)
    idle_cpu = (_cpu_seconds() - cpu) / (time.monotonic() - wall)
    for store in stores:
        store.close()
    started = time.perf_counter()
    stores = _open(directory, url, count, "open")
    again = time.perf_counter() - started
    for store in stores:
        store.close()
    result = {"count": count, "open_s": first, "reopen_s": again, "idle_cpu": idle_cpu}
    out.write_bytes(orjson.dumps(result))


def _writer(
    stores: list[Any],
    rate: float,
    seconds: float,
    start: float,
    stamps: dict[str, dict[str, int]],
) -> None:
    """Write to ``stores`` round-robin at ``rate`` writes/s in all, from ``start`` on."""
    total = int(rate * seconds)
    value = {"payload": "x" * 200}
    for i in range(total):
        pause = start + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        store = stores[i % len(stores)]
        key = f"w{i:08d}"
        store.set(key, {**value, "n": i})
        stamps[store.agent_id][key] = time.monotonic_ns()


def load(
    directory: Path,
    url: str,
    count: int,
    rate: float,
    seconds: float,
    relay_pid: int,
    out: Path,
    *,
    sync: bool = True,
) -> None:
    """Write at ``rate`` per store for ``seconds``; report stamps, rates and CPU.

    ``sync=False`` opens the stores local-only: the same writes, for the CPU they cost without
    replication.
    """
    stores = _open(directory, url, count, "load" if sync else "local", sync=sync)
    for store in stores:  # every store has reached the relay once: connections are warm
        store.set("warmup", {"n": 0})
    for store in stores:
        store.wait_for_sync(timeout=SETTLE_SECONDS)
    stamps: dict[str, dict[str, int]] = {store.agent_id: {} for store in stores}
    cpu, system, relay_cpu = _cpu_seconds(), _system_seconds(), _relay_cpu_seconds(relay_pid)
    start = time.monotonic() + 0.05
    threads = [
        threading.Thread(
            target=_writer,
            args=([stores[i] for i in share], rate * len(share), seconds, start, stamps),
        )
        for share in _shares(count)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # The last write is due 1/rate before the window ends: a host on time took the window.
    written = max(time.monotonic() - start, seconds)
    synced = all(store.wait_for_sync(timeout=SETTLE_SECONDS) for store in stores)
    cpu, relay_cpu = _cpu_seconds() - cpu, _relay_cpu_seconds(relay_pid) - relay_cpu
    system = _system_seconds() - system
    for store in stores:
        store.close()
    writes = sum(len(keys) for keys in stamps.values())
    result = {
        "count": count,
        "offered_per_s": rate * count,
        "achieved_per_s": writes / written,
        "writes": writes,
        "synced": synced,
        "agent_cpu_s": cpu,
        "agent_system_s": system,
        "relay_cpu_s": relay_cpu,
        "stamps": stamps,
    }
    out.write_bytes(orjson.dumps(result))


def watch(url: str, prefix: str, count: int, out: Path, timeout: float = 600.0) -> None:
    """Record when each of ``count`` keys of agents whose ids start with ``prefix`` shows up in
    the change feed."""
    import httpx

    seen: dict[str, int] = {}
    cursor: str | None = None
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=WATCH_WAIT_SECONDS + 10) as http:
        ready = False
        while len(seen) < count and time.monotonic() < deadline:
            params: dict[str, Any] = {"limit": 1000, "wait": WATCH_WAIT_SECONDS if ready else 0}
            if cursor:
                params["after"] = cursor
            page = orjson.loads(http.get("/relay/changes", params=params).content)
            now = time.monotonic_ns()
            for record in page["records"]:
                if record["agent_id"].startswith(prefix):
                    seen.setdefault(f"{record['agent_id']}/{record['key']}", now)
            cursor = page.get("next_cursor") or cursor
            if not ready:
                ready = True
                print("ready", flush=True)
    out.write_bytes(orjson.dumps(seen))


def main(argv: list[str]) -> int:
    """Dispatch ``open`` / ``load`` (see the module docstring)."""
    command, *args = argv
    if command == "open":
        open_stores(Path(args[0]), args[1], int(args[2]), float(args[3]), Path(args[4]))
    elif command in ("load", "load-local"):
        load(
            Path(args[0]),
            args[1],
            int(args[2]),
            float(args[3]),
            float(args[4]),
            int(args[5]),
            Path(args[6]),
            sync=command == "load",
        )
    elif command == "watch":
        watch(args[0], args[1], int(args[2]), Path(args[3]))
    else:
        raise SystemExit(f"unknown command {command!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
