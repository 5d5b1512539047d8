"""The embedded central store: one SQLite file (WAL) in the relay's ``agent_storage_dir``.

Layout: ``records`` holds the newest state of every ``(agent_id, table, key)``; its rowid *is*
the global ``rev``, so a change moves its row to the end of the rowid B-tree (an append) and the
change feed is a plain rowid range scan. ``agents`` keeps each agent's high-water mark and last
contact; ``table_counts`` (maintained by triggers) makes ``/relay/agents`` cheap at any size.

Writes are **group-committed** (:mod:`._group_commit`): every apply request waiting is merged
into one ``BEGIN IMMEDIATE`` transaction and one fsync, run on the store's one writer thread, and
each request is answered only after ``COMMIT`` returned. Reads run on a small pool of threads
with their own connections, so neither blocks the event loop nor waits for the writer (WAL
snapshots).

With an ``encryption_key`` every connection opens the file through SQLCipher (see
:mod:`commander_os._sqlite`): the database and its WAL then hold no plaintext.
"""

from __future__ import annotations

import asyncio
import operator
import os
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import compress, repeat
from pathlib import Path
from typing import Any, Literal

import orjson

from commander_os import _sqlite as db
from commander_os._files import make_private_dir
from commander_os.errors import EncryptionError, StorageError
from commander_os.protocol import EncodedRecord, QueryRequest
from commander_os.relay.central._base import (
    HEALTH_PROBE_SECONDS,
    CentralStore,
    CentralStoreUnavailable,
    FieldIndex,
    QueryPlan,
    QueryTimeout,
    field_index_name,
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
from commander_os.relay.central._sqlite_query import (
    EXAMINED_FUNCTION,
    build_query,
    index_expression,
)

__all__ = ["DEFAULT_DB_NAME", "SQLiteCentralStore"]

DEFAULT_DB_NAME = "central.db"
SCHEMA_VERSION = 3
#: Keys per lookup of existing rows (well under SQLite's bound-parameter limit).
LOOKUP_CHUNK = 500
#: Records merged into one transaction at most; bounds the time one commit holds the lock.
MAX_GROUP_RECORDS = 20_000
READER_THREADS = 4
#: Readers map the whole file (SQLite caps this at its compile-time limit, 2 GiB by default;
#: SQLCipher ignores it). A filter walks an agent's rows spread over the file; reaching them
#: through the map rather than read() into a 64 MiB page cache, at 1M records: 0.23 instead
#: of 0.65 us a row with 4 KiB pages, 0.17 instead of 0.35 us with 16 KiB pages.
READER_MMAP_BYTES = 1 << 40
#: Page size of new (unencrypted) stores. Records are ~1 KB: 16 KiB pages hold a dozen, where
#: 4 KiB pages held three and wasted a sixth of each; ingest writes ~30% less CPU per record.
PAGE_SIZE = 16384
#: The writer's and each reader's connection settings.
WRITER_TUNING = db.Tuning(
    page_size=PAGE_SIZE, cache_kib=65536, mmap_bytes=256 << 20, temp_in_memory=True
)
READER_TUNING = db.Tuning(cache_kib=65536, mmap_bytes=READER_MMAP_BYTES, temp_in_memory=True)
#: Below this many free bytes on its disk, the store reports that it cannot write (health
#: "degraded") before a commit fails on it.
MIN_FREE_BYTES = 1 << 20
#: SQLite VM steps between two checks of the query time budget.
_PROGRESS_STEPS = 20_000
_READ_ERRORS: tuple[type[Exception], ...] = (*db.Error, StorageError)
#: SQLite's error when a JSON function meets text that is not JSON.
_MALFORMED_JSON = "malformed JSON"
#: Opening failures reported as CentralStoreUnavailable (both drivers' errors, a bad key).
_OPEN_ERRORS: tuple[type[Exception], ...] = (
    OSError,
    EncryptionError,
    StorageError,
    *db.Error,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    rev      INTEGER PRIMARY KEY,
    agent_id TEXT    NOT NULL,
    tbl      TEXT    NOT NULL,
    key      TEXT    NOT NULL,
    version  INTEGER NOT NULL,
    ts       INTEGER NOT NULL,
    deleted  INTEGER NOT NULL,
    data     TEXT,
    received INTEGER NOT NULL
);
-- (agent_id, key, tbl) rather than (agent_id, tbl, key): a lookup by agent and key without a
-- table is then an index prefix too.
CREATE UNIQUE INDEX IF NOT EXISTS records_identity ON records(agent_id, key, tbl);
CREATE INDEX IF NOT EXISTS records_agent_table_rev ON records(agent_id, tbl, rev);
CREATE TABLE IF NOT EXISTS agents (
    agent_id        TEXT PRIMARY KEY,
    highest_version INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL,
    incarnation     INTEGER NOT NULL DEFAULT 0,
    seq_hi          INTEGER NOT NULL DEFAULT 0,
    recent          TEXT    NOT NULL DEFAULT '[]'
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS table_counts (
    agent_id TEXT    NOT NULL,
    tbl      TEXT    NOT NULL,
    live     INTEGER NOT NULL,
    PRIMARY KEY (agent_id, tbl)
) WITHOUT ROWID;
-- Opt-in value indexes on fields of the data (commander-os relay index add FIELD).
CREATE TABLE IF NOT EXISTS field_indexes (
    field TEXT PRIMARY KEY,
    name  TEXT NOT NULL UNIQUE
) WITHOUT ROWID;
-- Version 1 kept table_counts with triggers; the writer now does it (3x faster ingest).
DROP TRIGGER IF EXISTS records_count_insert;
DROP TRIGGER IF EXISTS records_count_update;
"""
#: Steps from an older schema (PRAGMA user_version) to this one, each in the open transaction.
UPGRADES: dict[int, str] = {
    # 3: the relay's receive time of each record; each agent's delivery identity.
    3: """
    ALTER TABLE records ADD COLUMN received INTEGER NOT NULL DEFAULT 0;
    UPDATE records SET received = ts;
    ALTER TABLE agents ADD COLUMN incarnation INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN seq_hi INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE agents ADD COLUMN recent TEXT NOT NULL DEFAULT '[]';
    """,
}

INSERT_RECORD = """
INSERT INTO records(rev, agent_id, tbl, key, version, ts, deleted, data, received)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)
"""
# Moving a row to its new rev rewrites its rowid: the change feed is then a rowid range scan.
UPDATE_RECORD = """
UPDATE records SET rev = ?, version = ?, ts = ?, deleted = ?, data = ?, received = ?
WHERE rev = ?
"""
SELECT_EXISTING = """
SELECT key, tbl, rev, version, deleted FROM records WHERE agent_id = ? AND key IN ({marks})
"""
UPSERT_TABLE_COUNT = """
INSERT INTO table_counts(agent_id, tbl, live) VALUES (?, ?, ?)
ON CONFLICT(agent_id, tbl) DO UPDATE SET live = live + excluded.live
"""
UPSERT_AGENT = """
INSERT INTO agents(agent_id, highest_version, last_seen) VALUES (?, ?, ?)
ON CONFLICT(agent_id) DO UPDATE SET
    highest_version = max(highest_version, excluded.highest_version),
    last_seen = excluded.last_seen
RETURNING highest_version
"""
SELECT_STATES = """
SELECT agent_id, incarnation, seq_hi, recent, highest_version
FROM agents WHERE agent_id IN (SELECT value FROM json_each(?))
"""
UPSERT_STATE = """
INSERT INTO agents(agent_id, highest_version, last_seen, incarnation, seq_hi, recent)
VALUES (?, ?, ?, ?, ?, ?)
ON CONFLICT(agent_id) DO UPDATE SET
    last_seen = excluded.last_seen, incarnation = excluded.incarnation,
    seq_hi = excluded.seq_hi, recent = excluded.recent
"""
SELECT_MAX_REV = "SELECT ifnull(max(rev), 0) FROM records"
SELECT_AGENTS = "SELECT agent_id, highest_version, last_seen FROM agents ORDER BY agent_id"
SELECT_TABLE_COUNTS = "SELECT agent_id, tbl, live FROM table_counts"
SELECT_USER_VERSION = "PRAGMA user_version"
SELECT_FIELD_INDEXES = "SELECT field, name FROM field_indexes ORDER BY field"
REGISTER_FIELD = "INSERT OR IGNORE INTO field_indexes(field, name) VALUES (?, ?)"
FORGET_FIELD = "DELETE FROM field_indexes WHERE field = ? RETURNING name"
INDEX_BYTES = "SELECT sum(pgsize) FROM dbstat WHERE name = ?"
#: Seconds between re-reads of the field indexes (another process may add one).
FIELD_INDEX_REFRESH = 10.0
HAS_RECORDS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'records'"


_Identity = tuple[str, str, str]  # (agent_id, key, table): the unique index's order

# Field getters of EncodedRecord that run in C (the writer touches every record of a group).
_AGENT = operator.itemgetter(0)
_AGENT_TABLE = operator.itemgetter(0, 1)
_DELETED = operator.itemgetter(5)


@dataclass
class _Plan:
    """What one group commit writes."""

    inserts: list[tuple[Any, ...]] = field(default_factory=list)
    updates: list[tuple[Any, ...]] = field(default_factory=list)
    live_delta: dict[tuple[str, str], int] = field(default_factory=dict)
    applied: list[int] = field(default_factory=list)


class _Writer:
    """The writer connection and the next free revision; used only on the writer thread."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.next_rev = int(conn.execute(SELECT_MAX_REV).fetchone()[0]) + 1

    def commit(self, jobs: list[list[WriteSegment]]) -> CommitResult:
        conn = self.conn
        now_us = time.time_ns() // 1000
        with db.write_transaction(conn, "a central-store commit"):
            judged = self._states(judged_agents(jobs))
            group_plan = GroupPlan.of(jobs, judged)
            group = group_plan.merged
            plan = self._plan(group, self._existing(group.rows), now_us)
            conn.executemany(INSERT_RECORD, plan.inserts)
            conn.executemany(UPDATE_RECORD, plan.updates)
            conn.executemany(UPSERT_TABLE_COUNT, [(*k, d) for k, d in plan.live_delta.items()])
            hwm = {agent: state.highest_version for agent, state in judged.items()}
            for agent, version in group.highest.items():
                hwm[agent] = int(conn.execute(UPSERT_AGENT, (agent, version, now_us)).fetchone()[0])
            conn.executemany(UPSERT_STATE, _state_rows(group_plan.states, hwm, now_us))
        self.next_rev += len(plan.applied)
        return CommitResult(group_plan, plan.applied, hwm)

    def _states(self, agents: list[str]) -> dict[str, AgentState]:
        if not agents:
            return {}
        rows = self.conn.execute(SELECT_STATES, (orjson.dumps(agents).decode(),))
        return {agent: _state(*values) for agent, *values in rows}

    def _existing(self, rows: list[EncodedRecord]) -> dict[_Identity, Any]:
        """``(rev, version, deleted)`` of the stored rows among ``rows``' identities."""
        keys_by_agent: dict[str, list[str]] = {}
        for rec in rows:
            keys_by_agent.setdefault(rec.agent_id, []).append(rec.key)
        found: dict[_Identity, Any] = {}
        for agent_id, keys in keys_by_agent.items():
            unique = list(dict.fromkeys(keys))
            for start in range(0, len(unique), LOOKUP_CHUNK):
                chunk = unique[start : start + LOOKUP_CHUNK]
                sql = SELECT_EXISTING.format(marks=", ".join("?" * len(chunk)))
                for key, tbl, rev, version, deleted in self.conn.execute(sql, [agent_id, *chunk]):
                    found[(agent_id, key, tbl)] = (rev, version, deleted)
        return found

    def _plan(self, group: MergedGroup, existing: dict[_Identity, Any], now_us: int) -> _Plan:
        """Decide each row against the stored one: insert, update (newer) or ignore.

        Applied rows take revisions in ``group.rev_rank`` order (each agent's version order);
        rows stay in identity order, so inserts land in the unique index's order.
        """
        if not existing:
            return self._plan_inserts(group, now_us)
        plan = _Plan()
        rows = group.rows
        changed: list[int] = []
        olds: dict[int, Any] = {}
        for index, rec in enumerate(rows):
            old = existing.get((rec.agent_id, rec.key, rec.table)) if existing else None
            if old is None:
                changed.append(index)
            elif old[1] < rec.version:
                changed.append(index)
                olds[index] = old
        # Revisions: consecutive, handed out in rev_rank order among the applied rows.
        rank = group.rev_rank
        order = sorted(changed, key=rank.__getitem__)
        rev_of = dict(zip(order, range(self.next_rev, self.next_rev + len(order)), strict=True))
        live: Counter[tuple[str, str]] = Counter()
        for index in changed:
            rec = rows[index]
            old = olds.get(index)
            if old is None:
                plan.inserts.append((rev_of[index], *rec, now_us))
                live[_AGENT_TABLE(rec)] += 0 if rec.deleted else 1
            else:
                update = (
                    rev_of[index],
                    rec.version,
                    rec.ts_us,
                    rec.deleted,
                    rec.data,
                    now_us,
                    old[0],
                )
                plan.updates.append(update)
                live[_AGENT_TABLE(rec)] += (0 if rec.deleted else 1) - (0 if old[2] else 1)
        plan.live_delta = dict(live)
        plan.applied = changed
        return plan

    def _plan_inserts(self, group: MergedGroup, now_us: int) -> _Plan:
        """The bulk of an ingest: no identity is stored yet, every row is inserted (in C)."""
        rows = group.rows
        revs = map(operator.add, group.rev_rank, repeat(self.next_rev))
        # (rev,) + record + (received,): EncodedRecord's fields are the columns after rev.
        inserts = list(map(operator.add, map(operator.add, zip(revs), rows), repeat((now_us,))))
        # Every applied (agent, table) gets a count row, even when its delta is 0 (tombstones).
        live = Counter(dict.fromkeys(map(_AGENT_TABLE, rows), 0))
        live.update(map(_AGENT_TABLE, compress(rows, map(operator.not_, map(_DELETED, rows)))))
        return _Plan(inserts=inserts, live_delta=dict(live), applied=list(range(len(rows))))


class _RowCounter:
    """Counts the rows a statement examines (called by SQLite for each; see build_query)."""

    __slots__ = ("rows",)

    def __init__(self) -> None:
        self.rows = 0

    def __call__(self, _rev: int) -> int:
        self.rows += 1
        return 1


class SQLiteCentralStore(CentralStore):
    """The default central store: ``<directory>/central.db`` (see the module docstring).

    ``durability="full"`` (default) fsyncs every group commit; ``"normal"`` may lose the last
    commits on power loss. ``max_value_bytes`` rejects larger encoded values before writing;
    ``query_timeout`` (seconds) bounds every query. ``encryption_key`` encrypts the file at
    rest (SQLCipher); it is never shown in health or errors. The folder is created 0700 and
    the database 0600; a symbolic link at its path is refused unless ``follow_symlinks``.
    """

    backend = "sqlite"

    def __init__(
        self,
        path: Path | str,
        *,
        durability: Literal["full", "normal"] = "full",
        max_value_bytes: int | None = None,
        query_timeout: float = 5.0,
        reader_threads: int = READER_THREADS,
        encryption_key: str | None = None,
        follow_symlinks: bool = False,
        indexed_fields: Sequence[str] = (),
    ) -> None:
        self.path = Path(path)
        self.follow_symlinks = follow_symlinks
        self._encryption_key = encryption_key
        self.durability = durability
        self.max_value_bytes = max_value_bytes
        self.query_timeout = query_timeout
        self._reader_threads = reader_threads
        self._write_thread: ThreadPoolExecutor | None = None
        self._state: _Writer | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._probe_thread: ThreadPoolExecutor | None = None
        self._reader_conns: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._lock = threading.Lock()
        self.indexed_fields = tuple(indexed_fields)
        #: Fields with an index, and when they were last read (see FIELD_INDEX_REFRESH).
        self._indexed: frozenset[str] = frozenset()
        self._indexed_at = 0.0

    @classmethod
    def in_directory(cls, directory: Path | str, **options: Any) -> SQLiteCentralStore:
        """The store at ``directory/central.db`` (the relay's ``agent_storage_dir``)."""
        return cls(Path(directory) / DEFAULT_DB_NAME, **options)

    # -- life cycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        if self._writer is not None:
            return
        self._state = await asyncio.to_thread(self._open_writer)
        self._write_thread = ThreadPoolExecutor(1, thread_name_prefix="central-sqlite-writer")
        self._readers = ThreadPoolExecutor(self._reader_threads, thread_name_prefix="central-read")
        self._probe_thread = ThreadPoolExecutor(1, thread_name_prefix="central-health")
        self._writer = GroupWriter(self._commit, _commit_failure, max_records=MAX_GROUP_RECORDS)
        self._writer.start()

    def _open_writer(self) -> _Writer:
        try:
            make_private_dir(self.path.parent)
            conn = self._connect(writer=True)
            _migrate(conn)
            for field in self.indexed_fields:
                _create_field_index(conn, field)
            self._indexed = _read_fields(conn)
            self._indexed_at = time.monotonic()
        except _OPEN_ERRORS as exc:
            raise CentralStoreUnavailable(f"cannot open central store {self.path}: {exc}") from exc
        return _Writer(conn)

    def _connect(self, *, writer: bool) -> sqlite3.Connection:
        return db.connect(
            self.path,
            durability=self.durability,
            query_only=not writer,
            encryption_key=self._encryption_key,
            tuning=WRITER_TUNING if writer else READER_TUNING,
            follow_symlinks=self.follow_symlinks,
        )

    async def close(self) -> None:
        writer, state = self._writer, self._state
        write_thread, readers, probe = self._write_thread, self._readers, self._probe_thread
        if writer is None or state is None or write_thread is None or readers is None:
            return
        await writer.stop()
        self._writer = None
        self._state = self._write_thread = self._readers = self._probe_thread = None
        write_thread.submit(state.conn.close).result()
        write_thread.shutdown(wait=True)
        readers.shutdown(wait=True)
        if probe is not None:
            probe.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    # -- writes -------------------------------------------------------------------------------

    async def _commit(self, jobs: list[list[WriteSegment]]) -> CommitResult:
        state, thread = self._state, self._write_thread
        if state is None or thread is None:
            raise CentralStoreUnavailable("central store is closed")
        return await asyncio.get_running_loop().run_in_executor(thread, state.commit, jobs)

    # -- reads --------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        """This thread's read connection (each reader thread, and the probe's, has its own)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(writer=False)
            conn.set_progress_handler(self._over_budget, _PROGRESS_STEPS)
            counter = self._local.counter = _RowCounter()
            conn.create_function(EXAMINED_FUNCTION, 1, counter)
            self._local.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        return conn

    def _over_budget(self) -> int:
        # A non-zero return makes SQLite interrupt the running statement.
        return int(time.monotonic() > self._local.deadline)

    async def _read(self, func: Any, *args: Any) -> Any:
        """Run ``func(*args)`` on a reader thread within the query budget, which starts now:
        time spent waiting for a free reader counts, so a busy relay answers within it."""
        deadline = time.monotonic() + self.query_timeout
        return await self._run(self._readers, self._within_budget, deadline, func, *args)

    def _within_budget(self, deadline: float, func: Any, *args: Any) -> Any:
        if time.monotonic() > deadline:
            raise QueryTimeout(
                f"query waited past the {self.query_timeout:g} s budget for a free reader: "
                "the relay is busy, retry later"
            )
        self._local.deadline = deadline
        return func(*args)

    async def _run(self, threads: ThreadPoolExecutor | None, func: Any, *args: Any) -> Any:
        """``func(*args)`` on one of ``threads``, its errors translated to the store's."""
        if threads is None:
            raise CentralStoreUnavailable("central store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(threads, func, *args)
        except db.OperationalError as exc:
            if "interrupted" in str(exc):
                raise QueryTimeout(
                    f"query ran past the {self.query_timeout:g} s budget: "
                    "narrow it with agent_id, table or key"
                ) from exc
            raise CentralStoreUnavailable(f"central store read failed: {exc}") from exc
        except _READ_ERRORS as exc:
            raise CentralStoreUnavailable(f"central store read failed: {exc}") from exc
        except RuntimeError as exc:  # executor shut down while we were submitting
            raise CentralStoreUnavailable("central store is closed") from exc

    def _indexed_fields(self) -> frozenset[str]:
        return self._indexed

    async def _select(self, request: QueryRequest, limit: int) -> Sequence[Sequence[Any]]:
        rows: tuple[list[tuple[Any, ...]], int] = await self._read(
            self._fetch_page, request, limit, False
        )
        return rows[0]

    async def _select_counted(
        self, request: QueryRequest, limit: int
    ) -> tuple[Sequence[Sequence[Any]], int | None]:
        counted: tuple[Sequence[Sequence[Any]], int] = await self._read(
            self._fetch_page, request, limit, True
        )
        return counted

    def _fetch_page(
        self, request: QueryRequest, limit: int, count_rows: bool
    ) -> tuple[list[tuple[Any, ...]], int]:
        """One page of ``request`` and (with ``count_rows``) the rows examined, else 0."""
        try:
            return self._fetch_counted(
                *build_query(
                    request, limit=limit, count_rows=count_rows, indexed=self._fields_now()
                )
            )
        except db.OperationalError as exc:
            if not request.where or _MALFORMED_JSON not in str(exc):
                raise
        # A row whose data is not JSON (stored by hand or by a bug) made a field filter fail:
        # such a row has no fields, so it matches no filter; the page goes on without it.
        sql, params = build_query(
            request,
            limit=limit,
            valid_json_only=True,
            count_rows=count_rows,
            indexed=self._fields_now(),
        )
        return self._fetch_counted(sql, params)

    def _fields_now(self) -> frozenset[str]:
        """The indexed fields, re-read now and then on this reader's connection."""
        if time.monotonic() - self._indexed_at > FIELD_INDEX_REFRESH:
            self._indexed_at = time.monotonic()
            self._indexed = _read_fields(self._reader())
        return self._indexed

    # -- field indexes ------------------------------------------------------------------------

    async def add_field_index(self, field: str) -> FieldIndex:
        """Create and register the value index of ``field`` (on the writer: writes wait while
        it builds). Raises ``ValueError`` for a field that cannot be indexed. Idempotent."""
        await self._on_writer(_create_field_index, field)
        return next(index for index in await self.field_indexes() if index.field == field)

    async def drop_field_index(self, field: str) -> bool:
        """Drop the value index of ``field``; False if it had none."""
        dropped: bool = await self._on_writer(_drop_field_index, field)
        return dropped

    async def field_indexes(self) -> list[FieldIndex]:
        """Every field index, by field."""
        indexes: list[FieldIndex] = await self._on_writer(_list_field_indexes)
        return indexes

    async def _on_writer(self, func: Any, *args: Any) -> Any:
        state, thread = self._state, self._write_thread
        if state is None or thread is None:
            raise CentralStoreUnavailable("central store is closed")
        result = await asyncio.get_running_loop().run_in_executor(thread, func, state.conn, *args)
        self._indexed = await asyncio.get_running_loop().run_in_executor(
            thread, _read_fields, state.conn
        )
        self._indexed_at = time.monotonic()
        return result

    async def explain(self, request: QueryRequest) -> QueryPlan:
        sql, params = build_query(request, limit=request.limit + 1, indexed=self._indexed)
        steps: list[str] = await self._read(self._fetch_plan, sql, params)
        return QueryPlan(self.backend, steps)

    def _decode_data(self, raw: Any) -> dict[str, Any]:
        data: dict[str, Any] = orjson.loads(raw)
        return data

    def _fetch(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return self._reader().execute(sql, params).fetchall()

    def _fetch_counted(self, sql: str, params: list[Any]) -> tuple[list[tuple[Any, ...]], int]:
        conn = self._reader()
        counter: _RowCounter = self._local.counter
        counter.rows = 0
        rows = conn.execute(sql, params).fetchall()
        return rows, counter.rows

    def _fetch_plan(self, sql: str, params: list[Any]) -> list[str]:
        """``EXPLAIN QUERY PLAN`` details, indented by depth (it does not run the query)."""
        depth: dict[int, int] = {0: -1}
        steps = []
        for node, parent, _, detail in self._reader().execute("EXPLAIN QUERY PLAN " + sql, params):
            depth[node] = depth.get(parent, -1) + 1
            steps.append("  " * depth[node] + str(detail))
        return steps

    async def _agent_rows(self) -> tuple[Sequence[Sequence[Any]], Sequence[Sequence[Any]]]:
        rows: tuple[Sequence[Sequence[Any]], Sequence[Sequence[Any]]] = await self._read(
            self._fetch_agents
        )
        return rows

    def _fetch_agents(self) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
        conn = self._reader()
        conn.execute("BEGIN")  # one snapshot for both reads
        try:
            return (
                conn.execute(SELECT_AGENTS).fetchall(),
                conn.execute(SELECT_TABLE_COUNTS).fetchall(),
            )
        finally:
            conn.execute("COMMIT")

    async def _probe(self) -> tuple[int, str | None]:
        try:
            result: tuple[int, str | None] = await self._run(self._probe_thread, self._probe_now)
        except QueryTimeout as exc:
            raise CentralStoreUnavailable(f"central store probe failed: {exc}") from exc
        return result

    def _probe_now(self) -> tuple[int, str | None]:
        # On the probe's own thread and connection: never queued behind the query readers.
        self._local.deadline = time.monotonic() + HEALTH_PROBE_SECONDS
        max_rev = int(self._reader().execute(SELECT_MAX_REV).fetchone()[0])
        return max_rev, self._disk_problem()

    def _disk_problem(self) -> str | None:
        """Why the next commit would fail for want of disk space, if it would."""
        try:
            usage = os.statvfs(self.path.parent)
        except (OSError, AttributeError):  # AttributeError: no statvfs on this platform
            return None
        free = usage.f_bavail * usage.f_frsize
        if free < MIN_FREE_BYTES:
            return f"the disk holding the central store has {free} bytes free"
        return None

    def _describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "durability": self.durability,
            "encrypted": self._encryption_key is not None,
        }


def _read_fields(conn: sqlite3.Connection) -> frozenset[str]:
    return frozenset(field for field, _ in conn.execute(SELECT_FIELD_INDEXES))


def _create_field_index(conn: sqlite3.Connection, field: str) -> None:
    expression = index_expression(field)  # ValueError for a field that cannot be indexed
    name = field_index_name(field)
    with db.write_transaction(conn, "a field index"):
        conn.execute(f'CREATE INDEX IF NOT EXISTS "{name}" ON records({expression})')
        conn.execute(REGISTER_FIELD, (field, name))


def _drop_field_index(conn: sqlite3.Connection, field: str) -> bool:
    with db.write_transaction(conn, "a field index"):
        row = conn.execute(FORGET_FIELD, (field,)).fetchone()
        conn.execute(f'DROP INDEX IF EXISTS "{field_index_name(field)}"')
    return row is not None


def _list_field_indexes(conn: sqlite3.Connection) -> list[FieldIndex]:
    found = []
    for field_name, name in conn.execute(SELECT_FIELD_INDEXES).fetchall():
        try:
            size = int(conn.execute(INDEX_BYTES, (name,)).fetchone()[0] or 0)
        except db.Error:  # a build without the dbstat table
            size = 0
        found.append(FieldIndex(field_name, name, size, True))
    return found


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, or bring an older one up to date, in one transaction."""
    with db.write_transaction(conn, "the central store's schema"):
        version = int(conn.execute(SELECT_USER_VERSION).fetchone()[0])
        if version > SCHEMA_VERSION:
            raise CentralStoreUnavailable(
                f"central store schema is version {version}, newer than this relay's "
                f"{SCHEMA_VERSION}: upgrade commander-os-storage on this relay"
            )
        has_records = conn.execute(HAS_RECORDS).fetchone() is not None
        for step in sorted(UPGRADES):
            if has_records and version < step:
                for statement in db.split_statements(UPGRADES[step]):
                    conn.execute(statement)
        for statement in db.split_statements(SCHEMA):
            conn.execute(statement)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _state_rows(
    states: dict[str, AgentState], hwm: dict[str, int], now_us: int
) -> list[tuple[Any, ...]]:
    return [
        (
            agent,
            hwm.get(agent, state.highest_version),
            now_us,
            state.incarnation,
            state.seq_hi,
            _recent_text(state),
        )
        for agent, state in states.items()
    ]


def _commit_failure(exc: Exception) -> Exception:
    error = CentralStoreUnavailable(f"central store could not commit: {exc}")
    error.__cause__ = exc
    return error
