"""Transactions (BEGIN IMMEDIATE, savepoints), durability settings and online backups."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from commander_os.errors import ConfigError, StorageBusy, StorageError
from commander_os.storage import _backup
from commander_os.storage.agent_storage import AgentStorage

MakeStorage = Callable[..., AgentStorage]


@pytest.fixture
def raw(make_storage: MakeStorage) -> Iterator[Callable[[AgentStorage], sqlite3.Connection]]:
    """A plain sqlite3 connection to a store's file that fails at once when it is locked."""
    conns: list[sqlite3.Connection] = []

    def open_raw(storage: AgentStorage) -> sqlite3.Connection:
        conn = sqlite3.connect(storage.db_path, timeout=0, isolation_level=None)
        conns.append(conn)
        return conn

    yield open_raw
    for conn in conns:
        conn.close()


def keys_seen_by(conn: sqlite3.Connection) -> list[str]:
    return [row[0] for row in conn.execute("SELECT key FROM kv ORDER BY key")]


def test_transaction_commits_as_one(make_storage: MakeStorage, raw: Any) -> None:
    storage = make_storage()
    other = raw(storage)
    with storage.transaction() as conn:
        storage.set("a", 1)
        storage.set_many({"b": 2})
        conn.execute("UPDATE kv SET value = '3' WHERE key = 'b'")
        assert keys_seen_by(other) == []  # not visible before the commit
    assert keys_seen_by(other) == ["a", "b"]
    assert storage.get("b") == 3


def test_transaction_rolls_back_on_error(make_storage: MakeStorage) -> None:
    storage = make_storage()
    storage.set("keep", 1)

    def fail() -> None:
        with storage.transaction():
            storage.set("a", 1)
            storage.delete("keep")
            raise KeyError("boom")

    with pytest.raises(KeyError):
        fail()
    assert storage.list_all() == {"keep": 1}
    assert not storage.conn.in_transaction


def test_nested_transaction_failure_rolls_back_only_the_inner(make_storage: MakeStorage) -> None:
    storage = make_storage()

    def inner_fails() -> None:
        with storage.transaction():
            storage.set("inner", 2)
            raise ValueError("inner")

    with storage.transaction():
        storage.set("outer-before", 1)
        with pytest.raises(ValueError, match="inner"):
            inner_fails()
        storage.set("outer-after", 3)
        with storage.transaction():
            storage.set("inner-ok", 4)
    assert storage.keys() == ["inner-ok", "outer-after", "outer-before"]


def test_outer_failure_rolls_back_committed_inner(make_storage: MakeStorage) -> None:
    storage = make_storage()

    def fail() -> None:
        with storage.transaction():
            with storage.transaction():
                storage.set("inner", 1)
            raise RuntimeError("outer")

    with pytest.raises(RuntimeError):
        fail()
    assert storage.keys() == []
    storage.set("usable", 1)
    assert storage.keys() == ["usable"]


def test_transaction_holds_the_write_lock_from_the_start(
    make_storage: MakeStorage, raw: Any
) -> None:
    storage = make_storage()
    other = raw(storage)
    with storage.transaction():
        # Nothing written yet: only BEGIN IMMEDIATE (not a deferred BEGIN) holds the lock.
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            other.execute("BEGIN IMMEDIATE")
        assert keys_seen_by(other) == []  # readers are never blocked (WAL)
    other.execute("BEGIN IMMEDIATE")
    other.execute("ROLLBACK")


def test_every_write_begins_immediate(make_storage: MakeStorage) -> None:
    storage = make_storage()
    statements: list[str] = []
    storage.conn.set_trace_callback(statements.append)
    try:
        storage.set("a", 1)
        storage.set_many({"b": 2, "c": 3})
        storage.delete("a")
        with storage.transaction():
            storage.set("d", 4)
    finally:
        storage.conn.set_trace_callback(None)
    begins = [s for s in statements if s.upper().startswith("BEGIN")]
    assert begins == ["BEGIN IMMEDIATE"] * 4


def test_locked_store_raises_storage_busy_and_writes_nothing(
    make_storage: MakeStorage, raw: Any
) -> None:
    storage = make_storage(busy_timeout=0.05)
    other = raw(storage)
    other.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StorageBusy, match="locked") as excinfo:
            storage.set("a", 1)
        assert isinstance(excinfo.value, StorageError)
        with pytest.raises(StorageBusy), storage.transaction():
            pass
        assert storage.get("a") is None  # reads still work
    finally:
        other.execute("ROLLBACK")
    storage.set("a", 1)
    assert storage.get("a") == 1


def test_second_handle_waits_for_the_lock_instead_of_failing(
    make_storage: MakeStorage, tmp_path: Path
) -> None:
    first = make_storage("shared")
    second = make_storage("shared")
    errors: list[BaseException] = []
    started = threading.Event()

    def write() -> None:
        started.set()
        try:
            second.set("from-thread", 1)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=write)
    with first.transaction():
        first.set("from-transaction", 1)
        thread.start()
        started.wait()
    thread.join(30)
    assert errors == []
    assert first.keys() == ["from-thread", "from-transaction"]


@pytest.mark.parametrize(("durability", "expected"), [(None, 2), ("full", 2), ("normal", 1)])
def test_durability_setting(
    make_storage: MakeStorage, durability: str | None, expected: int
) -> None:
    settings = {} if durability is None else {"durability": durability}
    storage = make_storage(**settings)
    assert storage.conn.execute("PRAGMA synchronous").fetchone()[0] == expected
    assert storage.health_check()["durability"] == (durability or "full")


def test_bad_durability_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="durability"):
        AgentStorage("x", tmp_path, enable_htpc=False, durability="sometimes")
    assert list(tmp_path.iterdir()) == []


def test_pragmas(make_storage: MakeStorage) -> None:
    storage = make_storage()
    conn = storage.conn
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 30_000


# ------------------------------------------------------------------------------- backup


def test_backup_while_another_thread_writes(make_storage: MakeStorage, tmp_path: Path) -> None:
    storage = make_storage("backed-up")
    storage.set_many({f"before-{i}": i for i in range(200)})
    stop = threading.Event()
    written: list[int] = []
    errors: list[BaseException] = []

    def writer() -> None:
        i = 0
        try:
            while not stop.is_set() or i < 50:
                storage.set(f"during-{i}", {"i": i, "pad": "x" * 200})
                written.append(i)
                i += 1
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while len(written) < 10:
            threading.Event().wait(0.001)
        target = storage.backup(tmp_path / "backups" / "copy.db")
    finally:
        stop.set()
        thread.join(30)
    assert errors == []
    assert target == tmp_path / "backups" / "copy.db"
    assert not (tmp_path / "backups" / "copy.db-wal").exists()
    with closing(sqlite3.connect(target)) as copy:
        assert copy.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        keys = {row[0] for row in copy.execute("SELECT key FROM kv")}
    assert {f"before-{i}" for i in range(200)} <= keys
    during = sorted(int(k.split("-")[1]) for k in keys if k.startswith("during-"))
    assert during == list(range(len(during)))  # a consistent prefix of the writer's stream
    assert len(during) >= 10
    # A restored copy taking over at the relay is the identity rule's (tests/sync/test_identity).


def test_backup_opens_as_a_store(make_storage: MakeStorage, tmp_path: Path) -> None:
    storage = make_storage("orig")
    storage.set("k", {"v": 1})
    storage.backup(tmp_path / "restore" / "orig.db")
    restored = make_storage("orig", data_dir=tmp_path / "restore")
    assert restored.get("k") == {"v": 1}
    restored.set("k2", 2)
    assert storage.get("k2") is None


def test_backup_refuses_to_overwrite(make_storage: MakeStorage, tmp_path: Path) -> None:
    storage = make_storage()
    target = tmp_path / "existing.db"
    target.write_bytes(b"precious")
    with pytest.raises(FileExistsError):
        storage.backup(target)
    assert target.read_bytes() == b"precious"
    storage.backup(tmp_path / "fresh.db")
    with pytest.raises(FileExistsError):
        storage.backup(tmp_path / "fresh.db")


def test_backup_after_close_raises(make_storage: MakeStorage, tmp_path: Path) -> None:
    storage = make_storage()
    storage.close()
    with pytest.raises(StorageError):
        storage.backup(tmp_path / "closed.db")
    assert list(tmp_path.glob("closed.db*")) == []


def test_failed_backup_leaves_no_files(
    make_storage: MakeStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = make_storage()
    storage.set("a", 1)

    def disk_full(source: object, path: Path, encryption_key: object) -> None:
        path.write_bytes(b"half a copy")
        raise sqlite3.OperationalError("database or disk is full")

    # Fault injection: the copy fails half-way, as it would on a full disk.
    monkeypatch.setattr(_backup, "_copy", disk_full)
    with pytest.raises(StorageError, match="disk is full"):
        storage.backup(tmp_path / "full" / "copy.db")
    assert list((tmp_path / "full").iterdir()) == []
    assert storage.get("a") == 1
