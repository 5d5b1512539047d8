"""The central-store contract: what every relay backend (SQLite, PostgreSQL) must do.

A central store holds, per ``(agent_id, table, key)``, the newest change record the relay has
received, plus one row per agent (highest version, last seen). The relay only talks to this
interface, so a backend is a drop-in replacement as long as it passes the contract test suite
in ``tests/network/test_central_contract.py``.

Rules every backend follows:

* **Monotonic, idempotent apply.** A record replaces the stored one only if its ``version`` is
  strictly higher. Equal or lower versions are counted as ``ignored`` and change nothing, so a
  batch can be replayed any number of times, in any order.
* **Tombstones.** A delete is stored as a row with ``deleted=True`` and ``data=None`` carrying
  its version, so a stale upsert arriving after the delete cannot resurrect the row.
* **Revisions.** Every applied change gets a global ``rev`` greater than every ``rev`` committed
  before it; the row keeps only its newest ``rev``. Queries and the change feed page in ``rev``
  order with an opaque cursor (keyset pagination: no duplicates, no misses for rows that do not
  change while paging; a row that changes while paging shows up again with its new version).
* **Acknowledged means durable.** ``apply`` returns only after the commit is durable.
* **Field filters** (``QueryRequest.where``) follow JSON types strictly: ``eq 1`` does not match
  ``"1"`` nor ``true``; ``ne`` is the exact negation of ``eq`` (so it also matches rows without the
  field); ``lt/lte/gt/gte`` compare numbers with numbers and strings with strings (code-point
  order); ``in`` is ``eq`` against any listed value; ``contains`` matches an array holding the
  value as an element, or a string holding it as a substring; ``exists`` tests presence (a JSON
  ``null`` is present); ``prefix`` matches strings. A purely numeric path segment indexes an array.
"""

from __future__ import annotations

import base64
import binascii
import operator
import re
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import orjson

# The central-store errors live in the one tree of commander_os.errors; they stay importable
# from here, where they were first defined.
from commander_os.errors import (
    CentralStoreError,
    CentralStoreUnavailable,
    InvalidCursor,
    QueryTimeout,
    ValueTooLarge,
)
from commander_os.network.protocol import (
    FIELD_PATH_PATTERN,
    Ack,
    AgentSummary,
    ChangeRecord,
    QueryRequest,
    QueryResponse,
)

__all__ = [
    "CentralStore",
    "CentralStoreError",
    "CentralStoreUnavailable",
    "EncodedRecord",
    "InvalidCursor",
    "QueryTimeout",
    "StoreHealth",
    "decode_cursor",
    "encode_cursor",
    "encode_records",
    "group_acks",
    "micros_to_ts",
    "parse_field_path",
    "ts_to_micros",
]


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


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """What ``CentralStore.health()`` reports."""

    ok: bool
    backend: str
    detail: dict[str, Any]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
_FIELD_PATH_RE = re.compile(FIELD_PATH_PATTERN)
_CURSOR_PREFIX = b"rev:"
_AGENT_ID = operator.itemgetter(0)  # EncodedRecord.agent_id


def ts_to_micros(moment: datetime) -> int:
    """UTC microseconds since the epoch; exact, sortable and indexable as an integer."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return (moment - _EPOCH) // _MICROSECOND


def micros_to_ts(micros: int) -> datetime:
    """Inverse of :func:`ts_to_micros` (an aware UTC datetime)."""
    seconds, micro = divmod(micros, 1_000_000)
    return datetime.fromtimestamp(seconds, tz=UTC).replace(microsecond=micro)


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
    return int(digits)


def parse_field_path(path: str) -> list[str | int]:
    """Split a validated dotted field path; numeric segments (after the first) become ints.

    >>> parse_field_path("address.0.city")
    ['address', 0, 'city']
    """
    if not _FIELD_PATH_RE.fullmatch(path):
        raise ValueError(f"invalid field path {path!r}")
    first, *rest = path.split(".")
    return [first, *(int(part) if part.isdigit() else part for part in rest)]


def group_acks(
    index: int,
    records: Sequence[EncodedRecord],
    applied: dict[tuple[int, str], int],
    highest: dict[str, int],
) -> list[Ack]:
    """The acks of one request in a group commit: one per agent, in first-seen order.

    ``applied`` counts, per ``(request index, agent)``, the records that changed the store;
    the rest of the request's records of that agent were stale or repeated (``ignored``).
    ``highest`` is each agent's high-water mark after the commit.
    """
    totals = Counter(map(_AGENT_ID, records))  # in C; a Counter keeps first-seen order
    return [
        Ack(
            agent_id=agent,
            highest_version=highest[agent],
            applied=applied.get((index, agent), 0),
            ignored=total - applied.get((index, agent), 0),
        )
        for agent, total in totals.items()
    ]


class CentralStore(ABC):
    """The contract of a relay's central store. All methods are safe to call concurrently.

    Typical life cycle::

        store = SQLiteCentralStore(data_dir / "central.db")
        await store.open()
        acks = await store.apply(records)
        page = await store.query(QueryRequest(agent_id="my-agent", table="kv"))
        await store.close()
    """

    #: Short backend name shown by ``/health`` ("sqlite", "postgresql").
    backend: str = "abstract"
    #: Encoded values larger than this are refused by :meth:`apply` (None: no limit).
    max_value_bytes: int | None = None

    @abstractmethod
    async def open(self) -> None:
        """Create or open the store (schema included). Raises CentralStoreUnavailable."""

    @abstractmethod
    async def close(self) -> None:
        """Finish pending applies, then release every resource. Idempotent."""

    async def apply(self, records: Sequence[ChangeRecord]) -> list[Ack]:
        """Apply ``records`` durably; return one :class:`Ack` per agent, in first-seen order.

        Idempotent and monotonic per ``(agent_id, table, key)`` (see the module docstring).
        Raises ``ValueTooLarge``/``ValueError`` before writing anything if a value cannot be
        stored, and :class:`CentralStoreUnavailable` if the store cannot commit.
        """
        return await self.apply_encoded(
            encode_records(records, max_value_bytes=self.max_value_bytes)
        )

    async def apply_encoded(self, records: Sequence[EncodedRecord]) -> list[Ack]:
        """:meth:`apply` for records already encoded by the caller (the relay's fast path).

        Optional: a store that does not override it is fed through :meth:`apply` instead
        (see :meth:`accepts_encoded`). Overriding stores must check what ``apply`` checks.
        """
        raise NotImplementedError(f"{type(self).__name__} does not take encoded records")

    @classmethod
    def accepts_encoded(cls) -> bool:
        """True if this store overrides :meth:`apply_encoded`."""
        return cls.apply_encoded is not CentralStore.apply_encoded

    @abstractmethod
    async def query(self, request: QueryRequest) -> QueryResponse:
        """One page of records matching every filter of ``request``, in ``rev`` order.

        ``next_cursor`` is set when the page is full (there may be more). Raises
        :class:`InvalidCursor` for a foreign cursor and :class:`QueryTimeout` past the budget.
        """

    @abstractmethod
    async def agents(self) -> list[AgentSummary]:
        """Every agent the store has seen, ordered by agent id."""

    @abstractmethod
    async def health(self) -> StoreHealth:
        """Whether the store answers, with backend-specific details (never raises)."""

    async def __aenter__(self) -> CentralStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
