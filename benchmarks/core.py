"""Measuring: samples, their summary, targets, result rows, and the timing loops.

Every figure is a :class:`Stats` over many individually timed operations (``perf_counter_ns``
around each one), gathered in several rounds. Peers of one metric are measured round-robin in
the same run, each round in a rotated order, so a noisy moment hurts all of them alike.
"""

from __future__ import annotations

import gc
import math
import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "Result",
    "Stats",
    "Target",
    "interleaved",
    "pin_to_cpu",
    "time_each",
]


@dataclass(frozen=True)
class Stats:
    """Summary of many timed operations: median, p99, mean and throughput.

    ``items`` is how many items one operation handles (1000 for a ``set_many`` of 1000), so
    ``items_per_s`` is throughput in items rather than calls.
    """

    median: float  # seconds
    p99: float
    mean: float
    count: int
    items: int = 1

    @classmethod
    def of(cls, samples: Sequence[float], items: int = 1) -> Stats:
        """Summarise ``samples`` (seconds per operation)."""
        if not samples:
            raise ValueError("no samples to summarise")
        ordered = sorted(samples)
        return cls(
            median=statistics.median(ordered),
            p99=ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)],
            mean=statistics.fmean(ordered),
            count=len(ordered),
            items=items,
        )

    @property
    def ops_per_s(self) -> float:
        """Operations per second at the mean latency."""
        return 1.0 / self.mean if self.mean > 0 else math.inf

    @property
    def items_per_s(self) -> float:
        """Items per second at the mean latency."""
        return self.items * self.ops_per_s

    def to_json(self) -> dict[str, float | int]:
        """Plain numbers for the JSON report."""
        return {
            "median_s": self.median,
            "p99_s": self.p99,
            "mean_s": self.mean,
            "ops_per_s": self.ops_per_s,
            "items_per_s": self.items_per_s,
            "count": self.count,
            "items_per_op": self.items,
        }


Quantity = Literal["median", "p99", "items_per_s", "value"]


@dataclass(frozen=True)
class Target:
    """A goal from issue 5: ``quantity`` of ours (or ours/peer when ``ratio``) vs ``bound``."""

    op: Literal["<=", ">=", "<"]
    bound: float
    ratio: bool = False

    def met(self, value: float) -> bool:
        """Whether ``value`` reaches the goal."""
        if self.op == "<=":
            return value <= self.bound
        if self.op == ">=":
            return value >= self.bound
        return value < self.bound

    def describe(self, unit: str) -> str:
        """``≤ 1.5x`` for ratios, ``≤ 5 ms`` for absolute goals."""
        symbol = {"<=": "≤", ">=": "≥", "<": "<"}[self.op]
        if self.ratio:
            return f"{symbol} {self.bound:g}x"
        return f"{symbol} {format_value(self.bound, unit)}"


@dataclass
class Result:
    """One row of the report: a metric of ours, optionally beside one peer, with its target.

    ``quantity`` names what the row compares (``median`` latency, ``p99`` latency,
    ``items_per_s`` throughput, or a plain ``value`` such as seconds to drain or MB of memory).
    """

    metric: str
    quantity: Quantity
    unit: str  # "s", "items/s", "MB", ...
    ours: Stats | float
    peer_name: str | None = None
    peer: Stats | float | None = None
    target: Target | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def value(self, which: Stats | float | None) -> float | None:
        """The compared quantity of ``which``."""
        if which is None:
            return None
        if isinstance(which, Stats):
            return float(getattr(which, self.quantity))
        return float(which)

    @property
    def ratio(self) -> float | None:
        """Ours over peer (for latencies < 1 is better; for throughputs > 1 is better)."""
        ours, peer = self.value(self.ours), self.value(self.peer)
        if ours is None or peer is None or peer == 0:
            return None
        return ours / peer

    @property
    def met(self) -> bool | None:
        """Whether the target is reached (None without a target)."""
        if self.target is None:
            return None
        compared = self.ratio if self.target.ratio else self.value(self.ours)
        return None if compared is None else self.target.met(compared)

    def to_json(self) -> dict[str, Any]:
        """The row as plain JSON values."""

        def side(which: Stats | float | None) -> Any:
            return which.to_json() if isinstance(which, Stats) else which

        return {
            "metric": self.metric,
            "quantity": self.quantity,
            "unit": self.unit,
            "ours": side(self.ours),
            "ours_value": self.value(self.ours),
            "peer_name": self.peer_name,
            "peer": side(self.peer),
            "peer_value": self.value(self.peer),
            "ratio": self.ratio,
            "target": None if self.target is None else self.target.describe(self.unit),
            "met": self.met,
            "note": self.note,
            **({"extra": self.extra} if self.extra else {}),
        }


def format_value(value: float | None, unit: str) -> str:
    """Human units: µs/ms/s for seconds, k/M for rates."""
    if value is None:
        return "-"
    if unit == "s":
        if value < 1e-3:
            return f"{value * 1e6:.1f} µs"
        if value < 1:
            return f"{value * 1e3:.2f} ms"
        return f"{value:.2f} s"
    if unit.endswith("/s"):
        if value >= 1e6:
            return f"{value / 1e6:.2f}M {unit}"
        if value >= 1e3:
            return f"{value / 1e3:.1f}k {unit}"
        return f"{value:.0f} {unit}"
    return f"{value:.1f} {unit}"


def time_each(op: Callable[[int], object], count: int) -> list[float]:
    """Call ``op(i)`` for ``i`` in ``range(count)``, timing each call; seconds per call.

    The collector is paused while timing (as ``timeit`` does) so that a collection caused by
    one implementation's garbage is not charged to another's operation.
    """
    samples = [0.0] * count
    clock = time.perf_counter_ns
    enabled = gc.isenabled()
    gc.disable()
    try:
        for i in range(count):
            start = clock()
            op(i)
            samples[i] = (clock() - start) * 1e-9
    finally:
        if enabled:
            gc.enable()
    return samples


def interleaved(
    ops: dict[str, Callable[[int], object]], count: int, rounds: int
) -> dict[str, list[float]]:
    """Time ``count`` calls of every op per round, ``rounds`` times, rotating the order.

    The index passed to each op keeps growing across rounds (``round * count + i``) so that
    writes can derive a fresh value from it: SQLite skips writing identical bytes.
    """
    names = list(ops)
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_no in range(rounds):
        shift = round_no % len(names)
        for name in names[shift:] + names[:shift]:
            base = round_no * count
            op = ops[name]
            samples[name] += time_each(lambda i, op=op, base=base: op(base + i), count)
        gc.collect()
    return samples


def pin_to_cpu(cpu: int | None) -> int | None:
    """Pin this process to ``cpu`` when the machine has more than one (ARCHITECTURE §9).

    Returns the CPU pinned to, or None when pinning is impossible or pointless.
    """
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2 or cpu not in available:
        return None
    os.sched_setaffinity(0, {cpu})
    return cpu


def cpus() -> tuple[int | None, int | None]:
    """(client CPU, server CPU): the first two CPUs we may run on, or None when there is one."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    available = sorted(os.sched_getaffinity(0))
    if len(available) < 2:
        return None, None
    return available[0], available[1]
