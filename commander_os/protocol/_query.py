"""Network-wide queries: the request, its field filters, result pages and their cursors."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)

from commander_os.errors import InvalidCursor
from commander_os.identifiers import MAX_KEY_BYTES
from commander_os.protocol._records import (
    MAX_VERSION,
    AgentId,
    RecordKey,
    StoredRecord,
    TableName,
    agent_id_error,
    utc_in_range,
)

__all__ = [
    "DEFAULT_QUERY_LIMIT",
    "FIELD_PATH_PATTERN",
    "KV_TABLE",
    "MAX_QUERY_LIMIT",
    "MAX_WHERE_CLAUSES",
    "AgentSummary",
    "ErrorBody",
    "FieldFilter",
    "FilterOp",
    "QueryRequest",
    "QueryResponse",
    "decode_cursor",
    "encode_cursor",
    "kv_field_problem",
    "parse_field_path",
]

DEFAULT_QUERY_LIMIT = 100
MAX_QUERY_LIMIT = 1000
MAX_WHERE_CLAUSES = 16
#: Dotted path into a record's ``data``: ``value.theme``, ``skills``, ``address.0.city``.
FIELD_PATH_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.[A-Za-z0-9_]{1,64}){0,7}$"

#: The table of ``AgentStorage``'s key-value pairs: a record's data there is ``{"value": v}``.
KV_TABLE = "kv"
_KV_DATA_FIELD = "value"

_FIELD_PATH_RE = re.compile(FIELD_PATH_PATTERN)
_CURSOR_PREFIX = b"rev:"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


_ORDERED = frozenset({FilterOp.LT, FilterOp.LTE, FilterOp.GT, FilterOp.GTE})


def _check_in(value: Any) -> None:
    if not isinstance(value, list) or not 1 <= len(value) <= 100:
        raise ValueError("'in' needs a list of 1 to 100 values")
    if any(isinstance(item, (dict, list)) for item in value):
        raise ValueError("'in' compares scalars: no objects or lists inside its list")


def _check_value(op: FilterOp, value: Any) -> None:
    """Raise ``ValueError`` unless ``value`` is what ``op`` compares with."""
    if op is FilterOp.IN:
        _check_in(value)
    elif op is FilterOp.EXISTS and not isinstance(value, bool):
        raise ValueError("'exists' needs true or false")
    elif op is FilterOp.PREFIX and not isinstance(value, str):
        raise ValueError("'prefix' needs a string")
    elif op in _ORDERED and (isinstance(value, bool) or not isinstance(value, (int, float, str))):
        raise ValueError(f"'{op.value}' needs a number or a string")
    elif op not in (FilterOp.IN, FilterOp.EXISTS) and isinstance(value, (dict, list)):
        raise ValueError(f"'{op.value}' compares scalars, not objects or lists")


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
        _check_value(self.op, self.value)
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

    @field_validator("agent_id", mode="wrap")
    @classmethod
    def _one_clear_error(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        # A bad id fails both arms of the union (one id, a list of ids), and pydantic would
        # report both; the one that helps says what is wrong with the id.
        try:
            return handler(value)
        except ValidationError:
            for agent_id in value if isinstance(value, list) else [value]:
                error = agent_id_error(agent_id)
                if error is not None:
                    raise error from None
            raise

    @field_validator("agent_id")
    @classmethod
    def _bounded_agent_list(cls, value: str | list[str] | None) -> str | list[str] | None:
        if isinstance(value, list) and not 1 <= len(value) <= 1000:
            raise ValueError("agent_id as a list needs 1 to 1000 ids")
        return value

    @field_validator("updated_since")
    @classmethod
    def _utc(cls, value: datetime | None) -> datetime | None:
        return None if value is None else utc_in_range(value)

    @model_validator(mode="after")
    def _no_nul(self) -> QueryRequest:
        # No key holds U+0000 (the relay refuses such keys) and PostgreSQL cannot compare it
        # at all, so both stores refuse it here alike rather than answer differently.
        compared: list[Any] = [self.key, self.key_prefix]
        for clause in self.where:
            compared += clause.value if isinstance(clause.value, list) else [clause.value]
        if any(isinstance(text, str) and "\x00" in text for text in compared):
            raise ValueError("a query cannot contain the character U+0000 (NUL)")
        return self

    def agent_ids(self) -> list[str] | None:
        """The agent filter as a list, or ``None`` for every agent."""
        if self.agent_id is None:
            return None
        return [self.agent_id] if isinstance(self.agent_id, str) else list(self.agent_id)


def kv_field_problem(request: QueryRequest) -> str | None:
    """What is wrong with a ``where`` field that can never match on the key-value table (it
    lacks ``value.``), with the fix; ``None`` when every field can match."""
    if request.table != KV_TABLE:
        return None
    for index, clause in enumerate(request.where):
        if clause.field.split(".", 1)[0] != _KV_DATA_FIELD:
            return (
                f"where.{index}.field: a record of table '{KV_TABLE}' holds its value as "
                f'{{"{_KV_DATA_FIELD}": ...}}, so {clause.field!r} can never match; '
                f"did you mean '{_KV_DATA_FIELD}.{clause.field}'?"
            )
    return None


class QueryResponse(BaseModel):
    """One page of query results; pass ``next_cursor`` back as ``cursor`` for the next.

    ``hints`` (left out when empty) say why an answer may not be what was meant, such as an
    agent the relay holds no record of (a misspelt id).
    """

    records: list[StoredRecord]
    next_cursor: str | None = None
    hints: list[str] = Field(default_factory=list)


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


def parse_field_path(path: str) -> list[str | int]:
    """Split a validated dotted field path; numeric segments (after the first) become ints.

    >>> parse_field_path("address.0.city")
    ['address', 0, 'city']
    """
    if not _FIELD_PATH_RE.fullmatch(path):
        raise ValueError(f"invalid field path {path!r}")
    first, *rest = path.split(".")
    return [first, *(int(part) if part.isdigit() else part for part in rest)]


def encode_cursor(rev: int) -> str:
    """An opaque cursor meaning "after revision ``rev``"."""
    return base64.urlsafe_b64encode(_CURSOR_PREFIX + str(rev).encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The revision a cursor points after; raises :class:`InvalidCursor` if it is not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
    except (binascii.Error, ValueError):
        raise InvalidCursor(f"invalid cursor {cursor[:40]!r}: not produced by this relay") from None
    digits = raw[len(_CURSOR_PREFIX) :]
    if not raw.startswith(_CURSOR_PREFIX) or not digits.isdigit() or len(digits) > 19:
        raise InvalidCursor(f"invalid cursor {cursor[:40]!r}: not produced by this relay")
    rev = int(digits)
    if rev > MAX_VERSION:  # 19 digits can exceed a 64-bit integer; no rev ever does
        raise InvalidCursor(f"invalid cursor {cursor[:40]!r}: not produced by this relay")
    return rev
