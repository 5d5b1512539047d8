"""Replication benchmark: lag to three targets beside lag to one, at the same write rate.

Three relays, each with its own embedded SQLite central store, run pinned to the server CPU;
the agent (this process) and the change-feed watchers run on the client CPU. The agent writes
``sizes.steady_writes`` records at ``sizes.steady_rate`` per second, once with one target and
once with ``replicate_to`` the other two (``sync_quorum`` majority). A write's lag is from
``set()`` returning to the record being visible on **every** target (the slowest watcher's
stamp), so three targets are held to the stricter reading. ``set()`` itself is timed too:
replication must not cost the local write.
"""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from benchmarks import workload
from benchmarks.core import Result, Stats, Target
from benchmarks.sizes import Sizes
from benchmarks.sync import _child, _taskset
from commander_os.relay import RelayProcess
from commander_os.storage.agent_storage import AgentStorage

__all__ = ["run_replication"]

TARGETS = 3


def _watchers(
    urls: list[str], agent: str, count: int, workdir: Path, cpu: int | None
) -> list[tuple[subprocess.Popen[str], Path]]:
    started = []
    for i, url in enumerate(urls):
        out = workdir / f"{agent}-seen-{i}.json"
        argv = _taskset(cpu) + _child("watch", url, agent, str(count), str(out))
        watcher = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        assert watcher.stdout is not None
        if watcher.stdout.readline().strip() != "ready":
            raise RuntimeError("a change-feed watcher did not start")
        started.append((watcher, out))
    return started


def _run(
    sizes: Sizes, workdir: Path, urls: list[str], agent: str, cpu: int | None
) -> tuple[list[float], list[float], int]:
    """Lags (to every target) and ``set()`` durations of one steady run, and writes unseen."""
    count = sizes.steady_writes + 1  # the warm-up write too
    watchers = _watchers(urls, agent, count, workdir, cpu)
    stamps: dict[str, int] = {}
    durations: list[float] = []
    try:
        store = AgentStorage(
            agent,
            workdir / agent,
            htpc_url=urls[0],
            replicate_to=urls[1:],
            enable_htpc=True,
        )
        try:
            store.set("warmup", {"n": 0})
            store.wait_for_sync(timeout=30)
            start = time.monotonic()
            for i in range(sizes.steady_writes):
                pause = start + i / sizes.steady_rate - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                key = f"steady:{i:07d}"
                before = time.perf_counter()
                store.set(key, workload.value(i, i))
                durations.append(time.perf_counter() - before)
                stamps[key] = time.monotonic_ns()
            store.wait_for_sync(timeout=60)
        finally:
            store.close()
        for watcher, _ in watchers:
            watcher.wait(timeout=120)
    finally:
        for watcher, _ in watchers:
            if watcher.poll() is None:
                watcher.kill()
                watcher.wait()
    seen = [orjson.loads(out.read_bytes()) if out.exists() else {} for _, out in watchers]
    lags = [
        (max(s[key] for s in seen) - stamp) * 1e-9
        for key, stamp in stamps.items()
        if all(key in s for s in seen)
    ]
    return lags, durations, len(stamps) - len(lags)


def run_replication(
    sizes: Sizes, workdir: Path, *, server_cpu: int | None, log: Callable[[str], None]
) -> list[Result]:
    """Lag and ``set()`` with three targets against one (see the module docstring)."""
    from benchmarks.core import cpus

    client_cpu = cpus()[0] if server_cpu is not None else None
    relays = [RelayProcess(data_dir=workdir / f"relay{i}", cpu=server_cpu) for i in range(TARGETS)]
    for relay in relays:
        relay.start()
    try:
        urls = [relay.url for relay in relays]
        log(f"replication: {sizes.steady_writes} writes at {sizes.steady_rate:g}/s to 1 target")
        one_lag, one_set, one_missing = _run(sizes, workdir, urls[:1], "bench-one", client_cpu)
        log(f"replication: the same to {TARGETS} targets")
        all_lag, all_set, all_missing = _run(sizes, workdir, urls, "bench-three", client_cpu)
    finally:
        for relay in relays:
            relay.stop()
    missing = one_missing + all_missing
    note = f"{missing} writes never seen on every target" if missing else ""
    label = f"replication lag to all {TARGETS} targets, {sizes.steady_rate:g} writes/s"
    ours, peer = Stats.of(all_lag), Stats.of(one_lag)
    local = f"set() with {TARGETS} targets"
    return [
        Result(
            label + " (p50)",
            "median",
            "s",
            ours,
            peer_name="1 target",
            peer=peer,
            target=Target("<=", 1.5, ratio=True),
            note=note,
        ),
        Result(
            label + " (p99)",
            "p99",
            "s",
            ours,
            peer_name="1 target",
            peer=peer,
            target=Target("<=", 1.5, ratio=True),
            note=note,
        ),
        Result(
            local,
            "median",
            "s",
            Stats.of(all_set),
            peer_name="1 target",
            peer=Stats.of(one_set),
            target=Target("<=", 1.1, ratio=True),
        ),
    ]
