"""SyncWorker: ships the outbox to the relay, deleting rows only once the relay acked them.

``sync_once()`` is the unit of work: read up to ``sync_batch_size`` queued changes (with the
rows' current data, in one read transaction), push them, and delete them after the relay's ack.
The optional background thread only schedules it: it wakes on every local commit
(:meth:`notify`), polls cheaply for writes made by other processes, and backs off exponentially
with jitter, capped at ``sync_interval``, while the relay is away. It never gives up on queued
data: only a record the relay refuses (4xx) ``max_retry_count`` times is moved to the
dead-letter table.

Only one process ships a store's outbox at a time: the shipper holds an exclusive ``flock`` on
``<db>.sync-lock``. The OS releases it the moment that process dies, so another process takes
over without waiting for a lease to expire, and holding it costs no disk writes.
"""

from __future__ import annotations

import fcntl
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from commander_os import _sqlite as db
from commander_os.errors import (
    RelayAuthError,
    RelayError,
    RelayProtocolError,
    RelayRejected,
    RelayUnavailable,
)
from commander_os.protocol import change_record_json, make_version
from commander_os.storage import _outbox as outbox
from commander_os.storage._delivery.client import RelayClient
from commander_os.storage._meta import read_epoch

if TYPE_CHECKING:
    from commander_os.config import StorageConfig
    from commander_os.storage.base_storage import BaseStorage

__all__ = ["ShipLock", "SyncWorker", "WorkerState"]

#: How often an idle worker looks for writes committed by other processes.
IDLE_POLL_SECONDS = 0.1
#: First retry delay after a failure; doubles up to ``sync_interval``.
BACKOFF_START_SECONDS = 0.05
SELECT_PENDING_UP_TO = "SELECT 1 FROM _sync_queue WHERE seq <= ? LIMIT 1"


class WorkerState(Enum):
    """Lifecycle of the background thread."""

    IDLE = "idle"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class ShipLock:
    """An exclusive, non-blocking ``flock`` that says "this process ships the outbox"."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        """True while this object holds the lock."""
        return self._fd is not None

    def acquire(self) -> bool:
        """Take the lock if it is free; True if held afterwards."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        """Let another process ship."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def forget(self) -> None:
        """After fork(), in the child: drop the inherited descriptor (the parent keeps the lock)."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)


class _Batch(NamedTuple):
    """Changes read from the outbox in one read transaction, ready to ship."""

    changes: list[outbox.PendingChange]
    epoch: int
    last_seq: int  # the newest outbox row read
    full: bool  # the read hit its limit: more rows may follow


class SyncWorker:
    """Delivers one store's queued changes to the relay, exactly once in effect."""

    def __init__(
        self,
        *,
        agent_id: str,
        db_path: Path,
        config: StorageConfig,
        client: RelayClient,
        connect: Callable[[], sqlite3.Connection],
        write_lock: AbstractContextManager[Any] | None = None,
    ) -> None:
        self.agent_id = agent_id
        self.db_path = db_path
        self.config = config
        self.client = client
        self._connect = connect
        # The store's own lock (see for_storage): queue updates then take turns with the
        # store's writes in this process instead of colliding in SQLite, whose busy handler
        # sleeps 1, 2, 5, 10 ... 100 ms between retries. Under a steady 500 writes/s those
        # sleeps put tens of milliseconds (p99 hundreds) into the replication lag.
        self._write_lock: AbstractContextManager[Any] = write_lock or nullcontext()
        self._conn: sqlite3.Connection | None = None
        self._tables: dict[str, outbox.SyncedTable] = {}
        self._ship_lock = threading.Lock()
        self._lease = ShipLock(db_path.with_name(db_path.name + ".sync-lock"))
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._acked = threading.Condition()
        self._acked_seq = 0
        self._reader: sqlite3.Connection | None = None  # for wait_acked(), off the ship lock
        self._reader_lock = threading.Lock()
        self._prefetcher: ThreadPoolExecutor | None = None
        self._prefetch_conn: sqlite3.Connection | None = None
        self._thread: threading.Thread | None = None
        self._kept_for_retry = False
        self.state = WorkerState.IDLE
        self.last_sync: float | None = None
        self.last_error: str | None = None
        self.reachable: bool | None = None
        self.failures = 0
        self.shipped_total = 0
        self.dead_lettered_total = 0

    @classmethod
    def for_storage(cls, storage: BaseStorage, *, client: RelayClient | None = None) -> SyncWorker:
        """A worker for ``storage`` with a client built from its config."""
        config = storage.config
        if client is None:
            client = RelayClient.from_config(config)
        return cls(
            agent_id=storage.agent_id,
            db_path=storage.db_path,
            config=config,
            client=client,
            # Acks and dead letters may be lost on power loss without harm: the rows come back
            # and ship again with the same versions, which the relay ignores as duplicates. So
            # the worker's connection does not fsync its commits; the next write of the store
            # at durability "full" syncs the WAL, these frames included.
            connect=lambda: storage._open_connection("normal"),
            write_lock=storage._lock,
        )

    # ------------------------------------------------------------------- the unit of work

    def sync_once(self, limit: int | None = None) -> int:
        """Ship up to ``limit`` queued changes; return how many outbox rows were acked.

        Returns 0 when the queue is empty or another process is the shipper. Raises
        :class:`~commander_os.errors.RelayUnavailable` (nothing changes locally) when the relay
        cannot take them now.
        """
        return self._ship_batches(limit or self.config.sync_batch_size, batches=1)

    def drain(self, batch_size: int | None = None) -> int:
        """Ship until the queue is empty; return how many outbox rows were acked.

        While one batch is on the wire the next is read and encoded, so the relay's work and
        the agent's overlap. Raises like :meth:`sync_once`; what was acked stays acked.
        """
        return self._ship_batches(batch_size or self.config.sync_batch_size, batches=None)

    def _ship_batches(self, limit: int, *, batches: int | None) -> int:
        with self._ship_lock:
            if not self._lease.acquire():
                return 0
            conn = self._connection()
            # Once a record is kept for retry, later batches of this run must not move the
            # acked mark past it (wait_acked would then answer too early).
            self._kept_for_retry = False
            batch = self._read_batch(conn, limit)
            shipped = sent = 0
            while batch is not None:
                sent += 1
                more = batch.full and (batches is None or sent < batches)
                upcoming = self._prefetch(limit, batch.last_seq) if more else None
                try:
                    shipped += self._deliver(conn, batch)
                except BaseException:
                    if upcoming is not None and not upcoming.cancel():
                        upcoming.exception()  # let its read finish; its rows stay queued
                    raise
                batch = upcoming.result() if upcoming is not None else None
                if self._stop.is_set() and batch is not None:
                    break
            return shipped

    def _deliver(self, conn: sqlite3.Connection, batch: _Batch) -> int:
        try:
            done = self._ship(conn, batch.changes, batch.epoch)
        except RelayUnavailable as exc:
            self._failed(exc)
            raise
        except (RelayAuthError, RelayProtocolError) as exc:
            # Bad credentials, or an answer that is not a relay's (htpc_url pointing at
            # another server): the operator's to fix, not the records' fault. Keep
            # everything queued, report it in status(), and retry like an outage.
            self._failed(exc)
            raise RelayUnavailable(str(exc)) from exc
        self._succeeded()
        if not self._kept_for_retry:
            # Everything up to the batch's newest row is resolved (acked or dead-lettered).
            # After a partial failure only wait_acked's look at the queue can tell.
            self._mark_acked(batch.last_seq)
        return done

    def _prefetch(self, limit: int, after_seq: int) -> Future[_Batch | None]:
        """Read the batch after ``after_seq`` on the prefetch thread, with its own connection."""
        if self._prefetcher is None:
            self._prefetcher = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"commander-os-prefetch[{self.agent_id}]"
            )
        return self._prefetcher.submit(self._prefetch_batch, limit, after_seq)

    def _prefetch_batch(self, limit: int, after_seq: int) -> _Batch | None:
        if self._prefetch_conn is None:
            self._prefetch_conn = self._connect()
        return self._read_batch(self._prefetch_conn, limit, after_seq)

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    def _read_batch(
        self, conn: sqlite3.Connection, limit: int, after_seq: int = 0
    ) -> _Batch | None:
        # One read transaction, so the rows' data matches the queue entries exactly.
        conn.execute("BEGIN")
        try:
            rows = outbox.pending(conn, limit, after_seq=after_seq)
            if not rows:
                return None
            if any(row.table not in self._tables for row in rows):
                self._tables = outbox.registered_tables(conn)
            changes = outbox.load_changes(conn, rows, self._tables, embed_json=True)
            epoch = read_epoch(conn)
        finally:
            conn.execute("COMMIT")
        return _Batch(changes, epoch, rows[-1].seq, len(rows) == limit)

    def _record(self, change: outbox.PendingChange, epoch: int) -> dict[str, Any]:
        return change_record_json(
            self.agent_id,
            change.table,
            change.key,
            change.data,
            make_version(epoch, change.seq),
            change.written_at,
        )

    def _ship(
        self, conn: sqlite3.Connection, changes: list[outbox.PendingChange], epoch: int
    ) -> int:
        """Push ``changes``; on a 4xx split the batch to find the records the relay refuses."""
        records = [self._record(change, epoch) for change in changes]
        try:
            self.client.push(self.agent_id, records)
        except RelayRejected as exc:
            if isinstance(exc, RelayAuthError):
                raise
            if len(changes) == 1:
                self._refused(conn, changes[0], records[0], exc)
                return 0
            middle = len(changes) // 2
            return self._ship(conn, changes[:middle], epoch) + self._ship(
                conn, changes[middle:], epoch
            )
        seqs = [seq for change in changes for seq in change.seqs]
        self._write(conn, lambda: outbox.ack_seqs(conn, seqs))
        self.shipped_total += len(seqs)
        return len(seqs)

    def _refused(
        self,
        conn: sqlite3.Connection,
        change: outbox.PendingChange,
        record: dict[str, Any],
        exc: RelayRejected,
    ) -> None:
        reason = f"{exc} ({exc.detail})" if exc.detail else str(exc)
        self.last_error = reason
        if change.attempts + 1 >= self.config.max_retry_count:
            self._write(conn, lambda: outbox.dead_letter(conn, change.seqs, record, reason))
            self.dead_lettered_total += 1
        else:
            self._write(conn, lambda: outbox.record_failure(conn, change.seqs, reason))
            self._kept_for_retry = True

    def _write(self, conn: sqlite3.Connection, action: Callable[[], object]) -> None:
        with self._write_lock:
            self._write_locked(conn, action)

    def _write_locked(self, conn: sqlite3.Connection, action: Callable[[], object]) -> None:
        with db.write_transaction(conn, "an update of the sync queue"):
            action()

    # ------------------------------------------------------------------------ bookkeeping

    def _mark_acked(self, seq: int) -> None:
        with self._acked:
            if seq > self._acked_seq:
                self._acked_seq = seq
            self._acked.notify_all()

    def _succeeded(self) -> None:
        self.last_sync = time.time()
        self.reachable = True
        self.failures = 0

    def _failed(self, exc: RelayError) -> None:
        self.last_error = str(exc)
        self.reachable = False
        self.failures += 1

    def wait_acked(self, seq: int, timeout: float | None) -> bool:
        """Block until the relay acked local sequence number ``seq``; False on timeout.

        Acks this worker saw wake it at once. The queue itself is the truth, though: a change
        is on the relay once its outbox row is gone, whoever shipped it (another process holding
        the shipper lock, or this store before it was reopened), so that is checked too.
        """
        self.notify()
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._acked:
                if self._acked_seq >= seq:
                    return True
            if not self._pending_up_to(seq):
                self._mark_acked(seq)
                return True
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            with self._acked:
                if self._acked_seq < seq:
                    # Bounded, so acks made by another process are noticed by the check above.
                    self._acked.wait(min(remaining or IDLE_POLL_SECONDS, IDLE_POLL_SECONDS))

    def _pending_up_to(self, seq: int) -> bool:
        """True while an outbox row with sequence number ``seq`` or lower remains."""
        with self._reader_lock:
            if self._reader is None:
                self._reader = self._connect()
            return self._reader.execute(SELECT_PENDING_UP_TO, (seq,)).fetchone() is not None

    def status(self) -> dict[str, Any]:
        """What ``health_check()`` reports under ``relay``."""
        return {
            "url": self.client.url,
            "urls": list(self.client.urls),
            "reachable": self.reachable,
            "last_sync": _iso(self.last_sync),
            "last_error": self.last_error,
            "consecutive_failures": self.failures,
            "shipping": self._lease.held,
            "worker": self.state.value,
        }

    # ------------------------------------------------------------------ background thread

    def notify(self) -> None:
        """A local commit happened: ship soon."""
        self._wake.set()

    def start(self) -> None:
        """Run :meth:`sync_once` in a daemon thread until :meth:`stop`."""
        if self._thread is not None:
            return
        self.state = WorkerState.RUNNING
        self._thread = threading.Thread(
            target=self._run, name=f"commander-os-sync[{self.agent_id}]", daemon=True
        )
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the thread, release the shipper lock and close connections."""
        self.state = WorkerState.STOPPING
        self._stop.set()
        self._wake.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        with self._ship_lock:
            self._lease.release()
            if self._prefetcher is not None:
                self._prefetcher.shutdown(wait=True)
                self._prefetcher = None
            for conn in (self._conn, self._prefetch_conn):
                if conn is not None:
                    conn.close()
            self._conn = self._prefetch_conn = None
            self.client.close()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        self.state = WorkerState.STOPPED

    def forget_after_fork(self) -> None:
        """In a forked child: abandon the parent's thread, lock and connections untouched."""
        self._lease.forget()
        self._conn = self._prefetch_conn = None
        self._prefetcher = None
        self._reader = None
        self._reader_lock = threading.Lock()
        self._thread = None
        self._ship_lock = threading.Lock()
        self.state = WorkerState.STOPPED

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()
            try:
                shipped = self.drain()
            except Exception as exc:
                # RelayError: the relay is away. Anything else (a disk error, a bug) must not
                # end shipping for good either; both are reported through status().
                if not isinstance(exc, RelayError):
                    self.last_error = f"{type(exc).__name__}: {exc}"
                    self.failures += 1
                # Local commits must not hammer an absent relay: only stop() cuts this short.
                self._stop.wait(_backoff(self.failures, self.config.sync_interval))
                continue
            if not shipped:
                self._wake.wait(IDLE_POLL_SECONDS)


def _backoff(failures: int, cap: float) -> float:
    """Exponential backoff with jitter: about 50 ms, 100 ms, 200 ms, ... capped at ``cap``."""
    ceiling = min(cap, BACKOFF_START_SECONDS * 2 ** min(max(failures - 1, 0), 30))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="milliseconds")
