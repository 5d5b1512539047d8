"""How big each benchmark runs: ``quick`` (seconds, what the tests run), ``standard``, ``full``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["SIZES", "Sizes"]


@dataclass(frozen=True)
class Sizes:
    """Every size knob of the suite in one place."""

    name: str
    rounds: int  # interleaved rounds per local metric
    # local
    keys: int  # items preloaded in every local store
    get_ops: int  # per round
    set_normal_ops: int
    set_full_ops: int
    set_many_batches: int  # batches of ``batch`` items per round
    batch: int
    scan_ops: int  # prefix scans per round
    list_all_ops: int  # full scans per round
    # sync
    steady_writes: int  # at ``steady_rate`` writes/s
    steady_rate: float
    bursts: int
    burst_size: int
    backlog: int
    # relay
    central_records: int  # preloaded central store size
    central_agents: int
    ingest_agents: int  # concurrent pushing processes
    ingest_batches: int  # per agent
    ingest_batch: int  # records per batch
    query_ops: int  # per query kind
    # scale (``--scale``): one agent host with many stores
    scale_stores_small: int  # stores opened in one process, beside...
    scale_stores_large: int  # ...this many (the opening-time ratio's target is large/small)
    scale_idle_seconds: float  # idle CPU measured over this long
    scale_agents: int  # stores writing at once in one host, beside a single one
    scale_rate: float  # writes/s per store
    scale_seconds: float  # how long they write

    def to_json(self) -> dict[str, Any]:
        """The knobs as a dict, for the JSON report."""
        return asdict(self)


SIZES = {
    "quick": Sizes(
        name="quick",
        rounds=2,
        keys=400,
        get_ops=200,
        set_normal_ops=100,
        set_full_ops=20,
        set_many_batches=2,
        batch=1000,
        scan_ops=5,
        list_all_ops=2,
        steady_writes=40,
        steady_rate=500,
        bursts=2,
        burst_size=50,
        backlog=500,
        central_records=2000,
        central_agents=4,
        ingest_agents=2,
        ingest_batches=3,
        ingest_batch=200,
        query_ops=30,
        scale_stores_small=5,
        scale_stores_large=50,
        scale_idle_seconds=1,
        scale_agents=50,
        scale_rate=2,
        scale_seconds=2,
    ),
    "standard": Sizes(
        name="standard",
        rounds=3,
        keys=10_000,
        get_ops=5000,
        set_normal_ops=2000,
        set_full_ops=300,
        set_many_batches=5,
        batch=1000,
        scan_ops=20,
        list_all_ops=3,
        steady_writes=1500,
        steady_rate=500,
        bursts=3,
        burst_size=500,
        backlog=10_000,
        central_records=100_000,
        central_agents=20,
        ingest_agents=4,
        ingest_batches=10,
        ingest_batch=1000,
        query_ops=300,
        scale_stores_small=20,
        scale_stores_large=200,
        scale_idle_seconds=3,
        scale_agents=200,
        scale_rate=2,
        scale_seconds=5,
    ),
    "full": Sizes(
        name="full",
        rounds=5,
        keys=100_000,
        get_ops=10_000,
        set_normal_ops=4000,
        set_full_ops=600,
        set_many_batches=10,
        batch=1000,
        scan_ops=10,
        list_all_ops=2,
        steady_writes=5000,
        steady_rate=500,
        bursts=5,
        burst_size=2000,
        backlog=100_000,
        central_records=1_000_000,
        central_agents=100,
        ingest_agents=4,
        ingest_batches=50,
        ingest_batch=1000,
        query_ops=1000,
        scale_stores_small=100,
        scale_stores_large=1000,
        scale_idle_seconds=10,
        scale_agents=1000,
        scale_rate=2,
        scale_seconds=20,
    ),
}
