"""What the process's shipper knows of one open store: its lanes, and every read and write it
makes in the store on their behalf.

A :class:`StoreLink` holds one :class:`Lane` per delivery target. All of its database work runs
on the store's own connection, under the store's lock (no connection, thread or file handle of
its own beyond the ship lock), in short transactions. Its writes (cursor advances, failures,
grants) commit at ``synchronous=NORMAL``: losing one to a power cut only makes the store resend
changes the relay already has, which the identity rule recognises.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from commander_os import _sqlite as db
from commander_os.config import StorageConfig
from commander_os.protocol import segment_record_json
from commander_os.storage import _outbox as outbox
from commander_os.storage._delivery import identity, targets
from commander_os.storage._delivery.lock import ShipLock

if TYPE_CHECKING:
    from commander_os.storage._delivery.lane import Lane

__all__ = ["Draft", "ShippedStore", "StoreLink"]

_log = logging.getLogger("commander_os.delivery")
#: Failed attempts in a row after which a target counts as away: the outbox is then compacted
#: per key, so it stays bounded by the keys changed, not the writes made, until it returns.
COMPACT_AFTER_FAILURES = 1


class ShippedStore(Protocol):
    """What the shipper needs of a store (``BaseStorage`` provides it)."""

    agent_id: str
    config: StorageConfig
    db_path: Path

    def shipping_connection(self) -> AbstractContextManager[sqlite3.Connection]:
        """The store's connection, under its lock (raises StorageClosed once closed)."""
        ...


@dataclass
class Draft:
    """A segment read from the outbox, before it is sent."""

    records: list[dict[str, Any]]
    seqs: list[list[int]]  # the outbox rows each record covers
    base: int
    through: int
    incarnation: int
    attempts: list[int]
    #: Whether it read as many queued changes as it was allowed to (more may wait).
    full: bool = False


@dataclass(eq=False)
class StoreLink:
    """One open store as the shipper sees it (see the module docstring)."""

    store: ShippedStore
    wake: Callable[[], None]
    lanes: dict[str, Lane] = field(default_factory=dict)
    active: bool = False
    fenced: bool = False
    retired: bool = False
    closed: bool = False
    data_version: int = -1
    takeover_at: float = 0.0
    changed: threading.Condition = field(default_factory=threading.Condition)
    wanted: list[targets.Target] = field(default_factory=list)
    #: Whether the outbox keeps only each key's newest change (while a target is away).
    compacting: bool = False
    #: The last standing and draft read, with the store version they were read at.
    _reads: dict[str, tuple[tuple[Any, ...], Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.lock = ShipLock(self.store.db_path)
        self.agent_id = self.store.agent_id
        self.config = self.store.config

    # -- connection -------------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """A read transaction on the store's connection."""
        with self.store.shipping_connection() as conn:
            if conn.in_transaction:  # another thread of the store is inside a transaction
                yield conn
                return
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @contextmanager
    def writing(self, what: str) -> Iterator[sqlite3.Connection]:
        """A short write transaction at ``synchronous=NORMAL`` (see the module docstring)."""
        with self.store.shipping_connection() as conn:
            full = self.config.durability == "full"
            if full:
                conn.execute("PRAGMA synchronous = NORMAL")
            try:
                with db.write_transaction(conn, what):
                    yield conn
            finally:
                if full:
                    conn.execute("PRAGMA synchronous = FULL")

    # -- state --------------------------------------------------------------------------------

    def activate(self, wanted: list[targets.Target]) -> dict[str, targets.Cursor]:
        """Take the ship lock if free, and register the targets; their cursors.

        Without the lock (another process ships this store) the cursors are only read.
        """
        self.wanted = wanted
        self.active = self.lock.acquire()
        if not self.active:
            with self.reading() as conn:
                return targets.load(conn)
        with self.writing("registering delivery targets") as conn:
            has_data = _has_data(conn)
            cursors, dropped = targets.ensure(conn, wanted, has_data=has_data)
            if outbox.read_meta(conn, "captured") != "1":
                outbox.write_meta(conn, "captured", 1)
            self.compacting = outbox.compacting(conn)
            self.fenced = identity.conflict(conn) is not None
            self.retired = identity.is_retired(conn)
        for name, cursor in dropped.items():
            _log.warning(
                "agent %s: no longer ships to %s (not in the config any more); it had "
                "acknowledged changes up to seq %d",
                self.agent_id,
                name,
                cursor.acked,
            )
        return cursors

    def try_takeover(self) -> None:
        """Another process shipped this store: if it is gone, ship it from here."""
        if self.active or self.closed:
            return
        cursors = self.activate(self.wanted)
        if self.active:
            for lane in self.lanes.values():
                cursor = cursors[lane.target]
                lane.acked, lane.acked_incarnation = cursor.acked, cursor.acked_incarnation
                lane.needs_repair = cursor.repair
                lane.restart()

    def release(self) -> None:
        """Stop shipping this store (closing): let another process take it."""
        self.closed = True
        self.lock.release()
        self.active = False
        self.notify_changed()

    def poll(self) -> bool:
        """Whether another connection committed since the last look (``data_version``)."""
        with self.store.shipping_connection() as conn:
            version = int(conn.execute("PRAGMA data_version").fetchone()[0])
        changed = version != self.data_version
        self.data_version = version
        return changed

    def notify_changed(self) -> None:
        """Wake whoever waits for acknowledgements of this store."""
        with self.changed:
            self.changed.notify_all()

    # -- reading segments ----------------------------------------------------------------------

    def _version(self, conn: sqlite3.Connection) -> tuple[int, int]:
        """What changes whenever the store does: this connection's changes, and other
        connections' commits (``data_version``)."""
        return conn.total_changes, int(conn.execute("PRAGMA data_version").fetchone()[0])

    def _cached(self, key: tuple[Any, ...]) -> Any:
        """What was read for ``key`` if the store has not changed since, else None.

        Every target's lane reads the same standing and the same next changes: with several
        targets, the first reads them and the others reuse them.
        """
        cached = self._reads.get(key[0])
        if cached is None:
            return None
        with self.store.shipping_connection() as conn:
            version = self._version(conn)
        return cached[1] if cached[0] == (*key, version) else None

    def standing(self) -> tuple[int, bool]:
        """The store's incarnation (0: none yet) and whether a claim waits to be sent."""
        found = self._cached(("standing",))
        if found is not None:
            return found  # type: ignore[no-any-return]
        with self.reading() as conn:
            version = self._version(conn)
            value = identity.incarnation(conn), identity.wants_claim(conn)
        self._reads["standing"] = (("standing", version), value)
        return value

    def outlook(self, after: int, limit: int) -> tuple[int, bool, Draft | None]:
        """:meth:`standing` and :meth:`draft` in one read transaction (the shipper's look at a
        lane, made once per request: one transaction fewer per store and request)."""
        key = ("outlook", after, limit)
        found = self._cached(key)
        if found is not None:
            return found  # type: ignore[no-any-return]
        with self.reading() as conn:
            version = self._version(conn)
            claim = identity.wants_claim(conn)
            draft = self._draft(conn, after, limit)
            incarnation = identity.incarnation(conn) if draft is None else draft.incarnation
        value = incarnation, claim, draft
        self._reads["outlook"] = ((*key, version), value)
        return value

    def draft(self, after: int, limit: int) -> Draft | None:
        """The next segment: up to ``limit`` changes after seq ``after``; None if none waits."""
        key = ("draft", after, limit)
        found = self._cached(key)
        if found is not None:
            return found  # type: ignore[no-any-return]
        with self.reading() as conn:
            version = self._version(conn)
            draft = self._draft(conn, after, limit)
        if draft is not None:
            self._reads["draft"] = ((*key, version), draft)
        return draft

    def _draft(self, conn: sqlite3.Connection, after: int, limit: int) -> Draft | None:
        incarnation = identity.incarnation(conn)
        rows = outbox.pending(conn, limit, after_seq=after)
        if not rows:
            return None
        tables = outbox.registered_tables(conn)
        changes = outbox.load_changes(conn, rows, tables, embed_json=True)
        records = [
            segment_record_json(c.table, c.key, c.data, c.seq, c.written_at) for c in changes
        ]
        return Draft(
            records,
            [list(c.seqs) for c in changes],
            after,
            rows[-1].seq,
            incarnation,
            [c.attempts for c in changes],
            len(rows) >= limit,
        )

    def heartbeat(self, lane: Lane) -> dict[str, Any]:
        """The store's outbox state as ``lane``'s relay hears it (``protocol._heartbeat``):
        the whole queue, and under ``targets`` every target's own queue, lag and error."""
        with self.reading() as conn:
            queued = outbox.queue_size(conn)
            oldest = outbox.oldest_pending_time(conn)
            dead = outbox.dead_letter_count(conn)
            behind = [
                (
                    other,
                    outbox.queue_size(conn, other.acked),
                    outbox.oldest_pending_time(conn, other.acked),
                )
                for other in self.lanes.values()
            ]
        error = None if lane.last_error is None else lane.last_error[:1000]
        return {
            "agent_id": self.agent_id,
            "queue_size": queued,
            "oldest_pending_age": _age(oldest),
            "dead_letters": dead,
            "last_error": error,
            "targets": [
                {
                    "name": other.target[:200],
                    "queue_size": count,
                    "oldest_pending_age": _age(since),
                    "last_error": None if other.last_error is None else other.last_error[:1000],
                }
                for other, count, since in behind
            ],
        }

    # -- writing outcomes ----------------------------------------------------------------------

    def advance(self, lane: Lane, through: int, incarnation: int) -> None:
        """``lane``'s target acknowledged everything up to ``through``."""
        with self.writing("an acknowledgement") as conn:
            dropped = targets.advance(conn, lane.target, through, incarnation)
            if self.compacting and outbox.floor(conn) >= outbox.last_seq(conn):
                # Every target caught up: keep every change again (compaction costs writes).
                outbox.set_compaction(conn, False)
                self.compacting = False
        lane.shipped_total += dropped
        lane.acknowledged(through, incarnation)
        lane.reported = (None, True)
        self.notify_changed()

    def report(self, lane: Lane, error: str | None, reachable: bool | None) -> None:
        """Keep the outcome of a failed attempt in the store, where other processes see it
        (written only when it differs from the last one, not on every retry)."""
        lane.last_error, lane.reachable = error, reachable
        compact = (
            self.config.compact_outbox
            and lane.failures >= COMPACT_AFTER_FAILURES
            and not self.compacting
        )
        if (error, reachable) == lane.reported and not compact:
            return
        with self.writing("a delivery failure") as conn:
            targets.note(conn, lane.target, error, reachable)
            if compact:
                outbox.set_compaction(conn, True)
                self.compacting = True
                _log.info(
                    "agent %s: %s is away; its queue now keeps only each key's newest change",
                    self.agent_id,
                    lane.target,
                )
        lane.reported = (error, reachable)

    def take_incarnation(self, lane: Lane, granted: int, *, claimed: bool) -> int:
        """``lane``'s relay granted ``granted``: the store's incarnation becomes at least that.

        ``lane`` drafts again under it. The other lanes do only if the incarnation changed: a
        window still valid, drafted again, would look to its relay like a store behind it
        (and cost yet another incarnation)."""
        with self.writing("a new incarnation") as conn:
            current = identity.incarnation(conn)
            value = max(current, granted)
            if value != current:
                identity.set_incarnation(conn, value)
            if claimed:
                identity.set_claim(conn, False)
                identity.clear_conflict(conn)
        if claimed:
            self.fenced = False
        for other in self.lanes.values():
            if other is lane or value != current:
                other.restart()
        self.notify_changed()
        return value

    def fence(self, lane: Lane, relay_incarnation: int) -> None:
        """A relay says another store holds the agent: stop shipping until resolved."""
        with self.writing("a conflict") as conn:
            identity.record_conflict(conn, lane.target, relay_incarnation)
        self.fenced = True
        self.notify_changed()

    def set_repair(self, lane: Lane, on: bool) -> None:
        """Mark (durably) whether ``lane``'s target needs the store's whole state."""
        with self.writing("a repair mark") as conn:
            targets.set_repair(conn, lane.target, on)
        lane.needs_repair = on

    def refused(self, draft: Draft, index: int, reason: str, max_retry: int) -> bool:
        """The relay refused one record: count the attempt, or dead-letter it at the limit.

        True if it was dead-lettered.
        """
        seqs = draft.seqs[index]
        with self.writing("a refused record") as conn:
            if draft.attempts[index] + 1 >= max_retry:
                outbox.dead_letter(conn, seqs, draft.records[index], reason)
                return True
            outbox.record_failure(conn, seqs, reason)
            return False

    # -- what acknowledged means -----------------------------------------------------------------

    def acked_positions(self) -> list[int]:
        """Each target's acknowledged seq (read from the store when another process ships)."""
        # A target waiting for the store's whole state has, in effect, acknowledged nothing.
        if self.active:
            return [
                0 if lane.needs_repair or lane.repair else lane.acked
                for lane in self.lanes.values()
            ]
        with self.reading() as conn:
            cursors = targets.load(conn).values()
        return [0 if cursor.repair else cursor.acked for cursor in cursors]

    def behind(self, seq: int) -> list[Lane]:
        """The lanes (of a store this process ships) whose target lacks something up to
        ``seq``."""
        if not self.active:
            return []
        return [
            lane
            for lane in self.lanes.values()
            if lane.needs_repair or lane.repair is not None or lane.acked < seq
        ]

    def quorum_position(self) -> int:
        """The seq that ``sync_quorum`` targets have acknowledged: what counts as delivered
        (-1 without targets: nothing is)."""
        positions = sorted(self.acked_positions(), reverse=True)
        if not positions:
            return -1
        return positions[min(self.config.quorum_size(), len(positions)) - 1]

    def acknowledged(self, seq: int) -> bool:
        """Whether ``sync_quorum`` targets acknowledged everything up to ``seq``."""
        return self.quorum_position() >= seq

    def wait_acked(self, seq: int, timeout: float | None, *, poll: float = 0.05) -> bool:
        """Block until ``sync_quorum`` targets acknowledged ``seq``; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.acknowledged(seq):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if self.closed and self.active is False and not self.lanes:
                return False
            with self.changed:
                # Bounded, so acks made by another process are noticed by the check above.
                self.changed.wait(poll if remaining is None else min(poll, remaining))
        return True

    async def await_acked(self, seq: int, timeout: float | None) -> bool:
        """:meth:`wait_acked` for event loops: sleeps on the loop instead of a thread."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.002  # a write on a live relay is acked within milliseconds; then up to 50 ms
        while not self.acknowledged(seq):
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return False
            if self.closed and self.active is False and not self.lanes:
                return False
            await asyncio.sleep(pause if remaining is None else min(pause, remaining))
            pause = min(pause * 2, 0.05)
        return True


def _age(moment: float | None) -> float | None:
    return None if moment is None else round(max(0.0, time.time() - moment), 3)


def _has_data(conn: sqlite3.Connection) -> bool:
    for name in outbox.registered_tables(conn):
        if conn.execute(outbox.TABLE_EXISTS, (name,)).fetchone() is None:
            continue
        quoted = '"' + name.replace('"', '""') + '"'
        if conn.execute(f"SELECT 1 FROM {quoted} LIMIT 1").fetchone() is not None:
            return True
    return False
