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

import asyncio
import hashlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

# The central-store errors live in the one tree of commander_os.errors; they stay importable
# from here, where they were first defined.
from commander_os.errors import (
    CentralStoreError,
    CentralStoreUnavailable,
    InvalidCursor,
    QueryTimeout,
)
from commander_os.protocol import (
    Ack,
    AgentSummary,
    ChangeRecord,
    EncodedRecord,
    FieldFilter,
    FilterOp,
    QueryRequest,
    QueryResponse,
    StoredRecord,
    encode_cursor,
    encode_records,
    micros_to_ts,
    parse_field_path,
)
from commander_os.relay.central._group_commit import GroupWriter, SegmentResult
from commander_os.relay.central._identity import WriteSegment

__all__ = [
    "HEALTH_PROBE_SECONDS",
    "CentralStore",
    "CentralStoreError",
    "CentralStoreUnavailable",
    "FieldIndex",
    "InvalidCursor",
    "QueryPlan",
    "QueryTimeout",
    "StoreHealth",
    "field_index_name",
    "served_by_index",
]

#: The columns every backend's query returns, in this order.
ROW_COLUMNS = "rev, agent_id, tbl, key, version, ts, deleted, data"


#: Seconds ``health()`` waits for the store's probe before calling the store unavailable.
HEALTH_PROBE_SECONDS = 1.0


@dataclass(frozen=True, slots=True)
class StoreHealth:
    """What ``CentralStore.health()`` reports: reachable (``ok``), and able to commit."""

    ok: bool
    backend: str
    detail: dict[str, Any]
    #: False when the last commit failed for the store's own reason (disk full, database
    #: away, a read-only standby) or the store says it cannot write; reads may still work.
    writable: bool = True


def served_by_index(clause: FieldFilter, indexed: frozenset[str]) -> bool:
    """Whether a field index (``commander-os relay index add``) answers ``clause``: ``eq`` and
    ``in`` on an indexed field without array positions."""
    if clause.op not in (FilterOp.EQ, FilterOp.IN) or clause.field not in indexed:
        return False
    return all(isinstance(segment, str) for segment in parse_field_path(clause.field))


def field_index_name(field: str) -> str:
    """The index of ``field`` on any store: a fixed prefix and a digest (any path fits)."""
    return "records_field_" + hashlib.sha256(field.encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class FieldIndex:
    """One opt-in field index: the field, the index's name, its size, whether it is usable."""

    field: str
    name: str
    bytes: int
    valid: bool


@dataclass(frozen=True, slots=True)
class QueryPlan:
    """How the store runs one query (``CentralStore.explain``), for the relay's analytics.

    ``steps`` are the plan's lines, outermost first (SQLite's ``EXPLAIN QUERY PLAN`` details,
    or PostgreSQL's nodes as "Index Scan using records_rev on records"); ``examined`` is the
    number of rows the store read to answer, where the backend measured it.
    """

    backend: str
    steps: list[str]
    examined: int | None = None
    #: The backend's own rendering (PostgreSQL's ``EXPLAIN (ANALYZE, FORMAT JSON)``), if any.
    raw: Any = None


class CentralStore(ABC):
    """The contract of a relay's central store. All methods are safe to call concurrently.

    Typical life cycle::

        store = SQLiteCentralStore(data_dir / "central.db")
        await store.open()
        acks = await store.apply(records)
        page = await store.query(QueryRequest(agent_id="my-agent", table="kv"))
        await store.close()

    A backend supplies opening and closing, the commit of one merged group (through the
    :class:`~._group_commit.GroupWriter` it starts in ``open``), and three reads: the rows of a
    query, the agents table and a liveness probe. Everything else is shared here.
    """

    #: Short backend name shown by ``/health`` ("sqlite", "postgresql").
    backend: str = "abstract"
    #: Encoded values larger than this are refused by :meth:`apply` (None: no limit).
    max_value_bytes: int | None = None
    _writer: GroupWriter | None = None
    _probe_task: asyncio.Future[tuple[int, str | None]] | None = None
    #: Called (on the event loop) when another relay on the same store committed.
    _change_listeners: list[Callable[[], None]]

    def add_change_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever another relay sharing this store commits (stores that
        can tell: PostgreSQL, by LISTEN/NOTIFY). This relay's own commits are not announced."""
        if not hasattr(self, "_change_listeners"):
            self._change_listeners = []
        self._change_listeners.append(listener)

    def _announce_change(self) -> None:
        for listener in getattr(self, "_change_listeners", ()):
            listener()

    async def feed_head(self) -> int:
        """The highest rev a reader may read now (the change feed's window starts there)."""
        return (await self._shared_probe())[0]

    @abstractmethod
    async def open(self) -> None:
        """Create or open the store (schema included). Raises CentralStoreUnavailable."""

    @abstractmethod
    async def close(self) -> None:
        """Finish pending applies, then release every resource. Idempotent."""

    # -- writes -------------------------------------------------------------------------------

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
        """:meth:`apply` for records already encoded: a plain write, without identity checks."""
        if not records:
            return []
        by_agent: dict[str, list[EncodedRecord]] = {}
        for record in records:
            by_agent.setdefault(record.agent_id, []).append(record)
        segments = [WriteSegment(agent, None, recs) for agent, recs in by_agent.items()]
        return [
            Ack(
                agent_id=result.agent_id,
                highest_version=result.highest_version,
                applied=result.applied,
                ignored=result.ignored,
            )
            for result in await self.apply_segments(segments)
        ]

    async def apply_segments(self, segments: Sequence[WriteSegment]) -> list[SegmentResult]:
        """Judge delivery segments by the identity rule and apply those it accepts, durably;
        plain segments (no header) are applied as they are. One result per segment, in order.

        Raises ``ValueTooLarge``/``ValueError`` before writing anything if a value cannot be
        stored, and :class:`CentralStoreUnavailable` if the store cannot commit.
        """
        if not segments:
            return []
        for segment in segments:
            self._check_storable(segment.records)
        writer = self._writer
        if writer is None:
            raise CentralStoreUnavailable("central store is closed")
        return await writer.submit(list(segments))

    def _check_storable(self, records: list[EncodedRecord]) -> None:  # noqa: B027 - optional
        """Raise ``ValueError`` for a record this backend cannot keep (before any write)."""

    # -- reads --------------------------------------------------------------------------------

    async def query(self, request: QueryRequest) -> QueryResponse:
        """One page of records matching every filter of ``request``, in ``rev`` order.

        ``next_cursor`` is set when the page is full (there may be more). Raises
        :class:`InvalidCursor` for a foreign cursor and :class:`QueryTimeout` past the budget.
        """
        try:
            rows = await self._select(request, request.limit + 1)
        except QueryTimeout as exc:
            raise self._naming_the_index(exc, request) from exc
        return self._page(request, rows)

    async def query_counted(self, request: QueryRequest) -> tuple[QueryResponse, int | None]:
        """:meth:`query`, and the rows the store examined to answer it where the backend can
        count them while it runs (``None`` otherwise; :meth:`explain` then measures a sample).
        """
        try:
            rows, examined = await self._select_counted(request, request.limit + 1)
        except QueryTimeout as exc:
            raise self._naming_the_index(exc, request) from exc
        return self._page(request, rows), examined

    def _indexed_fields(self) -> frozenset[str]:
        """The fields with a value index (none, unless the backend keeps field indexes)."""
        return frozenset()

    def _naming_the_index(self, exc: QueryTimeout, request: QueryRequest) -> QueryTimeout:
        """``exc``, naming the index to create when a field filter had none to use."""
        indexed = self._indexed_fields()
        unindexed = sorted({c.field for c in request.where if not served_by_index(c, indexed)})
        if not unindexed:
            return exc
        # A filter no index serves reads the rows one by one: name the index that would.
        return QueryTimeout(
            f"{exc}; no index serves the filter on {', '.join(unindexed)}: create one with "
            f"'commander-os relay index add {unindexed[0]}' (eq and in filters use it)"
        )

    async def explain(self, request: QueryRequest) -> QueryPlan:
        """The store's plan for ``request`` (PostgreSQL runs it once to measure it: call this
        for a sample, never for every query). Raises like :meth:`query`."""
        return QueryPlan(self.backend, ["(this store does not explain its plans)"])

    def _page(self, request: QueryRequest, rows: Sequence[Sequence[Any]]) -> QueryResponse:
        more = len(rows) > request.limit
        rows = rows[: request.limit]
        records = [self._render(row) for row in rows]
        next_cursor = encode_cursor(rows[-1][0]) if more else None
        return QueryResponse.model_construct(records=records, next_cursor=next_cursor)

    def _render(self, row: Sequence[Any]) -> StoredRecord:
        """One row as a record; a row whose data cannot be decoded to a JSON object (written
        by hand, or by an older relay) is rendered with ``data`` null and ``damaged`` set, so
        it never breaks the page, the change feed or an export."""
        raw = row[7]
        if raw is None:
            return StoredRecord.from_row(row, None)
        try:
            data = self._decode_data(raw)
        except (ValueError, TypeError) as exc:  # orjson.JSONDecodeError is a ValueError
            return StoredRecord.from_row(row, None, f"stored data cannot be decoded: {exc}")
        if type(data) is not dict:
            return StoredRecord.from_row(row, None, "stored data is not a JSON object")
        return StoredRecord.from_row(row, data)

    async def agents(self) -> list[AgentSummary]:
        """Every agent the store has seen, ordered by agent id."""
        agents, counts = await self._agent_rows()
        tables: dict[str, dict[str, int]] = {}
        for agent_id, tbl, live in counts:
            tables.setdefault(agent_id, {})[tbl] = int(live)
        return [
            AgentSummary(
                agent_id=agent_id,
                last_seen=micros_to_ts(last_seen),
                highest_version=highest,
                record_count=sum(tables.get(agent_id, {}).values()),
                tables=dict(sorted(tables.get(agent_id, {}).items())),
            )
            for agent_id, highest, last_seen in agents
        ]

    async def health(self) -> StoreHealth:
        """Whether the store answers and can commit, with backend details (never raises).

        Answers within :data:`HEALTH_PROBE_SECONDS` whatever the query load: the probe has a
        connection of its own (never a query reader's), and concurrent calls share one probe.
        """
        detail = self._describe()
        writer = self._writer
        if writer is None or not writer.running:
            return StoreHealth(ok=False, backend=self.backend, detail={**detail, "error": "closed"})
        try:
            max_rev, write_problem = await self._shared_probe()
        except CentralStoreUnavailable as exc:
            return StoreHealth(ok=False, backend=self.backend, detail={**detail, "error": str(exc)})
        detail.update(max_rev=max_rev, commits=writer.commits, pending_jobs=writer.pending)
        problem = writer.write_error or write_problem
        if problem is not None:
            detail["write_error"] = problem
        return StoreHealth(ok=True, backend=self.backend, detail=detail, writable=problem is None)

    async def _shared_probe(self) -> tuple[int, str | None]:
        task = self._probe_task
        if task is None or task.done():
            task = self._probe_task = asyncio.ensure_future(self._probe())
            # A probe that finishes after every caller gave up must not log "exception never
            # retrieved".
            task.add_done_callback(lambda done: done.cancelled() or done.exception())
        try:
            return await asyncio.wait_for(asyncio.shield(task), HEALTH_PROBE_SECONDS)
        except TimeoutError:
            raise CentralStoreUnavailable(
                f"the central store did not answer within {HEALTH_PROBE_SECONDS:g} s"
            ) from None

    # -- what a backend supplies --------------------------------------------------------------

    @abstractmethod
    async def _select(self, request: QueryRequest, limit: int) -> Sequence[Sequence[Any]]:
        """Up to ``limit`` rows (:data:`ROW_COLUMNS`) matching ``request``, in ``rev`` order."""

    async def _select_counted(
        self, request: QueryRequest, limit: int
    ) -> tuple[Sequence[Sequence[Any]], int | None]:
        """:meth:`_select` and the rows examined, if this backend counts them (default: no)."""
        return await self._select(request, limit), None

    @abstractmethod
    def _decode_data(self, raw: Any) -> dict[str, Any]:
        """A row's ``data`` column as the record's data."""

    @abstractmethod
    async def _agent_rows(self) -> tuple[Sequence[Sequence[Any]], Sequence[Sequence[Any]]]:
        """``(agent_id, highest_version, last_seen)`` rows by agent id, and
        ``(agent_id, table, live records)`` rows."""

    @abstractmethod
    async def _probe(self) -> tuple[int, str | None]:
        """The newest revision, and why the store cannot write if it knows (a cheap probe on
        a connection of its own, never a query reader's); raises CentralStoreUnavailable."""

    @abstractmethod
    def _describe(self) -> dict[str, Any]:
        """Backend details for ``/health`` (never a secret)."""

    async def __aenter__(self) -> CentralStore:
        await self.open()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
