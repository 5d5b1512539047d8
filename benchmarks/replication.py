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
#: A modest agent's sustained write rate, run besides the suite's steady rate: at the latter
#: the three relays share one core at about a request per write each, so this row shows what
#: replication itself costs and that one shows where the server core runs out.
MODEST_RATE = 100.0


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
    writes: int, rate: float, workdir: Path, urls: list[str], agent: str, cpu: int | None
) -> tuple[list[float], list[float], int]:
    """Lags (to every target) and ``set()`` durations of one steady run, and writes unseen."""
    count = writes + 1  # the warm-up write too
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
            for i in range(writes):
                pause = start + i / rate - time.monotonic()
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
    results: list[Result] = []
    try:
        urls = [relay.url for relay in relays]
        for rate in sorted({MODEST_RATE, sizes.steady_rate}):
            # About five seconds a run at the modest rate, the suite's count at its own.
            writes = sizes.steady_writes if rate == sizes.steady_rate else int(5 * rate)
            writes = min(writes, sizes.steady_writes * 2)
            log(f"replication: {writes} writes at {rate:g}/s to 1 target, then {TARGETS}")
            one = _run(writes, rate, workdir, urls[:1], f"one-{rate:g}", client_cpu)
            three = _run(writes, rate, workdir, urls, f"three-{rate:g}", client_cpu)
            results += _results(rate, one, three)
    finally:
        for relay in relays:
            relay.stop()
    return results


Run = tuple[list[float], list[float], int]


def _results(rate: float, one: Run, three: Run) -> list[Result]:
    (one_lag, one_set, one_missing), (all_lag, all_set, all_missing) = one, three
    missing = one_missing + all_missing
    note = f"{missing} writes never seen on every target" if missing else ""
    label = f"replication lag to all {TARGETS} targets, {rate:g} writes/s"
    ours, peer = Stats.of(all_lag), Stats.of(one_lag)
    ratio = Target("<=", 1.5, ratio=True)
    return [
        Result(label + " (p50)", "median", "s", ours, "1 target", peer, ratio, note),
        Result(label + " (p99)", "p99", "s", ours, "1 target", peer, ratio, note),
        Result(
            f"set() with {TARGETS} targets, {rate:g} writes/s",
            "median",
            "s",
            Stats.of(all_set),
            peer_name="1 target",
            peer=Stats.of(one_set),
            target=Target("<=", 1.1, ratio=True),
        ),
    ]
