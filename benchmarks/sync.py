"""Sync benchmarks: replication lag to a real relay, and draining a backlog.

* **Lag** is the time from ``set()`` returning in the agent to the record being visible on
  the relay. A watcher process follows ``/relay/changes`` (long-poll, woken by the relay's
  commit) and stamps each key with ``CLOCK_MONOTONIC``, the clock the writer stamps
  ``set()``'s return with. Measured at a steady rate and in bursts, with the shipped defaults
  (``durability="full"`` on both sides, ``sync_batch_size`` 100).
* **Backlog**: ``sizes.backlog`` writes made while the relay is down; then the relay starts and
  a fresh agent process drains the queue, reporting the seconds and its memory high-water mark.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from benchmarks import workload
from benchmarks.core import Result, Stats, Target
from benchmarks.local import dead_url
from benchmarks.sizes import Sizes
from commander_os.relay import RelayProcess
from commander_os.storage.agent_storage import AgentStorage

__all__ = ["run_sync"]

LAG_AGENT = "bench-lag"
BACKLOG_AGENT = "backlog"
DRAIN_BATCH_SIZES = (100, 1000)


def _child(*args: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.children", *args]


def _taskset(cpu: int | None) -> list[str]:
    return [] if cpu is None else ["taskset", "-c", str(cpu)]


def _steady(store: AgentStorage, count: int, rate: float, stamps: dict[str, int]) -> None:
    """``count`` writes paced at ``rate`` per second; stamp each return."""
    start = time.monotonic()
    for i in range(count):
        pause = start + i / rate - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        key = f"steady:{i:07d}"
        store.set(key, workload.value(i, i))
        stamps[key] = time.monotonic_ns()


def _bursts(store: AgentStorage, sizes: Sizes, stamps: dict[str, int]) -> None:
    """``sizes.bursts`` bursts of back-to-back writes, each waited out before the next."""
    for burst in range(sizes.bursts):
        for i in range(sizes.burst_size):
            key = f"burst:{burst:03d}:{i:07d}"
            store.set(key, workload.value(i, burst))
            stamps[key] = time.monotonic_ns()
        store.wait_for_sync(timeout=60)
        time.sleep(0.2)


def _lag(stamps: dict[str, int], seen: dict[str, int], prefix: str) -> list[float]:
    return [(seen[k] - t) * 1e-9 for k, t in stamps.items() if k.startswith(prefix) and k in seen]


def _measure_lag(
    sizes: Sizes, workdir: Path, relay_url: str, client_cpu: int | None
) -> tuple[list[float], list[float], int]:
    # Every measured write plus the unmeasured warm-up write the watcher also sees.
    total = sizes.steady_writes + sizes.bursts * sizes.burst_size + 1
    out = workdir / "seen.json"
    argv = _child("watch", relay_url, LAG_AGENT, str(total), str(out))
    watcher = subprocess.Popen(_taskset(client_cpu) + argv, stdout=subprocess.PIPE, text=True)
    stamps: dict[str, int] = {}
    try:
        assert watcher.stdout is not None
        if watcher.stdout.readline().strip() != "ready":
            raise RuntimeError("the change-feed watcher did not start")
        store = AgentStorage(
            agent_id=LAG_AGENT, data_dir=workdir / "agent", enable_htpc=True, htpc_url=relay_url
        )
        try:
            store.set("warmup", {"n": 0})  # first connection to the relay, not measured
            store.wait_for_sync(timeout=30)
            _steady(store, sizes.steady_writes, sizes.steady_rate, stamps)
            store.wait_for_sync(timeout=60)
            _bursts(store, sizes, stamps)
        finally:
            store.close()
        watcher.wait(timeout=120)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    seen: dict[str, int] = orjson.loads(out.read_bytes()) if out.exists() else {}
    missing = sum(1 for key in stamps if key not in seen)
    return _lag(stamps, seen, "steady:"), _lag(stamps, seen, "burst:"), missing


def _lag_results(sizes: Sizes, steady: list[float], bursts: list[float], missing: int) -> list:
    note = f"{missing} writes never seen on the relay" if missing else ""
    results = []
    if steady:
        stats = Stats.of(steady)
        label = f"replication lag, steady {sizes.steady_rate:g} writes/s"
        results += [
            Result(label + " (p50)", "median", "s", stats, target=Target("<=", 0.005), note=note),
            Result(label + " (p99)", "p99", "s", stats, target=Target("<=", 0.025), note=note),
        ]
    if bursts:
        stats = Stats.of(bursts)
        label = f"replication lag, bursts of {sizes.burst_size}"
        results += [
            Result(label + " (p50)", "median", "s", stats, note=note),
            Result(label + " (p99)", "p99", "s", stats, note=note),
        ]
    return results


def _write_backlog(directory: Path, count: int) -> None:
    store = AgentStorage(
        agent_id=BACKLOG_AGENT,
        data_dir=directory,
        enable_htpc=True,
        htpc_url=dead_url(),
        durability="normal",  # setup speed only; the drain below is what is measured
        sync_interval=3600,
    )
    try:
        for start in range(0, count, 5000):
            stop = min(start + 5000, count)
            store.set_many((workload.key(i), workload.value(i, 1)) for i in range(start, stop))
    finally:
        store.close()


def _drain(
    sizes: Sizes,
    workdir: Path,
    server_cpu: int | None,
    client_cpu: int | None,
    batch_size: int,
) -> dict:
    directory = workdir / f"backlog-agent-{batch_size}"
    _write_backlog(directory, sizes.backlog)
    out = workdir / f"drain-{batch_size}.json"
    with RelayProcess(data_dir=workdir / f"backlog-relay-{batch_size}", cpu=server_cpu) as relay:
        argv = _child("drain", str(directory), relay.url, str(out), str(batch_size))
        subprocess.run(_taskset(client_cpu) + argv, check=True, timeout=900)
    result: dict = orjson.loads(out.read_bytes())
    return result


def _drain_results(sizes: Sizes, drained: dict) -> list[Result]:
    growth_mb = (drained["hwm_kib"] - drained["rss_imported_kib"]) / 1024
    batch = drained["batch_size"]
    note = f"{drained['queued']} queued, {drained['left']} left"
    return [
        Result(
            f"drain a {sizes.backlog}-record backlog, sync_batch_size {batch}",
            "value",
            "s",
            drained["seconds"],
            target=Target("<=", 5.0),
            note=note,
            extra={"records_per_s": drained["queued"] / max(drained["seconds"], 1e-9)},
        ),
        Result(
            f"agent memory growth while draining, sync_batch_size {batch}",
            "value",
            "MB",
            growth_mb,
            target=Target("<=", 50.0),
            note=f"peak RSS {drained['hwm_kib'] / 1024:.1f} MB",
            extra=drained,
        ),
    ]


def run_sync(
    sizes: Sizes, workdir: Path, *, server_cpu: int | None, log: Callable[[str], None]
) -> list[Result]:
    """Lag (steady, bursts) and backlog drain against a relay process pinned to ``server_cpu``."""
    from benchmarks.core import cpus

    client_cpu = cpus()[0] if server_cpu is not None else None
    with RelayProcess(data_dir=workdir / "relay", cpu=server_cpu) as relay:
        log(f"sync: replication lag ({sizes.steady_writes} steady, {sizes.bursts} bursts)")
        steady, bursts, missing = _measure_lag(sizes, workdir, relay.url, client_cpu)
    results = _lag_results(sizes, steady, bursts, missing)
    # The shipped default batch size, then a larger one (relays accept up to 5000).
    seconds = {}
    for batch_size in DRAIN_BATCH_SIZES:
        log(f"sync: draining a {sizes.backlog}-record backlog, sync_batch_size {batch_size}")
        drained = _drain(sizes, workdir, server_cpu, client_cpu, batch_size)
        results += _drain_results(sizes, drained)
        seconds[batch_size] = drained["seconds"]
    small, large = DRAIN_BATCH_SIZES
    # Issue 14: a small batch size must not make a backlog drain much slower.
    results.append(
        Result(
            f"drain a {sizes.backlog}-record backlog, sync_batch_size {small} vs {large}",
            "value",
            "s",
            seconds[small],
            peer_name=f"sync_batch_size {large}",
            peer=seconds[large],
            target=Target("<=", 1.15, ratio=True),
        )
    )
    return results
