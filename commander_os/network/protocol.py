"""Wire types shared by agents and relays.

Everything that crosses the network is JSON described here, once. The relay validates requests
with these models; the agent's :class:`~commander_os.network.client.RelayClient` builds the same
shapes.

A **change record** is the unit of replication: the current state of one row of one synced table
of one agent, or its deletion::

    {"agent_id": "my-agent", "table": "kv", "key": "config", "op": "upsert",
     "data": {"value": {"setting": "value"}, "updated_at": 1764210000.5},
     "version": 7587593912188928001, "ts": "2026-11-27T02:33:27.123456Z"}

``version`` increases with every write of the agent (its epoch in the high 32 bits, the local
sequence number in the low 32 bits), so the relay keeps, per ``(agent_id, table, key)``, the
record with the highest version and ignores stale or repeated ones: apply is idempotent and
monotonic.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from commander_os.identifiers import AGENT_ID_PATTERN, MAX_KEY_BYTES, TABLE_NAME_PATTERN

__all__ = [
    "DEFAULT_QUERY_LIMIT",
    "FIELD_PATH_PATTERN",
    "MAX_BATCH_RECORDS",
    "MAX_QUERY_LIMIT",
    "MAX_VERSION",
    "MAX_WHERE_CLAUSES",
    "Ack",
    "AgentId",
    "AgentSummary",
    "BatchRequest",
    "ChangeRecord",
    "ErrorBody",
    "FieldFilter",
    "FilterOp",
    "QueryRequest",
    "QueryResponse",
    "StoredRecord",
    "TableName",
    "format_ts",
    "make_version",
    "split_version",
]

#: Largest version a record may carry: a signed 64-bit integer (SQLite INTEGER, PostgreSQL BIGINT).
MAX_VERSION = 2**63 - 1
#: Bits of the version that hold the local sequence number; the epoch sits above them.
SEQ_BITS = 32
MAX_BATCH_RECORDS = 5000
DEFAULT_QUERY_LIMIT = 100
MAX_QUERY_LIMIT = 1000
MAX_WHERE_CLAUSES = 16
#: Dotted path into a record's ``data``: ``value.theme``, ``skills``, ``address.0.city``.
FIELD_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z0-9_]{1,64}){0,7}$"

AgentId = Annotated[str, StringConstraints(pattern=AGENT_ID_PATTERN)]
TableName = Annotated[str, StringConstraints(pattern=TABLE_NAME_PATTERN)]
RecordKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_BYTES)]
Version = Annotated[int, Field(ge=1, le=MAX_VERSION)]


def make_version(epoch: int, seq: int) -> int:
    """Combine a store's epoch and a local sequence number into one record version."""
    return (epoch << SEQ_BITS) | seq


def split_version(version: int) -> tuple[int, int]:
    """Inverse of :func:`make_version`: ``(epoch, seq)``."""
    return version >> SEQ_BITS, version & ((1 << SEQ_BITS) - 1)


def format_ts(moment: datetime | float) -> str:
    """Render a UTC timestamp the way the wire carries it: ``2026-11-27T02:33:27.123456Z``."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, tz=UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # isoformat is several times faster than strftime; "+00:00" becomes the shorter "Z".
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChangeRecord(_Strict):
    """One row's new state (``upsert``) or its removal (``delete``)."""

    agent_id: AgentId
    table: TableName
    key: RecordKey
    op: Literal["upsert", "delete"]
    data: dict[str, Any] | None = None
    version: Version
    ts: datetime

    @field_validator("ts")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        # A naive timestamp is taken to be UTC, as the protocol says every ts is.
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    @model_validator(mode="after")
    def _data_matches_op(self) -> ChangeRecord:
        if self.op == "upsert" and self.data is None:
            raise ValueError("an upsert record needs 'data' (the row as a JSON object)")
        if self.op == "delete" and self.data is not None:
            raise ValueError("a delete record must not carry 'data'")
        return self


class BatchRequest(_Strict):
    """Many change records of one agent, applied in one transaction."""

    agent_id: AgentId
    records: list[ChangeRecord] = Field(min_length=1, max_length=MAX_BATCH_RECORDS)

    @model_validator(mode="after")
    def _one_agent(self) -> BatchRequest:
        for index, record in enumerate(self.records):
            if record.agent_id != self.agent_id:
                raise ValueError(
                    f"records[{index}].agent_id is {record.agent_id!r} but the batch is for "
                    f"{self.agent_id!r}: a batch carries the records of one agent only"
                )
        return self


class Ack(_Strict):
    """The relay's answer to a write, sent only after its durable commit."""

    agent_id: str
    highest_version: int = Field(description="highest version of this agent the relay now holds")
    applied: int = Field(description="records that changed the central store")
    ignored: int = Field(description="records that were stale or duplicates (already applied)")


class FilterOp(StrEnum):
    """Comparison operators of a query's ``where`` clauses."""

    EQ = "eq"
    NE = "ne"
    LT = "lt"
    LTE = "lte"
    GT = "gt"
    GTE = "gte"
    IN = "in"
    CONTAINS = "contains"
    EXISTS = "exists"
    PREFIX = "prefix"


class FieldFilter(_Strict):
    """``{"field": "value.theme", "op": "eq", "value": "dark"}``.

    ``field`` is a dotted path into the record's ``data``. ``contains`` matches an array that has
    ``value`` as an element (or a string containing it as a substring); ``exists`` takes a boolean;
    ``in`` takes a list; ``prefix`` a string.
    """

    field: Annotated[str, StringConstraints(pattern=FIELD_PATH_PATTERN)]
    op: FilterOp
    value: Any = None

    @model_validator(mode="after")
    def _value_fits_op(self) -> FieldFilter:
        value = self.value
        if self.op is FilterOp.IN:
            if not isinstance(value, list) or not 1 <= len(value) <= 100:
                raise ValueError("'in' needs a list of 1 to 100 values")
            if any(isinstance(item, (dict, list)) for item in value):
                raise ValueError("'in' compares scalars: no objects or lists inside its list")
        elif self.op is FilterOp.EXISTS:
            if not isinstance(value, bool):
                raise ValueError("'exists' needs true or false")
        elif self.op is FilterOp.PREFIX:
            if not isinstance(value, str):
                raise ValueError("'prefix' needs a string")
        elif self.op in (FilterOp.LT, FilterOp.LTE, FilterOp.GT, FilterOp.GTE):
            if isinstance(value, bool) or not isinstance(value, (int, float, str)):
                raise ValueError(f"'{self.op.value}' needs a number or a string")
        elif isinstance(value, (dict, list)):
            raise ValueError(f"'{self.op.value}' compares scalars, not objects or lists")
        return self


class QueryRequest(_Strict):
    """A network-wide query. Every filter is optional; they combine with AND."""

    agent_id: AgentId | list[AgentId] | None = None
    table: TableName | None = None
    key: RecordKey | None = None
    key_prefix: Annotated[str, StringConstraints(max_length=MAX_KEY_BYTES)] | None = None
    where: list[FieldFilter] = Field(default_factory=list, max_length=MAX_WHERE_CLAUSES)
    updated_since: datetime | None = None
    include_deleted: bool = False
    limit: int = Field(default=DEFAULT_QUERY_LIMIT, ge=1, le=MAX_QUERY_LIMIT)
    cursor: Annotated[str, StringConstraints(max_length=200)] | None = None

    @field_validator("agent_id")
    @classmethod
    def _bounded_agent_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and not 1 <= len(value) <= 1000:
            raise ValueError("agent_id as a list needs 1 to 1000 ids")
        return value

    @field_validator("updated_since")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        if value is not None and value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value

    def agent_ids(self) -> list[str] | None:
        """The agent filter as a list, or ``None`` for every agent."""
        if self.agent_id is None:
            return None
        return [self.agent_id] if isinstance(self.agent_id, str) else list(self.agent_id)


class StoredRecord(BaseModel):
    """A record as the relay holds it; what a query returns."""

    agent_id: str
    table: str
    key: str
    data: dict[str, Any] | None
    version: int
    ts: datetime
    deleted: bool
    rev: int = Field(description="the relay's global change order")


class QueryResponse(BaseModel):
    """One page of query results; pass ``next_cursor`` back as ``cursor`` for the next."""

    records: list[StoredRecord]
    next_cursor: str | None = None


class AgentSummary(BaseModel):
    """What the relay knows of one agent (``GET /relay/agents``)."""

    agent_id: str
    last_seen: datetime | None
    highest_version: int
    record_count: int
    tables: dict[str, int]


class ErrorBody(BaseModel):
    """The JSON body of every error answer: ``{"error": "...", "detail": ...}``."""

    error: str
    detail: Any = None
