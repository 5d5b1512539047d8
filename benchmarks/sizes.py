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
    ),
}
