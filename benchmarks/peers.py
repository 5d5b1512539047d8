"""The stores compared in the local benchmarks, behind one small interface.

Each adapter does the *same work* as ``AgentStorage``: ``set`` encodes a JSON value and stores
it durably at the given durability, ``get`` reads it back decoded (except diskcache, which is
measured as issue 5 asks: returning its stored string without decoding), ``set_many`` stores a
batch in one transaction, ``scan`` returns the decoded values of keys starting with a prefix.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import sqlite3
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

import orjson

from commander_os.identifiers import prefix_upper_bound as _prefix_end
from commander_os.storage.agent_storage import AgentStorage

__all__ = [
    "DiskCacheKV",
    "OursKV",
    "RawSQLiteKV",
    "RedisKV",
    "RedisServer",
    "SqliteDictKV",
    "Store",
]

#: What the raw sqlite3 peer runs: the same table and upsert as AgentStorage (agent_storage.py;
#: a rowid table since issue 5 measured WITHOUT ROWID at 3x slower for 1 KB values).
RAW_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    key        TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
)
"""
RAW_UPSERT = (
    "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
RAW_SELECT = "SELECT value FROM kv WHERE key = ?"
RAW_RANGE = "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key"
RAW_FROM = "SELECT key, value FROM kv WHERE key >= ? ORDER BY key"


class Store(Protocol):
    """What every compared store offers."""

    name: str

    def get(self, key: str) -> Any: ...
    def set(self, key: str, value: Any) -> None: ...
    def set_many(self, pairs: list[tuple[str, Any]]) -> None: ...
    def scan(self, prefix: str) -> dict[str, Any]: ...
    def close(self) -> None: ...


class OursKV:
    """``AgentStorage`` itself (``enable_htpc`` off unless a relay URL is given)."""

    def __init__(
        self,
        directory: Path,
        durability: str,
        *,
        htpc_url: str | None = None,
        name: str = "ours",
    ) -> None:
        self.name = name
        self.store = AgentStorage(
            agent_id="bench",
            data_dir=directory,
            enable_htpc=htpc_url is not None,
            htpc_url=htpc_url,
            durability=durability,
            # With a relay that is away, retry rarely so the benchmark measures the write path.
            sync_interval=60,
            # The capture row measures the trigger as it runs while the relay answers: every
            # change kept. (While a target is away the queue also drops each key's older
            # change on insert, which costs more: see the README's replication section.)
            compact_outbox=False,
        )
        self.get = self.store.get
        self.set = self.store.set

    def set_many(self, pairs: list[tuple[str, Any]]) -> None:
        self.store.set_many(pairs)

    def scan(self, prefix: str) -> dict[str, Any]:
        return self.store.list_all(prefix)

    def close(self) -> None:
        self.store.close()


class RawSQLiteKV:
    """Plain ``sqlite3`` + orjson with the same pragmas, table and upsert (autocommit)."""

    def __init__(self, directory: Path, durability: str, name: str = "raw sqlite3") -> None:
        self.name = name
        directory.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(
            directory / "raw.db", isolation_level=None, check_same_thread=False
        )
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute(f"PRAGMA synchronous = {durability.upper()}")
        self.conn.execute(RAW_SCHEMA)

    def get(self, key: str) -> Any:
        row = self.conn.execute(RAW_SELECT, (key,)).fetchone()
        return None if row is None else orjson.loads(row[0])

    def set(self, key: str, value: Any) -> None:
        self.conn.execute(RAW_UPSERT, (key, orjson.dumps(value).decode(), time.time()))

    def set_many(self, pairs: list[tuple[str, Any]]) -> None:
        now = time.time()
        rows = [(key, orjson.dumps(value).decode(), now) for key, value in pairs]
        self.conn.execute("BEGIN IMMEDIATE")
        self.conn.executemany(RAW_UPSERT, rows)
        self.conn.execute("COMMIT")

    def scan(self, prefix: str) -> dict[str, Any]:
        end = _prefix_end(prefix) if prefix else None
        if end is None:
            cursor = self.conn.execute(RAW_FROM, (prefix,))
        else:
            cursor = self.conn.execute(RAW_RANGE, (prefix, end))
        return {key: orjson.loads(text) for key, text in cursor.fetchall()}

    def close(self) -> None:
        self.conn.close()


class DiskCacheKV:
    """``diskcache.Cache`` storing the orjson text; ``get`` returns the string undecoded."""

    def __init__(self, directory: Path, durability: str, name: str = "diskcache") -> None:
        import diskcache

        self.name = name
        synchronous = {"full": 2, "normal": 1}[durability]
        self.cache = diskcache.Cache(str(directory), sqlite_synchronous=synchronous)

    def get(self, key: str) -> Any:
        return self.cache.get(key)

    def set(self, key: str, value: Any) -> None:
        self.cache.set(key, orjson.dumps(value).decode())

    def set_many(self, pairs: list[tuple[str, Any]]) -> None:
        with self.cache.transact():
            for key, value in pairs:
                self.cache.set(key, orjson.dumps(value).decode())

    def scan(self, prefix: str) -> dict[str, Any]:
        # diskcache has no ordered prefix scan: walk every key, as a user would have to.
        cache = self.cache
        return {
            key: orjson.loads(cache[key])
            for key in sorted(k for k in cache.iterkeys() if k.startswith(prefix))
        }

    def close(self) -> None:
        self.cache.close()


class SqliteDictKV:
    """``sqlitedict.SqliteDict`` with ``autocommit=True`` (a blocking commit per write), WAL,
    orjson as its encoder. sqlitedict hard-codes ``PRAGMA synchronous=OFF``: no fsync at all,
    so its writes are a reference point, not a like-for-like durable write."""

    def __init__(self, directory: Path, name: str = "sqlitedict") -> None:
        from sqlitedict import SqliteDict

        self.name = name
        directory.mkdir(parents=True, exist_ok=True)
        self.db = SqliteDict(
            str(directory / "sqlitedict.db"),
            autocommit=True,
            journal_mode="WAL",
            encode=orjson.dumps,
            decode=orjson.loads,
            outer_stack=False,
        )

    def get(self, key: str) -> Any:
        return self.db.get(key)

    def set(self, key: str, value: Any) -> None:
        self.db[key] = value

    def set_many(self, pairs: list[tuple[str, Any]]) -> None:
        self.db.autocommit = False
        try:
            self.db.update(pairs)
            self.db.commit()
        finally:
            self.db.autocommit = True

    def scan(self, prefix: str) -> dict[str, Any]:
        return dict(sorted((k, v) for k, v in self.db.items() if k.startswith(prefix)))

    def close(self) -> None:
        self.db.close()


class RedisServer:
    """A private ``redis-server`` on a free loopback port (pinned with taskset), no persistence.

    Falls back to an already running server at ``fallback`` when ``redis-server`` is missing.
    """

    def __init__(self, *, cpu: int | None, fallback: str = "127.0.0.1:6379") -> None:
        self.cpu = cpu
        self.fallback = fallback
        self.process: subprocess.Popen[bytes] | None = None
        self.host, self.port = fallback.split(":")[0], int(fallback.split(":")[1])
        self.version = "unknown"

    def start(self) -> RedisServer:
        binary = shutil.which("redis-server")
        if binary is not None:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                self.port = sock.getsockname()[1]
            self.host = "127.0.0.1"
            argv = [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", ""]
            argv += ["--appendonly", "no"]
            if self.cpu is not None:
                argv = ["taskset", "-c", str(self.cpu), *argv]
            self.process = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
        return self

    def client(self) -> Any:
        """A connected ``redis.Redis``, waiting for the server to accept."""
        import redis

        client = redis.Redis(host=self.host, port=self.port)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.version = str(client.info("server")["redis_version"])
                return client
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(5)
            self.process = None


class RedisKV:
    """Redis over loopback: SET / GET of the orjson text, decoded on read (a reference point,
    not durable: no fsync)."""

    def __init__(self, server: RedisServer, name: str = "redis (loopback)") -> None:
        self.name = name
        self.client = server.client()
        self.client.flushdb()

    def get(self, key: str) -> Any:
        raw = self.client.get(key)
        return None if raw is None else orjson.loads(raw)

    def set(self, key: str, value: Any) -> None:
        self.client.set(key, orjson.dumps(value))

    def set_many(self, pairs: list[tuple[str, Any]]) -> None:
        self.client.mset({key: orjson.dumps(value) for key, value in pairs})

    def scan(self, prefix: str) -> dict[str, Any]:
        keys = sorted(self.client.scan_iter(match=prefix + "*", count=1000))
        values = self.client.mget(keys) if keys else []
        return {key.decode(): orjson.loads(value) for key, value in zip(keys, values, strict=True)}

    def close(self) -> None:
        self.client.close()


def fill(store: Store, pairs: Iterable[tuple[str, Any]], chunk: int = 5000) -> None:
    """Load ``pairs`` into ``store`` in big transactions (setup, not measured)."""
    batch: list[tuple[str, Any]] = []
    for pair in pairs:
        batch.append(pair)
        if len(batch) >= chunk:
            store.set_many(batch)
            batch = []
    if batch:
        store.set_many(batch)
