"""Sync capture: every change to a synced table lands in ``_sync_queue`` in its transaction."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from commander_os.errors import CommanderStorageError
from commander_os.storage import _outbox as outbox
from commander_os.storage._migrations import Migration
from commander_os.storage.agent_storage import AgentStorage
from commander_os.storage.base_storage import BaseStorage

MakeStorage = Callable[..., Any]


class Queue:
    """Reads a store's outbox as ``(table, key values, op)`` triples."""

    def __init__(self, storage: BaseStorage) -> None:
        self.storage = storage

    def rows(self) -> list[tuple[str, list[Any], str]]:
        cursor = self.storage.conn.execute("SELECT tbl, pk, op FROM _sync_queue ORDER BY seq")
        return [(tbl, orjson.loads(pk), op) for tbl, pk, op in cursor]

    def changes(self) -> list[outbox.PendingChange]:
        conn = self.storage.conn
        tables = outbox.registered_tables(conn)
        return outbox.load_changes(conn, outbox.pending(conn, 10_000), tables)


class TeamStorage(BaseStorage):
    """A custom schema with a one-column and a two-column primary key."""

    migrations = (
        Migration(
            1,
            "people and memberships",
            """
            CREATE TABLE people (
                id    INTEGER PRIMARY KEY,
                email TEXT NOT NULL UNIQUE,
                name  TEXT NOT NULL,
                tags  TEXT NOT NULL DEFAULT '[]'
            );
            CREATE TABLE memberships (
                team   TEXT NOT NULL,
                person INTEGER NOT NULL,
                role   TEXT,
                PRIMARY KEY (team, person)
            );
            CREATE TABLE scratch (id INTEGER PRIMARY KEY, note TEXT);
            """,
        ),
    )
    synced_tables = (
        outbox.SyncedTable("people", json_columns=("tags",)),
        outbox.SyncedTable("memberships"),
    )


@pytest.fixture
def synced(make_storage: MakeStorage, dead_relay_url: str) -> Callable[..., Any]:
    """Open a store with sync on, pointed at a relay nobody runs (so the queue keeps all).

    These tests look at capture itself: ``compact_outbox`` is off, or the queue would keep
    only each key's newest change while the relay is away (test_replication.py).
    """

    def open_store(cls: type[Any] = AgentStorage, agent_id: str = "syncer", **kw: Any) -> Any:
        return make_storage(
            agent_id,
            cls=cls,
            enable_htpc=True,
            htpc_url=dead_relay_url,
            close_timeout=0,
            sync_interval=0.2,
            compact_outbox=False,
            **kw,
        )

    return open_store


# ------------------------------------------------------------------------- key-value table


def test_every_kv_write_is_queued(synced: Callable[..., AgentStorage]) -> None:
    storage = synced()
    queue = Queue(storage)
    storage.set("a", 1)
    storage.set("a", 2)
    storage.set_many({"b": 1, "c": 2})
    assert storage.delete("b") is True
    assert storage.delete("missing") is False
    assert queue.rows() == [
        ("kv", ["a"], "upsert"),
        ("kv", ["a"], "upsert"),
        ("kv", ["b"], "upsert"),
        ("kv", ["c"], "upsert"),
        ("kv", ["b"], "delete"),
    ]
    assert storage.get_sync_queue_size() == 5


def test_queue_row_and_write_share_one_transaction(synced: Callable[..., AgentStorage]) -> None:
    storage = synced()
    storage.set("k", "old")
    # Fault injection: make the outbox refuse new rows; the data write must fail with it.
    storage.conn.execute(
        "CREATE TRIGGER no_queue BEFORE INSERT ON _sync_queue "
        "BEGIN SELECT RAISE(ABORT, 'outbox full'); END"
    )
    with pytest.raises(CommanderStorageError, match="outbox full"):
        storage.set("k", "new")
    with pytest.raises(CommanderStorageError, match="outbox full"):
        storage.set_many({"x": 1, "y": 2})
    with pytest.raises(CommanderStorageError, match="outbox full"):
        storage.delete("k")
    assert storage.list_all() == {"k": "old"}
    assert storage.get_sync_queue_size() == 1


def test_coalescing_keeps_the_newest_data(synced: Callable[..., AgentStorage]) -> None:
    storage = synced()
    for i in range(50):
        storage.set("hot", {"n": i})
    storage.set("gone", 1)
    storage.delete("gone")
    changes = Queue(storage).changes()
    assert [(c.table, c.key) for c in changes] == [("kv", "hot"), ("kv", "gone")]
    hot, gone = changes
    assert len(hot.seqs) == 50
    assert hot.data is not None
    assert hot.data["key"] == "hot"
    assert hot.data["value"] == {"n": 49}  # a json column travels as JSON, not as text
    assert gone.data is None
    assert len(gone.seqs) == 2


def test_rolled_back_transaction_queues_nothing(synced: Callable[..., AgentStorage]) -> None:
    storage = synced()

    def write_then_fail() -> None:
        with storage.transaction():
            storage.set("a", 1)
            storage.set_many({"b": 2})
            raise RuntimeError("abort")

    with pytest.raises(RuntimeError, match="abort"):
        write_then_fail()
    assert storage.get_sync_queue_size() == 0
    assert storage.list_all() == {}


def test_local_only_store_queues_nothing(make_storage: MakeStorage) -> None:
    storage = make_storage("local", cls=TeamStorage)
    storage.conn.execute("INSERT INTO people (id, email, name) VALUES (1, 'a@x', 'A')")
    kv = make_storage("local-kv")
    kv.set("a", 1)
    kv.set_many({"b": 1})
    kv.delete("a")
    storage.register_synced_table("scratch")
    storage.conn.execute("INSERT INTO scratch VALUES (1, 'n')")
    assert storage.get_sync_queue_size() == 0
    assert kv.get_sync_queue_size() == 0


def test_local_only_opener_does_not_stop_capture_for_a_syncing_process(
    synced: Callable[..., AgentStorage], make_storage: MakeStorage
) -> None:
    # An agent syncs; a second handle (a script, a tool) opens the same store local-only.
    agent = synced()
    make_storage("syncer", data_dir=agent.data_dir)
    agent.set("after-local-open", 1)
    assert Queue(agent).rows() == [("kv", ["after-local-open"], "upsert")]


# ------------------------------------------------------------------------- custom tables


def test_custom_table_insert_update_delete_via_raw_sql(synced: Callable[..., Any]) -> None:
    storage = synced(TeamStorage)
    conn = storage.conn
    conn.execute("INSERT INTO people (id, email, name) VALUES (1, 'a@x', 'Ann')")
    conn.execute("UPDATE people SET name = 'Anne' WHERE id = 1")
    conn.execute("INSERT INTO memberships VALUES ('red', 1, 'lead')")
    conn.execute("UPDATE memberships SET role = 'member'")
    conn.execute("DELETE FROM memberships")
    conn.execute("INSERT INTO scratch VALUES (1, 'not synced')")
    assert Queue(storage).rows() == [
        ("people", [1], "upsert"),
        ("people", [1], "upsert"),
        ("memberships", ["red", 1], "upsert"),
        ("memberships", ["red", 1], "upsert"),
        ("memberships", ["red", 1], "delete"),
    ]
    people, membership = Queue(storage).changes()
    assert people.key == "1"
    assert people.data == {"id": 1, "email": "a@x", "name": "Anne", "tags": []}
    assert membership.key == '["red",1]'
    assert membership.data is None


def test_primary_key_change_is_delete_plus_upsert(synced: Callable[..., Any]) -> None:
    storage = synced(TeamStorage)
    with storage.transaction() as conn:
        conn.execute("INSERT INTO people (id, email, name) VALUES (1, 'a@x', 'Ann')")
    storage.conn.execute("UPDATE people SET id = 2 WHERE id = 1")
    assert Queue(storage).rows() == [
        ("people", [1], "upsert"),
        ("people", [1], "delete"),
        ("people", [2], "upsert"),
    ]
    old, new = Queue(storage).changes()
    assert (old.key, old.data) == ("1", None)
    assert new.key == "2"
    assert new.data is not None
    assert new.data["name"] == "Ann"


def test_replace_that_evicts_another_row_is_captured(synced: Callable[..., Any]) -> None:
    storage = synced(TeamStorage)
    conn = storage.conn
    conn.execute("INSERT INTO people (id, email, name) VALUES (1, 'a@x', 'Ann')")
    outbox.ack(conn, 10**9)  # row 1 reached the relay
    # Same email, other id: REPLACE deletes row 1 to make room for row 2.
    conn.execute("INSERT OR REPLACE INTO people (id, email, name) VALUES (2, 'a@x', 'Bob')")
    assert conn.execute("SELECT id FROM people").fetchall() == [(2,)]
    changes = {c.key: c.data for c in Queue(storage).changes()}
    assert changes["1"] is None
    assert changes["2"] is not None


def test_register_synced_table_at_runtime(synced: Callable[..., Any]) -> None:
    storage = synced(TeamStorage)
    storage.register_synced_table("scratch")
    storage.conn.execute("INSERT INTO scratch VALUES (7, 'now synced')")
    assert Queue(storage).rows() == [("scratch", [7], "upsert")]
    with pytest.raises(ValueError, match="no such table"):
        storage.register_synced_table("nope")
    with pytest.raises(ValueError, match="invalid table name"):
        storage.register_synced_table("bad name; DROP TABLE people")


def test_table_without_primary_key_needs_one(synced: Callable[..., Any]) -> None:
    storage = synced(TeamStorage)
    storage.conn.execute("CREATE TABLE log (at TEXT, line TEXT)")
    with pytest.raises(ValueError, match="PRIMARY KEY"):
        storage.register_synced_table("log")
    storage.register_synced_table("log", primary_key=("at",))
    storage.conn.execute("INSERT INTO log VALUES ('t1', 'hello')")
    assert Queue(storage).rows() == [("log", ["t1"], "upsert")]


def test_runtime_registration_survives_a_local_only_session(
    make_storage: MakeStorage, synced: Callable[..., Any], tmp_path: Path
) -> None:
    local = make_storage("syncer", cls=TeamStorage)
    local.register_synced_table("scratch")
    local.close()
    storage = synced(TeamStorage)
    storage.conn.execute("INSERT INTO scratch VALUES (1, 'x')")
    assert Queue(storage).rows() == [("scratch", [1], "upsert")]


def test_triggers_survive_reopen_and_capture_other_connections(
    synced: Callable[..., Any],
) -> None:
    import sqlite3

    storage = synced(TeamStorage)
    other = sqlite3.connect(storage.db_path, isolation_level=None)
    try:
        other.execute("INSERT INTO people (id, email, name) VALUES (5, 'e@x', 'Eve')")
    finally:
        other.close()
    assert Queue(storage).rows() == [("people", [5], "upsert")]


def _schema_version(path: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA schema_version").fetchone()[0])
    finally:
        conn.close()


def test_reopening_a_synced_store_rewrites_no_trigger(synced: Callable[..., Any]) -> None:
    storage = synced(TeamStorage)
    storage.register_synced_table("scratch")
    path = storage.db_path
    storage.close()
    before = _schema_version(path)
    again = synced(TeamStorage)  # a host reopening a thousand stores pays no schema write each
    assert _schema_version(path) == before
    again.conn.execute("INSERT INTO scratch VALUES (1, 'x')")
    again.conn.execute("INSERT INTO people (id, email, name) VALUES (5, 'e@x', 'Eve')")
    assert Queue(again).rows() == [("scratch", [1], "upsert"), ("people", [5], "upsert")]


def test_reopening_with_another_primary_key_re_registers(
    make_storage: MakeStorage, synced: Callable[..., Any]
) -> None:
    storage = synced(TeamStorage)
    storage.register_synced_table("scratch")
    storage.close()
    storage = synced(TeamStorage)
    storage.register_synced_table("scratch", primary_key=("note",))  # a different identity
    storage.conn.execute("INSERT INTO scratch VALUES (1, 'x')")
    assert Queue(storage).rows() == [("scratch", ["x"], "upsert")]
