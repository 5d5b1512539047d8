"""``POST /relay/heartbeat``, ``POST /relay/heartbeats`` and ``GET /relay/analytics``."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Query, Request
from fastapi.responses import Response

from commander_os.protocol import Heartbeat, HeartbeatAck, HeartbeatBatch, HeartbeatBatchAck
from commander_os.relay._body import parse_model, read_body
from commander_os.relay._guard import Caller, claimed_agents
from commander_os.relay._http import body_doc, json_response

if TYPE_CHECKING:
    from commander_os.relay._state import RelayState

__all__ = ["add_analytics_routes"]


def add_analytics_routes(app: FastAPI, state: RelayState, admit: Any) -> None:
    """Add the heartbeat and analytics endpoints to ``app``."""
    limits = state.config.limits

    @app.post("/relay/heartbeat", response_model=HeartbeatAck, openapi_extra=body_doc(Heartbeat))
    async def relay_heartbeat(request: Request, caller: Caller = admit) -> Response:
        """Keep the latest heartbeat of the token's agent: its queue size, oldest pending
        change, dead letters and last error (a token reports only its own agent)."""
        body = await read_body(request, limits)
        if caller.claims is not None:
            caller.check_write(claimed_agents(body) or ())  # 403 before any 422
        heartbeat = parse_model(Heartbeat, body)
        caller.check_write([heartbeat.agent_id])
        analytics = state.analytics
        received = time.time() if analytics is None else analytics.data.on_heartbeat(heartbeat)
        ack = {
            "agent_id": heartbeat.agent_id,
            "received_at": datetime.fromtimestamp(received, tz=UTC),
            "kept": analytics is not None,
        }
        return json_response(ack)

    @app.post(
        "/relay/heartbeats",
        response_model=HeartbeatBatchAck,
        openapi_extra=body_doc(HeartbeatBatch),
    )
    async def relay_heartbeats(request: Request, caller: Caller = admit) -> Response:
        """Keep the latest heartbeat of every agent of a batch (one request a minute from a
        whole host); the token must be allowed to write each of them, or none is kept."""
        body = await read_body(request, limits)
        if caller.claims is not None:
            caller.check_write(claimed_agents(body) or ())  # 403 before any 422
        batch = parse_model(HeartbeatBatch, body)
        caller.check_write([heartbeat.agent_id for heartbeat in batch.heartbeats])
        analytics = state.analytics
        received = time.time()
        if analytics is not None:
            for heartbeat in batch.heartbeats:
                received = analytics.data.on_heartbeat(heartbeat)
        ack = {
            "received_at": datetime.fromtimestamp(received, tz=UTC),
            "count": len(batch.heartbeats),
            "kept": analytics is not None,
        }
        return json_response(ack)

    @app.get("/relay/analytics")
    async def relay_analytics(
        charts: bool = Query(False, description="add the last hour's series (the dashboard's)"),
        caller: Caller = admit,
    ) -> Response:
        """Query shapes (count, p50/p95/p99, rows examined vs returned, the slowest's plan,
        index hints), the slow-query log, and every agent's data, lag, heartbeat and health
        (admin token when auth is on)."""
        caller.require_admin()
        analytics = state.analytics
        if analytics is None:
            return json_response({"enabled": False, "detail": "relay.analytics is off"})
        return json_response(await analytics.report(state.store, charts=charts))
