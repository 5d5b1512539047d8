"""Scale benchmarks (``commander-os bench --scale``): one agent host with many stores.

Side by side in one run, against one real relay process (pinned to the server CPU; the host
to the client CPU):

* **Opening**: ``scale_stores_small`` vs ``scale_stores_large`` new stores in one process
  (target: the large count in at most 10x the time of the small one, i.e. linear), and the
  same stores opened again (a host restarting).
* **Idle**: the CPU the host spends while ``scale_stores_large`` open stores do nothing
  (target: under 2% of a core).
* **Load**: ``scale_agents`` stores in one host writing ``scale_rate`` writes/s each for
  ``scale_seconds``, beside a single agent at the same rate in the same run. Achieved over
  offered writes/s (target ≥ 0.98), replication lag p99 (``set()`` returning to the record
  being visible in the relay's change feed, followed by a watcher process) over the single
  agent's (target ≤ 3x), and the CPU that replication costs per record (target ≤ 100 µs):
  the host's CPU beyond what the same writes cost it with sync off (measured in the same run),
  plus the relay's (which includes serving the watcher's feed).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

from benchmarks.core import Result, Stats, Target, cpus
from benchmarks.scale_host import agent_prefix, planned_writes
from benchmarks.sizes import Sizes
from commander_os.relay import RelayProcess

__all__ = ["run_scale"]

HOST_TIMEOUT = 900


def _child(cpu: int | None, *args: str) -> list[str]:
    pin = [] if cpu is None else ["taskset", "-c", str(cpu)]
    return [*pin, sys.executable, "-m", "benchmarks.scale_host", *args]


def _open(workdir: Path, url: str, count: int, idle: float, cpu: int | None) -> dict[str, Any]:
    out = workdir / f"open-{count}.json"
    argv = _child(cpu, "open", str(workdir / f"open-{count}"), url, str(count), str(idle), str(out))
    subprocess.run(argv, check=True, timeout=HOST_TIMEOUT)
    result: dict[str, Any] = orjson.loads(out.read_bytes())
    return result


def _opening_results(small: dict[str, Any], large: dict[str, Any]) -> list[Result]:
    rows = []
    for field, what in (("open_s", "open"), ("reopen_s", "open again")):
        rows.append(
            Result(
                f"{what} {large['count']} stores in one process, vs {small['count']}",
                "value",
                "s",
                large[field],
                peer_name=f"{small['count']} stores",
                peer=small[field],
                target=Target("<=", large["count"] / small["count"], ratio=True),
            )
        )
    rows.append(
        Result(
            f"idle CPU of {large['count']} open stores",
            "value",
            "% of a core",
            large["idle_cpu"] * 100,
            target=Target("<", 2.0),
        )
    )
    return rows


def _host(
    command: str, workdir: Path, relay: RelayProcess, count: int, sizes: Sizes, cpu: int | None
) -> dict[str, Any]:
    out = workdir / f"{command}-{count}.json"
    args = (str(count), str(sizes.scale_rate), str(sizes.scale_seconds), str(relay.pid))
    argv = _child(cpu, command, str(workdir / f"{command}-{count}"), relay.url, *args, str(out))
    subprocess.run(argv, check=True, timeout=HOST_TIMEOUT)
    result: dict[str, Any] = orjson.loads(out.read_bytes())
    return result


def _load(
    workdir: Path, relay: RelayProcess, count: int, sizes: Sizes, cpu: int | None
) -> dict[str, Any]:
    """One host of ``count`` stores under load, watched through the relay's change feed."""
    seen_out = workdir / f"seen-{count}.json"
    total = count + planned_writes(count, sizes.scale_rate, sizes.scale_seconds)
    argv = _child(cpu, "watch", relay.url, agent_prefix("load", count), str(total), str(seen_out))
    watcher = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None
        if watcher.stdout.readline().strip() != "ready":
            raise RuntimeError("the change-feed watcher did not start")
        result = _host("load", workdir, relay, count, sizes, cpu)
        watcher.wait(timeout=HOST_TIMEOUT)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    seen: dict[str, int] = orjson.loads(seen_out.read_bytes()) if seen_out.exists() else {}
    lags, missing = [], 0
    for agent, stamps in result.pop("stamps").items():
        for key, stamp in stamps.items():
            visible = seen.get(f"{agent}/{key}")
            if visible is None:
                missing += 1
            else:
                lags.append((visible - stamp) * 1e-9)
    result["lag"], result["missing"] = Stats.of(lags or [float("nan")]), missing
    return result


def _load_results(
    single: dict[str, Any], many: dict[str, Any], local: dict[str, Any], rate: float
) -> list[Result]:
    count = many["count"]
    note = f"{many['writes']} writes, {many['missing']} never seen on the relay"
    if not many["synced"]:
        note += ", not all acknowledged"
    label = f"{count} agents at {rate:g} writes/s"
    writes = max(many["writes"], 1)
    host = max(0.0, many["agent_cpu_s"] - local["agent_cpu_s"] * many["writes"] / local["writes"])
    cpu = (host + many["relay_cpu_s"]) / writes
    return [
        Result(
            f"{label}: achieved writes/s of offered",
            "value",
            "writes/s",
            many["achieved_per_s"],
            peer_name="offered",
            peer=many["offered_per_s"],
            target=Target(">=", 0.98, ratio=True),
            note=note,
        ),
        Result(
            f"{label}: replication lag p99, vs one agent",
            "p99",
            "s",
            many["lag"],
            peer_name="1 agent",
            peer=single["lag"],
            target=Target("<=", 3.0, ratio=True),
            note=f"p50 {many['lag'].median * 1e3:.1f} ms; one agent p50 "
            f"{single['lag'].median * 1e3:.1f} ms",
        ),
        Result(
            f"{label}: host + relay CPU per replicated record",
            "value",
            "s",
            cpu,
            target=Target("<=", 100e-6),
            note=f"host {host / writes * 1e6:.1f} µs beyond sync off "
            f"({many['agent_cpu_s'] / writes * 1e6:.1f} µs with, "
            f"{local['agent_cpu_s'] / max(local['writes'], 1) * 1e6:.1f} µs without), "
            f"relay {many['relay_cpu_s'] / writes * 1e6:.1f} µs",
        ),
    ]


def run_scale(
    sizes: Sizes, workdir: Path, *, server_cpu: int | None, log: Callable[[str], None]
) -> list[Result]:
    """Opening, idle and load figures of one agent host (see the module docstring)."""
    client_cpu = cpus()[0] if server_cpu is not None else None
    with RelayProcess(data_dir=workdir / "relay", cpu=server_cpu) as relay:
        opened = {}
        for count in (sizes.scale_stores_small, sizes.scale_stores_large):
            log(f"scale: opening {count} stores in one process")
            opened[count] = _open(workdir, relay.url, count, sizes.scale_idle_seconds, client_cpu)
        small, large = opened[sizes.scale_stores_small], opened[sizes.scale_stores_large]
        results = _opening_results(small, large)
        loads = {}
        for count in (1, sizes.scale_agents):
            log(f"scale: {count} agents at {sizes.scale_rate:g} writes/s, {sizes.scale_seconds} s")
            loads[count] = _load(workdir, relay, count, sizes, client_cpu)
        log(f"scale: the same {sizes.scale_agents} agents' writes with sync off")
        local = _host("load-local", workdir, relay, sizes.scale_agents, sizes, client_cpu)
    results += _load_results(loads[1], loads[sizes.scale_agents], local, sizes.scale_rate)
    return results
