"""Query analytics: per query shape, how often, how fast, how many rows read for each returned.

A **shape** is what a query asks without its values: which identity filters it carries (agent,
table, key, key prefix, time), and each field filter's path and operator. For each shape the
relay keeps a count, recent latencies (p50/p95/p99), the rows the store examined against the
rows it returned, and the plan of the slowest query; queries above ``relay.slow_query_ms`` go
to a slow-query log. Nothing here keeps a value a query compared with, except the slowest
request of each shape, in memory only, to ask the store for its plan.

Counting examined rows costs the store a little per row (SQLite calls a counter for each), so
it is measured on a sample: the first queries of each shape, then one in ``COUNT_EVERY``.
PostgreSQL cannot count in-line; its examined rows come from ``EXPLAIN (ANALYZE)`` of the
slowest query of a shape, run when a report is asked for and the slowest has changed.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from commander_os.protocol import FilterOp, QueryRequest
from commander_os.relay.central import CentralStore, CentralStoreError, QueryPlan

__all__ = ["QueryAnalytics", "ShapeKey", "shape_key", "shape_label"]

logger = logging.getLogger("commander_os.relay.slow_query")

#: Shapes tracked one by one; later new shapes are pooled under "other" (bounded memory and
#: bounded metric labels).
MAX_SHAPES = 100
#: Latest latencies kept per shape, for its percentiles.
LATENCY_WINDOW = 1024
#: Slow queries remembered for the log view.
SLOW_LOG_SIZE = 200
#: Every query of a shape has its examined rows counted until it has this many samples...
COUNT_FIRST = 4
#: ...then one in this many.
COUNT_EVERY = 64
#: A shape is hot from this many queries on, and a hot shape "scans" when it examines at
#: least SCAN_RATIO rows for each row returned, and at least SCAN_MIN_ROWS rows a query.
HOT_QUERIES = 3
SCAN_RATIO = 10.0
SCAN_MIN_ROWS = 200
#: Shapes whose plan a report refreshes at most (the slowest first): each PostgreSQL plan
#: runs the query once more.
MAX_PLANS_PER_REPORT = 20
#: Operators an index on the field can serve, best first (``ne`` and ``exists`` cannot).
INDEXABLE: tuple[FilterOp, ...] = (
    FilterOp.EQ,
    FilterOp.IN,
    FilterOp.PREFIX,
    FilterOp.GT,
    FilterOp.GTE,
    FilterOp.LT,
    FilterOp.LTE,
    FilterOp.CONTAINS,
)

#: (endpoint, agents, table, key, key prefix, updated since, include deleted, paged, where)
ShapeKey = tuple[str, str, bool, bool, bool, bool, bool, bool, tuple[tuple[str, str], ...]]
OTHER: ShapeKey = ("other", "", False, False, False, False, False, False, ())


def shape_key(endpoint: str, request: QueryRequest) -> ShapeKey:
    """The shape of ``request``: its filters without their values."""
    agents = request.agent_id
    count = "none" if agents is None else "one" if isinstance(agents, str) else "many"
    where = tuple(sorted((clause.field, clause.op.value) for clause in request.where))
    return (
        endpoint,
        count,
        request.table is not None,
        request.key is not None,
        bool(request.key_prefix),
        request.updated_since is not None,
        request.include_deleted,
        request.cursor is not None,
        where,
    )


def shape_label(key: ShapeKey) -> str:
    """A short readable form: ``query agent table where(value.status eq)``."""
    if key == OTHER:
        return "other shapes"
    endpoint, agents, *flags, where = key
    names = ("table", "key", "key_prefix", "updated_since", "include_deleted", "next_page")
    parts = [str(endpoint)]
    if agents != "none":
        parts.append("agent" if agents == "one" else "agents")
    parts += [name for name, on in zip(names, flags, strict=True) if on]
    if where:
        parts.append("where(" + ", ".join(f"{f} {op}" for f, op in where) + ")")
    return " ".join(parts)


def _percentile(ordered: list[float], fraction: float) -> float:
    """The nearest-rank percentile of sorted ``ordered``."""
    index = min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))
    return ordered[index]


@dataclass
class _Slowest:
    seconds: float
    request: QueryRequest
    returned: int
    at: float
    plan: QueryPlan | None = None


@dataclass
class ShapeStats:
    """What the relay knows about one shape."""

    key: ShapeKey
    label: str
    count: int = 0
    total_seconds: float = 0.0
    returned: int = 0
    counted: int = 0
    counted_examined: int = 0
    counted_returned: int = 0
    last_at: float = 0.0
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))
    slowest: _Slowest | None = None
    observe: Callable[[float], None] | None = None

    def wants_count(self) -> bool:
        """Whether the next query of this shape should have its examined rows counted."""
        return self.counted < COUNT_FIRST or self.count % COUNT_EVERY == 0

    def examined_per_query(self) -> float | None:
        """Rows the store examined per query, from the counted sample or the slowest's plan."""
        if self.counted:
            return self.counted_examined / self.counted
        plan = self.slowest.plan if self.slowest else None
        return None if plan is None or plan.examined is None else float(plan.examined)

    def returned_per_query(self) -> float:
        """Rows returned per query (over the same sample as :meth:`examined_per_query`)."""
        if self.counted:
            return self.counted_returned / self.counted
        if self.slowest is not None and self.slowest.plan is not None:
            return float(self.slowest.returned)
        return self.returned / self.count if self.count else 0.0

    def scans(self) -> bool:
        """Hot, and reading far more rows than it returns."""
        examined = self.examined_per_query()
        if self.count < HOT_QUERIES or examined is None or examined < SCAN_MIN_ROWS:
            return False
        return examined >= SCAN_RATIO * max(self.returned_per_query(), 1.0)


def index_hints(stats: ShapeStats) -> list[dict[str, str]]:
    """For a hot shape that scans: each field filter an index could serve, and how to add it."""
    if not stats.scans():
        return []
    examined = stats.examined_per_query() or 0.0
    returned = stats.returned_per_query()
    ops = {op.value: rank for rank, op in enumerate(INDEXABLE)}
    where = [(f, op) for f, op in stats.key[-1] if op in ops]
    hints = []
    for field_path, op in sorted(where, key=lambda item: ops[item[1]]):
        command = f"commander-os relay index add {field_path}"
        hints.append(
            {
                "field": field_path,
                "op": op,
                "command": command,
                "text": (
                    f"{stats.count} queries filter on {field_path} ({op}) and read "
                    f"{examined:,.0f} rows for {returned:,.0f} returned: the store scans. "
                    f"An index on {field_path} would serve them; an admin adds it (to "
                    f"relay.indexed_fields) with: {command}"
                ),
            }
        )
    return list({hint["field"]: hint for hint in hints}.values())


class QueryAnalytics:
    """Per-shape statistics and the slow-query log of one relay."""

    def __init__(
        self,
        *,
        slow_query_ms: float,
        observer: Callable[[str], Callable[[float], None]] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.slow_seconds = slow_query_ms / 1000.0
        self.shapes: dict[ShapeKey, ShapeStats] = {}
        self.slow_log: deque[dict[str, Any]] = deque(maxlen=SLOW_LOG_SIZE)
        self.slow_total = 0
        self._observer = observer
        self._clock = clock

    def stats_for(self, endpoint: str, request: QueryRequest) -> ShapeStats:
        """The statistics the query ``request`` will be counted in (made on first sight)."""
        key = shape_key(endpoint, request)
        stats = self.shapes.get(key)
        if stats is None:
            if len(self.shapes) >= MAX_SHAPES:
                key = OTHER
                stats = self.shapes.get(OTHER)
            if stats is None:
                stats = self.shapes[key] = self._new(key)
        return stats

    def _new(self, key: ShapeKey) -> ShapeStats:
        label = shape_label(key)
        observe = self._observer(label) if self._observer is not None else None
        return ShapeStats(key, label, observe=observe)

    def record(
        self,
        stats: ShapeStats,
        request: QueryRequest,
        seconds: float,
        returned: int,
        examined: int | None,
    ) -> None:
        """Count one answered query of ``stats``' shape."""
        now = self._clock()
        stats.count += 1
        stats.total_seconds += seconds
        stats.returned += returned
        stats.last_at = now
        stats.latencies.append(seconds)
        if examined is not None:
            stats.counted += 1
            stats.counted_examined += examined
            stats.counted_returned += returned
        if stats.observe is not None:
            stats.observe(seconds)
        if stats.slowest is None or seconds > stats.slowest.seconds:
            stats.slowest = _Slowest(seconds, request, returned, now)
        if seconds >= self.slow_seconds:
            self._log_slow(stats, seconds, returned, examined, now)

    def _log_slow(
        self, stats: ShapeStats, seconds: float, returned: int, examined: int | None, now: float
    ) -> None:
        self.slow_total += 1
        entry = {
            "at": now,
            "shape": stats.label,
            "ms": round(seconds * 1000, 3),
            "returned": returned,
            "examined": examined,
        }
        self.slow_log.append(entry)
        logger.warning(
            "slow query: %.1f ms, %s, %d rows returned%s",
            seconds * 1000,
            stats.label,
            returned,
            "" if examined is None else f", {examined} examined",
        )

    async def refresh_plans(self, store: CentralStore) -> None:
        """Ask the store for the plan of each shape's slowest query, where it changed."""
        stale = [
            s for s in self.shapes.values() if s.slowest is not None and s.slowest.plan is None
        ]
        stale.sort(key=lambda s: s.slowest.seconds if s.slowest else 0.0, reverse=True)
        for stats in stale[:MAX_PLANS_PER_REPORT]:
            slowest = stats.slowest
            assert slowest is not None
            try:
                slowest.plan = await store.explain(slowest.request)
            except CentralStoreError as exc:
                slowest.plan = QueryPlan(store.backend, [f"(no plan: {exc})"])

    def report(self) -> dict[str, Any]:
        """Every shape (busiest first by total time) and the slow-query log, newest first."""
        shapes = sorted(self.shapes.values(), key=lambda s: s.total_seconds, reverse=True)
        return {
            "slow_query_ms": self.slow_seconds * 1000,
            "slow_queries_total": self.slow_total,
            "shapes": [_shape_json(stats) for stats in shapes],
            "slow_queries": list(reversed(self.slow_log)),
        }


def _shape_json(stats: ShapeStats) -> dict[str, Any]:
    ordered = sorted(stats.latencies)
    endpoint, agents, *_, where = stats.key
    slowest = stats.slowest
    examined = stats.examined_per_query()
    return {
        "shape": stats.label,
        "endpoint": endpoint,
        "agents": agents,
        "filters": [{"field": f, "op": op} for f, op in where],
        "count": stats.count,
        "total_ms": round(stats.total_seconds * 1000, 3),
        "p50_ms": _ms(_percentile(ordered, 0.50)) if ordered else None,
        "p95_ms": _ms(_percentile(ordered, 0.95)) if ordered else None,
        "p99_ms": _ms(_percentile(ordered, 0.99)) if ordered else None,
        "rows_examined_per_query": None if examined is None else round(examined, 1),
        "rows_returned_per_query": round(stats.returned_per_query(), 1),
        "examined_sample": stats.counted,
        "scans": stats.scans(),
        "index_hints": index_hints(stats),
        "last_at": stats.last_at,
        "slowest": None if slowest is None else _slowest_json(slowest),
    }


def _slowest_json(slowest: _Slowest) -> dict[str, Any]:
    plan = slowest.plan
    return {
        "ms": _ms(slowest.seconds),
        "at": slowest.at,
        "returned": slowest.returned,
        "plan": None if plan is None else plan.steps,
        "plan_examined": None if plan is None else plan.examined,
    }


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
