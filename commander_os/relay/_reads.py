"""Running a query for any endpoint: the limit cap, timing, analytics and error mapping."""

from __future__ import annotations

import time

from commander_os.errors import CursorExpired, InvalidCursor, QueryTimeout
from commander_os.protocol import QueryRequest, QueryResponse
from commander_os.relay._body import RequestProblem
from commander_os.relay._guard import Caller
from commander_os.relay._state import RelayState

__all__ = ["run_query", "unknown_agent_hints"]

#: Agents of one query checked for "never heard of" (a list of more is not checked).
MAX_AGENTS_CHECKED = 20


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


async def unknown_agent_hints(
    state: RelayState, request: QueryRequest, answer: QueryResponse
) -> list[str]:
    """A hint for each agent ``request`` names that the store holds no record of at all (not
    even a deletion): most often a misspelt id, which would otherwise look like an empty answer.

    Checked on complete answers only (one page, no cursor), for agents absent from it: one
    indexed lookup each, at most :data:`MAX_AGENTS_CHECKED`.
    """
    named = request.agent_ids()
    if not named or request.cursor is not None or answer.next_cursor is not None:
        return []
    present = {record.agent_id for record in answer.records}
    absent = [agent for agent in dict.fromkeys(named) if agent not in present]
    if not absent or len(absent) > MAX_AGENTS_CHECKED:
        return []
    hints = []
    for agent in absent:
        probe = QueryRequest(agent_id=agent, include_deleted=True, limit=1)
        if not (await state.store.query(probe)).records:
            hints.append(
                f"the relay holds no record of agent {agent!r}: it never wrote to this relay, "
                "or the id is misspelt"
            )
    return hints
