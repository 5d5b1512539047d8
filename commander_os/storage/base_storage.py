"""BaseStorage: one agent's SQLite database, its migrations, its sync queue and its health.

Subclass it to give an agent its own schema::

    class NotesStorage(BaseStorage):
        migrations = (
            Migration(1, "notes", "CREATE TABLE notes (id TEXT PRIMARY KEY, body TEXT NOT NULL)"),
        )
        synced_tables = (SyncedTable("notes"),)

        def add_note(self, note_id: str, body: str) -> None:
            with self.transaction() as conn:
                conn.execute("INSERT INTO notes VALUES (?, ?)", (note_id, body))

Every change to a synced table lands in the sync queue in the same transaction (triggers), and
a background sync worker ships the queue to the relay when ``enable_htpc`` is on.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, ParamSpec, TypeVar

from commander_os import _sqlite as db
from commander_os._archive import Progress
from commander_os._files import make_private_dir
from commander_os.config import StorageConfig, load_storage_config, read_encryption_key
from commander_os.errors import ConfigError, RelayError, StorageClosed
from commander_os.identifiers import validate_agent_id
from commander_os.storage import _fork
from commander_os.storage import _outbox as outbox
from commander_os.storage._backup import backup_to
from commander_os.storage._closing import CloseResult, Closing
from commander_os.storage._delivery import identity
from commander_os.storage._delivery import targets as delivery_targets
from commander_os.storage._delivery.shipper import Shipper
from commander_os.storage._delivery.status import Backlog, backlogs, delivery_status
from commander_os.storage._health import HEALTH_ERRORS, local_health, seed_keys
from commander_os.storage._migrations import Migration, run_migrations
from commander_os.storage._network_reads import AsyncReads, NetworkReads
from commander_os.storage._outbox import SyncedTable
from commander_os.storage._scheduler import BackupScheduler

if TYPE_CHECKING:
    from typing import Self

    from commander_os.storage._delivery.client import RelayClient
    from commander_os.storage._delivery.link import StoreLink

__all__ = [
    "DB_SUFFIX",
    "BaseStorage",
    "CloseResult",
    "Closing",
    "Migration",
    "SyncedTable",
    "run_in_thread",
]

DB_SUFFIX = ".db"
TABLE_EXISTS = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?"

_P = ParamSpec("_P")
_T = TypeVar("_T")
_log = logging.getLogger("commander_os.storage")


class BaseStorage(NetworkReads):
    """An agent's local SQLite store (WAL), with migrations, sync capture and health.

    ``agent_id`` must match :data:`~commander_os.identifiers.AGENT_ID_PATTERN`; the database
    is ``data_dir / f"{agent_id}.db"``. Settings come from ``config`` (a
    :class:`~commander_os.config.StorageConfig`) and are overridden by the keyword arguments.

    With ``encryption_key`` (or ``encryption_key_file``) the database, its WAL and its backups
    are encrypted (SQLCipher); the key is never logged or shown.

    Raises :class:`~commander_os.errors.InvalidAgentId` before touching the disk if the id is
    not acceptable, :class:`~commander_os.errors.SchemaTooNew` if the database was written by
    newer code, :class:`~commander_os.errors.EncryptionError` for a wrong or missing key,
    :class:`~commander_os.errors.StorageBusy` if another process holds the write lock past
    ``busy_timeout``.
    """

    #: The schema of this storage class, in order (versions 1, 2, 3, ...).
    migrations: ClassVar[Sequence[Migration]] = ()
    #: Tables whose changes are shipped to the relay.
    synced_tables: ClassVar[Sequence[SyncedTable]] = ()

    def __init__(
        self,
        agent_id: str,
        data_dir: Path | str,
        htpc_url: str | None = None,
        enable_htpc: bool | None = None,
        *,
        config: StorageConfig | None = None,
        **settings: Any,
    ) -> None:
        self.agent_id = validate_agent_id(agent_id)
        overrides = {"htpc_url": htpc_url, "enable_htpc": enable_htpc, **settings}
        self.config = _merge_config(config, overrides)
        self.data_dir = Path(data_dir)
        self.db_path = self.data_dir / f"{self.agent_id}{DB_SUFFIX}"
        self._lock = threading.RLock()
        self._depth = 0
        self._closed = False
        self._closing = False
        self._link: StoreLink | None = None
        self._relay: RelayClient | None = None
        #: Clients of the other targets (``replicate_to``), for reads that fall back to them.
        self._replica_readers: dict[str, RelayClient] = {}
        self._async_reads = AsyncReads(self._make_async_client)
        self._encryption_key = read_encryption_key(self.config)
        make_private_dir(self.data_dir)  # 0700: other users must not read the store
        self._conn = self._open_connection()
        try:
            self._prepare_schema()
        except BaseException:
            self._conn.close()
            raise
        self._pid = os.getpid()
        _fork.track(self)
        if self.config.enable_htpc:
            self._start_shipping()
        if self.config.backup_interval:
            BackupScheduler.for_process().add(self)

    # ----------------------------------------------------------------- construction helpers

    @classmethod
    def from_config(cls, agent_id: str, path: Path | str | None = None, **settings: Any) -> Self:
        """Open the store of ``agent_id`` as ``config/storage_config.yaml`` describes it.

        The database lives in ``local_data_dir / agent_id``. ``COMMANDER_OS_*`` environment
        variables override the file; keyword arguments override both.
        """
        config = load_storage_config(path)
        data_dir = config.local_data_dir / validate_agent_id(agent_id)
        return cls(agent_id, data_dir, config=config, **settings)

    def _open_connection(self, durability: db.Durability | None = None) -> sqlite3.Connection:
        # Every connection to the file (the store's, the sync worker's, after fork) comes from
        # here, so all of them carry the key.
        return db.connect(
            self.db_path,
            durability=durability or self.config.durability,
            busy_timeout=self.config.busy_timeout,
            encryption_key=self._encryption_key,
            follow_symlinks=self.config.follow_symlinks,
        )

    def _prepare_schema(self) -> None:
        conn = self._conn
        with db.write_transaction(conn, "opening the store"):
            for statement in outbox.split_internal_schema():
                conn.execute(statement)
            outbox.upgrade(conn)
        run_migrations(conn, self.migrations, where=str(self.db_path))
        with self.transaction() as tx:
            for table in self.synced_tables:
                self._register(tx, table)
            if self.config.enable_htpc:
                self._reinstall_registered(tx)

    def _reinstall_registered(self, conn: sqlite3.Connection) -> None:
        # Tables registered at runtime (possibly while sync was off) are captured from now on
        # too; one a migration has since dropped is skipped.
        declared = {table.name for table in self.synced_tables}
        for table in outbox.registered_tables(conn).values():
            if table.name in declared or outbox.is_registered(conn, table, triggers=True):
                continue
            if conn.execute(TABLE_EXISTS, (table.name,)).fetchone():
                outbox.install_triggers(conn, table)

    def _register(self, conn: sqlite3.Connection, table: SyncedTable) -> None:
        # Reopening a store whose registration and triggers are as wanted writes nothing: a
        # host that opens a thousand stores pays no commit (and no fsync) for each.
        primary_key = table.primary_key or outbox.declared_primary_key(conn, table.name)
        wanted = SyncedTable(table.name, primary_key, table.json_columns)
        if primary_key and outbox.is_registered(conn, wanted, triggers=self.config.enable_htpc):
            return
        resolved = outbox.register_table(conn, table)
        # With sync off, existing triggers stay: dropping them would silently stop capture
        # for another process (or a later session) that syncs this store. So a store that
        # never synced queues nothing, and one that did keeps queuing for its relay.
        if self.config.enable_htpc:
            outbox.install_triggers(conn, resolved)

    def register_synced_table(
        self,
        name: str,
        *,
        primary_key: Sequence[str] = (),
        json_columns: Sequence[str] = (),
    ) -> None:
        """Capture every future insert, update and delete of table ``name`` for the relay.

        ``primary_key`` defaults to the table's declared primary key. ``json_columns`` hold
        JSON text that should travel as embedded JSON. Raises ``ValueError`` for an unknown
        table or one without a primary key.
        """
        table = SyncedTable(name, tuple(primary_key), tuple(json_columns))
        with self.transaction() as conn:
            self._register(conn, table)

    async def aregister_synced_table(
        self,
        name: str,
        *,
        primary_key: Sequence[str] = (),
        json_columns: Sequence[str] = (),
    ) -> None:
        """:meth:`register_synced_table` off the event loop."""
        await run_in_thread(
            self.register_synced_table, name, primary_key=primary_key, json_columns=json_columns
        )

    # ------------------------------------------------------------------------ connection

    @property
    def conn(self) -> sqlite3.Connection:
        """The store's SQLite connection (autocommit; use :meth:`transaction` to group writes).

        Raw SQL on it is captured for sync like everything else.
        """
        return self._require_open()

    @property
    def closed(self) -> bool:
        """True once :meth:`close` has run."""
        return self._closed

    def _require_open(self) -> sqlite3.Connection:
        if self._closed:
            raise StorageClosed(f"storage of agent {self.agent_id!r} is closed")
        return self._conn

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """Read several statements as one consistent snapshot.

        Holds the store's lock (the connection is shared by the store's threads) and, outside a
        write transaction, opens a read transaction so that no other process's commit lands
        between two of the block's statements::

            with storage.reading() as conn:
                total = conn.execute("SELECT COUNT(*) FROM notes").fetchone()[0]
                newest = conn.execute("SELECT MAX(created) FROM notes").fetchone()[0]
        """
        with self._lock:
            conn = self._require_open()
            if conn.in_transaction:
                yield conn
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                if conn.in_transaction:
                    conn.execute("COMMIT")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """Group writes into one atomic transaction (``BEGIN IMMEDIATE``).

        Nested use makes a savepoint: an exception inside the inner block rolls back only the
        inner block. Raises :class:`~commander_os.errors.StorageBusy` if the database stays
        locked by another process for longer than ``busy_timeout``.
        """
        with self._lock:
            conn = self._require_open()
            depth = self._depth
            self._depth = depth + 1
            try:
                if depth:
                    with _savepoint(conn, depth):
                        yield conn
                    return
                with db.write_transaction(conn, "a write transaction", translate=False):
                    yield conn
                seq = self._seq_to_wait_for(conn)
            finally:
                self._depth = depth
        self._committed(seq)

    def _write(self, sql: str, params: Any, *, many: bool = False) -> int:
        """Run one write statement in its own transaction (or the caller's); return rowcount.

        The hot path of ``set()`` and friends: the same steps as :meth:`transaction`, without
        the generator machinery.
        """
        with self._lock:
            conn = self._require_open()
            if self._depth:
                try:
                    cursor = conn.executemany(sql, params) if many else conn.execute(sql, params)
                except db.Error as exc:
                    raise db.translate_error(exc, "write failed") from exc
                return cursor.rowcount
            with db.write_transaction(conn):
                cursor = conn.executemany(sql, params) if many else conn.execute(sql, params)
            rowcount = cursor.rowcount
            seq = self._seq_to_wait_for(conn)
        self._committed(seq)
        return rowcount

    def _seq_to_wait_for(self, conn: sqlite3.Connection) -> int:
        # Only sync_mode="sync" waits for the relay, so only it pays for reading the seq.
        if self.config.sync_mode == "sync" and self._link is not None:
            return outbox.last_seq(conn)
        return 0

    def _committed(self, seq: int) -> None:
        link = self._link
        if link is not None:
            for lane in link.lanes.values():
                # A lane already marked is known to its route (which clears the mark before
                # it reads the outbox): waking it on every commit would only steal the
                # writer's CPU while a request is out or the relay is away.
                if not lane.dirty:
                    lane.dirty = True
                    lane.route.wake()
            if seq:
                link.wait_acked(seq, self.config.sync_timeout)

    # ------------------------------------------------------------------------- sync queue

    def _start_shipping(self) -> None:
        self._link = Shipper.for_process().attach(self)

    @contextmanager
    def shipping_connection(self) -> Iterator[sqlite3.Connection]:
        """The store's connection under its lock, for the shipper (internal)."""
        with self._lock:
            yield self._require_open()

    def get_sync_queue_size(self) -> int:
        """Number of local changes some relay has not acknowledged yet."""
        with self._lock:
            return outbox.queue_size(self._require_open())

    async def aget_sync_queue_size(self) -> int:
        """:meth:`get_sync_queue_size` off the event loop."""
        return await run_in_thread(self.get_sync_queue_size)

    async def process_sync_queue(self, batch_size: int | None = None) -> int:
        """Ship the queue to the relay now; return how many queued changes the relay
        acknowledged during the call (whoever shipped them).

        Returns 0 when ``enable_htpc`` is off. Raises a :class:`~commander_os.errors.RelayError`
        if the relay cannot take them (the queue is kept).
        """
        return await asyncio.to_thread(self._drain, batch_size)

    def _drain(self, batch_size: int | None) -> int:
        link = self._link
        if link is None:
            return 0
        with self._lock:
            conn = self._require_open()
            seqs = _pending_seqs(conn)
        if not seqs:
            return 0
        for lane in link.lanes.values():
            lane.limit = min(lane.batch_size, batch_size or lane.batch_size)
        Shipper.for_process().flush(link, None, fail_fast=True)
        acked = link.quorum_position()
        with self._lock:
            dead = _dead_among(self._require_open(), seqs)
        return sum(1 for seq in seqs if seq <= acked) - dead

    def wait_for_sync(self, timeout: float | None = None) -> bool:
        """Block until everything written so far is on the relay; False on timeout."""
        link = self._link
        if link is None:
            return True
        with self._lock:
            seq = outbox.last_seq(self._require_open())
        return link.wait_acked(seq, timeout)

    async def await_for_sync(self, timeout: float | None = None) -> bool:
        """:meth:`wait_for_sync` for async code: waits on the event loop, not in a thread."""
        link = self._link
        if link is None:
            return True
        with self._lock:
            seq = outbox.last_seq(self._require_open())
        return await link.await_acked(seq, timeout)

    def claim(self) -> None:
        """Hand this agent to this store on purpose (moving machines, resolving a conflict).

        The next delivery asks every relay for a new incarnation; the store that held the
        agent until now is fenced from then on (its writes stay queued there, reported as a
        conflict). Raises :class:`~commander_os.errors.StorageClosed` when closed.
        """
        with self.transaction() as conn:
            identity.set_claim(conn, True)
        link = self._link
        if link is not None:
            link.fenced = False
            for lane in link.lanes.values():
                lane.restart()
                lane.route.wake()

    async def aclaim(self) -> None:
        """:meth:`claim` off the event loop."""
        await run_in_thread(self.claim)

    def retire(self) -> int:
        """Stop this store from ever shipping the agent again (another store holds it).

        Its queued changes move to the dead letters, with the reason. Returns how many.
        """
        with self.transaction() as conn:
            seqs = _pending_seqs(conn)
            for seq in seqs:
                outbox.dead_letter(conn, [seq], None, "retired: another store holds the agent")
            identity.set_retired(conn)
        if self._link is not None:
            self._link.retired = True
        _log.warning("agent %s: store retired with %d changes unshipped", self.agent_id, len(seqs))
        return len(seqs)

    async def aretire(self) -> int:
        """:meth:`retire` off the event loop."""
        return await run_in_thread(self.retire)

    # ---------------------------------------------------------------------------- health

    def health_check(self) -> dict[str, Any]:
        """The store's health: the seed's keys plus what an operator needs.

        ``agent_id, local_db, htpc_enabled, sync_queue_size, timestamp`` as in the seed, and
        ``db_path, schema_version, durability, dead_letters, oldest_pending_age`` and, with
        sync on, ``relay`` (url, reachable, last_sync, last_error) and ``targets``: each central
        store's cursor, queue, oldest pending age, last success and last error, with the names
        of those behind in ``lagging_targets``.
        """
        health = seed_keys(self.agent_id, self.config.enable_htpc)
        health.update(
            db_path=str(self.db_path),
            durability=self.config.durability,
            encrypted=self._encryption_key is not None,
        )
        cursors: dict[str, delivery_targets.Cursor] = {}
        waiting: dict[str, Backlog] = {}
        try:
            with self._lock:
                conn = self._require_open()
                health.update(local_health(conn))
                health["incarnation"] = identity.incarnation(conn)
                health["conflict"] = identity.conflict(conn)
                health["retired"] = identity.is_retired(conn)
                cursors = delivery_targets.load(conn)
                waiting = backlogs(conn, self._link, cursors)
        except HEALTH_ERRORS as exc:
            health["error"] = str(exc)
        if self._link is not None:
            health.update(delivery_status(self._link, cursors, waiting))
        return health

    async def ahealth_check(self) -> dict[str, Any]:
        """:meth:`health_check` off the event loop (it reads the local database only)."""
        return await run_in_thread(self.health_check)

    # ---------------------------------------------------------------------------- backup

    def backup(self, path: Path | str | None = None, *, progress: Progress | None = None) -> Path:
        """Write a consistent copy of the database while the store stays online; its path.

        Without ``path`` (or with a folder, or a name ending in ``.db.zst``) the copy is a
        compressed backup with a manifest (:mod:`commander_os.storage.backups`; the folder
        defaults to ``backup_dir``, else ``backups`` beside the database), which
        ``commander-os backup verify|restore`` read. Any other ``path`` gets a plain SQLite
        copy, as before. ``progress(done, total)`` is called as pages are copied and bytes
        compressed.

        If the copy is ever restored, the relay gives it a new incarnation: its new writes win
        over anything the original wrote after the backup. The copy of an encrypted store is
        encrypted with the same key.
        """
        from commander_os.storage import backups

        target = None if path is None else Path(path)
        if target is None or target.is_dir() or target.name.endswith(backups.BACKUP_SUFFIX):
            return backups.create_backup(self, target, progress=progress or _no_progress).path
        with self._lock:
            return backup_to(self._require_open(), target, encryption_key=self._encryption_key)

    def _restored_row(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        """A row read back from the relay, as this class stores it (a restore writes it).

        Storage classes that keep a column in another form than it travels (compressed, say)
        override this; the default keeps the row as it is.
        """
        return row

    @classmethod
    def restore_from_relay(
        cls,
        agent_id: str,
        data_dir: Path | str,
        htpc_url: str | None = None,
        *,
        config: StorageConfig | None = None,
        force: bool = False,
        **settings: Any,
    ) -> Self:
        """Rebuild the agent's store in ``data_dir`` from the relay (a lost disk), then open it.

        Every synced table of this class is filled from the relay's records, row for row; the
        opened store claims the agent and syncs from there. ``force`` moves a store already in
        ``data_dir`` aside. Raises :class:`~commander_os.errors.RelayError` if the relay cannot
        be read (nothing is written then)::

            storage = RecruiterAgentStorage.restore_from_relay(
                "recruiter", "./data/agents/recruiter", htpc_url="http://127.0.0.1:8001")
        """
        from commander_os.storage import backups

        overrides = {"htpc_url": htpc_url, **settings}
        merged = _merge_config(config, overrides)
        backups.rebuild_from_relay(cls, agent_id, data_dir, config=merged, force=force)
        return cls(agent_id, data_dir, config=merged)

    async def abackup(
        self, path: Path | str | None = None, *, progress: Progress | None = None
    ) -> Path:
        """:meth:`backup` off the event loop."""
        return await run_in_thread(self.backup, path, progress=progress)

    # --------------------------------------------------------------------------- closing

    def close(self) -> Closing:
        """Ship what is queued (up to ``close_timeout`` seconds), then close. Idempotent.

        Works as ``storage.close()`` in plain code and, as the seed writes it, ``await
        storage.close()`` in async code, where the flush runs off the event loop; also with
        ``asyncio.run``, ``wait_for`` and ``create_task``. What could not ship stays queued for
        the next time the store opens: the result (:class:`CloseResult`) and a log line say so.
        """
        future: Future[CloseResult] = Future()
        with self._lock:
            already = self._closed or self._closing
            self._closing = True
        if already:
            future.set_result(CloseResult())
            return Closing(future)
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            self._close_into(future)
        else:  # inside an event loop: never block it while flushing
            threading.Thread(
                target=self._close_into, args=(future,), name="commander-os-close", daemon=True
            ).start()
        return Closing(future)

    def _close_into(self, future: Future[CloseResult]) -> None:
        try:
            future.set_result(self._shut_down())
        except BaseException as exc:
            future.set_exception(exc)

    def _shut_down(self) -> CloseResult:
        if self.config.backup_interval:
            BackupScheduler.for_process().remove(self)
        link, self._link = self._link, None
        result = CloseResult()
        if link is not None:
            result = self._flush_before_close(link)
            Shipper.for_process().detach(link)
        relay, self._relay = self._relay, None
        readers, self._replica_readers = list(self._replica_readers.values()), {}
        for client in [relay, *readers]:
            if client is not None:
                client.close()
        self._async_reads.close()
        with self._lock:
            self._closed = True
            self._conn.close()
        _fork.track(self, alive=False)
        return result

    def _flush_before_close(self, link: StoreLink) -> CloseResult:
        before = self.get_sync_queue_size()
        with suppress(RelayError):  # reported below, with what stays queued
            Shipper.for_process().flush(link, self.config.close_timeout, every_target=True)
        pending = self.get_sync_queue_size()
        if pending:
            with self._lock:
                top = outbox.last_seq(self._require_open())
            behind = link.behind(top)
            errors = [lane.last_error for lane in behind or link.lanes.values() if lane.last_error]
            reason = (
                errors[0] if errors else f"not acknowledged within {self.config.close_timeout} s"
            )
            if link.acknowledged(top) and behind:
                _log.warning(
                    "agent %s: closed with every change on %d target(s) (sync_quorum); %d "
                    "changes still queued for %s (%s) ship the next time the store opens",
                    self.agent_id,
                    self.config.quorum_size(),
                    pending,
                    ", ".join(lane.target for lane in behind),
                    reason,
                )
            else:
                _log.warning(
                    "agent %s: closed with %d changes still queued (%s); they ship the next "
                    "time the store opens",
                    self.agent_id,
                    pending,
                    reason,
                )
        return CloseResult(shipped=max(0, before - pending), pending=pending)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return (
            f"<{type(self).__name__} agent_id={self.agent_id!r} path={str(self.db_path)!r} {state}>"
        )

    # ------------------------------------------------------------------------------ fork

    def _after_fork_in_child(self) -> None:
        # The parent's connection must not be used (or closed) here: SQLite forbids carrying
        # an open connection across fork(). Keep the old object alive, open a fresh one.
        self._inherited = self._conn
        self._lock = threading.RLock()
        self._depth = 0
        if not self._closed:
            self._conn = self._open_connection()
        link, self._link = self._link, None
        if link is not None and not self._closed:
            self._start_shipping()  # the child's own shipper: the parent's threads are not here


@contextmanager
def _savepoint(conn: sqlite3.Connection, depth: int) -> Iterator[None]:
    """A nested transaction: an exception inside rolls back only what the block did."""
    name = f"_sp{depth}"
    conn.execute(f"SAVEPOINT {name}")
    try:
        yield
    except BaseException:
        conn.execute(f"ROLLBACK TO {name}")
        conn.execute(f"RELEASE {name}")
        raise
    conn.execute(f"RELEASE {name}")


def _no_progress(done: int, total: int) -> None:
    return None


def _pending_seqs(conn: sqlite3.Connection) -> list[int]:
    return [row.seq for row in outbox.pending(conn, 2**62, after_seq=outbox.floor(conn))]


def _dead_among(conn: sqlite3.Connection, seqs: list[int]) -> int:
    if not seqs:
        return 0
    sql = "SELECT count(*) FROM _dead_letters WHERE seq BETWEEN ? AND ?"
    return int(conn.execute(sql, (seqs[0], seqs[-1])).fetchone()[0])


async def run_in_thread(func: Callable[_P, _T], *args: _P.args, **kwargs: _P.kwargs) -> _T:
    """Run a blocking store call off the event loop (what the ``a*`` methods use)."""
    return await asyncio.to_thread(func, *args, **kwargs)


def _merge_config(config: StorageConfig | None, overrides: dict[str, Any]) -> StorageConfig:
    given = {key: value for key, value in overrides.items() if value is not None}
    if config is None and not given:
        return StorageConfig()
    base = config.model_dump(exclude_unset=True) if config is not None else {}
    try:
        return StorageConfig.model_validate({**base, **given})
    except ValueError as exc:
        raise ConfigError(f"invalid storage settings: {exc}") from None
