"""The embedded central store: one SQLite file (WAL) in the relay's ``agent_storage_dir``.

Layout: ``records`` holds the newest state of every ``(agent_id, table, key)``; its rowid *is*
the global ``rev``, so a change moves its row to the end of the rowid B-tree (an append) and the
change feed is a plain rowid range scan. ``agents`` keeps each agent's high-water mark and last
contact; ``table_counts`` (maintained by triggers) makes ``/relay/agents`` cheap at any size.

Writes go through one writer thread that **group-commits**: every apply request waiting in the
queue is merged into one ``BEGIN IMMEDIATE`` transaction and one fsync, and each request's
future resolves only after ``COMMIT`` returned. Reads run on a small pool of threads with their
own connections, so neither blocks the event loop nor waits for the writer (WAL snapshots).

With an ``encryption_key`` every connection opens the file through SQLCipher (see
:mod:`commander_os.storage.db`): the database and its WAL then hold no plaintext.
"""

from __future__ import annotations

import asyncio
import operator
import queue
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import compress, count, repeat
from pathlib import Path
from typing import Any, Literal

import orjson

from commander_os.errors import EncryptionError
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
from commander_os.network.central.sqlite_query import build_query
from commander_os.network.protocol import (
    Ack,
    AgentSummary,
    QueryRequest,
    QueryResponse,
    StoredRecord,
)
from commander_os.storage import db

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
#: SQLite VM steps between two checks of the query time budget.
_PROGRESS_STEPS = 20_000
#: Opening failures reported as CentralStoreUnavailable (both drivers' errors, a bad key).
_OPEN_ERRORS: tuple[type[Exception], ...] = (OSError, EncryptionError, *db.Error)

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


def connect(
    path: Path,
    *,
    durability: Literal["full", "normal"],
    writer: bool,
    encryption_key: str | None = None,
) -> sqlite3.Connection:
    """Open ``path`` with the store's pragmas; the one place they are set.

    ``encryption_key`` opens (or creates) it encrypted; raises
    :class:`~commander_os.errors.EncryptionError` for a wrong or missing key.
    """
    conn = db.open_file(path, encryption_key=encryption_key, timeout=30.0, cached_statements=128)
    conn.execute("PRAGMA busy_timeout = 30000")
    if writer:
        if encryption_key is None:
            # Only takes effect on a new, empty file (before WAL mode writes its header); an
            # existing store keeps its page size. SQLCipher files keep theirs (cipher_page_size
            # must then match on every open).
            conn.execute(f"PRAGMA page_size = {PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode = WAL")
    conn.execute(f"PRAGMA synchronous = {'FULL' if durability == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA cache_size = -65536")  # 64 MiB of page cache per connection
    conn.execute("PRAGMA mmap_size = 268435456")
    conn.execute("PRAGMA temp_store = MEMORY")
    if not writer:
        conn.execute("PRAGMA query_only = ON")
    return conn


@dataclass
class _Job:
    records: list[EncodedRecord]
    future: Future[list[Ack]] = field(default_factory=Future)


_STOP = object()
_Identity = tuple[str, str, str]  # (agent_id, key, table): the unique index's order


@dataclass
class _Plan:
    """What one group commit writes."""

    next_rev: int
    inserts: list[tuple[Any, ...]] = field(default_factory=list)
    updates: list[tuple[Any, ...]] = field(default_factory=list)
    live_delta: dict[tuple[str, str], int] = field(default_factory=dict)
    applied: dict[tuple[int, str], int] = field(default_factory=dict)


# Field getters of EncodedRecord that run in C (the writer touches every record of a group).
_IDENT = operator.itemgetter(0, 2, 1)  # (agent_id, key, table)
_AGENT = operator.itemgetter(0)
_AGENT_TABLE = operator.itemgetter(0, 1)
_VERSION = operator.itemgetter(3)
_DELETED = operator.itemgetter(5)
_JOB = operator.itemgetter(0)
_RECORD = operator.itemgetter(1)


def _newest(
    group: list[_Job],
) -> tuple[dict[_Identity, tuple[int, EncodedRecord]], dict[str, int]]:
    """The newest record of each identity across the group (with its job), and each agent's
    highest version. Older records of an identity could not win anyway."""
    winners: dict[_Identity, tuple[int, EncodedRecord]] = {}
    highest: dict[str, int] = {}
    for index, job in enumerate(group):
        records = job.records
        # The common case in C: no identity repeats, within the job or with earlier jobs.
        mine = dict(zip(map(_IDENT, records), zip(repeat(index), records), strict=True))
        if len(mine) == len(records) and winners.keys().isdisjoint(mine):
            winners.update(mine)
        else:
            for rec in records:
                ident = _IDENT(rec)
                held = winners.get(ident)
                if held is None or rec.version > held[1].version:
                    winners[ident] = (index, rec)
        agents = set(map(_AGENT, records))
        if len(agents) == 1:
            (agent,) = agents
            top = max(map(_VERSION, records))
            if top > highest.get(agent, 0):
                highest[agent] = top
            continue
        for rec in records:
            if rec.version > highest.get(rec.agent_id, 0):
                highest[rec.agent_id] = rec.version
    return winners, highest


class _Writer(threading.Thread):
    """The single writer: drains the queue, merges waiting jobs, one transaction per group."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        super().__init__(name="central-sqlite-writer", daemon=True)
        self.conn = conn
        self.jobs: queue.SimpleQueue[_Job | object] = queue.SimpleQueue()
        self.next_rev = int(conn.execute(SELECT_MAX_REV).fetchone()[0]) + 1
        self.commits = 0

    def run(self) -> None:
        stopping = False
        while not stopping:
            group: list[_Job] = []
            size = 0
            item = self.jobs.get()
            while True:
                if item is _STOP:
                    stopping = True  # finish what was queued before the stop, then leave
                    break
                assert isinstance(item, _Job)
                # A job whose caller went away (cancelled) is dropped: it was never acked.
                if item.future.set_running_or_notify_cancel():
                    group.append(item)
                    size += len(item.records)
                if size >= MAX_GROUP_RECORDS:
                    break
                try:
                    item = self.jobs.get_nowait()
                except queue.Empty:
                    break
            if group:
                self._commit_safely(group)
        self.conn.close()
        self._fail_leftovers()

    def _fail_leftovers(self) -> None:
        # Jobs queued after the stop marker (a race with close()) must not wait forever.
        while True:
            try:
                item = self.jobs.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _Job) and item.future.set_running_or_notify_cancel():
                item.future.set_exception(CentralStoreUnavailable("central store is closed"))

    def _commit_safely(self, group: list[_Job]) -> None:
        try:
            results = self._commit(group)
        except Exception as exc:
            if len(group) > 1:
                # One job must not fail the others it happened to be grouped with.
                for job in group:
                    self._commit_safely([job])
                return
            error = CentralStoreUnavailable(f"central store could not commit: {exc}")
            error.__cause__ = exc
            group[0].future.set_exception(error)
            return
        for job, acks in zip(group, results, strict=True):
            job.future.set_result(acks)

    def _commit(self, group: list[_Job]) -> list[list[Ack]]:
        winners, highest = _newest(group)
        now_us = time.time_ns() // 1000
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            plan = self._plan(winners, self._existing(winners))
            conn.executemany(INSERT_RECORD, plan.inserts)
            conn.executemany(UPDATE_RECORD, plan.updates)
            conn.executemany(UPSERT_TABLE_COUNT, [(*k, d) for k, d in plan.live_delta.items()])
            hwm = {
                agent: int(conn.execute(UPSERT_AGENT, (agent, version, now_us)).fetchone()[0])
                for agent, version in highest.items()
            }
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        self.next_rev = plan.next_rev
        self.commits += 1
        return [
            group_acks(index, job.records, plan.applied, hwm) for index, job in enumerate(group)
        ]

    def _existing(
        self, winners: dict[_Identity, tuple[int, EncodedRecord]]
    ) -> dict[_Identity, Any]:
        """``(rev, version, deleted)`` of the stored rows among ``winners``' identities."""
        keys_by_agent: dict[str, list[str]] = {}
        for agent_id, key, _ in winners:
            keys_by_agent.setdefault(agent_id, []).append(key)
        found: dict[_Identity, Any] = {}
        for agent_id, keys in keys_by_agent.items():
            unique = list(dict.fromkeys(keys))
            for start in range(0, len(unique), LOOKUP_CHUNK):
                chunk = unique[start : start + LOOKUP_CHUNK]
                sql = SELECT_EXISTING.format(marks=", ".join("?" * len(chunk)))
                for key, tbl, rev, version, deleted in self.conn.execute(sql, [agent_id, *chunk]):
                    found[(agent_id, key, tbl)] = (rev, version, deleted)
        return found

    def _plan(
        self, winners: dict[_Identity, tuple[int, EncodedRecord]], existing: dict[_Identity, Any]
    ) -> _Plan:
        """Decide each winner against the stored row: insert, update (newer) or ignore."""
        plan = _Plan(next_rev=self.next_rev)
        # Sorted by the unique index's order (ARCHITECTURE §9): inserts land in index order.
        idents = sorted(winners)
        fresh = [i for i in idents if i not in existing] if existing else idents
        # Identities not stored yet (the bulk of an ingest): inserted and applied, in C.
        chosen = list(map(winners.__getitem__, fresh))
        records = list(map(_RECORD, chosen))
        # (rev,) + record: EncodedRecord's fields are the columns after rev.
        plan.inserts = list(map(operator.add, zip(count(plan.next_rev)), records))
        plan.next_rev += len(records)
        # Every applied (agent, table) gets a count row, even when its delta is 0 (tombstones).
        live = Counter(dict.fromkeys(map(_AGENT_TABLE, records), 0))
        live.update(
            map(_AGENT_TABLE, compress(records, map(operator.not_, map(_DELETED, records))))
        )
        applied = Counter(zip(map(_JOB, chosen), map(_AGENT, records), strict=True))
        if existing:
            for ident in idents:
                old = existing.get(ident)
                if old is None:
                    continue  # inserted above
                index, rec = winners[ident]
                if old[1] >= rec.version:
                    continue  # stale or duplicate: ignored
                rev = plan.next_rev
                plan.next_rev += 1
                plan.updates.append((rev, rec.version, rec.ts_us, rec.deleted, rec.data, old[0]))
                live[(rec.agent_id, rec.table)] += (0 if rec.deleted else 1) - (0 if old[2] else 1)
                applied[(index, rec.agent_id)] += 1
        plan.live_delta = dict(live)
        plan.applied = dict(applied)
        return plan


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
        self._writer: _Writer | None = None
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
        await asyncio.to_thread(self._open_sync)

    def _open_sync(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = self._connect(writer=True)
            conn.executescript(SCHEMA)
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except _OPEN_ERRORS as exc:
            raise CentralStoreUnavailable(f"cannot open central store {self.path}: {exc}") from exc
        self._writer = _Writer(conn)
        self._writer.start()
        self._readers = ThreadPoolExecutor(self._reader_threads, thread_name_prefix="central-read")

    def _connect(self, *, writer: bool) -> sqlite3.Connection:
        return connect(
            self.path,
            durability=self.durability,
            writer=writer,
            encryption_key=self._encryption_key,
        )

    async def close(self) -> None:
        writer, readers = self._writer, self._readers
        if writer is None or readers is None:
            return
        self._writer = self._readers = None
        writer.jobs.put(_STOP)
        await asyncio.to_thread(writer.join)
        readers.shutdown(wait=True)
        with self._lock:
            for conn in self._reader_conns:
                conn.close()
            self._reader_conns.clear()

    # -- writes -------------------------------------------------------------------------------

    async def apply_encoded(self, records: Sequence[EncodedRecord]) -> list[Ack]:
        if not records:
            return []
        writer = self._writer
        if writer is None:
            raise CentralStoreUnavailable("central store is closed")
        job = _Job(list(records))
        writer.jobs.put(job)
        return await asyncio.wrap_future(job.future)

    # -- reads --------------------------------------------------------------------------------

    def _reader(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(writer=False)
            conn.execute(f"PRAGMA mmap_size = {READER_MMAP_BYTES}")
            conn.set_progress_handler(self._over_budget, _PROGRESS_STEPS)
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
        except db.Error as exc:
            raise CentralStoreUnavailable(f"central store read failed: {exc}") from exc
        except RuntimeError as exc:  # executor shut down while we were submitting
            raise CentralStoreUnavailable("central store is closed") from exc

    async def query(self, request: QueryRequest) -> QueryResponse:
        sql, params = build_query(request, limit=request.limit + 1)
        rows: list[tuple[Any, ...]] = await self._read(self._fetch, sql, params)
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
                deleted=bool(deleted),
                data=None if data is None else orjson.loads(data),
            )
            for rev, agent_id, tbl, key, version, ts, deleted, data in rows
        ]
        next_cursor = encode_cursor(rows[-1][0]) if more else None
        return QueryResponse.model_construct(records=records, next_cursor=next_cursor)

    def _fetch(self, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
        return self._reader().execute(sql, params).fetchall()

    async def agents(self) -> list[AgentSummary]:
        agents, counts = await self._read(self._fetch_agents)
        tables: dict[str, dict[str, int]] = {}
        for agent_id, tbl, live in counts:
            tables.setdefault(agent_id, {})[tbl] = live
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

    async def health(self) -> StoreHealth:
        writer = self._writer
        detail: dict[str, Any] = {
            "path": str(self.path),
            "durability": self.durability,
            "encrypted": self._encryption_key is not None,
        }
        if writer is None or not writer.is_alive():
            return StoreHealth(ok=False, backend=self.backend, detail={**detail, "error": "closed"})
        try:
            max_rev = await self._read(self._fetch_max_rev)
        except CentralStoreUnavailable as exc:
            return StoreHealth(ok=False, backend=self.backend, detail={**detail, "error": str(exc)})
        detail.update(max_rev=max_rev, commits=writer.commits, pending_jobs=writer.jobs.qsize())
        return StoreHealth(ok=True, backend=self.backend, detail=detail)

    def _fetch_max_rev(self) -> int:
        return int(self._reader().execute(SELECT_MAX_REV).fetchone()[0])
