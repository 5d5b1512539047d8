"""The PostgreSQL central store: stateless relays, as many as needed, on one database.

Same contract as the SQLite store (``central/base.py``); schema and migrations are in
``postgres_schema.py``, the query translation in ``postgres_query.py``.

**Writes.** Each relay group-commits (:mod:`._group_commit`): apply requests waiting in its
queue are merged (newest version per identity wins, rows sorted by primary key so concurrent
relays lock rows in one order) into one transaction and one WAL flush (``synchronous_commit`` on
at the default durability). Nothing in it is shared by every writer: two relays writing
different agents never wait for each other.

1. One pipeline takes a transaction id (before any rev is drawn: the watermark relies on it),
   locks the rows of the group's agents in ``agents`` (created if new; sorted, so relays never
   deadlock), reads the judged agents' identity state, and draws blocks of revisions from the
   sequence ``records_rev_seq`` (one ``nextval`` per :data:`REV_BLOCK` rows). The agent locks
   come first, so two commits of one agent draw revs in the order they commit: per-agent order.
2. A second pipeline applies every record with one ``INSERT ... SELECT FROM unnest(arrays) ON
   CONFLICT DO UPDATE ... WHERE excluded.version > records.version`` (monotonic, idempotent;
   each row's rev follows its agent's version order) and raises each agent's high-water mark.

Revisions drawn from a sequence become visible out of order, so reads of the rev order stop at
the commit-order watermark (:mod:`._postgres_watermark`): no reader moves past a rev that may
still commit. A commit pokes the watermark; other relays' commits are seen on its next tick.

**Reads** take a pooled connection with a ``statement_timeout`` equal to the query budget
(``QueryTimeout`` when exceeded). Connection failures become :class:`CentralStoreUnavailable`
(the relay answers 503); the pools reconnect by themselves when the database is back.

Differences from the SQLite store, inherent to JSONB: object keys come back in JSONB's order
(not the writer's), and JSON text cannot hold ``\\u0000`` (nor can keys) — such records are
refused with ``ValueError`` before anything is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

import orjson
import psycopg
from psycopg import AsyncConnection
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.json import set_json_loads
from psycopg_pool import AsyncConnectionPool, PoolClosed, PoolTimeout

from commander_os.errors import CursorExpired
from commander_os.protocol import EncodedRecord, QueryRequest, decode_cursor
from commander_os.relay.central._base import (
    HEALTH_PROBE_SECONDS,
    CentralStore,
    CentralStoreUnavailable,
    QueryPlan,
    QueryTimeout,
)
from commander_os.relay.central._group_commit import (
    CommitResult,
    GroupPlan,
    GroupWriter,
    MergedGroup,
    judged_agents,
)
from commander_os.relay.central._identity import AgentState, WriteSegment
from commander_os.relay.central._identity import recent_text as _recent_text
from commander_os.relay.central._identity import state_of as _state
from commander_os.relay.central._postgres_notify import Announcer
from commander_os.relay.central._postgres_query import build_query
from commander_os.relay.central._postgres_schema import REV_BLOCK, check_schema_name, migrate
from commander_os.relay.central._postgres_upkeep import (
    CHURNED_TABLES,
    FieldIndex,
    UpkeepReport,
    add_field_index,
    autovacuum_is_off,
    drop_field_index,
    list_field_indexes,
    read_indexed_fields,
    run_upkeep,
)
from commander_os.relay.central._postgres_watermark import Watermark

__all__ = ["PostgresCentralStore", "describe_url"]

_log = logging.getLogger("commander_os.relay.central")

#: Records merged into one transaction at most; bounds how long one commit holds its agents.
MAX_GROUP_RECORDS = 10_000
DEFAULT_POOL_SIZE = 8
#: Sessions of a relay are named this plus their role (operators and the watermark tell them
#: apart by it): only "writers" sessions draw revisions.
APPLICATION_PREFIX = "commander-os relay "


def application_name(role: str, schema: str | None) -> str:
    """A relay session's ``application_name``: its role, and its schema when it has one, so
    one store's watermark never waits on another schema's writers (63 characters at most)."""
    return (APPLICATION_PREFIX + role + (f" {schema}" if schema else ""))[:63]


#: Seconds between upkeep passes (retention sweep, vacuum, the list of field indexes).
UPKEEP_SECONDS = 30.0
#: Read after a page's query when it has a cursor (see ``_select``).
READ_HORIZON = "SELECT horizon_rev FROM retention"
AUTOVACUUM_WARNING = (
    "autovacuum is off on this PostgreSQL server: the relay vacuums the tables it churns "
    f"itself ({', '.join(CHURNED_TABLES)}) every %g s; other tables of the database are not "
    "vacuumed"
)
#: Seconds a write may run; a stuck writer must not hold its agents' rows forever.
WRITE_STATEMENT_TIMEOUT = 60.0

#: First in every write transaction: its id must exist before it draws a rev (the watermark).
TAKE_XID = "SELECT pg_current_xact_id()"
#: Lock the group's agents (sorted), creating the rows of new ones: ``DO UPDATE ... WHERE
#: false`` changes nothing but locks the row it met, so commits of one agent take turns.
LOCK_AGENTS = """
INSERT INTO agents AS a (agent_id, highest_version, last_seen)
SELECT agent_id, 0, %s FROM unnest(%s::text[]) AS agent_id
ON CONFLICT (agent_id) DO UPDATE SET last_seen = a.last_seen WHERE false
"""
#: The first rev of each block drawn, in drawing order (increasing).
DRAW_REVS = "SELECT nextval('records_rev_seq') FROM generate_series(1, %s::int) ORDER BY 1"
SELECT_STATES = """
SELECT agent_id, incarnation, seq_hi, recent, highest_version
FROM agents WHERE agent_id = ANY(%s::text[]) ORDER BY agent_id FOR UPDATE
"""
UPSERT_STATES = """
INSERT INTO agents AS a (agent_id, highest_version, last_seen, incarnation, seq_hi, recent)
SELECT * FROM unnest(%s::text[], %s::int8[], %s::int8[], %s::int8[], %s::int8[], %s::text[])
ON CONFLICT (agent_id) DO UPDATE SET
    last_seen = greatest(a.last_seen, excluded.last_seen), incarnation = excluded.incarnation,
    seq_hi = excluded.seq_hi, recent = excluded.recent
"""
#: One statement: apply the records (monotonic), log what changed, and move each agent's and
#: table's live count by what changed (``old`` reads the rows as they were before it: every
#: sub-statement sees one snapshot, and the agents' locks keep other writers off them).
UPSERT_RECORDS = """
WITH input AS (
    SELECT * FROM unnest(%(agent_id)b::text[], %(tbl)b::text[], %(key)b::text[],
                         %(version)b::int8[], %(ts)b::int8[], %(deleted)b::bool[],
                         %(data)b::text[]::jsonb[], %(rev)b::int8[])
         WITH ORDINALITY AS s(agent_id, tbl, key, version, ts, deleted, data, rev, n)
), old AS (
    SELECT r.agent_id, r.key, r.tbl, r.deleted FROM records r JOIN input s
      ON r.agent_id = s.agent_id AND r.key = s.key AND r.tbl = s.tbl
), applied AS (
    INSERT INTO records AS r (agent_id, tbl, key, version, ts, deleted, data, rev, received)
    SELECT s.agent_id, s.tbl, s.key, s.version, s.ts, s.deleted, s.data, s.rev, %(received)s
    FROM input s ORDER BY s.n
    ON CONFLICT (agent_id, key, tbl) DO UPDATE SET
        version = excluded.version, ts = excluded.ts, deleted = excluded.deleted,
        data = excluded.data, rev = excluded.rev, received = excluded.received
    WHERE excluded.version > r.version
    RETURNING r.agent_id, r.key, r.tbl, r.rev, r.deleted
), counted AS (
    INSERT INTO table_stats AS t (agent_id, tbl, live)
    SELECT a.agent_id, a.tbl, sum((NOT a.deleted)::int - coalesce((NOT o.deleted)::int, 0))
    FROM applied a LEFT JOIN old o ON o.agent_id = a.agent_id AND o.key = a.key AND o.tbl = a.tbl
    GROUP BY a.agent_id, a.tbl ORDER BY a.agent_id, a.tbl
    ON CONFLICT (agent_id, tbl) DO UPDATE SET live = t.live + excluded.live
)
INSERT INTO changes (agent_id, key, tbl, rev) SELECT agent_id, key, tbl, rev FROM applied
RETURNING rev
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
#: Live records per agent and table, as every commit keeps them (no count of ``records``).
SELECT_TABLE_COUNTS = "SELECT agent_id, tbl, live FROM table_stats WHERE live > 0"
#: The health probe: the newest revision, and whether this database can take writes at all.
PROBE = """
SELECT CASE WHEN is_called THEN last_value + %s - 1 ELSE last_value - 1 END,
       pg_is_in_recovery() OR current_setting('transaction_read_only') = 'on'
FROM records_rev_seq
"""
#: A watermark tick, in this order (see ``_postgres_watermark.py``): the highest rev drawn...
READ_LAST_REV = """
SELECT CASE WHEN is_called THEN last_value + %s - 1 ELSE last_value - 1 END
FROM records_rev_seq
"""
#: ...then, in a statement of its own (so read after it), the ids of running transactions.
#: Only the relays' writer sessions draw revs: transactions of anything else on the server
#: (other databases, other applications) must not hold the watermark back.
READ_RUNNING = """
SELECT coalesce(array_agg(backend_xid::text::bigint), '{}')
FROM pg_stat_activity
WHERE backend_xid IS NOT NULL AND datname = current_database() AND application_name = %s
"""
EXPLAIN_ANALYZE = "EXPLAIN (ANALYZE, FORMAT JSON) "
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


def _undecoded(text: str | bytes) -> str | bytes:
    """psycopg's JSON loader that leaves the text as it came (see ``_configure``)."""
    return text


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
        indexed_fields: Sequence[str] = (),
        retention: float = 7 * 86_400.0,
        upkeep_interval: float = UPKEEP_SECONDS,
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
        self._probe_conn: AsyncConnection[Any] | None = None
        self._tick_conn: AsyncConnection[Any] | None = None
        self._watermark = Watermark(self._tick)
        self.indexed_fields = tuple(indexed_fields)
        self.retention = retention
        self.upkeep_interval = upkeep_interval
        #: Fields with a usable index (refreshed by each upkeep pass).
        self._indexed: frozenset[str] = frozenset()
        self._upkeep_task: asyncio.Task[None] | None = None
        # Relays on one database wake each other, on a channel of the schema's.
        channel = "commander_os_changes" + (f"_{self.schema}" if self.schema else "")
        self._announcer = Announcer(channel, self._connect, self._heard)

    # -- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
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
            # Migrations are not queries: a short query budget must not cancel them.
            await self._configure(conn, WRITE_STATEMENT_TIMEOUT)
            await migrate(conn, self.schema)
            await self._prepare(conn)
        except psycopg.Error as exc:
            raise CentralStoreUnavailable(
                f"cannot prepare the central store schema at {where}: {_one_line(exc)}"
            ) from None
        finally:
            await conn.close()
        self._readers = await self._pool("readers", self.pool_size, self.query_timeout)
        self._writers = await self._pool("writers", 2, WRITE_STATEMENT_TIMEOUT)
        self._watermark = Watermark(self._tick)
        self._watermark.start()
        self._writer = GroupWriter(self._commit, _commit_failure, max_records=MAX_GROUP_RECORDS)
        self._writer.start()
        self._upkeep_task = asyncio.create_task(self._upkeep_loop(), name="central-upkeep")
        self._announcer.start()

    async def _prepare(self, conn: AsyncConnection[Any]) -> None:
        """Create the configured field indexes that are missing; warn if autovacuum is off."""
        have = await read_indexed_fields(conn)
        for field in self.indexed_fields:
            if field not in have:
                await add_field_index(conn, field)
        self._indexed = await read_indexed_fields(conn)
        if await autovacuum_is_off(conn):
            _log.warning(AUTOVACUUM_WARNING, self.upkeep_interval)

    async def _pool(
        self, role: str, size: int, statement_timeout: float
    ) -> AsyncConnectionPool[AsyncConnection[Any]]:
        async def configure(conn: AsyncConnection[Any]) -> None:
            await self._configure(conn, statement_timeout)
            if role == "readers":
                await conn.execute(CONFIGURE_READER)

        pool: AsyncConnectionPool[AsyncConnection[Any]] = AsyncConnectionPool(
            self.url,
            kwargs={
                "autocommit": True,
                "connect_timeout": max(1, round(self.connect_timeout)),
                # Operators (and the lock tests) tell the relay's sessions apart by this.
                "application_name": application_name(role, self.schema),
            },
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
        # JSONB arrives as text and is decoded row by row in _decode_data: a value orjson
        # cannot read (a number past the double range, stored by hand) must damage one
        # record of a page, not fail the whole fetch.
        set_json_loads(_undecoded, conn)
        sync = "on" if self.durability == "full" else "off"
        # 0 means no budget (PostgreSQL's own meaning of statement_timeout = 0).
        timeout = f"{max(1, round(statement_timeout * 1000))}ms" if statement_timeout else "0"
        await conn.execute(CONFIGURE_SESSION, (timeout, sync, self.schema, self.schema))

    async def close(self) -> None:
        writer, readers, writers = self._writer, self._readers, self._writers
        if writer is None:
            return
        await writer.stop()
        await self._watermark.stop()
        await self._announcer.stop()
        upkeep, self._upkeep_task = self._upkeep_task, None
        if upkeep is not None:
            upkeep.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await upkeep
        self._writer = self._readers = self._writers = None
        probe, self._probe_task = self._probe_task, None
        if probe is not None:
            probe.cancel()
        await self._close_probe()
        tick_conn, self._tick_conn = self._tick_conn, None
        if tick_conn is not None:
            await tick_conn.close()
        for pool in (readers, writers):
            if pool is not None:
                await pool.close()

    # -- writes -------------------------------------------------------------------------------

    def _check_storable(self, records: list[EncodedRecord]) -> None:
        _check_storable(records)

    async def _commit(self, jobs: list[list[WriteSegment]]) -> CommitResult:
        pool = self._writers
        if pool is None:
            raise CentralStoreUnavailable("central store is closed")
        try:
            async with pool.connection() as conn, conn.transaction():
                result = await self._commit_in(conn, jobs)
        except _UNAVAILABLE as exc:
            raise CentralStoreUnavailable(f"central store unavailable: {_one_line(exc)}") from exc
        self._watermark.poke()
        self._announcer.announce()
        return result

    def _heard(self) -> None:
        """Another relay committed: read up to it soon, and wake this relay's readers."""
        self._watermark.poke()
        self._announce_change()

    async def _connect(self) -> AsyncConnection[Any]:
        conn = await AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout))
        )
        try:
            await self._configure(conn, HEALTH_PROBE_SECONDS)
        except BaseException:  # cancelled by close() too: never leave it open
            await conn.close()
            raise
        return conn

    async def _commit_in(
        self, conn: AsyncConnection[Any], jobs: list[list[WriteSegment]]
    ) -> CommitResult:
        """One group in the open transaction: take an id, lock the agents (sorted: relays never
        deadlock), judge the delivery segments against their rows, draw revs, write."""
        now_us = time.time_ns() // 1000
        agents = sorted({segment.agent_id for job in jobs for segment in job})
        judged_ids = judged_agents(jobs)
        bound = sum(len(segment.records) for job in jobs for segment in job)
        async with conn.pipeline():
            await conn.execute(TAKE_XID)
            await conn.execute(LOCK_AGENTS, (now_us, agents))
            states = await conn.execute(SELECT_STATES, (judged_ids,)) if judged_ids else None
            # At most one row per record: draw for that many (unused revs are gaps).
            drawn = await conn.execute(DRAW_REVS, (-(-bound // REV_BLOCK),)) if bound else None
        judged = {} if states is None else {a: _state(*v) for a, *v in await states.fetchall()}
        blocks = [] if drawn is None else [int(first) for (first,) in await drawn.fetchall()]
        plan = GroupPlan.of(jobs, judged)
        group = plan.merged
        hwm = {agent: state.highest_version for agent, state in judged.items()}
        applied: list[int] = []
        async with conn.pipeline():
            if group.rows:
                revs = _revs_by_rank(blocks, len(group.rows))
                row_revs = [revs[rank] for rank in group.rev_rank]
                upsert = await conn.execute(UPSERT_RECORDS, _upsert_params(group, row_revs, now_us))
                high = await conn.execute(UPSERT_AGENTS, _agent_params(group, now_us))
            if plan.states:
                await conn.execute(UPSERT_STATES, _state_params(plan.states, hwm, now_us))
        if group.rows:
            hwm.update({agent: int(version) for agent, version in await high.fetchall()})
            row_of_rev = {rev: index for index, rev in enumerate(row_revs)}
            applied = [row_of_rev[rev] for (rev,) in await upsert.fetchall()]
        return CommitResult(plan, applied, hwm)

    # -- reads --------------------------------------------------------------------------------

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        rows, _ = await self._fetch_two(sql, params, None)
        return rows

    async def _fetch_two(
        self, sql: str, params: Sequence[Any], then: str | None
    ) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        """The rows of ``sql``, and of ``then`` (a statement of its own, run after it)."""
        pool = self._readers
        if pool is None:
            raise CentralStoreUnavailable("central store is closed")
        try:
            # Waiting for a connection is bounded by the query budget too: under load a query
            # answers within about twice the budget (the wait, then statement_timeout).
            async with pool.connection(timeout=self.query_timeout) as conn:
                if then is None:
                    cursor = await conn.execute(sql, params)
                    return await cursor.fetchall(), []
                async with conn.pipeline():
                    first = await conn.execute(sql, params)
                    second = await conn.execute(then)
                return await first.fetchall(), await second.fetchall()
        except psycopg.errors.QueryCanceled as exc:
            raise QueryTimeout(
                f"query ran past the {self.query_timeout:g} s budget: "
                "narrow it with agent_id, table or key"
            ) from exc
        except PoolTimeout as exc:
            # Busy, or the database away? The health probe (its own connection) tells.
            await self._shared_probe()
            raise QueryTimeout(
                f"query waited past the {self.query_timeout:g} s budget for a free "
                "database connection: the relay is busy, retry later"
            ) from exc
        except (psycopg.Error, PoolClosed) as exc:
            raise CentralStoreUnavailable(f"central store read failed: {_one_line(exc)}") from exc

    def _indexed_fields(self) -> frozenset[str]:
        return self._indexed

    async def _select(self, request: QueryRequest, limit: int) -> Sequence[Sequence[Any]]:
        ceiling = await self._watermark.fresh()
        sql, params = build_query(request, limit=limit, ceiling=ceiling, indexed=self._indexed)
        if request.cursor is None:
            rows: Sequence[Sequence[Any]] = await self._fetch(sql, params)
            return rows
        # The horizon is read after the page: if the sweep had not passed the cursor then,
        # it had not when the page was read either, so the page missed no tombstone.
        rows, ((horizon,),) = await self._fetch_two(sql, params, READ_HORIZON)
        after = decode_cursor(request.cursor)
        if after < horizon:
            raise CursorExpired(
                f"cursor {request.cursor[:40]!r} is older than the change log's retention "
                f"horizon ({self.retention:g} s): changes it would need were swept; "
                "start over without a cursor (resync)"
            )
        return rows

    def _decode_data(self, raw: Any) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(raw)
        return data

    async def explain(self, request: QueryRequest) -> QueryPlan:
        """``EXPLAIN (ANALYZE, FORMAT JSON)``: runs the query once more to measure it."""
        ceiling = await self._watermark.fresh()
        sql, params = build_query(
            request, limit=request.limit + 1, ceiling=ceiling, indexed=self._indexed
        )
        ((document,),) = await self._fetch(EXPLAIN_ANALYZE + sql, params)
        if isinstance(document, str | bytes):  # JSON reaches the relay as text (see _configure)
            document = orjson.loads(document)
        root = document[0]["Plan"]
        return QueryPlan(self.backend, list(_plan_steps(root)), _examined(root), raw=document)

    async def _agent_rows(self) -> tuple[Sequence[Sequence[Any]], Sequence[Sequence[Any]]]:
        # Kept by every commit (UPSERT_RECORDS): a key lookup per record on ingest instead of
        # a scan of every record per call (1.07 s at 5M records).
        counts: Sequence[Sequence[Any]] = await self._fetch(SELECT_TABLE_COUNTS)
        agents: Sequence[Sequence[Any]] = await self._fetch(SELECT_AGENTS)
        return agents, counts

    async def _probe(self) -> tuple[int, str | None]:
        # A connection of its own: the readers' pool may be taken by slow queries, and a load
        # balancer asking /health must not wait behind them. Calls never overlap (_base).
        try:
            conn = self._probe_conn
            if conn is None or conn.closed:
                conn = self._probe_conn = await AsyncConnection.connect(
                    self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout))
                )
                await self._configure(conn, HEALTH_PROBE_SECONDS)
            cursor = await conn.execute(PROBE, (REV_BLOCK,))
            row = await cursor.fetchone()
        except psycopg.Error as exc:
            await self._close_probe()
            raise CentralStoreUnavailable(f"central store unavailable: {_one_line(exc)}") from exc
        assert row is not None
        last_rev, read_only = row
        return int(last_rev), "the database is read-only (a standby?)" if read_only else None

    async def feed_head(self) -> int:
        """The commit-order watermark (revs above it may still commit)."""
        return await self._watermark.fresh()

    # -- upkeep and field indexes ---------------------------------------------------------

    async def upkeep(self) -> UpkeepReport:
        """One upkeep pass (the store runs one every ``upkeep_interval`` seconds): sweep the
        change log past the retention horizon, vacuum what churned, re-read the field indexes.
        Raises :class:`CentralStoreUnavailable` when the database is away."""
        try:
            async with self._admin() as conn:
                report = await run_upkeep(
                    conn, watermark=self._watermark.value, retention=self.retention
                )
                self._indexed = await read_indexed_fields(conn)
        except psycopg.Error as exc:
            raise CentralStoreUnavailable(f"central store upkeep failed: {_one_line(exc)}") from exc
        return report

    async def _upkeep_loop(self) -> None:
        while True:
            await asyncio.sleep(self.upkeep_interval)
            try:
                await self.upkeep()
            except CentralStoreUnavailable as exc:
                _log.warning("%s", exc)

    async def add_field_index(self, field: str) -> FieldIndex:
        """Create (without blocking writes) and register the value index of ``field``.
        Raises ``ValueError`` for a field that cannot be indexed."""
        async with self._admin() as conn:
            index = await add_field_index(conn, field)
            self._indexed = await read_indexed_fields(conn)
        return index

    async def drop_field_index(self, field: str) -> bool:
        """Drop the value index of ``field``; False if it had none."""
        async with self._admin() as conn:
            dropped = await drop_field_index(conn, field)
            self._indexed = await read_indexed_fields(conn)
        return dropped

    async def field_indexes(self) -> list[FieldIndex]:
        """Every field index, by field."""
        async with self._admin() as conn:
            return await list_field_indexes(conn)

    @contextlib.asynccontextmanager
    async def _admin(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A connection of its own without a statement budget (index builds, vacuum)."""
        conn = await AsyncConnection.connect(
            self.url, autocommit=True, connect_timeout=max(1, round(self.connect_timeout))
        )
        try:
            await self._configure(conn, 0)
            yield conn
        finally:
            await conn.close()

    async def _tick(self) -> tuple[int, frozenset[int]]:
        """One watermark tick on a connection of its own (queries may hold every reader)."""
        try:
            conn = self._tick_conn
            if conn is None or conn.closed:
                conn = self._tick_conn = await self._connect()
            # Two statements, so the list is read after the rev (see the watermark).
            async with conn.pipeline():
                last = await conn.execute(READ_LAST_REV, (REV_BLOCK,))
                listed = await conn.execute(
                    READ_RUNNING, (application_name("writers", self.schema),)
                )
            (last_rev,) = await last.fetchone() or (0,)
            (running,) = await listed.fetchone() or ([],)
        except psycopg.Error:
            conn, self._tick_conn = self._tick_conn, None
            if conn is not None:
                await conn.close()
            raise
        return int(last_rev), frozenset(running)

    async def _close_probe(self) -> None:
        conn, self._probe_conn = self._probe_conn, None
        if conn is not None:
            await conn.close()

    def _describe(self) -> dict[str, Any]:
        return {"database": describe_url(self.url), "schema": self.schema}


def _plan_steps(node: dict[str, Any], depth: int = 0) -> Iterator[str]:
    """One line per plan node, indented by depth: "Index Scan using records_rev on records
    (rows 100, removed 2,000)"."""
    text = node["Node Type"]
    if "Index Name" in node:
        text += f" using {node['Index Name']}"
    if "Relation Name" in node:
        text += f" on {node['Relation Name']}"
    removed = node.get("Rows Removed by Filter")
    text += f" (rows {node.get('Actual Rows', 0):,}"
    text += f", removed {removed:,})" if removed else ")"
    yield "  " * depth + text
    for child in node.get("Plans", ()):
        yield from _plan_steps(child, depth + 1)


def _examined(node: dict[str, Any]) -> int:
    """Rows the scans of a plan read: those they returned and those their filters removed.

    The inner side of a nested loop is a lookup per outer row (the change log joined to its
    records, one row each): the rows examined are the outer side's."""
    rows = 0
    if "Relation Name" in node:
        kept = node.get("Actual Rows", 0) + node.get("Rows Removed by Filter", 0)
        rows += int(kept * node.get("Actual Loops", 1))
    children = node.get("Plans", ())
    if node["Node Type"] == "Nested Loop":
        children = children[:1]
    return rows + sum(_examined(child) for child in children)


def _revs_by_rank(blocks: list[int], count: int) -> list[int]:
    """The first ``count`` revs of the drawn blocks, in increasing order."""
    revs = [rev for first in blocks for rev in range(first, first + REV_BLOCK)]
    return revs[:count]


def _upsert_params(group: MergedGroup, revs: list[int], now_us: int) -> dict[str, Any]:
    rows = group.rows
    return {
        "received": now_us,
        "agent_id": [r.agent_id for r in rows],
        "tbl": [r.table for r in rows],
        "key": [r.key for r in rows],
        "version": [r.version for r in rows],
        "ts": [r.ts_us for r in rows],
        "deleted": [r.deleted for r in rows],
        "data": [r.data for r in rows],
        "rev": revs,
    }


def _agent_params(group: MergedGroup, now_us: int) -> tuple[list[str], list[int], list[int]]:
    agents = sorted(group.highest)
    return agents, [group.highest[a] for a in agents], [now_us] * len(agents)


def _state_params(
    states: dict[str, AgentState], hwm: dict[str, int], now_us: int
) -> tuple[list[Any], ...]:
    agents = sorted(states)
    values = [states[agent] for agent in agents]
    return (
        agents,
        [
            hwm.get(agent, state.highest_version)
            for agent, state in zip(agents, values, strict=True)
        ],
        [now_us] * len(agents),
        [state.incarnation for state in values],
        [state.seq_hi for state in values],
        [_recent_text(state) for state in values],
    )


def _commit_failure(exc: Exception) -> Exception:
    if isinstance(exc, psycopg.DataError):
        return ValueError(f"records cannot be stored: {_one_line(exc)}")
    return CentralStoreUnavailable(f"central store failed: {_one_line(exc)}")
