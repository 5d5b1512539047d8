"""LangChain key-value stores (``langchain_core.stores.BaseStore``) on an agent's store.

- :class:`CommanderByteStore`: ``BaseStore[str, bytes]`` (for example behind LangChain's
  ``CacheBackedEmbeddings`` or a ``MultiVectorRetriever``'s docstore);
- :class:`CommanderJSONStore`: ``BaseStore[str, Any]`` for JSON values.

Both keep their rows in synced tables of an :class:`~commander_os.integrations.IntegrationStorage`
(``lc_bytes``, ``lc_json``), so they replicate to the relay like any other write (bytes travel
as hex). ``mget`` keeps the order of the keys asked for and answers ``None`` for a missing one;
``mset`` and ``mdelete`` are one transaction each; ``yield_keys`` pages through the keys in
order, so it never holds every key in memory. Every method has an ``a``-twin that runs off the
event loop. Needs the ``[langchain]`` extra.

>>> store = CommanderJSONStore.open("notes-agent", "./data/agents/notes-agent")
>>> store.mset([("a", {"n": 1}), ("b", [1, 2])])
>>> store.mget(["b", "missing", "a"])
[[1, 2], None, {'n': 1}]
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import orjson
from langchain_core.stores import BaseStore

from commander_os.errors import InvalidKey, ValueTooLarge
from commander_os.integrations._storage import LC_BYTES_TABLE, LC_JSON_TABLE, IntegrationStorage

if TYPE_CHECKING:
    from typing import Self

__all__ = ["CommanderByteStore", "CommanderJSONStore"]

V = TypeVar("V")

#: Keys read per statement by ``yield_keys``.
KEY_PAGE = 1000
MAX_KEY_BYTES = 1024


class _TableStore(BaseStore[str, V], Generic[V]):
    """The shared body of both stores: one synced table of ``key, value, updated_at``."""

    table: str = ""

    def __init__(self, storage: IntegrationStorage, *, owns_storage: bool = False) -> None:
        self.storage = storage
        self._owns_storage = owns_storage
        table = self.table
        self._select = (
            f"SELECT key, value FROM {table} WHERE key IN (SELECT value FROM json_each(?))"
        )
        self._upsert = (
            f"INSERT INTO {table} (key, value, updated_at) VALUES (?, ?, ?) ON CONFLICT (key) "
            "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at"
        )
        self._delete = f"DELETE FROM {table} WHERE key IN (SELECT value FROM json_each(?))"
        self._keys_from = f"SELECT key FROM {table} WHERE key >= ? ORDER BY key LIMIT ?"
        self._keys_after = f"SELECT key FROM {table} WHERE key > ? ORDER BY key LIMIT ?"

    @classmethod
    def open(cls, agent_id: str, data_dir: Path | str, **settings: Any) -> Self:
        """Open (or create) the store of ``agent_id`` in ``data_dir``; ``close()`` closes it.

        ``settings`` are those of any agent store (``htpc_url``, ``enable_htpc``, ...).
        """
        return cls(IntegrationStorage(agent_id, data_dir, **settings), owns_storage=True)

    def _encode(self, key: str, value: V) -> str | bytes:
        raise NotImplementedError

    def _decode(self, stored: Any) -> V:
        raise NotImplementedError

    # ------------------------------------------------------------------------- the API

    def mget(self, keys: Sequence[str]) -> list[V | None]:
        """The values of ``keys`` in the same order; ``None`` where a key has no value."""
        wanted = [_check_key(key) for key in keys]
        if not wanted:
            return []
        with self.storage.reading() as conn:
            rows = conn.execute(self._select, (orjson.dumps(wanted).decode(),)).fetchall()
        found = {key: self._decode(value) for key, value in rows}
        return [found.get(key) for key in wanted]

    def mset(self, key_value_pairs: Sequence[tuple[str, V]]) -> None:
        """Store every pair, all or nothing (a later pair of the same key wins)."""
        now = time.time()
        rows = [(_check_key(key), self._encode(key, value), now) for key, value in key_value_pairs]
        if rows:
            with self.storage.transaction() as conn:
                conn.executemany(self._upsert, rows)

    def mdelete(self, keys: Sequence[str]) -> None:
        """Delete ``keys`` in one transaction; missing keys are fine."""
        wanted = [_check_key(key) for key in keys]
        if wanted:
            with self.storage.transaction() as conn:
                conn.execute(self._delete, (orjson.dumps(wanted).decode(),))

    def yield_keys(self, *, prefix: str | None = None) -> Iterator[str]:
        """Every key (starting with ``prefix``), in sorted order, read a page at a time."""
        prefix = prefix or ""
        # Keys sort as UTF-8 bytes, so those starting with `prefix` are one run from `prefix` on.
        statement, bound = self._keys_from, prefix
        while True:
            with self.storage.reading() as conn:
                page = [row[0] for row in conn.execute(statement, (bound, KEY_PAGE))]
            for key in page:
                if not key.startswith(prefix):
                    return
                yield key
            if len(page) < KEY_PAGE:
                return
            statement, bound = self._keys_after, page[-1]

    async def amget(self, keys: Sequence[str]) -> list[V | None]:
        """:meth:`mget` off the event loop."""
        return await asyncio.to_thread(self.mget, keys)

    async def amset(self, key_value_pairs: Sequence[tuple[str, V]]) -> None:
        """:meth:`mset` off the event loop."""
        await asyncio.to_thread(self.mset, key_value_pairs)

    async def amdelete(self, keys: Sequence[str]) -> None:
        """:meth:`mdelete` off the event loop."""
        await asyncio.to_thread(self.mdelete, keys)

    async def ayield_keys(self, *, prefix: str | None = None) -> AsyncIterator[str]:
        """:meth:`yield_keys` with each page read off the event loop."""
        keys = self.yield_keys(prefix=prefix)
        done = object()
        while (key := await asyncio.to_thread(next, keys, done)) is not done:
            yield key  # type: ignore[misc]  # `done` is filtered out by the loop condition

    # ------------------------------------------------------------------------- closing

    def close(self) -> None:
        """Close the storage if :meth:`open` created it."""
        if self._owns_storage:
            self.storage.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_size(self, key: str, size: int) -> None:
        limit = self.storage.config.max_value_bytes
        if size > limit:
            raise ValueTooLarge(
                f"value for key {key!r} is {size} bytes; the limit is {limit} (max_value_bytes)"
            )


class CommanderByteStore(_TableStore[bytes]):
    """A LangChain ``BaseStore[str, bytes]`` kept, and replicated, by an agent's store."""

    table = LC_BYTES_TABLE

    def _encode(self, key: str, value: bytes) -> bytes:
        if not isinstance(value, (bytes, bytearray, memoryview)):
            raise TypeError(f"value for key {key!r} must be bytes, not {type(value).__name__}")
        data = bytes(value)
        self._check_size(key, len(data))
        return data

    def _decode(self, stored: Any) -> bytes:
        return bytes(stored)


class CommanderJSONStore(_TableStore[Any]):
    """A LangChain ``BaseStore[str, Any]`` of JSON values, kept and replicated by an agent's
    store. Raises ``TypeError`` for a value JSON cannot hold (naming the key)."""

    table = LC_JSON_TABLE

    def _encode(self, key: str, value: Any) -> str:
        try:
            data = orjson.dumps(value)
        except TypeError as exc:
            raise TypeError(f"value for key {key!r} is not JSON-serialisable: {exc}") from None
        self._check_size(key, len(data))
        return data.decode()

    def _decode(self, stored: Any) -> Any:
        return orjson.loads(stored)


def _check_key(key: Any) -> str:
    if (
        not isinstance(key, str)
        or not key
        or len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES
    ):
        raise InvalidKey(
            f"keys are non-empty strings of at most {MAX_KEY_BYTES} bytes: {key!r:.80}"
        )
    return key
