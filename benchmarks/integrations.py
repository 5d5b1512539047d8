"""Integration benchmarks: CommanderStore and CommanderSaver beside LangGraph's own stores.

``python -m benchmarks.integrations [--quick|--full] [--json PATH]`` measures, in one run and
round-robin (:func:`benchmarks.core.interleaved`):

- ``CommanderStore`` put / get / search (filter, limit 10) / semantic search against LangGraph's
  ``InMemoryStore`` and ``SqliteStore``;
- ``CommanderSaver`` put / get_tuple against ``langgraph-checkpoint-sqlite``'s ``SqliteSaver``.

Ours replicates while it is measured: its store has sync on and a live relay (pinned to the
other CPU) takes every write. The SQLite peers get the same pragmas as ours (WAL, the same
``synchronous``), so the comparison is of the software, not of the journal mode. Targets are
reported (ours within 1.5x of the SQLite peer), never asserted.
"""

from __future__ import annotations

import argparse
import random
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from langgraph.checkpoint.base import empty_checkpoint
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.store.base import BaseStore
from langgraph.store.memory import InMemoryStore
from langgraph.store.sqlite import SqliteStore
from rich.console import Console

from benchmarks.core import Result, Stats, Target, cpus, interleaved, pin_to_cpu
from benchmarks.report import print_table, write_json
from commander_os.integrations import IntegrationStorage
from commander_os.integrations.langgraph import CommanderSaver, CommanderStore
from commander_os.relay import RelayProcess

__all__ = ["SIZES", "IntegrationSizes", "main", "run_integrations"]

OURS = "ours (replicating)"
MEMORY = "InMemoryStore"
SQLITE_STORE = "SqliteStore"
SQLITE_SAVER = "SqliteSaver"
GOAL = Target("<=", 1.5, ratio=True)


@dataclass(frozen=True)
class IntegrationSizes:
    """Size knobs of the integration benchmarks."""

    rounds: int
    items: int  # preloaded store items, in namespaces of `per_namespace`
    per_namespace: int
    ops: int  # timed operations per metric per round
    vectors: int  # items of the semantic-search store
    dims: int
    checkpoints: int  # preloaded checkpoints (one thread each of `per_thread`)
    per_thread: int


SIZES = {
    "quick": IntegrationSizes(2, 400, 40, 20, 200, 16, 40, 4),
    "standard": IntegrationSizes(5, 10_000, 100, 300, 5_000, 128, 1_000, 10),
    "full": IntegrationSizes(7, 100_000, 100, 1_000, 10_000, 256, 10_000, 10),
}


def _value(n: int, salt: int = 0) -> dict[str, Any]:
    """About 1 KB of JSON: a memory with a few filterable fields."""
    return {
        "text": f"memory {n} of the agent, salt {salt}: " + "lorem ipsum dolor " * 45,
        "kind": ["fact", "preference", "event", "plan"][n % 4],
        "score": n % 100,
        "tags": [f"t{n % 7}", f"t{n % 11}"],
    }


def _namespace(n: int, sizes: IntegrationSizes) -> tuple[str, ...]:
    return ("users", f"u{n // sizes.per_namespace}", "memories")


def _vector_embedder(dims: int) -> Callable[[Sequence[str]], list[list[float]]]:
    """Deterministic pseudo-random vectors from the text, the same for every store."""

    def embed(texts: Sequence[str]) -> list[list[float]]:
        return [
            [random.Random(f"{text}:{i}").random() - 0.5 for i in range(dims)] for text in texts
        ]

    return embed


def _sqlite(path: Path, durability: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {durability.upper()}")
    return conn


class _Peers:
    """The compared stores and savers, opened in ``workdir`` at one durability."""

    def __init__(self, workdir: Path, relay_url: str, durability: str, index: Any = None) -> None:
        self.storage = IntegrationStorage(
            "bench", workdir / "ours", htpc_url=relay_url, enable_htpc=True, durability=durability
        )
        self.conns = [_sqlite(workdir / name, durability) for name in ("store.db", "saver.db")]
        self.stores: dict[str, BaseStore] = {
            OURS: CommanderStore(self.storage, index=index),
            MEMORY: InMemoryStore(index=index),
        }
        if index is None:
            # SqliteStore's vector search loads sqlite-vec, which this Python's sqlite3 cannot
            # (no enable_load_extension): it is compared without an index only.
            sqlite_store = SqliteStore(self.conns[0])
            sqlite_store.setup()
            self.stores[SQLITE_STORE] = sqlite_store
        self.savers: dict[str, Any] = {
            OURS: CommanderSaver(self.storage),
            SQLITE_SAVER: SqliteSaver(self.conns[1]),
        }

    def close(self) -> None:
        self.storage.close()
        for conn in self.conns:
            conn.close()


def _preload(peers: _Peers, sizes: IntegrationSizes, count: int) -> None:
    for store in peers.stores.values():
        for start in range(0, count, 500):
            store.batch(
                [
                    _put(_namespace(n, sizes), f"k{n}", _value(n))
                    for n in range(start, min(start + 500, count))
                ]
            )


def _put(namespace: tuple[str, ...], key: str, value: dict[str, Any]) -> Any:
    from langgraph.store.base import PutOp

    return PutOp(namespace, key, value)


def _rows(
    metric: str, samples: dict[str, list[float]], peers: dict[str, Target | None]
) -> list[Result]:
    mine = Stats.of(samples[OURS])
    return [
        Result(metric, "median", "s", mine, name, Stats.of(samples[name]), target)
        for name, target in peers.items()
        if name in samples
    ]


def _store_metrics(peers: _Peers, sizes: IntegrationSizes, durability: str) -> list[Result]:
    rng = random.Random(7)
    count = sizes.ops * sizes.rounds
    picks = [rng.randrange(sizes.items) for _ in range(count)]
    stores = peers.stores
    put = {
        name: (
            lambda i, s=store: s.put(
                _namespace(picks[i], sizes), f"k{picks[i]}", _value(picks[i], i + 1)
            )
        )
        for name, store in stores.items()
    }
    results = _rows(
        f"store put (1 KB, existing key), durability={durability}",
        interleaved(put, sizes.ops, sizes.rounds),
        {MEMORY: None, SQLITE_STORE: GOAL},
    )
    get = {
        name: (lambda i, s=store: s.get(_namespace(picks[i], sizes), f"k{picks[i]}"))
        for name, store in stores.items()
    }
    results += _rows(
        "store get", interleaved(get, sizes.ops, sizes.rounds), {MEMORY: None, SQLITE_STORE: GOAL}
    )
    search = {
        name: (
            lambda i, s=store: s.search(
                _namespace(picks[i], sizes),
                filter={"kind": "plan", "score": {"$gte": 10}},
                limit=10,
            )
        )
        for name, store in stores.items()
    }
    results += _rows(
        f"store search (filter, limit 10, namespace of {sizes.per_namespace})",
        interleaved(search, sizes.ops, sizes.rounds),
        {MEMORY: None, SQLITE_STORE: GOAL},
    )
    return results


def _semantic_metrics(workdir: Path, relay_url: str, sizes: IntegrationSizes) -> list[Result]:
    index = {"embed": _vector_embedder(sizes.dims), "dims": sizes.dims, "fields": ["text"]}
    peers = _Peers(workdir, relay_url, "normal", index=index)
    try:
        one_namespace = IntegrationSizes(**{**sizes.__dict__, "per_namespace": sizes.vectors})
        _preload(peers, one_namespace, sizes.vectors)
        ops = {
            name: (lambda i, s=store: s.search(("users",), query=f"query {i}", limit=10))
            for name, store in peers.stores.items()
        }
        samples = interleaved(ops, max(sizes.ops // 10, 5), sizes.rounds)
        return _rows(
            f"semantic search ({sizes.vectors} vectors of {sizes.dims} dims, limit 10)",
            samples,
            {MEMORY: None},
        )
    finally:
        peers.close()


def _saver_metrics(peers: _Peers, sizes: IntegrationSizes, durability: str) -> list[Result]:
    threads = sizes.checkpoints // sizes.per_thread
    heads: dict[str, list[Any]] = {}
    for name, saver in peers.savers.items():
        heads[name] = []
        for t in range(threads):
            config: Any = {"configurable": {"thread_id": f"t{t}", "checkpoint_ns": ""}}
            for step in range(sizes.per_thread):
                config = saver.put(
                    config, _checkpoint(t, step), {"source": "loop", "step": step}, {}
                )
            heads[name].append(config)
    count = sizes.ops * sizes.rounds
    rng = random.Random(11)
    picks = [rng.randrange(threads) for _ in range(count)]
    put = {
        name: (
            lambda i, s=saver, h=heads[name]: h.__setitem__(
                picks[i],
                s.put(
                    h[picks[i]], _checkpoint(picks[i], 1000 + i), {"source": "loop", "step": i}, {}
                ),
            )
        )
        for name, saver in peers.savers.items()
    }
    results = _rows(
        f"saver put (checkpoint of ~2 KB), durability={durability}",
        interleaved(put, sizes.ops, sizes.rounds),
        {SQLITE_SAVER: GOAL},
    )
    get = {
        name: (
            lambda i, s=saver: s.get_tuple(
                {"configurable": {"thread_id": f"t{picks[i]}", "checkpoint_ns": ""}}
            )
        )
        for name, saver in peers.savers.items()
    }
    results += _rows(
        "saver get_tuple (latest of a thread)",
        interleaved(get, sizes.ops, sizes.rounds),
        {SQLITE_SAVER: GOAL},
    )
    return results


def _checkpoint(thread: int, step: int) -> Any:
    checkpoint = empty_checkpoint()
    checkpoint["channel_values"] = {
        "messages": [f"message {m} of thread {thread} at step {step} " * 3 for m in range(12)],
        "step": step,
    }
    checkpoint["channel_versions"] = {"messages": step + 1, "step": step + 1}
    return checkpoint


def run_integrations(
    sizes: IntegrationSizes, workdir: Path, *, server_cpu: int | None, log: Callable[[str], None]
) -> list[Result]:
    """Every integration metric, ours beside each peer."""
    results: list[Result] = []
    with RelayProcess(data_dir=workdir / "relay", cpu=server_cpu) as relay:
        for durability in ("normal", "full"):
            folder = workdir / durability
            folder.mkdir()
            peers = _Peers(folder, relay.url, durability)
            try:
                if durability == "normal":
                    log(f"integrations: preloading {sizes.items} items into 3 stores")
                    _preload(peers, sizes, sizes.items)
                    results += _store_metrics(peers, sizes, durability)
                    log(f"integrations: preloading {sizes.checkpoints} checkpoints into 2 savers")
                    results += _saver_metrics(peers, sizes, durability)
                else:
                    _preload(peers, sizes, min(sizes.items, 2_000))
                    small = IntegrationSizes(
                        **{
                            **sizes.__dict__,
                            "items": min(sizes.items, 2_000),
                            "ops": max(sizes.ops // 5, 10),
                            "checkpoints": min(sizes.checkpoints, 200),
                        }
                    )
                    results += [
                        r for r in _store_metrics(peers, small, durability) if "put" in r.metric
                    ]
                    results += [
                        r for r in _saver_metrics(peers, small, durability) if "put" in r.metric
                    ]
            finally:
                peers.close()
        log("integrations: semantic search")
        semantic = workdir / "semantic"
        semantic.mkdir()
        results += _semantic_metrics(semantic, relay.url, sizes)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m benchmarks.integrations``: run, print the table, optionally write JSON."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.integrations", description=__doc__.split("\n\n")[0]
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes, seconds")
    size.add_argument("--full", action="store_true", help="full sizes")
    parser.add_argument("--json", type=Path, help="write the result rows as JSON to this path")
    args = parser.parse_args(argv)
    mode = "quick" if args.quick else "full" if args.full else "standard"
    console = Console(width=None if Console().is_terminal else 160)
    client_cpu, server_cpu = cpus()
    pinned = pin_to_cpu(client_cpu)
    workdir = Path(tempfile.mkdtemp(prefix="commander-bench-integrations-"))
    try:
        results = run_integrations(
            SIZES[mode],
            workdir,
            server_cpu=server_cpu if pinned is not None else None,
            log=lambda message: console.log(message, markup=False),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print_table(
        results, title=f"Commander OS Storage — integration benchmarks ({mode})", console=console
    )
    if args.json is not None:
        write_json(
            args.json,
            {
                "mode": mode,
                "sizes": SIZES[mode].__dict__,
                "results": [r.to_json() for r in results],
            },
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
