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
from commander_os.errors import EncryptionError, StorageError
from commander_os.protocol import EncodedRecord, QueryRequest
from commander_os.relay.central._base import (
    CentralStore,
    CentralStoreUnavailable,
    QueryPlan,
    QueryTimeout,
)
from commander_os.relay.central._group_commit import CommitResult, GroupWriter, MergedGroup
from commander_os.relay.central._sqlite_query import EXAMINED_FUNCTION, build_query

__all__ = ["DEFAULT_DB_NAME", "SQLiteCentralStore"]

DEFAULT_DB_NAME = "central.db"
SCHEMA_VERSION = 2
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
#: SQLite VM steps between two checks of the query time budget.
_PROGRESS_STEPS = 20_000
_READ_ERRORS: tuple[type[Exception], ...] = (*db.Error, StorageError)
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
    data     TEXT
);
-- (agent_id, key, tbl) rather than (agent_id, tbl, key): a lookup by agent and key without a
-- table is then an index prefix too.
CREATE UNIQUE INDEX IF NOT EXISTS records_identity ON records(agent_id, key, tbl);
CREATE INDEX IF NOT EXISTS records_agent_table_rev ON records(agent_id, tbl, rev);
CREATE TABLE IF NOT EXISTS agents (
    agent_id        TEXT PRIMARY KEY,
    highest_version INTEGER NOT NULL,
    last_seen       INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS table_counts (
    agent_id TEXT    NOT NULL,
    tbl      TEXT    NOT NULL,
    live     INTEGER NOT NULL,
    PRIMARY KEY (agent_id, tbl)
) WITHOUT ROWID;
-- Version 1 kept table_counts with triggers; the writer now does it (3x faster ingest).
DROP TRIGGER IF EXISTS records_count_insert;
DROP TRIGGER IF EXISTS records_count_update;
"""

INSERT_RECORD = """
INSERT INTO records(rev, agent_id, tbl, key, version, ts, deleted, data)
VALUES (?, ?, ?, ?, ?, ?, ?, ?)
"""
# Moving a row to its new rev rewrites its rowid: the change feed is then a rowid range scan.
UPDATE_RECORD = """
UPDATE records SET rev = ?, version = ?, ts = ?, deleted = ?, data = ? WHERE rev = ?
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
SELECT_MAX_REV = "SELECT ifnull(max(rev), 0) FROM records"
SELECT_AGENTS = "SELECT agent_id, highest_version, last_seen FROM agents ORDER BY agent_id"
SELECT_TABLE_COUNTS = "SELECT agent_id, tbl, live FROM table_counts"
SELECT_USER_VERSION = "PRAGMA user_version"


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

    def commit(self, group: MergedGroup) -> CommitResult:
        conn = self.conn
        now_us = time.time_ns() // 1000
        with db.write_transaction(conn, "a central-store commit"):
            plan = self._plan(group, self._existing(group.rows))
            conn.executemany(INSERT_RECORD, plan.inserts)
            conn.executemany(UPDATE_RECORD, plan.updates)
            conn.executemany(UPSERT_TABLE_COUNT, [(*k, d) for k, d in plan.live_delta.items()])
            hwm = {
                agent: int(conn.execute(UPSERT_AGENT, (agent, version, now_us)).fetchone()[0])
                for agent, version in group.highest.items()
            }
        self.next_rev += len(plan.applied)
        return CommitResult(plan.applied, hwm)

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

    def _plan(self, group: MergedGroup, existing: dict[_Identity, Any]) -> _Plan:
        """Decide each row against the stored one: insert, update (newer) or ignore.

        Applied rows take revisions in ``group.rev_rank`` order (each agent's version order);
        rows stay in identity order, so inserts land in the unique index's order.
        """
        if not existing:
            return self._plan_inserts(group)
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
                plan.inserts.append((rev_of[index], *rec))
                live[_AGENT_TABLE(rec)] += 0 if rec.deleted else 1
            else:
                update = (rev_of[index], rec.version, rec.ts_us, rec.deleted, rec.data, old[0])
                plan.updates.append(update)
                live[_AGENT_TABLE(rec)] += (0 if rec.deleted else 1) - (0 if old[2] else 1)
        plan.live_delta = dict(live)
        plan.applied = changed
        return plan

    def _plan_inserts(self, group: MergedGroup) -> _Plan:
        """The bulk of an ingest: no identity is stored yet, every row is inserted (in C)."""
        rows = group.rows
        revs = map(operator.add, group.rev_rank, repeat(self.next_rev))
        # (rev,) + record: EncodedRecord's fields are the columns after rev.
        inserts = list(map(operator.add, zip(revs), rows))
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
    rest (SQLCipher); it is never shown in health or errors.
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
    ) -> None:
        self.path = Path(path)
        self._encryption_key = encryption_key
        self.durability = durability
        self.max_value_bytes = max_value_bytes
        self.query_timeout = query_timeout
        self._reader_threads = reader_threads
        self._write_thread: ThreadPoolExecutor | None = None
        self._state: _Writer | None = None
        self._readers: ThreadPoolExecutor | None = None
        self._reader_conns: list[sqlite3.Connection] = []
        self._local = threading.local()
        self._lock = threading.Lock()

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
        self._writer = GroupWriter(self._commit, _commit_failure, max_records=MAX_GROUP_RECORDS)
        self._writer.start()

    def _open_writer(self) -> _Writer:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect(writer=True)
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
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
        )

    async def close(self) -> None:
        writer, state = self._writer, self._state
        write_thread, readers = self._write_thread, self._readers
        if writer is None or state is None or write_thread is None or readers is None:
            return
        await writer.stop()
        self._writer = None
        self._state = self._write_thread = self._readers = None
        write_thread.submit(state.conn.close).result()
        write_thread.shutdown(wait=True)
        readers.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    # -- writes -------------------------------------------------------------------------------

    async def _commit(self, group: MergedGroup) -> CommitResult:
        state, thread = self._state, self._write_thread
        if state is None or thread is None:
            raise CentralStoreUnavailable("central store is closed")
        return await asyncio.get_running_loop().run_in_executor(thread, state.commit, group)

    # -- reads --------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(writer=False)
            conn.set_progress_handler(self._over_budget, _PROGRESS_STEPS)
            counter = self._local.counter = _RowCounter()
            conn.create_function(EXAMINED_FUNCTION, 1, counter)
            self._local.conn = conn
            with self._lock:
                self._reader_conns.append(conn)
        self._local.deadline = time.monotonic() + self.query_timeout
        return conn

    def _over_budget(self) -> int:
        # A non-zero return makes SQLite interrupt the running statement.
        return int(time.monotonic() > self._local.deadline)

    async def _read(self, func: Any, *args: Any) -> Any:
        readers = self._readers
        if readers is None:
            raise CentralStoreUnavailable("central store is closed")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(readers, func, *args)
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

    async def _select(self, request: QueryRequest, limit: int) -> Sequence[Sequence[Any]]:
        sql, params = build_query(request, limit=limit)
        rows: Sequence[Sequence[Any]] = await self._read(self._fetch, sql, params)
        return rows

    async def _select_counted(
        self, request: QueryRequest, limit: int
    ) -> tuple[Sequence[Sequence[Any]], int | None]:
        sql, params = build_query(request, limit=limit, count_rows=True)
        counted: tuple[Sequence[Sequence[Any]], int] = await self._read(
            self._fetch_counted, sql, params
        )
        return counted

    async def explain(self, request: QueryRequest) -> QueryPlan:
        sql, params = build_query(request, limit=request.limit + 1)
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

    async def _max_rev(self) -> int:
        return int(await self._read(self._fetch_max_rev))

    def _fetch_max_rev(self) -> int:
        return int(self._reader().execute(SELECT_MAX_REV).fetchone()[0])

    def _describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "durability": self.durability,
            "encrypted": self._encryption_key is not None,
        }


def _commit_failure(exc: Exception) -> Exception:
    error = CentralStoreUnavailable(f"central store could not commit: {exc}")
    error.__cause__ = exc
    return error
