"""The relay's built-in analytics: query shapes, per-agent data and heartbeats.

:class:`Analytics` bundles :class:`~._queries.QueryAnalytics` (fed by every query through
:meth:`Analytics.query`) and :class:`~._data.DataAnalytics` (fed by ``apply_writes`` and
``POST /relay/heartbeat``), and exports both in ``/metrics``. A relay built with
``relay.analytics: false`` has none (``RelayState.analytics is None``) and pays nothing.
:func:`add_analytics_routes` adds ``POST /relay/heartbeat`` and ``GET /relay/analytics``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

from commander_os.config import RelayConfig
from commander_os.errors import QueryTimeout
from commander_os.protocol import Ack, AgentSummary, EncodedRecord, QueryRequest, QueryResponse
from commander_os.relay._analytics._data import DataAnalytics, Health, describe_age
from commander_os.relay._analytics._export import AnalyticsCollector
from commander_os.relay._analytics._queries import QueryAnalytics
from commander_os.relay._analytics._routes import add_analytics_routes
from commander_os.relay._metrics import RelayMetrics
from commander_os.relay.central import CentralStore

__all__ = ["Analytics", "DataAnalytics", "Health", "add_analytics_routes", "describe_age"]

logger = logging.getLogger("commander_os.relay.analytics")

#: Seconds the store's agent list is reused by /metrics, the dashboard and /relay/analytics
#: (PostgreSQL counts records per agent with a scan).
AGENTS_TTL_SECONDS = 2.0


class Analytics:
    """Query and data analytics of one relay app (see the module docstring)."""

    def __init__(
        self, config: RelayConfig, metrics: RelayMetrics, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.config = config
        self.queries = QueryAnalytics(
            slow_query_ms=config.slow_query_ms, observer=metrics.shape_observer, clock=clock
        )
        self.data = DataAnalytics(config.alerts, clock=clock)
        self._summaries: list[AgentSummary] = []
        self._summaries_at = -math.inf
        metrics.register(AnalyticsCollector(self, config.metrics_max_agents))

    async def query(
        self, store: CentralStore, endpoint: str, request: QueryRequest
    ) -> tuple[QueryResponse, float]:
        """Run ``request`` on ``store``, counted in its shape; the answer and its seconds."""
        stats = self.queries.stats_for(endpoint, request)
        started = time.perf_counter()
        try:
            if stats.wants_count():
                answer, examined = await store.query_counted(request)
            else:
                answer, examined = await store.query(request), None
        except QueryTimeout:
            seconds = time.perf_counter() - started
            self.queries.record(stats, request, seconds, 0, None)
            raise
        seconds = time.perf_counter() - started
        self.queries.record(stats, request, seconds, len(answer.records), examined)
        self.data.on_query(seconds)
        return answer, seconds

    def on_write(self, records: Sequence[EncodedRecord], acks: Sequence[Ack]) -> None:
        """Count a committed write. The records are durable already: a fault in the counting
        is logged, never turned into a failed answer (the agent would resend for nothing)."""
        try:
            self.data.on_write(records, acks)
        except Exception:
            logger.exception("analytics could not count a write of %d record(s)", len(records))

    async def refresh(self, store: CentralStore) -> None:
        """Re-read the store's agent list if the copy is older than a moment."""
        if time.monotonic() - self._summaries_at >= AGENTS_TTL_SECONDS:
            self._summaries = await store.agents()
            self._summaries_at = time.monotonic()

    def agent_rows(self) -> list[dict[str, Any]]:
        """Every known agent with its health, from the last :meth:`refresh`."""
        return self.data.agents_view(self._summaries)

    async def report(self, store: CentralStore, *, charts: bool = False) -> dict[str, Any]:
        """Everything ``GET /relay/analytics`` answers (plans refreshed where stale)."""
        await self.refresh(store)
        await self.queries.refresh_plans(store)
        rows = self.agent_rows()
        body: dict[str, Any] = {
            "enabled": True,
            "generated_at": time.time(),
            "backend": store.backend,
            "settings": self.settings(),
            "agents": rows,
            "queries": self.queries.report(),
        }
        if charts:
            body["charts"] = self.data.charts(rows)
        return body

    def settings(self) -> dict[str, Any]:
        """The analytics settings in force (shown by the dashboard)."""
        return {
            "slow_query_ms": self.config.slow_query_ms,
            "alerts": self.config.alerts.model_dump(),
            "metrics_max_agents": self.config.metrics_max_agents,
        }
