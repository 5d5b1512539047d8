"""AgentStorage: a key-value store of JSON values, for agents that need nothing more.

>>> storage = AgentStorage(agent_id="my-agent", data_dir=Path("./data/agents/my-agent"),
...                        enable_htpc=False)
>>> storage.set("config", {"setting": "value"})
>>> storage.get("config")
{'setting': 'value'}

Values are anything JSON can hold (dicts, lists, strings, numbers, booleans, None); anything
else raises ``TypeError`` naming the key. Keys are non-empty strings of at most 1 KiB. Every
method has an ``a``-prefixed twin (``aset``, ``aget``, ...) that runs it off the event loop;
the network reads (``aquery_network``, ``aget_remote``, ...) are coroutines on
``httpx.AsyncClient``.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from enum import Enum
from pathlib import Path
from typing import Any
from uuid import UUID

import orjson

from commander_os.errors import InvalidKey, ValueTooLarge
from commander_os.identifiers import prefix_upper_bound, validate_key
from commander_os.protocol import KV_TABLE
from commander_os.storage._migrations import Migration
from commander_os.storage._outbox import SyncedTable
from commander_os.storage._values import pack, unpack
from commander_os.storage.base_storage import BaseStorage, run_in_thread

__all__ = ["KV_TABLE", "AgentStorage"]


# A rowid table, not WITHOUT ROWID: a WITHOUT ROWID row keeps at most ~1 KB of a 4 KiB page
# locally, so a typical 1 KB JSON value spilled into an overflow page and every get read two
# pages. Measured here at 100k keys x 1 KB: get 38 -> 12.5 us, upsert (NORMAL) 48-65 -> 16-19
# us, full scan 530-600 -> 350-420 ms (benchmarks/, issue 5). Stores created before this
# change keep their WITHOUT ROWID table, which works the same, only slower.
CREATE_KV = """
CREATE TABLE kv (
    key        TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL
)
"""
UPSERT = (
    "INSERT INTO kv (key, value, updated_at) VALUES (?, ?, ?) "
    "ON CONFLICT (key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
)
SELECT_VALUE = "SELECT value FROM kv WHERE key = ?"
SELECT_EXISTS = "SELECT 1 FROM kv WHERE key = ?"
DELETE = "DELETE FROM kv WHERE key = ?"
SELECT_ALL = "SELECT key, value FROM kv ORDER BY key"
SELECT_RANGE = "SELECT key, value FROM kv WHERE key >= ? AND key < ? ORDER BY key"
SELECT_FROM = "SELECT key, value FROM kv WHERE key >= ? ORDER BY key"
SELECT_KEYS = "SELECT key FROM kv ORDER BY key"
SELECT_KEYS_RANGE = "SELECT key FROM kv WHERE key >= ? AND key < ? ORDER BY key"
SELECT_KEYS_FROM = "SELECT key FROM kv WHERE key >= ? ORDER BY key"
COUNT = "SELECT COUNT(*) FROM kv"

# orjson would quietly turn these into strings or objects; a value must round-trip as it was.
_ENCODE_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS
# orjson writes a uuid.UUID as its text and has no option to refuse it; a value whose encoding
# holds text of that shape (or a null, which is how it writes NaN and infinity) is searched
# for what JSON cannot hold. Searching every value would cost writes a walk of each.
_UUID_TEXT = re.compile(rb'-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"')
# orjson's own nesting limit: deeper values are refused, and the search stops there too.
_MAX_DEPTH = 255
# The relay limits a record's data as shipped, the whole row: {"key":...,"value":...,
# "updated_at":...}. Its size beyond the value and the encoded key: the punctuation and names
# (31 bytes) and the longest float orjson writes (24).
_ROW_OVERHEAD = len('{"key":,"value":,"updated_at":}') + 24
# JSON writes a character of a key in at most 6 bytes (\u0000).
_MAX_KEY_CHAR_BYTES = 6
_MISSING = object()


def _not_json(value: Any, path: list[Any], depth: int = 0) -> str | None:
    """What in ``value`` JSON cannot hold (or cannot give back as it was), else ``None``.

    On a find, ``path`` holds the keys and indexes leading to it.
    """
    if isinstance(value, str | bool | Enum) or value is None:
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{value}, which JSON has no form for"
    if isinstance(value, int):
        return None if -(2**63) <= value < 2**64 else "an integer beyond 64 bits"
    if isinstance(value, UUID):
        return "a UUID, which JSON holds only as text: store str(value) instead"
    if depth >= _MAX_DEPTH:
        return f"nested more than {_MAX_DEPTH} levels deep"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"a dict with the key {key!r}: JSON object keys are strings"
            path.append(key)
            if found := _not_json(item, path, depth + 1):
                return found
            path.pop()
        return None
    if isinstance(value, list | tuple):
        for index, item in enumerate(value):
            path.append(index)
            if found := _not_json(item, path, depth + 1):
                return found
            path.pop()
        return None
    return f"a {type(value).__name__} object, which JSON cannot hold"


def _load(stored: str | bytes) -> Any:
    """A stored value: JSON text, or (large values) a zstd frame of it."""
    if type(stored) is str:
        return orjson.loads(stored)
    return orjson.loads(unpack(stored))  # type: ignore[arg-type]


def _non_json_problem(value: Any) -> str | None:
    """Where ``value`` holds something JSON cannot, and what: ``value['ids'][0] is a UUID``."""
    path: list[Any] = []
    found = _not_json(value, path)
    if found is None:
        return None
    steps = [f"[{part!r}]" for part in path]
    if len(steps) > 12:  # a value nested hundreds deep: its path says little past that
        steps = [*steps[:6], "[...]", *steps[-5:]]
    return "value" + "".join(steps) + f" is {found}"


class AgentStorage(BaseStorage):
    """Key-value storage for an agent, built on :class:`BaseStorage` (table ``kv``, synced)."""

    migrations = (Migration(1, "key-value table", CREATE_KV),)
    synced_tables = (SyncedTable(KV_TABLE, ("key",), ("value",)),)

    def _encode(self, key: str, value: Any) -> str | bytes:
        try:
            encoded = orjson.dumps(value, option=_ENCODE_OPTIONS)
        except TypeError as exc:
            reason = _non_json_problem(value) or str(exc)
            raise TypeError(f"value for key {key!r} is not JSON-serialisable: {reason}") from None
        if b"null" in encoded or (b"-" in encoded and _UUID_TEXT.search(encoded)):
            problem = _non_json_problem(value)
            if problem is not None:
                raise TypeError(f"value for key {key!r} is not JSON-serialisable: {problem}")
        limit = self.config.max_value_bytes
        if len(encoded) + _MAX_KEY_CHAR_BYTES * len(key) + _ROW_OVERHEAD > limit:
            self._check_shipped_size(key, len(encoded), limit)
        return pack(encoded)

    def _restored_row(self, table: str, row: dict[str, Any]) -> dict[str, Any]:
        """Rows restored from the relay keep large values compressed, as ``set`` does."""
        value = row.get("value")
        if table == KV_TABLE and isinstance(value, str):
            return {**row, "value": pack(value.encode())}
        return row

    @staticmethod
    def _check_shipped_size(key: str, size: int, limit: int) -> None:
        """Refuse a value whose row, as the relay will receive it, exceeds ``limit``: refused
        here, not dead-lettered after the relay refused it."""
        shipped = size + len(orjson.dumps(key)) + _ROW_OVERHEAD
        if shipped > limit:
            raise ValueTooLarge(
                f"value for key {key!r} is {size} bytes encoded, {shipped} bytes as shipped "
                f"with its key; the limit is {limit} (max_value_bytes)"
            )

    # ------------------------------------------------------------------------------ writes

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``, durably, replacing any previous value.

        Raises ``TypeError`` if the value is not JSON-serialisable, :class:`InvalidKey` for a
        bad key, :class:`ValueTooLarge` past ``max_value_bytes``.
        """
        validate_key(key)
        self._write(UPSERT, (key, self._encode(key, value), time.time()))

    def set_many(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> int:
        """Store many values in one transaction (all or nothing); return how many."""
        pairs = items.items() if isinstance(items, Mapping) else items
        now = time.time()
        rows = [(validate_key(key), self._encode(key, value), now) for key, value in pairs]
        if rows:
            self._write(UPSERT, rows, many=True)
        return len(rows)

    def delete(self, key: str) -> bool:
        """Remove ``key``; return True if it existed."""
        validate_key(key)
        return self._write(DELETE, (key,)) > 0

    # ------------------------------------------------------------------------------- reads

    def get(self, key: str, default: Any = None) -> Any:
        """The value stored under ``key``, or ``default`` when there is none."""
        validate_key(key)
        with self._lock:
            row = self._require_open().execute(SELECT_VALUE, (key,)).fetchone()
        return default if row is None else _load(row[0])

    def get_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """The stored values of ``keys``; keys without a value are left out."""
        found: dict[str, Any] = {}
        wanted = [validate_key(key) for key in keys]
        with self._lock:
            conn = self._require_open()
            for key in wanted:
                row = conn.execute(SELECT_VALUE, (key,)).fetchone()
                if row is not None:
                    found[key] = row[0]
        return {key: _load(text) for key, text in found.items()}

    def exists(self, key: str) -> bool:
        """True if a value is stored under ``key``."""
        validate_key(key)
        with self._lock:
            return self._require_open().execute(SELECT_EXISTS, (key,)).fetchone() is not None

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and bool(key) and self.exists(key)

    def __len__(self) -> int:
        with self._lock:
            return int(self._require_open().execute(COUNT).fetchone()[0])

    def keys(self, prefix: str = "") -> list[str]:
        """Every key (starting with ``prefix``), sorted."""
        with self._lock:
            cursor = self._scan(SELECT_KEYS, SELECT_KEYS_RANGE, SELECT_KEYS_FROM, prefix)
            return [row[0] for row in cursor]

    def list_all(self, prefix: str = "") -> dict[str, Any]:
        """Every key and value (whose key starts with ``prefix``), sorted by key."""
        with self._lock:
            rows = self._scan(SELECT_ALL, SELECT_RANGE, SELECT_FROM, prefix).fetchall()
        return {key: _load(text) for key, text in rows}

    def items(self, prefix: str = "") -> Iterator[tuple[str, Any]]:
        """``(key, value)`` pairs sorted by key, read as one consistent snapshot."""
        yield from self.list_all(prefix).items()

    def _scan(self, all_sql: str, range_sql: str, from_sql: str, prefix: str) -> Any:
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a string, not {type(prefix).__name__}")
        if not prefix.isascii():
            try:
                prefix.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise InvalidKey(f"prefix is not valid Unicode text: {prefix!r:.80}") from exc
        conn = self._require_open()
        if not prefix:
            return conn.execute(all_sql)
        end = prefix_upper_bound(prefix)
        if end is None:
            return conn.execute(from_sql, (prefix,))
        return conn.execute(range_sql, (prefix, end))

    def get_remote(
        self, agent_id: str, key: str, default: Any = None, *, target: str | None = None
    ) -> Any:
        """The value another agent stored under ``key``, read from the relay.

        ``default`` when that agent has no such key on the relay (or deleted it). Raises
        :class:`~commander_os.errors.RelayError` if the relay cannot be asked. With
        ``replicate_to``, read from the first healthy target, or from ``target``.
        """
        record = self.get_network_record(agent_id, KV_TABLE, validate_key(key), target=target)
        if record is None or record.get("data") is None:
            return default
        return record["data"]["value"]

    # ------------------------------------------------------------------------ async twins

    async def aset(self, key: str, value: Any) -> None:
        """:meth:`set` off the event loop."""
        await run_in_thread(self.set, key, value)

    async def aget(self, key: str, default: Any = None) -> Any:
        """:meth:`get` off the event loop."""
        return await run_in_thread(self.get, key, default)

    async def adelete(self, key: str) -> bool:
        """:meth:`delete` off the event loop."""
        return await run_in_thread(self.delete, key)

    async def aexists(self, key: str) -> bool:
        """:meth:`exists` off the event loop."""
        return await run_in_thread(self.exists, key)

    async def aset_many(self, items: Mapping[str, Any] | Iterable[tuple[str, Any]]) -> int:
        """:meth:`set_many` off the event loop."""
        return await run_in_thread(self.set_many, items)

    async def aget_many(self, keys: Iterable[str]) -> dict[str, Any]:
        """:meth:`get_many` off the event loop."""
        return await run_in_thread(self.get_many, list(keys))

    async def aget_remote(
        self, agent_id: str, key: str, default: Any = None, *, target: str | None = None
    ) -> Any:
        """:meth:`get_remote` as a coroutine on ``httpx.AsyncClient`` (no thread per call)."""
        record = await self.aget_network_record(
            agent_id, KV_TABLE, validate_key(key), target=target
        )
        if record is None or record.get("data") is None:
            return default
        return record["data"]["value"]

    async def akeys(self, prefix: str = "") -> list[str]:
        """:meth:`keys` off the event loop."""
        return await run_in_thread(self.keys, prefix)

    async def alist_all(self, prefix: str = "") -> dict[str, Any]:
        """:meth:`list_all` off the event loop."""
        return await run_in_thread(self.list_all, prefix)

    async def aitems(self, prefix: str = "") -> AsyncIterator[tuple[str, Any]]:
        """:meth:`items` for ``async for``: one consistent snapshot, read off the event loop."""
        for pair in (await run_in_thread(self.list_all, prefix)).items():
            yield pair


_ = Path  # the doctest above uses Path
