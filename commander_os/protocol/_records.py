"""Change records: the unit of replication, and its one encoding on the wire and at rest.

A **change record** is the current state of one row of one synced table of one agent, or its
deletion::

    {"agent_id": "my-agent", "table": "kv", "key": "config", "op": "upsert",
     "data": {"value": {"setting": "value"}, "updated_at": 1764210000.5},
     "version": 7587593912188928001, "ts": "2026-11-27T02:33:27.123456Z"}

``version`` increases with every write of the agent (its incarnation in the high 32 bits, the
local sequence number in the low 32 bits), so the relay keeps, per ``(agent_id, table, key)``,
the record with the highest version and ignores stale or repeated ones: apply is idempotent
and monotonic.

This module is the only place that knows the record's fields: the agent builds its records with
:func:`change_record_json`, the relay validates them with :class:`ChangeRecord` (or its fast
path, whose field sets derive from the model), stores them as :class:`EncodedRecord` through
:func:`encode_records`, and answers with :func:`stored_record_json`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, NamedTuple

import orjson
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from commander_os.errors import InvalidAgentId, ValueTooLarge
from commander_os.identifiers import (
    AGENT_ID_PATTERN,
    MAX_KEY_BYTES,
    TABLE_NAME_PATTERN,
    validate_agent_id,
)

__all__ = [
    "INVALID_AGENT_ID",
    "MAX_BATCH_RECORDS",
    "MAX_TS_MICROS",
    "MAX_VERSION",
    "MIN_TS_MICROS",
    "RECORD_FIELDS",
    "REQUIRED_RECORD_FIELDS",
    "SEQ_BITS",
    "Ack",
    "AgentId",
    "BatchRequest",
    "ChangeRecord",
    "EncodedRecord",
    "StoredRecord",
    "TableName",
    "TimeStamp",
    "agent_id_error",
    "change_record_json",
    "encode_records",
    "format_ts",
    "make_version",
    "micros_to_ts",
    "split_version",
    "stored_record_json",
    "ts_to_micros",
    "utc_in_range",
]

#: Largest version a record may carry: a signed 64-bit integer (SQLite INTEGER, PostgreSQL BIGINT).
MAX_VERSION = 2**63 - 1
#: Bits of the version that hold the local sequence number; the incarnation sits above them.
SEQ_BITS = 32
MAX_BATCH_RECORDS = 5000

#: The error type of a refused agent id. Its message is the one
#: :func:`~commander_os.identifiers.validate_agent_id` gives, so a store, the CLI and the
#: relay's 422 answers all say the same thing.
INVALID_AGENT_ID = "invalid_agent_id"


def agent_id_error(value: object) -> PydanticCustomError | None:
    """The validation error for ``value`` as an agent id, worded as
    :func:`~commander_os.identifiers.validate_agent_id` words it; ``None`` for a valid id."""
    try:
        validate_agent_id(value)
    except InvalidAgentId as exc:
        return PydanticCustomError(INVALID_AGENT_ID, "{reason}", {"reason": str(exc)})
    return None


def _explain_agent_id(value: object, handler: ValidatorFunctionWrapHandler) -> Any:
    # pydantic-core checks the pattern (fast, and the OpenAPI schema shows it); only an id it
    # refuses pays for the message that says what a valid id looks like.
    try:
        return handler(value)
    except ValidationError:
        error = agent_id_error(value)
        if error is None:
            raise
        raise error from None


AgentId = Annotated[
    str, StringConstraints(pattern=AGENT_ID_PATTERN), WrapValidator(_explain_agent_id)
]
TableName = Annotated[str, StringConstraints(pattern=TABLE_NAME_PATTERN)]
RecordKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_BYTES)]
Version = Annotated[int, Field(ge=1, le=MAX_VERSION)]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_FIRST_TS = datetime.min.replace(tzinfo=UTC)
_LAST_TS = datetime.max.replace(tzinfo=UTC)
#: The representable range of ``ts`` (years 1 to 9999 in UTC) as UTC microseconds: a timestamp
#: outside it is refused, as it could never be rendered back into a datetime.
MIN_TS_MICROS = (_FIRST_TS - _EPOCH) // _MICROSECOND
MAX_TS_MICROS = (_LAST_TS - _EPOCH) // _MICROSECOND


def make_version(incarnation: int, seq: int) -> int:
    """Combine a store's incarnation and a local sequence number into one record version."""
    return (incarnation << SEQ_BITS) | seq


def split_version(version: int) -> tuple[int, int]:
    """Inverse of :func:`make_version`: ``(incarnation, seq)``."""
    return version >> SEQ_BITS, version & ((1 << SEQ_BITS) - 1)


def format_ts(moment: datetime | float) -> str:
    """Render a UTC timestamp the way the wire carries it: ``2026-11-27T02:33:27.123456Z``."""
    if not isinstance(moment, datetime):
        moment = datetime.fromtimestamp(moment, tz=UTC)
    elif moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    # isoformat is several times faster than strftime; "+00:00" becomes the shorter "Z".
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def ts_to_micros(moment: datetime) -> int:
    """UTC microseconds since the epoch; exact, sortable and indexable as an integer."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def micros_to_ts(micros: int) -> datetime:
    """Inverse of :func:`ts_to_micros` (an aware UTC datetime).

    A value outside years 1 to 9999 (which only a relay older than this check can have
    stored) becomes the nearest representable instant rather than an error, so one such
    record cannot break a page of results: see :meth:`StoredRecord.from_row`.
    """
    if not MIN_TS_MICROS <= micros <= MAX_TS_MICROS:
        return _FIRST_TS if micros < MIN_TS_MICROS else _LAST_TS
    return _EPOCH + timedelta(microseconds=micros)


def utc_in_range(moment: datetime) -> datetime:
    """``moment`` in UTC (naive means UTC); ``ValueError`` if that leaves years 1 to 9999.

    ``0001-01-01T00:00:00+23:59`` is a valid ISO time whose UTC instant lies in year 0.
    """
    if moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:
        raise ValueError(
            f"{moment.isoformat()} is outside years 1 to 9999 once converted to UTC"
        ) from None


#: A wire timestamp: ISO 8601, converted to UTC, within years 1 to 9999 there.
TimeStamp = Annotated[datetime, AfterValidator(utc_in_range)]


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
    ts: TimeStamp

    @model_validator(mode="after")
    def _data_matches_op(self) -> ChangeRecord:
        if self.op == "upsert" and self.data is None:
            raise ValueError("an upsert record needs 'data' (the row as a JSON object)")
        if self.op == "delete" and self.data is not None:
            raise ValueError("a delete record must not carry 'data'")
        return self


#: Every field a change record may carry, and those it must carry (the relay's fast path
#: checks bodies against these sets, so they follow the model).
RECORD_FIELDS = frozenset(ChangeRecord.model_fields)
REQUIRED_RECORD_FIELDS = frozenset(
    name for name, field in ChangeRecord.model_fields.items() if field.is_required()
)


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


def change_record_json(
    agent_id: str, table: str, key: str, data: Any, version: int, written_at: float
) -> dict[str, Any]:
    """A change record as the agent sends it; ``data`` None makes it a delete.

    ``data`` may hold ``orjson.Fragment`` values (JSON columns embedded without re-parsing).
    """
    record: dict[str, Any] = {
        "agent_id": agent_id,
        "table": table,
        "key": key,
        "op": "upsert" if data is not None else "delete",
        "version": version,
        "ts": format_ts(written_at),
    }
    if data is not None:
        record["data"] = data
    return record


class EncodedRecord(NamedTuple):
    """A change record ready for storage: data as JSON text, ts as UTC microseconds.

    A NamedTuple because the relay's ingest path builds tens of thousands per second.
    """

    agent_id: str
    table: str
    key: str
    version: int
    ts_us: int
    deleted: bool
    #: Compact JSON text of ``data``; ``None`` for a tombstone.
    data: str | None


def encode_records(
    records: Sequence[ChangeRecord], *, max_value_bytes: int | None = None
) -> list[EncodedRecord]:
    """Encode ``records`` for storage, checking every value before anything is written.

    Raises :class:`~commander_os.errors.ValueTooLarge` naming the record whose encoded ``data``
    exceeds ``max_value_bytes``, and ``ValueError`` for data that is not valid JSON text (for
    example a lone surrogate in a string).
    """
    encoded: list[EncodedRecord] = []
    dumps = orjson.dumps
    for index, record in enumerate(records):
        data: str | None = None
        if record.data is not None:
            try:
                raw = dumps(record.data)
            except orjson.JSONEncodeError as exc:
                raise ValueError(f"records[{index}].data cannot be stored as JSON: {exc}") from exc
            if max_value_bytes is not None and len(raw) > max_value_bytes:
                raise ValueTooLarge(
                    f"records[{index}] ({record.table}/{record.key[:40]!r}): data is "
                    f"{len(raw)} bytes encoded, over the limit of {max_value_bytes}"
                )
            data = raw.decode()
        encoded.append(
            EncodedRecord(
                record.agent_id,
                record.table,
                record.key,
                record.version,
                ts_to_micros(record.ts),
                record.op == "delete",
                data,
            )
        )
    return encoded


class StoredRecord(BaseModel):
    """A record as the relay holds it; what a query returns.

    ``damaged`` is set (and sent) only for a stored record that cannot be rendered as it is:
    data that does not decode to a JSON object (then ``data`` is null), or a ``ts`` outside
    years 1 to 9999 (then ``ts`` is the nearest representable instant). Such a record keeps
    its place in the page instead of breaking it.
    """

    agent_id: str
    table: str
    key: str
    data: dict[str, Any] | None
    version: int
    ts: datetime
    deleted: bool
    rev: int = Field(description="the relay's global change order")
    damaged: str | None = Field(
        default=None, description="why this stored record could not be rendered as it is"
    )

    @classmethod
    def from_row(
        cls, row: Sequence[Any], data: dict[str, Any] | None, damaged: str | None = None
    ) -> StoredRecord:
        """A record from a central store's row ``(rev, agent_id, tbl, key, version, ts_us,
        deleted, data)`` with its ``data`` already decoded (the store knows its encoding);
        ``damaged`` says why the data could not be decoded, if it could not."""
        rev, agent_id, tbl, key, version, ts_us, deleted = row[:7]
        if not MIN_TS_MICROS <= ts_us <= MAX_TS_MICROS:
            damaged = "; ".join(filter(None, [damaged, f"ts {ts_us} us is out of range"]))
        return cls.model_construct(
            rev=rev,
            agent_id=agent_id,
            table=tbl,
            key=key,
            version=version,
            ts=micros_to_ts(ts_us),
            deleted=bool(deleted),
            data=data,
            damaged=damaged,
        )


def stored_record_json(record: StoredRecord) -> dict[str, Any]:
    """A stored record as the relay sends it (``ts`` stays a datetime for orjson)."""
    body = {
        "agent_id": record.agent_id,
        "table": record.table,
        "key": record.key,
        "data": record.data,
        "version": record.version,
        "ts": record.ts,
        "deleted": record.deleted,
        "rev": record.rev,
    }
    if record.damaged is not None:
        body["damaged"] = record.damaged
    return body
