"""Agent heartbeats: how a syncing store tells the relay how far behind it is.

A store's shipper sends one now and then (piggy-backed on its requests, and about once a
minute when idle), so the relay knows of agents that are falling behind or have never reached
it (3,000 changes queued and nothing delivered yet)::

    {"agent_id": "planner", "queue_size": 3000, "oldest_pending_age": 812.5,
     "dead_letters": 2, "last_error": "relay answered 503",
     "targets": [{"name": "http://127.0.0.1:8001", "queue_size": 3000}]}

The relay keeps the latest heartbeat of each agent (``POST /relay/heartbeat``); a token may
report only its own agent, as with records.

A process's shipper reports every store it ships to one relay in one request, about once a
minute (``POST /relay/heartbeats``, a :class:`HeartbeatBatch`): a host of a thousand idle
stores costs each relay one request a minute, not a thousand. The token must be allowed to
write every agent the batch names (403 otherwise, and none of it is kept)::

    {"heartbeats": [{"agent_id": "planner", "queue_size": 0},
                    {"agent_id": "critic", "queue_size": 12, "oldest_pending_age": 0.4}]}
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from commander_os.protocol._records import AgentId

__all__ = [
    "MAX_HEARTBEATS",
    "MAX_HEARTBEAT_TARGETS",
    "Heartbeat",
    "HeartbeatAck",
    "HeartbeatBatch",
    "HeartbeatBatchAck",
    "TargetHeartbeat",
]

#: Heartbeats one batch may carry (a shipper with more stores sends several batches).
MAX_HEARTBEATS = 1000
#: Delivery targets one heartbeat may describe.
MAX_HEARTBEAT_TARGETS = 32
#: Longest error text kept (longer ones are refused rather than cut: the agent decides).
MAX_ERROR_CHARS = 1000

ErrorText = Annotated[str, StringConstraints(max_length=MAX_ERROR_CHARS)]
Seconds = Annotated[float, Field(ge=0, le=10**9, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0, le=2**53)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TargetHeartbeat(_Strict):
    """The state of one delivery target of the store (a relay, or a fail-over group)."""

    name: Annotated[str, StringConstraints(min_length=1, max_length=200)]
    queue_size: Count = 0
    oldest_pending_age: Seconds | None = None
    last_error: ErrorText | None = None


class Heartbeat(_Strict):
    """What a syncing store reports about its outbox."""

    agent_id: AgentId
    #: Changes waiting in the outbox.
    queue_size: Count
    #: Seconds the oldest waiting change has waited (``None``: nothing waits).
    oldest_pending_age: Seconds | None = None
    #: Records the relay refused for good, kept in the store's dead-letter table.
    dead_letters: Count = 0
    last_error: ErrorText | None = None
    targets: list[TargetHeartbeat] | None = Field(default=None, max_length=MAX_HEARTBEAT_TARGETS)


class HeartbeatAck(_Strict):
    """The relay's answer to a heartbeat."""

    agent_id: str
    received_at: datetime = Field(description="relay time the heartbeat arrived")
    kept: bool = Field(description="false when the relay runs with analytics off")


class HeartbeatBatch(_Strict):
    """The heartbeats of many stores, sent together by one process's shipper."""

    heartbeats: list[Heartbeat] = Field(min_length=1, max_length=MAX_HEARTBEATS)


class HeartbeatBatchAck(_Strict):
    """The relay's answer to a batch of heartbeats."""

    received_at: datetime = Field(description="relay time the batch arrived")
    count: int = Field(description="heartbeats in the batch")
    kept: bool = Field(description="false when the relay runs with analytics off")
