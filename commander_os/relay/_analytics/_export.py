"""Analytics in ``/metrics``: per-agent gauges with bounded cardinality, alert thresholds, and
per-shape query figures.

Per-agent series are capped at ``relay.metrics_max_agents``: the agents that are not healthy
come first, then the ones holding the most records; the rest are summed (lag: the maximum)
under ``agent="other"``, so a relay with 100,000 agents still exports a few hundred series.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from commander_os.relay._analytics._data import Health

if TYPE_CHECKING:
    from commander_os.relay._analytics import Analytics

__all__ = ["AnalyticsCollector", "top_agents"]

OTHER_AGENTS = "other"
_AGENT_GAUGES = (
    ("records", "commander_relay_agent_records", "Live records the central store holds."),
    (
        "lag",
        "commander_relay_agent_lag_seconds",
        "Relay receive time minus write time, last write.",
    ),
    ("queue", "commander_relay_agent_queue", "Changes queued in the agent's outbox (heartbeat)."),
    ("dead", "commander_relay_agent_dead_letters", "Dead letters the agent reported (heartbeat)."),
    (
        "heartbeat",
        "commander_relay_agent_last_heartbeat_timestamp_seconds",
        "When the agent's latest heartbeat arrived (Unix time).",
    ),
    (
        "heard",
        "commander_relay_agent_last_heard_timestamp_seconds",
        "When the relay last heard from the agent: a record or a heartbeat (Unix time).",
    ),
)


def top_agents(
    rows: Sequence[dict[str, Any]], limit: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``limit`` agents exported one by one (unhealthy, then most records) and the rest."""
    ranked = sorted(rows, key=lambda row: (row["health"] == Health.OK, -row["records"]))
    return ranked[:limit], ranked[limit:]


def _values(row: dict[str, Any]) -> dict[str, float | None]:
    beat = row["heartbeat"] or {}
    return {
        "records": row["records"],
        "lag": row["lag_seconds"],
        "queue": beat.get("queue_size"),
        "dead": beat.get("dead_letters"),
        "heartbeat": beat.get("received_at"),
        "heard": row["last_heard"],
    }


def _pooled(rows: Iterable[dict[str, Any]]) -> dict[str, float | None]:
    """The "other" bucket: sums of counts, the worst lag, the latest moments."""
    pooled: dict[str, float | None] = {}
    for values in map(_values, rows):
        for name, value in values.items():
            if value is None:
                continue
            held = pooled.get(name)
            if held is None:
                pooled[name] = value
            elif name in ("records", "queue", "dead"):
                pooled[name] = held + value
            else:
                pooled[name] = max(held, value)
    return pooled


class AnalyticsCollector(Collector):
    """Reads the analytics when ``/metrics`` is rendered (after ``Analytics.refresh``)."""

    def __init__(self, analytics: Analytics, max_agents: int) -> None:
        self.analytics = analytics
        self.max_agents = max_agents

    def describe(self) -> list[Metric]:
        # Nothing to check at registration: the names are ours alone (and collect() would
        # need the store's agent list).
        return []

    def collect(self) -> Iterator[Metric]:
        rows = self.analytics.agent_rows()
        yield from self._alerts(rows)
        yield from self._agents(rows)
        yield from self._shapes()

    def _alerts(self, rows: Sequence[dict[str, Any]]) -> Iterator[Metric]:
        alerts = self.analytics.data.alerts
        for name, value, text in (
            ("max_queue", alerts.max_queue, "Queued changes above which an agent is behind."),
            ("max_lag_seconds", alerts.max_lag_seconds, "Lag above which an agent is behind."),
            (
                "max_silence_seconds",
                alerts.max_silence_seconds,
                "Seconds without a record or heartbeat after which an agent is silent.",
            ),
        ):
            yield GaugeMetricFamily(f"commander_relay_alert_{name}", text, value=value)
        health = GaugeMetricFamily(
            "commander_relay_agents",
            "Agents by health (ok, warning, silent, behind).",
            labels=["health"],
        )
        for level in Health.ALL:
            health.add_metric([level], sum(1 for row in rows if row["health"] == level))
        yield health

    def _agents(self, rows: Sequence[dict[str, Any]]) -> Iterator[Metric]:
        shown, rest = top_agents(rows, self.max_agents)
        families = {
            key: GaugeMetricFamily(name, text, labels=["agent"])
            for key, name, text in _AGENT_GAUGES
        }
        series = [(row["agent_id"], _values(row)) for row in shown]
        if rest:
            series.append((OTHER_AGENTS, _pooled(rest)))
        for agent, values in series:
            for key, value in values.items():
                if value is not None:
                    families[key].add_metric([agent], float(value))
        yield from families.values()

    def _shapes(self) -> Iterator[Metric]:
        queries = self.analytics.queries
        examined = GaugeMetricFamily(
            "commander_relay_query_rows_examined_per_query",
            "Rows the store examined per query of a shape (sampled).",
            labels=["shape"],
        )
        returned = GaugeMetricFamily(
            "commander_relay_query_rows_returned_per_query",
            "Rows returned per query of a shape.",
            labels=["shape"],
        )
        for stats in queries.shapes.values():
            per_query = stats.examined_per_query()
            if per_query is not None:
                examined.add_metric([stats.label], per_query)
            returned.add_metric([stats.label], stats.returned_per_query())
        yield examined
        yield returned
        yield CounterMetricFamily(
            "commander_relay_slow_queries",
            "Queries slower than relay.slow_query_ms.",
            value=queries.slow_total,
        )
