"""Running a query for any endpoint: the limit cap, timing, analytics and error mapping."""

from __future__ import annotations

import time

from commander_os.errors import CursorExpired, InvalidCursor, QueryTimeout
from commander_os.protocol import QueryRequest, QueryResponse
from commander_os.relay._body import RequestProblem
from commander_os.relay._guard import Caller
from commander_os.relay._state import RelayState

__all__ = ["run_query"]


async def run_query(
    state: RelayState, request: QueryRequest, endpoint: str, caller: Caller
) -> QueryResponse:
    """Answer ``request`` (its limit capped by ``relay.limits``) in one of ``caller``'s query
    slots (429 past ``limits.max_concurrent_queries``), timed and, with analytics on, counted
    under ``endpoint`` in its query shape. Bad cursors are 400, cursors older than the change
    log's retention 410 (``resync_needed``: start over without one), timeouts 422."""
    cap = state.config.limits.max_query_limit
    if request.limit > cap:
        request = request.model_copy(update={"limit": cap})
    analytics = state.analytics
    started = time.perf_counter()
    try:
        with caller.query_slot():
            if analytics is None:
                answer = await state.store.query(request)
                seconds = time.perf_counter() - started
            else:
                answer, seconds = await analytics.query(state.store, endpoint, request)
    except CursorExpired as exc:
        raise RequestProblem(410, "resync_needed", str(exc)) from None
    except InvalidCursor as exc:
        raise RequestProblem(400, "invalid_cursor", str(exc)) from None
    except QueryTimeout as exc:
        raise RequestProblem(422, "query_timeout", str(exc)) from None
    state.metrics.query_latency.observe(seconds)
    return answer
