"""IntegrationStorage: one agent store holding the tables of every framework integration.

LangGraph's store and checkpointer and LangChain's key-value stores keep their data in tables of
one :class:`BaseStorage` subclass, so one agent has one database whatever mix of integrations it
uses, and every table except derived indexes is synced to the relay like any other.

Tables (all synced unless marked local):

- ``lg_store``: LangGraph store items; key ``(namespace, key)``, ``value`` JSON, ``created_at``,
  ``updated_at``, ``expires_at`` and ``ttl_minutes`` (Unix seconds / minutes);
- ``lg_store_namespaces`` (local): each non-empty namespace and its item count, kept by
  triggers; its rowid orders namespaces by creation;
- ``lg_store_vectors`` (local): unit-length float32 embeddings of indexed fields;
- ``lg_checkpoints`` and ``lg_writes``: LangGraph checkpoints and pending writes;
- ``lc_json`` and ``lc_bytes``: LangChain key-value stores.
"""

from __future__ import annotations

from commander_os.integrations._core import BaseStorage, Migration, SyncedTable

__all__ = [
    "CHECKPOINTS_TABLE",
    "LC_BYTES_TABLE",
    "LC_JSON_TABLE",
    "STORE_TABLE",
    "WRITES_TABLE",
    "IntegrationStorage",
]

STORE_TABLE = "lg_store"
CHECKPOINTS_TABLE = "lg_checkpoints"
WRITES_TABLE = "lg_writes"
LC_JSON_TABLE = "lc_json"
LC_BYTES_TABLE = "lc_bytes"

# A rowid table, not WITHOUT ROWID: values are often larger than the ~1 KB a WITHOUT ROWID row
# keeps on its page, and the rowid gives each namespace's items their insertion order (the index
# on `namespace` alone is (namespace, rowid)), which is the order InMemoryStore returns.
_STORE_SCHEMA = """
CREATE TABLE lg_store (
    namespace   TEXT NOT NULL,
    key         TEXT NOT NULL,
    value       TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    expires_at  REAL,
    ttl_minutes REAL,
    PRIMARY KEY (namespace, key)
);
CREATE INDEX lg_store_by_namespace ON lg_store (namespace);
CREATE INDEX lg_store_expiry ON lg_store (expires_at) WHERE expires_at IS NOT NULL;
CREATE TABLE lg_store_namespaces (
    namespace TEXT PRIMARY KEY NOT NULL,
    items     INTEGER NOT NULL
);
CREATE TABLE lg_store_vectors (
    namespace TEXT NOT NULL,
    key       TEXT NOT NULL,
    field     TEXT NOT NULL,
    embedding BLOB NOT NULL,
    PRIMARY KEY (namespace, key, field)
);
CREATE TRIGGER lg_store_added AFTER INSERT ON lg_store BEGIN
    INSERT INTO lg_store_namespaces (namespace, items) VALUES (NEW.namespace, 1)
    ON CONFLICT (namespace) DO UPDATE SET items = items + 1;
END;
CREATE TRIGGER lg_store_removed AFTER DELETE ON lg_store BEGIN
    UPDATE lg_store_namespaces SET items = items - 1 WHERE namespace = OLD.namespace;
    DELETE FROM lg_store_namespaces WHERE namespace = OLD.namespace AND items <= 0;
    DELETE FROM lg_store_vectors WHERE namespace = OLD.namespace AND key = OLD.key;
END;
CREATE TRIGGER lg_store_moved AFTER UPDATE OF namespace ON lg_store
WHEN OLD.namespace IS NOT NEW.namespace BEGIN
    UPDATE lg_store_namespaces SET items = items - 1 WHERE namespace = OLD.namespace;
    DELETE FROM lg_store_namespaces WHERE namespace = OLD.namespace AND items <= 0;
    INSERT INTO lg_store_namespaces (namespace, items) VALUES (NEW.namespace, 1)
    ON CONFLICT (namespace) DO UPDATE SET items = items + 1;
    DELETE FROM lg_store_vectors WHERE namespace = OLD.namespace AND key = OLD.key;
END;
"""

_CHECKPOINT_SCHEMA = """
CREATE TABLE lg_checkpoints (
    thread_id            TEXT NOT NULL,
    checkpoint_ns        TEXT NOT NULL DEFAULT '',
    checkpoint_id        TEXT NOT NULL,
    parent_checkpoint_id TEXT,
    type                 TEXT,
    checkpoint           BLOB,
    metadata             TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id)
);
CREATE TABLE lg_writes (
    thread_id     TEXT NOT NULL,
    checkpoint_ns TEXT NOT NULL DEFAULT '',
    checkpoint_id TEXT NOT NULL,
    task_id       TEXT NOT NULL,
    idx           INTEGER NOT NULL,
    channel       TEXT NOT NULL,
    type          TEXT,
    value         BLOB,
    task_path     TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (thread_id, checkpoint_ns, checkpoint_id, task_id, idx)
);
"""

_LANGCHAIN_SCHEMA = """
CREATE TABLE lc_json (
    key        TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE lc_bytes (
    key        TEXT PRIMARY KEY NOT NULL,
    value      BLOB NOT NULL,
    updated_at REAL NOT NULL
);
"""


class IntegrationStorage(BaseStorage):
    """The agent store behind :mod:`commander_os.integrations` (LangGraph and LangChain).

    Open it like any store and hand it to as many integrations as the agent uses::

        storage = IntegrationStorage("planner", "./data/agents/planner",
                                     htpc_url="http://127.0.0.1:8001", enable_htpc=True)
        store = CommanderStore(storage)
        saver = CommanderSaver(storage)

    Every table of items, checkpoints, writes and LangChain values is synced to the relay.
    """

    migrations = (
        Migration(1, "langgraph store", _STORE_SCHEMA),
        Migration(2, "langgraph checkpoints", _CHECKPOINT_SCHEMA),
        Migration(3, "langchain key-value stores", _LANGCHAIN_SCHEMA),
    )
    synced_tables = (
        SyncedTable(STORE_TABLE, ("namespace", "key"), ("value",)),
        SyncedTable(CHECKPOINTS_TABLE, json_columns=("metadata",)),
        SyncedTable(WRITES_TABLE),
        SyncedTable(LC_JSON_TABLE, json_columns=("value",)),
        SyncedTable(LC_BYTES_TABLE),
    )
