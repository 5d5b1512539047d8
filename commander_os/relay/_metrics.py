"""The relay's Prometheus metrics (``GET /metrics``), through ``prometheus_client``.

Each relay app has its own registry (several apps may live in one test process): request and
record counters, apply and query latency histograms, requests in flight, uptime, the process
and Python runtime collectors, and, with analytics on, per-shape query latency and the
per-agent gauges of :mod:`._analytics._export`.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from prometheus_client import (
    CONTENT_TYPE_PLAIN_0_0_4,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "LATENCY_BUCKETS", "RelayMetrics"]

#: Latency buckets in seconds: sub-millisecond up to the query time budget.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
#: The text format the relay serves (what every Prometheus version scrapes).
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class RelayMetrics:
    """Counters, gauges and histograms the relay exposes at ``GET /metrics``."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        registry = self.registry = CollectorRegistry()
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        GCCollector(registry=registry)
        self.requests = Counter(
            "commander_relay_requests",
            "Requests answered, by endpoint and status.",
            ["endpoint", "status"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "commander_relay_requests_in_flight", "Requests being answered.", registry=registry
        )
        self.records_applied = Counter(
            "commander_relay_records_applied", "Records that changed the store.", registry=registry
        )
        self.records_ignored = Counter(
            "commander_relay_records_ignored", "Stale or duplicate records.", registry=registry
        )
        self.apply_latency = Histogram(
            "commander_relay_apply_seconds",
            "Time from request to durable commit of an apply.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.query_latency = Histogram(
            "commander_relay_query_seconds",
            "Time to answer a query or change-feed page.",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.shape_latency = Histogram(
            "commander_relay_query_shape_seconds",
            "Time to answer a query, by query shape (filters without values).",
            ["shape"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        uptime = Gauge(
            "commander_relay_uptime_seconds", "Seconds since the relay started.", registry=registry
        )
        uptime.set_function(self.uptime)

    def count_request(self, endpoint: str, status: int) -> None:
        """One answered request."""
        self.requests.labels(endpoint, str(status)).inc()

    def count_records(self, applied: int, ignored: int) -> None:
        """Records an apply changed, and those it ignored as stale or duplicate."""
        self.records_applied.inc(applied)
        self.records_ignored.inc(ignored)

    def shape_observer(self, shape: str) -> Callable[[float], None]:
        """The ``observe`` of one query shape's latency histogram."""
        return self.shape_latency.labels(shape).observe

    def register(self, collector: Collector) -> None:
        """Add ``collector``'s metrics to this relay's exposition."""
        self.registry.register(collector)

    def uptime(self) -> float:
        """Seconds since the relay started."""
        return time.monotonic() - self.started

    def render(self) -> bytes:
        """All metrics in the Prometheus text format (version 0.0.4)."""
        return generate_latest(self.registry)
