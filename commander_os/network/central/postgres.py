"""The PostgreSQL central store: stateless relays, as many as needed, on one database.

Same contract as the SQLite store (``central/base.py``); schema and migrations are in
``postgres_schema.py``, the query translation in ``postgres_query.py``.

**Writes.** Each relay group-commits: apply requests waiting in its queue are merged (newest
version per identity wins, rows sorted by primary key) into one transaction of three pipelined
statements and one WAL flush (``synchronous_commit`` on at the default durability):

1. ``UPDATE rev_counter`` reserves a block of revisions. The row lock it takes is held until
   commit, so writers on every relay pass it one at a time and **revisions become visible in
   increasing order**. A plain sequence would not do: two transactions could take revs 10 and 11
   and commit 11 first, and a change-feed reader that had just read 11 would never see 10.
2. One ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT DO UPDATE ... WHERE excluded.version >
   records.version`` applies every record (monotonic, idempotent) and returns the revs of the
   rows it changed.
3. ``INSERT ... ON CONFLICT`` raises each agent's high-water mark and last-seen time.

**Reads** take a pooled connection with a ``statement_timeout`` equal to the query budget
(``QueryTimeout`` when exceeded). Connection failures become :class:`CentralStoreUnavailable`
(the relay answers 503); the pools reconnect by themselves when the database is back.

Differences from the SQLite store, inherent to JSONB: object keys come back in JSONB's order
(not the writer's), and JSON text cannot hold ``\\u0000`` (nor can keys) — such records are
refused with ``ValueError`` before anything is written.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from commander_os.network.central.base import (
    CentralStore,
    CentralStoreUnavailable,
    EncodedRecord,
    QueryTimeout,
    StoreHealth,
    encode_cursor,
    group_acks,
    micros_to_ts,
)
from commander_os.network.central.postgres_query import build_query
from commander_os.network.central.postgres_schema import check_schema_name, migrate
from commander_os.network.protocol import (
    Ack,
    AgentSummary,
    QueryRequest,
    QueryResponse,
    StoredRecord,
)

__all__ = ["PostgresCentralStore", "describe_url"]

#: Records merged into one transaction at most; bounds how long one commit holds the rev lock.
MAX_GROUP_RECORDS = 10_000
DEFAULT_POOL_SIZE = 8
#: Seconds a write may run; a stuck writer must not hold the revision lock forever.
WRITE_STATEMENT_TIMEOUT = 60.0

BUMP_REVS = "UPDATE rev_counter SET last_rev = last_rev + %s RETURNING last_rev"
UPSERT_RECORDS = """
INSERT INTO records AS r (agent_id, tbl, key, version, ts, deleted, data, rev)
SELECT s.agent_id, s.tbl, s.key, s.version, s.ts, s.deleted, s.data,
       (SELECT last_rev FROM rev_counter) - %(count)s::bigint + s.n
FROM unnest(%(agent_id)b::text[], %(tbl)b::text[], %(key)b::text[], %(version)b::int8[],
            %(ts)b::int8[], %(deleted)b::bool[], %(data)b::text[]::jsonb[])
     WITH ORDINALITY AS s(agent_id, tbl, key, version, ts, deleted, data, n)
ORDER BY s.n
ON CONFLICT (agent_id, key, tbl) DO UPDATE SET
    version = excluded.version, ts = excluded.ts, deleted = excluded.deleted,
    data = excluded.data, rev = excluded.rev
WHERE excluded.version > r.version
RETURNING r.rev
"""
UPSERT_AGENTS = """
INSERT INTO agents AS a (agent_id, highest_version, last_seen)
SELECT * FROM unnest(%s::text[], %s::int8[], %s::int8[])
ON CONFLICT (agent_id) DO UPDATE SET
    highest_version = greatest(a.highest_version, excluded.highest_version),
    last_seen = greatest(a.last_seen, excluded.last_seen)
RETURNING agent_id, highest_version
"""
SELECT_AGENTS = """
SELECT agent_id, highest_version, last_seen FROM agents ORDER BY agent_id
"""
#: Live records per agent and table, counted when asked (see ``agents()``).
SELECT_TABLE_COUNTS = """
SELECT agent_id, tbl, count(*) FILTER (WHERE NOT deleted) FROM records GROUP BY agent_id, tbl
"""
SELECT_MAX_REV = "SELECT last_rev FROM rev_counter"
CONFIGURE_SESSION = """
SELECT set_config('statement_timeout', %s, false),
       set_config('synchronous_commit', %s, false),
       -- Field filters differ wildly in selectivity: plan each query for its own values
       -- (a cached generic plan cannot tell whether the GIN index or the rev order is best).
       set_config('plan_cache_mode', 'force_custom_plan', false),
       CASE WHEN %s::text IS NULL THEN NULL ELSE set_config('search_path', %s, false) END
"""
#: Readers only: a query's estimated cost can pass jit_above_cost while it runs in 1 ms (the
#: GIN branch of a field filter, costed from the default 1% selectivity, does past ~3M records,
#: or at 1M before the table is first analyzed); compiling would then add ~15 ms to each
#: (the field-eq query at 1M records with JIT forced: 1.0 -> 16.7 ms).
CONFIGURE_READER = "SELECT set_config('jit', 'off', false)"

#: JSON text escaping U+0000 (not preceded by another backslash): JSONB cannot store it.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
_UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout, PoolClosed)

Identity = tuple[str, str, str]


def describe_url(url: str) -> str:
    """``user@host:port/dbname`` of a libpq URL, without the password (for messages)."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        return "(unparsable database_url)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    host = parts.get("host") or "localhost"
    return f"{user}{host}:{parts.get('port') or 5432}/{parts.get('dbname') or ''}"


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _check_storable(records: list[EncodedRecord]) -> None:
    for index, rec in enumerate(records):
        data = rec.data
        # The substring test first: the regex alone tried every position of every value and
        # took half the relay's CPU on ingest; without the substring it cannot match.
        if "\x00" in rec.key or (
            data is not None and "\\u0000" in data and _NUL_ESCAPE.search(data)
        ):
            raise ValueError(
                f"records[{index}] ({rec.table}/{rec.key[:40]!r}): PostgreSQL cannot store the "
                "character U+0000 in keys or JSON values"
            )


@dataclass
class _Job:
    records: list[EncodedRecord]
    future: asyncio.Future[list[Ack]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )


@dataclass
class _Merged:
    """A group of jobs merged for one transaction: the rows to write and who sent them."""

    rows: list[EncodedRecord]
    #: For each row (same order), the (job index, agent) it counts for.
    owners: list[tuple[int, str]]
    highest: dict[str, int]

    @classmethod
    def of(cls, group: list[_Job]) -> _Merged:
        # Only the newest version of each identity can win, so each is written at most once.
        winners: dict[Identity, tuple[int, EncodedRecord]] = {}
        highest: dict[str, int] = {}
        for index, job in enumerate(group):
            for rec in job.records:
                ident = (rec.agent_id, rec.key, rec.table)
                held = winners.get(ident)
                if held is None or rec.version > held[1].version:
                    winners[ident] = (index, rec)
                if rec.version > highest.get(rec.agent_id, 0):
                    highest[rec.agent_id] = rec.version
        ordered = [winners[ident] for ident in sorted(winners)]  # primary-key order
        return cls(
            rows=[rec for _, rec in ordered],
            owners=[(index, rec.agent_id) for index, rec in ordered],
            highest=highest,
        )

    def upsert_params(self) -> dict[str, Any]:
        rows = self.rows
        return {
            "count": len(rows),
            "agent_id": [r.agent_id for r in rows],
            "tbl": [r.table for r in rows],
            "key": [r.key for r in rows],
            "version": [r.version for r in rows],
            "ts": [r.ts_us for r in rows],
            "deleted": [r.deleted for r in rows],
            "data": [r.data for r in rows],
        }

    def agent_params(self, now_us: int) -> tuple[list[str], list[int], list[int]]:
        agents = sorted(self.highest)
        return agents, [self.highest[a] for a in agents], [now_us] * len(agents)


class PostgresCentralStore(CentralStore):
    """Central store on PostgreSQL (see the module docstring).

    ``url`` is a libpq URL (``postgresql://user@host:5432/db``). ``schema`` puts every table in
    that schema (created if missing) instead of the connection's current one. ``durability``
    ``"normal"`` turns ``synchronous_commit`` off (may lose the last commits if the database
    server crashes). ``query_timeout`` (seconds) becomes the readers' ``statement_timeout``.

    Example::

        async with PostgresCentralStore("postgresql://postgres@127.0.0.1/test") as store:
            await store.apply(records)
    """

    backend = "postgresql"

    def __init__(
        self,
        url: str,
        *,
        schema: str | None = None,
        durability: Literal["full", "normal"] = "full",
        max_value_bytes: int | None = None,
        query_timeout: float = 5.0,
        pool_size: int = DEFAULT_POOL_SIZE,
        connect_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.schema = None if schema is None else check_schema_name(schema)
        self.durability = durability
        self.max_value_bytes = max_value_bytes
        self.query_timeout = query_timeout
        self.pool_size = pool_size
        self.connect_timeout = connect_timeout
        self._readers: AsyncConnectionPool[AsyncConnection[Any]] | None = None
        self._writers: AsyncConnectionPool[AsyncConnection[Any]] | None = None
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._writer_task: asyncio.Task[None] | None = None
        self.commits = 0

    # -- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer_task is not None:
            return
        where = describe_url(self.url)
        try:
            conn = await AsyncConnection.connect(
                self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout))
            )
        except psycopg.Error as exc:
            raise CentralStoreUnavailable(
                f"cannot connect to PostgreSQL at {where}: {_one_line(exc)}"
            ) from None
        try:
            await self._configure(conn, self.query_timeout)
            await migrate(conn, self.schema)
        except psycopg.Error as exc:
            raise CentralStoreUnavailable(
                f"cannot prepare the central store schema at {where}: {_one_line(exc)}"
            ) from None
        finally:
            await conn.close()
        self._readers = await self._pool("readers", self.pool_size, self.query_timeout)
        self._writers = await self._pool("writers", 2, WRITE_STATEMENT_TIMEOUT)
        self._queue = asyncio.Queue()
        self._writer_task = asyncio.create_task(self._write_loop(), name="central-pg-writer")

    async def _pool(
        self, role: str, size: int, statement_timeout: float
    ) -> AsyncConnectionPool[AsyncConnection[Any]]:
        async def configure(conn: AsyncConnection[Any]) -> None:
            await self._configure(conn, statement_timeout)
            if role == "readers":
                await conn.execute(CONFIGURE_READER)

        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            self.url,
            kwargs={"autocommit": True, "connect_timeout": max(1, round(self.connect_timeout))},
            min_size=1,
            max_size=size,
            open=False,
            configure=configure,
            check=AsyncConnectionPool.check_connection,
            timeout=self.connect_timeout,
            name=f"central-{role}",
        )
        try:
            await pool.open(wait=True, timeout=self.connect_timeout)
        except PoolTimeout as exc:
            await pool.close()
            raise CentralStoreUnavailable(
                f"cannot connect to PostgreSQL at {describe_url(self.url)}: {_one_line(exc)}"
            ) from None
        return pool

    async def _configure(self, conn: AsyncConnection[Any], statement_timeout: float) -> None:
        set_json_loads(orjson.loads, conn)
        sync = "on" if self.durability == "full" else "off"
        timeout = f"{max(1, round(statement_timeout * 1000))}ms"
        await conn.execute(CONFIGURE_SESSION, (timeout, sync, self.schema, self.schema))

    async def close(self) -> None:
        task, readers, writers = self._writer_task, self._readers, self._writers
        if task is None:
            return
        self._writer_task = self._readers = self._writers = None
        self._queue.put_nowait(None)
        await task
        for pool in (readers, writers):
            if pool is not None:
                await pool.close()

    # -- writes -------------------------------------------------------------------------------

    async def apply_encoded(self, records: Sequence[EncodedRecord]) -> list[Ack]:
        """:meth:`apply` for records already encoded (the relay's fast path)."""
        if not records:
            return []
        encoded = list(records)
        _check_storable(encoded)
        if self._writer_task is None:
            raise CentralStoreUnavailable("central store is closed")
        job = _Job(encoded)
        self._queue.put_nowait(job)
        return await job.future

    async def _write_loop(self) -> None:
        stopping = False
        while not stopping:
            item = await self._queue.get()
            group: list[_Job] = []
            size = 0
            while True:
                if item is None:
                    stopping = True  # finish what was queued before the stop, then leave
                    break
                if not item.future.done():  # a cancelled caller was never acked: drop it
                    group.append(item)
                    size += len(item.records)
                if size >= MAX_GROUP_RECORDS or self._queue.empty():
                    break
                item = self._queue.get_nowait()
            if group:
                await self._commit_safely(group)
        self._fail_leftovers()

    def _fail_leftovers(self) -> None:
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not None and not job.future.done():
                job.future.set_exception(CentralStoreUnavailable("central store is closed"))

    async def _commit_safely(self, group: list[_Job]) -> None:
        try:
            results = await self._commit(group)
        except _UNAVAILABLE as exc:
            self._fail(
                group, CentralStoreUnavailable(f"central store unavailable: {_one_line(exc)}")
            )
        except psycopg.Error as exc:
            if len(group) > 1:
                # One job must not fail the others it happened to be grouped with.
                for job in group:
                    await self._commit_safely([job])
                return
            error: Exception = CentralStoreUnavailable(f"central store failed: {_one_line(exc)}")
            if isinstance(exc, psycopg.DataError):
                error = ValueError(f"records cannot be stored: {_one_line(exc)}")
            self._fail(group, error)
        else:
            for job, acks in zip(group, results, strict=True):
                if not job.future.done():
                    job.future.set_result(acks)

    @staticmethod
    def _fail(group: list[_Job], error: Exception) -> None:
        for job in group:
            if not job.future.done():
                job.future.set_exception(error)

    async def _commit(self, group: list[_Job]) -> list[list[Ack]]:
        merged = _Merged.of(group)
        pool = self._writers
        if pool is None:
            raise PoolClosed("central store is closed")
        async with pool.connection() as conn:
            async with conn.pipeline(), conn.transaction():
                bump = await conn.execute(BUMP_REVS, (len(merged.rows),))
                upsert = await conn.execute(UPSERT_RECORDS, merged.upsert_params())
                agents = await conn.execute(
                    UPSERT_AGENTS, merged.agent_params(time.time_ns() // 1000)
                )
            bumped = await bump.fetchone()
            changed = await upsert.fetchall()
            hwm = {agent: int(version) for agent, version in await agents.fetchall()}
        assert bumped is not None
        first_rev = int(bumped[0]) - len(merged.rows) + 1
        applied: dict[tuple[int, str], int] = {}
        for (rev,) in changed:
            owner = merged.owners[rev - first_rev]
            applied[owner] = applied.get(owner, 0) + 1
        self.commits += 1
        return [group_acks(index, job.records, applied, hwm) for index, job in enumerate(group)]

    # -- reads --------------------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        pool = self._readers
        if pool is None:
            raise CentralStoreUnavailable("central store is closed")
        try:
            async with pool.connection() as conn:
                cursor = await conn.execute(sql, params)
                return await cursor.fetchall()
        except psycopg.errors.QueryCanceled as exc:
            raise QueryTimeout(
                f"query ran past the {self.query_timeout:g} s budget: "
                "narrow it with agent_id, table or key"
            ) from exc
        except (psycopg.Error, PoolTimeout, PoolClosed) as exc:
            raise CentralStoreUnavailable(f"central store read failed: {_one_line(exc)}") from exc

    async def query(self, request: QueryRequest) -> QueryResponse:
        sql, params = build_query(request, limit=request.limit + 1)
        rows = await self._fetch(sql, params)
        more = len(rows) > request.limit
        rows = rows[: request.limit]
        records = [
            StoredRecord.model_construct(
                rev=rev,
                agent_id=agent_id,
                table=tbl,
                key=key,
                version=version,
                ts=micros_to_ts(ts),
                deleted=deleted,
                data=data,
            )
            for rev, agent_id, tbl, key, version, ts, deleted, data in rows
        ]
        next_cursor = encode_cursor(rows[-1][0]) if more else None
        return QueryResponse.model_construct(records=records, next_cursor=next_cursor)

    async def agents(self) -> list[AgentSummary]:
        # Counted on demand (a scan of the table, ~0.1 s per million records) rather than kept
        # by every apply: keeping them needs the old row's state, an extra probe per record on
        # the ingest path, which is the path that has to scale.
        counts: dict[str, dict[str, int]] = {}
        for agent_id, tbl, live in await self._fetch(SELECT_TABLE_COUNTS):
            counts.setdefault(agent_id, {})[tbl] = int(live)
        return [
            AgentSummary(
                agent_id=agent_id,
                last_seen=micros_to_ts(last_seen),
                highest_version=highest,
                record_count=sum(counts.get(agent_id, {}).values()),
                tables=dict(sorted(counts.get(agent_id, {}).items())),
            )
            for agent_id, highest, last_seen in await self._fetch(SELECT_AGENTS)
        ]

    async def health(self) -> StoreHealth:
        detail: dict[str, Any] = {"database": describe_url(self.url), "schema": self.schema}
        if self._writer_task is None or self._writer_task.done():
            return StoreHealth(ok=False, backend=self.backend, detail={**detail, "error": "closed"})
        try:
            ((max_rev,),) = await self._fetch(SELECT_MAX_REV)
        except CentralStoreUnavailable as exc:
            return StoreHealth(ok=False, backend=self.backend, detail={**detail, "error": str(exc)})
        detail.update(max_rev=max_rev, commits=self.commits, pending_jobs=self._queue.qsize())
        return StoreHealth(ok=True, backend=self.backend, detail=detail)
