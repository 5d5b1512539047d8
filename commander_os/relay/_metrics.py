"""The relay's Prometheus metrics, in the text exposition format, without a dependency.

The relay is one process with an event loop, so plain integers and floats updated from the
loop are enough; the few updates made from other threads use a lock.
"""

from __future__ import annotations

import bisect
import threading
import time

__all__ = ["Histogram", "RelayMetrics"]

#: Latency buckets in seconds: sub-millisecond up to the query time budget.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Histogram:
    """A cumulative Prometheus histogram with fixed buckets."""

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.name = name
        self.help = help_text
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)  # the last slot is +Inf
        self.total = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Record one observation (seconds)."""
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.count += 1

    def render(self) -> list[str]:
        """Exposition lines for this histogram."""
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        running = 0
        for bound, count in zip(self.buckets, self.counts, strict=False):
            running += count
            lines.append(f'{self.name}_bucket{{le="{bound:g}"}} {running}')
        lines.append(f'{self.name}_bucket{{le="+Inf"}} {self.count}')
        lines.append(f"{self.name}_sum {self.total:.6f}")
        lines.append(f"{self.name}_count {self.count}")
        return lines


class RelayMetrics:
    """Counters and histograms the relay exposes at ``GET /metrics``."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.requests: dict[tuple[str, int], int] = {}
        self.records_applied = 0
        self.records_ignored = 0
        self.apply_latency = Histogram(
            "commander_relay_apply_seconds", "Time from request to durable commit of an apply."
        )
        self.query_latency = Histogram(
            "commander_relay_query_seconds", "Time to answer a query or change-feed page."
        )
        self._lock = threading.Lock()

    def count_request(self, endpoint: str, status: int) -> None:
        """One answered request."""
        with self._lock:
            key = (endpoint, status)
            self.requests[key] = self.requests.get(key, 0) + 1

    def count_records(self, applied: int, ignored: int) -> None:
        """Records an apply changed, and those it ignored as stale or duplicate."""
        with self._lock:
            self.records_applied += applied
            self.records_ignored += ignored

    def uptime(self) -> float:
        """Seconds since the relay started."""
        return time.monotonic() - self.started

    def render(self) -> str:
        """All metrics in the Prometheus text format (version 0.0.4)."""
        with self._lock:
            lines = [
                "# HELP commander_relay_requests_total Requests answered, by endpoint and status.",
                "# TYPE commander_relay_requests_total counter",
            ]
            for (endpoint, status), count in sorted(self.requests.items()):
                lines.append(
                    f'commander_relay_requests_total{{endpoint="{endpoint}",status="{status}"}} '
                    f"{count}"
                )
            lines += [
                "# HELP commander_relay_records_applied_total Records that changed the store.",
                "# TYPE commander_relay_records_applied_total counter",
                f"commander_relay_records_applied_total {self.records_applied}",
                "# HELP commander_relay_records_ignored_total Stale or duplicate records.",
                "# TYPE commander_relay_records_ignored_total counter",
                f"commander_relay_records_ignored_total {self.records_ignored}",
                *self.apply_latency.render(),
                *self.query_latency.render(),
                "# HELP commander_relay_uptime_seconds Seconds since the relay started.",
                "# TYPE commander_relay_uptime_seconds gauge",
                f"commander_relay_uptime_seconds {self.uptime():.3f}",
            ]
        return "\n".join(lines) + "\n"
