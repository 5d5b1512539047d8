"""CommanderStore: LangGraph's long-term memory (``BaseStore``) on an agent's local store.

Items live in the synced table ``lg_store`` of an :class:`IntegrationStorage`, so every put and
delete reaches the relay like any other write, and other agents can search them there
(:meth:`CommanderStore.search_network`). Filters, ``limit`` and ``offset`` run in SQLite;
namespaces are listed from a small table kept by triggers, not by scanning items.

Semantics follow LangGraph's ``InMemoryStore`` (a differential test holds them equal): search
returns items grouped by namespace in the order namespaces were created, and within a namespace
in the order keys were first written; inside one ``batch`` every read sees the store as it was
before the batch's writes, and the last put of a key wins.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
from langgraph.store.base import (
    BaseStore,
    GetOp,
    IndexConfig,
    Item,
    ListNamespacesOp,
    MatchCondition,
    Op,
    PutOp,
    Result,
    SearchItem,
    SearchOp,
    TTLConfig,
    validate_op_namespace,
)

from commander_os.errors import ValueTooLarge
from commander_os.integrations._filters import store_filter_sql
from commander_os.integrations._storage import IntegrationStorage
from commander_os.integrations._sweeper import SHARED_SWEEPER
from commander_os.integrations.langgraph import _store_sql as sql
from commander_os.integrations.langgraph._network import NetworkItem, search_relay
from commander_os.integrations.langgraph._vectors import VectorIndex, rank

if TYPE_CHECKING:
    import sqlite3
    from typing import Self

__all__ = ["CommanderStore"]

#: How often writes sweep expired items when no ``sweep_interval_minutes`` is configured.
DEFAULT_LAZY_SWEEP_SECONDS = 60.0


@dataclass
class _Batch:
    """One ``batch()`` call, grouped: reads in order, puts deduplicated (the last one wins)."""

    size: int
    reads: list[tuple[int, GetOp | SearchOp | ListNamespacesOp]] = field(default_factory=list)
    puts: dict[tuple[str, str], PutOp] = field(default_factory=dict)
    blobs: dict[tuple[str, str], list[tuple[str, bytes]]] = field(default_factory=dict)
    queries: dict[str, Any] = field(default_factory=dict)  # query text -> unit vector


class CommanderStore(BaseStore):
    """A LangGraph ``BaseStore`` whose items are kept, and replicated, by an agent's store.

    ``storage`` is an :class:`~commander_os.integrations.IntegrationStorage` (shared with a
    :class:`CommanderSaver` if you like); :meth:`open` creates one and closes it with the store.

    ``index={"embed": fn, "dims": N, "fields": [...]}`` turns on semantic search (vectors kept
    locally, ranked with NumPy); ``ttl={"default_ttl": minutes, "refresh_on_read": True,
    "sweep_interval_minutes": m}`` turns on expiry. Expired items are never returned; writes
    delete them lazily, and ``sweep_interval_minutes`` adds the process's one sweeper thread.

    >>> store = CommanderStore.open("memory-agent", "./data/agents/memory-agent")
    >>> store.put(("users", "u1"), "prefs", {"theme": "dark", "size": 3})
    >>> store.search(("users",), filter={"size": {"$gte": 2}})[0].key
    'prefs'

    Raises ``TypeError`` for a value that is not JSON, :class:`~commander_os.errors.ValueTooLarge`
    past the store's ``max_value_bytes``, ``InvalidNamespaceError`` for a bad namespace.
    """

    supports_ttl = True

    def __init__(
        self,
        storage: IntegrationStorage,
        *,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        owns_storage: bool = False,
    ) -> None:
        self.storage = storage
        self.ttl_config = ttl
        self._owns_storage = owns_storage
        self._index = VectorIndex(index) if index else None
        interval = (ttl or {}).get("sweep_interval_minutes")
        self._sweep_every = interval * 60.0 if interval else DEFAULT_LAZY_SWEEP_SECONDS
        self._next_sweep = 0.0
        with storage.reading() as conn:
            self._vectors = bool(conn.execute(sql.HAS_VECTORS).fetchone()[0])
        if interval:
            self.start_ttl_sweeper()

    @classmethod
    def open(
        cls,
        agent_id: str,
        data_dir: Path | str,
        *,
        index: IndexConfig | None = None,
        ttl: TTLConfig | None = None,
        **settings: Any,
    ) -> Self:
        """Open (or create) the store of ``agent_id`` in ``data_dir``; ``close()`` closes it.

        ``settings`` are those of any agent store (``htpc_url``, ``enable_htpc``, ...).
        """
        storage = IntegrationStorage(agent_id, data_dir, **settings)
        try:
            return cls(storage, index=index, ttl=ttl, owns_storage=True)
        except BaseException:
            storage.close()
            raise

    # --------------------------------------------------------------------------- batch

    def batch(self, ops: Iterable[Op]) -> list[Result]:
        """Run ``ops`` (gets, searches, namespace listings, puts and deletes) in order."""
        batch = self._group(ops)
        if self._index is not None:
            self._embed(batch)
        return self._execute(batch)

    async def abatch(self, ops: Iterable[Op]) -> list[Result]:
        """:meth:`batch` for asyncio: embeddings through the async API, SQL off the loop."""
        batch = self._group(ops)
        if self._index is not None:
            await self._aembed(batch)
        return await asyncio.to_thread(self._execute, batch)

    def _group(self, ops: Iterable[Op]) -> _Batch:
        listed = list(ops)
        batch = _Batch(len(listed))
        for number, op in enumerate(listed):
            validate_op_namespace(op)
            if isinstance(op, PutOp):
                batch.puts[sql.encode_namespace(op.namespace), op.key] = op
            elif isinstance(op, (GetOp, SearchOp, ListNamespacesOp)):
                if isinstance(op, SearchOp):
                    _check_page(op.limit, op.offset)
                batch.reads.append((number, op))
            else:
                raise ValueError(f"unknown operation type: {type(op).__name__}")
        return batch

    # ------------------------------------------------------------------------ embedding

    def _texts(self, batch: _Batch) -> tuple[list[str], list[tuple[str, str, str]], list[str]]:
        assert self._index is not None
        puts = [
            (ns, key, op.value, op.index)
            for (ns, key), op in batch.puts.items()
            if op.value is not None
        ]
        plan = self._index.plan(puts)
        queries = sorted(
            {op.query for _, op in batch.reads if isinstance(op, SearchOp) and op.query}
        )
        return plan.texts, plan.targets, queries

    def _embed(self, batch: _Batch) -> None:
        assert self._index is not None
        texts, targets, queries = self._texts(batch)
        embeddings = self._index.embeddings
        documents = embeddings.embed_documents(texts) if texts else []
        found = [embeddings.embed_query(query) for query in queries]
        self._keep_vectors(batch, targets, documents, dict(zip(queries, found, strict=True)))

    async def _aembed(self, batch: _Batch) -> None:
        assert self._index is not None
        texts, targets, queries = self._texts(batch)
        embeddings = self._index.embeddings
        documents = await embeddings.aembed_documents(texts) if texts else []
        found = await asyncio.gather(*(embeddings.aembed_query(query) for query in queries))
        self._keep_vectors(batch, targets, documents, dict(zip(queries, found, strict=True)))

    def _keep_vectors(
        self,
        batch: _Batch,
        targets: list[tuple[str, str, str]],
        documents: Sequence[Sequence[float]],
        queries: dict[str, Sequence[float]],
    ) -> None:
        assert self._index is not None
        if len(documents) != len(targets):
            raise ValueError(
                f"the embedding function returned {len(documents)} vectors for {len(targets)} texts"
            )
        for (namespace, key, path), blob in zip(
            targets, self._index.encode(documents), strict=True
        ):
            batch.blobs.setdefault((namespace, key), []).append((path, blob))
        batch.queries = {text: self._index.query_vector(vector) for text, vector in queries.items()}

    # ------------------------------------------------------------------------- executing

    def _execute(self, batch: _Batch) -> list[Result]:
        now = time.time()
        results: list[Result] = [None] * batch.size
        refresh: list[tuple[float, str, str]] = []
        if batch.puts:
            with self.storage.transaction() as conn:
                self._read(conn, batch, results, refresh, now)
                conn.executemany(sql.REFRESH_TTL, refresh)
                self._write(conn, batch, now)
                self._lazy_sweep(conn, now)
            return results
        with self.storage.reading() as conn:
            self._read(conn, batch, results, refresh, now)
        if refresh:
            with self.storage.transaction() as conn:
                conn.executemany(sql.REFRESH_TTL, refresh)
        return results

    def _read(
        self,
        conn: sqlite3.Connection,
        batch: _Batch,
        results: list[Result],
        refresh: list[tuple[float, str, str]],
        now: float,
    ) -> None:
        for number, op in batch.reads:
            if isinstance(op, GetOp):
                results[number] = self._get(conn, op, refresh, now)
            elif isinstance(op, SearchOp):
                results[number] = self._search(conn, op, batch, refresh, now)
            else:
                results[number] = self._list_namespaces(conn, op, now)

    def _get(
        self, conn: sqlite3.Connection, op: GetOp, refresh: list[tuple[float, str, str]], now: float
    ) -> Item | None:
        namespace = sql.encode_namespace(op.namespace)
        row = conn.execute(sql.SELECT_ITEM, (namespace, op.key, now)).fetchone()
        if row is None:
            return None
        if op.refresh_ttl and row[5] is not None:
            refresh.append((now, namespace, op.key))
        return sql.to_item(row)

    def _search(
        self,
        conn: sqlite3.Connection,
        op: SearchOp,
        batch: _Batch,
        refresh: list[tuple[float, str, str]],
        now: float,
    ) -> list[SearchItem]:
        where, params = self._where(op, now)
        query = batch.queries.get(op.query) if op.query else None
        if query is not None:
            found = self._ranked(conn, where, params, query, op)
        else:
            rows = conn.execute(
                f"SELECT {sql.ITEM_COLUMNS} FROM lg_store AS s {_ORDERED_JOIN} WHERE {where} "
                "ORDER BY n.rowid, s.rowid LIMIT ? OFFSET ?",
                [*params, op.limit, op.offset],
            ).fetchall()
            found = [(row, None) for row in rows]
        if op.refresh_ttl:
            refresh += [(now, row[0], row[1]) for row, _ in found if row[5] is not None]
        return [sql.to_search_item(row, score) for row, score in found]

    def _where(self, op: SearchOp, now: float) -> tuple[str, list[Any]]:
        namespaces, params = sql.namespace_range(op.namespace_prefix, "s.namespace")
        clauses = [namespaces, sql.NOT_EXPIRED]
        params.append(now)
        if op.filter:
            condition, extra = store_filter_sql(op.filter, column="s.value")
            clauses.append(condition)
            params += extra
        return " AND ".join(clauses), params

    def _ranked(
        self,
        conn: sqlite3.Connection,
        where: str,
        params: list[Any],
        query: Any,
        op: SearchOp,
    ) -> list[tuple[Sequence[Any], float | None]]:
        candidates = conn.execute(
            f"SELECT s.rowid, v.embedding FROM lg_store AS s {_ORDERED_JOIN} "
            "LEFT JOIN lg_store_vectors AS v ON v.namespace = s.namespace AND v.key = s.key "
            f"WHERE {where} ORDER BY n.rowid, s.rowid",
            params,
        ).fetchall()
        kept = rank(query, candidates, limit=op.limit, offset=op.offset)
        rows = conn.execute(
            f"SELECT s.rowid, {sql.ITEM_COLUMNS} FROM lg_store AS s "
            "WHERE s.rowid IN (SELECT value FROM json_each(?))",
            (orjson.dumps([rowid for rowid, _ in kept]).decode(),),
        ).fetchall()
        by_rowid = {row[0]: row[1:] for row in rows}
        return [(by_rowid[rowid], score) for rowid, score in kept if rowid in by_rowid]

    def _list_namespaces(
        self, conn: sqlite3.Connection, op: ListNamespacesOp, now: float
    ) -> list[tuple[str, ...]]:
        _check_page(op.limit, op.offset)
        prefix = _literal_prefix(op.match_conditions or ())
        # Items past their TTL but not yet swept must not keep a namespace listed.
        if conn.execute(sql.ANY_EXPIRED, (now,)).fetchone()[0]:
            where, params = sql.namespace_range(prefix, "s.namespace")
            text = f"{sql.LIVE_NAMESPACES} AND {where}"
            rows = conn.execute(text, [now, *params])
        else:
            where, params = sql.namespace_range(prefix, "namespace")
            rows = conn.execute(f"{sql.SELECT_NAMESPACES} WHERE {where}", params)
        namespaces = [sql.decode_namespace(row[0]) for row in rows]
        matching = [
            ns for ns in namespaces if all(_matches(c, ns) for c in op.match_conditions or ())
        ]
        if op.max_depth is not None:
            matching = list({ns[: op.max_depth] for ns in matching})
        return sorted(matching)[op.offset : op.offset + op.limit]

    def _write(self, conn: sqlite3.Connection, batch: _Batch, now: float) -> None:
        # Upserts before deletes: each key has one final state either way, and a namespace
        # whose last item is replaced in the same batch then never looks empty (which would
        # move it to the end of the search order).
        deletes = [key for key, op in batch.puts.items() if op.value is None]
        limit = self.storage.config.max_value_bytes
        for (namespace, key), op in batch.puts.items():
            if op.value is not None:
                self._upsert(conn, batch, namespace, key, op, _encode(key, op.value, limit), now)
        conn.executemany(sql.DELETE_ITEM, deletes)

    def _upsert(
        self,
        conn: sqlite3.Connection,
        batch: _Batch,
        namespace: str,
        key: str,
        op: PutOp,
        value: str,
        now: float,
    ) -> None:
        expires = None if op.ttl is None else now + op.ttl * 60.0
        conn.execute(sql.UPSERT_ITEM, (namespace, key, value, now, now, expires, op.ttl))
        if self._vectors or self._index is not None:
            conn.execute(sql.DELETE_VECTORS, (namespace, key))
        blobs = batch.blobs.get((namespace, key))
        if blobs:
            rows = [(namespace, key, path, blob) for path, blob in blobs]
            conn.executemany(sql.INSERT_VECTOR, rows)
            self._vectors = True

    # ------------------------------------------------------------------------------- TTL

    def _lazy_sweep(self, conn: sqlite3.Connection, now: float) -> None:
        if now >= self._next_sweep:
            self._next_sweep = now + self._sweep_every
            conn.execute(sql.DELETE_EXPIRED, (now,))

    def sweep_ttl(self) -> int:
        """Delete every expired item now; return how many were deleted (and replicated)."""
        with self.storage.transaction() as conn:
            return conn.execute(sql.DELETE_EXPIRED, (time.time(),)).rowcount

    def start_ttl_sweeper(self, sweep_interval_minutes: float | None = None) -> None:
        """Sweep expired items every ``sweep_interval_minutes`` (default: the TTL config's).

        All stores of a process share one sweeper thread; stores that do not ask for one cost
        no thread (their writes sweep lazily).
        """
        minutes = sweep_interval_minutes or (self.ttl_config or {}).get("sweep_interval_minutes")
        SHARED_SWEEPER.add(self, (minutes or DEFAULT_LAZY_SWEEP_SECONDS / 60.0) * 60.0)

    def stop_ttl_sweeper(self) -> bool:
        """Stop sweeping this store in the background; False if it was not swept."""
        return SHARED_SWEEPER.remove(self)

    # ---------------------------------------------------------------------------- network

    def search_network(
        self,
        namespace_prefix: tuple[str, ...],
        /,
        *,
        agent_id: str | Sequence[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        limit: int = 10,
        offset: int = 0,
    ) -> list[NetworkItem]:
        """Search the items of other agents (or all agents) on the relay, under its ACL.

        Filters have the same meaning as in :meth:`search`; the parts the relay can evaluate
        are sent to it, and every result is checked here again. Expired items are left out.
        Items come in the relay's order (the order they reached it), each with its
        ``agent_id``. Raises :class:`~commander_os.errors.RelayError` (``RelayAuthError`` when
        the relay's ACL refuses the read).
        """
        _check_page(limit, offset)
        return search_relay(
            self.storage.relay,
            namespace_prefix,
            agent_id=agent_id,
            filter=filter,
            limit=limit,
            offset=offset,
        )

    async def asearch_network(
        self,
        namespace_prefix: tuple[str, ...],
        /,
        *,
        agent_id: str | Sequence[str] | None = None,
        filter: Mapping[str, Any] | None = None,
        limit: int = 10,
        offset: int = 0,
    ) -> list[NetworkItem]:
        """:meth:`search_network` off the event loop."""
        return await asyncio.to_thread(
            self.search_network,
            namespace_prefix,
            agent_id=agent_id,
            filter=filter,
            limit=limit,
            offset=offset,
        )

    # ---------------------------------------------------------------------------- closing

    def close(self) -> None:
        """Stop background sweeping; close the storage if :meth:`open` created it."""
        self.stop_ttl_sweeper()
        if self._owns_storage:
            self.storage.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<CommanderStore {self.storage!r}>"


# Namespaces are numbered by creation in lg_store_namespaces; items by rowid within them.
_ORDERED_JOIN = "JOIN lg_store_namespaces AS n ON n.namespace = s.namespace"


def _check_page(limit: int, offset: int) -> None:
    if limit < 0 or offset < 0:
        raise ValueError(f"limit and offset must not be negative (got {limit}, {offset})")


def _encode(key: str, value: Mapping[str, Any], limit: int) -> str:
    try:
        encoded = orjson.dumps(dict(value))
    except TypeError as exc:
        raise TypeError(f"value for key {key!r} is not JSON-serialisable: {exc}") from None
    if len(encoded) > limit:
        raise ValueTooLarge(
            f"value for key {key!r} is {len(encoded)} bytes encoded; the limit is {limit} "
            "(max_value_bytes)"
        )
    return encoded.decode()


def _literal_prefix(conditions: Iterable[MatchCondition]) -> tuple[str, ...]:
    """The leading labels of the prefix condition before any wildcard (narrows the scan)."""
    for condition in conditions:
        if condition.match_type == "prefix":
            labels: list[str] = []
            for label in condition.path:
                if label == "*":
                    break
                labels.append(label)
            return tuple(labels)
    return ()


def _matches(condition: MatchCondition, namespace: tuple[str, ...]) -> bool:
    path = condition.path
    if len(namespace) < len(path):
        return False
    if condition.match_type == "prefix":
        pairs = zip(namespace, path, strict=False)
    elif condition.match_type == "suffix":
        pairs = zip(reversed(namespace), reversed(path), strict=False)
    else:
        raise ValueError(f"unsupported match type {condition.match_type!r}")
    return all(wanted in ("*", label) for label, wanted in pairs)
