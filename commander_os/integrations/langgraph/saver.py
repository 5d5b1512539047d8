"""CommanderSaver: LangGraph checkpoints in an agent's store, replicated to the relay.

Checkpoints and pending writes are rows of the synced tables ``lg_checkpoints`` and
``lg_writes``, so every step of a thread reaches the relay through the store's outbox. That is
what lets a thread started on one machine continue on another:

1. machine A runs the graph with ``CommanderSaver`` on agent ``"writer"`` (sync on); before it
   hands over, ``saver.storage.wait_for_sync()`` makes sure the relay has every step;
2. machine B opens its *own* agent (``"writer-b"``: two live stores never share an agent id),
   with a token that may read ``"writer"``, and calls
   ``saver_b.pull_thread("writer", thread_id)``: the thread's checkpoints and writes are read
   from the relay and written into B's store (and so replicated under B's id);
3. B invokes the graph with the same ``thread_id`` and carries on from A's last step.

Metadata is stored as JSON (``list(filter=...)`` runs in SQL and other agents can query it on
the relay); checkpoints and write values go through the saver's ``serde``, as BLOBs.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import orjson
from langchain_core.runnables import RunnableConfig
from langgraph.checkpoint.base import (
    WRITES_IDX_MAP,
    BaseCheckpointSaver,
    ChannelVersions,
    Checkpoint,
    CheckpointMetadata,
    CheckpointTuple,
    get_checkpoint_id,
    get_serializable_checkpoint_metadata,
)
from langgraph.checkpoint.serde.base import SerializerProtocol

from commander_os.integrations._filters import equality_filter_sql
from commander_os.integrations._storage import CHECKPOINTS_TABLE, WRITES_TABLE, IntegrationStorage
from commander_os.integrations.langgraph import _saver_sql as sql

if TYPE_CHECKING:
    import sqlite3
    from typing import Self

__all__ = ["CommanderSaver"]

_PRUNE_STRATEGIES = ("keep_latest", "delete")
# The class defines a `list` method, which hides the builtin in its annotations.
_Rows = list[dict[str, Any]]
_Tuples = list[CheckpointTuple]


class CommanderSaver(BaseCheckpointSaver[str]):
    """A LangGraph checkpointer (sync and async) on an agent's replicated store.

    ``storage`` is an :class:`~commander_os.integrations.IntegrationStorage` (it may be shared
    with a :class:`CommanderStore`); :meth:`open` creates one and closes it with the saver.

    >>> saver = CommanderSaver.open("writer", "./data/agents/writer")
    >>> graph = builder.compile(checkpointer=saver)            # doctest: +SKIP
    >>> graph.invoke(inputs, {"configurable": {"thread_id": "t1"}})  # doctest: +SKIP

    Every capability of LangGraph's conformance suite is implemented: put, put_writes,
    get_tuple, list, delete_thread, delete_for_runs, copy_thread and prune.
    """

    def __init__(
        self,
        storage: IntegrationStorage,
        *,
        serde: SerializerProtocol | None = None,
        owns_storage: bool = False,
    ) -> None:
        super().__init__(serde=serde)
        self.storage = storage
        self._owns_storage = owns_storage

    @classmethod
    def open(
        cls,
        agent_id: str,
        data_dir: Path | str,
        *,
        serde: SerializerProtocol | None = None,
        **settings: Any,
    ) -> Self:
        """Open (or create) the checkpoints of ``agent_id`` in ``data_dir``.

        ``settings`` are those of any agent store (``htpc_url``, ``enable_htpc``, ...);
        ``close()`` closes the storage opened here.
        """
        storage = IntegrationStorage(agent_id, data_dir, **settings)
        return cls(storage, serde=serde, owns_storage=True)

    # ---------------------------------------------------------------------------- reading

    def get_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """The checkpoint ``config`` names (its ``checkpoint_id``, or the thread's latest)."""
        thread_id, namespace = _thread(config)
        checkpoint_id = get_checkpoint_id(config)
        with self.storage.reading() as conn:
            if checkpoint_id:
                params: tuple[str, ...] = (thread_id, namespace, checkpoint_id)
                row = conn.execute(sql.SELECT_CHECKPOINT, params).fetchone()
            else:
                row = conn.execute(sql.SELECT_LATEST, (thread_id, namespace)).fetchone()
            if row is None:
                return None
            return self._tuple(conn, row)

    def list(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> Iterator[CheckpointTuple]:
        """Checkpoints matching ``config`` (thread, namespace, id), newest first.

        ``filter`` keeps checkpoints whose metadata has each key equal to its value;
        ``before`` keeps those older than its checkpoint; ``limit`` caps the count.
        """
        where, params = _list_where(config, filter, before)
        text = f"{sql.SELECT_CHECKPOINTS} WHERE {where} ORDER BY checkpoint_id DESC"
        if limit is not None:
            text += " LIMIT ?"
            params.append(limit)
        with self.storage.reading() as conn:
            found = [self._tuple(conn, row) for row in conn.execute(text, params).fetchall()]
        yield from found

    def _tuple(self, conn: sqlite3.Connection, row: Sequence[Any]) -> CheckpointTuple:
        thread_id, namespace, checkpoint_id, parent_id, kind, blob, metadata = row
        writes = conn.execute(sql.SELECT_WRITES, (thread_id, namespace, checkpoint_id))
        return CheckpointTuple(
            config=_config(thread_id, namespace, checkpoint_id),
            checkpoint=self.serde.loads_typed((kind, blob)),
            metadata=cast(CheckpointMetadata, orjson.loads(metadata)),
            parent_config=_config(thread_id, namespace, parent_id) if parent_id else None,
            pending_writes=[
                (task_id, channel, self.serde.loads_typed((kind, value)))
                for task_id, channel, kind, value in writes
            ],
        )

    # ---------------------------------------------------------------------------- writing

    def put(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """Store ``checkpoint`` as the child of the checkpoint ``config`` names."""
        thread_id, namespace = _thread(config)
        kind, blob = self.serde.dumps_typed(checkpoint)
        meta = _encode_metadata(get_serializable_checkpoint_metadata(config, metadata))
        parent = config["configurable"].get("checkpoint_id")
        row = (thread_id, namespace, checkpoint["id"], parent, kind, blob, meta)
        with self.storage.transaction() as conn:
            conn.execute(sql.UPSERT_CHECKPOINT, row)
        return _config(thread_id, namespace, checkpoint["id"])

    def put_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """Store a task's pending writes for the checkpoint ``config`` names.

        Special channels (errors, interrupts, ...) replace an earlier write of the same task;
        ordinary writes already stored are kept (a retried task does not duplicate them).
        """
        thread_id, namespace = _thread(config)
        checkpoint_id = str(config["configurable"]["checkpoint_id"])
        rows = [
            (
                thread_id,
                namespace,
                checkpoint_id,
                task_id,
                WRITES_IDX_MAP.get(channel, index),
                channel,
                *self.serde.dumps_typed(value),
                task_path,
            )
            for index, (channel, value) in enumerate(writes)
        ]
        special = all(channel in WRITES_IDX_MAP for channel, _ in writes)
        with self.storage.transaction() as conn:
            conn.executemany(sql.UPSERT_WRITE if special else sql.INSERT_WRITE, rows)

    def delete_thread(self, thread_id: str) -> None:
        """Delete every checkpoint and write of ``thread_id`` (deletions replicate too)."""
        with self.storage.transaction() as conn:
            conn.execute(sql.DELETE_THREAD_WRITES, (str(thread_id),))
            conn.execute(sql.DELETE_THREAD_CHECKPOINTS, (str(thread_id),))

    def delete_for_runs(self, run_ids: Sequence[str]) -> None:
        """Delete the checkpoints (and their writes) made by the runs ``run_ids``."""
        runs = orjson.dumps([str(run_id) for run_id in run_ids]).decode()
        with self.storage.transaction() as conn:
            conn.execute(sql.DELETE_RUN_WRITES, (runs,))
            conn.execute(sql.DELETE_RUN_CHECKPOINTS, (runs,))

    def copy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """Copy every checkpoint and write of one thread to another (replacing same ids)."""
        params = (str(target_thread_id), str(source_thread_id))
        with self.storage.transaction() as conn:
            conn.execute(sql.COPY_CHECKPOINTS, params)
            conn.execute(sql.COPY_WRITES, params)

    def prune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """Thin out threads: ``"keep_latest"`` keeps each namespace's newest checkpoint (and
        its writes), ``"delete"`` removes everything. Raises ``ValueError`` for another
        strategy.

        ``keep_latest`` does not keep the ancestors a ``DeltaChannel`` needs to rebuild its
        value; do not prune threads of graphs that use one.
        """
        if strategy not in _PRUNE_STRATEGIES:
            raise ValueError(f"unknown prune strategy {strategy!r}; use one of {_PRUNE_STRATEGIES}")
        threads = orjson.dumps([str(thread_id) for thread_id in thread_ids]).decode()
        with self.storage.transaction() as conn:
            if strategy == "delete":
                conn.execute(sql.DELETE_THREADS_WRITES, (threads,))
                conn.execute(sql.DELETE_THREADS_CHECKPOINTS, (threads,))
            else:
                conn.execute(sql.PRUNE_WRITES, (threads, threads))
                conn.execute(sql.PRUNE_CHECKPOINTS, (threads, threads))

    def get_next_version(self, current: str | None, channel: None) -> str:
        """A version greater than ``current``: a zero-padded counter and a random tiebreak.

        Strings sort like the counter, and the random part keeps two savers that continue
        the same thread (say after :meth:`pull_thread`) from minting equal versions.
        """
        if current is None:
            number = 0
        elif isinstance(current, int):
            number = current
        else:
            number = int(str(current).split(".", 1)[0])
        return f"{number + 1:032}.{random.random():016}"  # noqa: S311 - a tiebreak, not a secret

    # ---------------------------------------------------------------- other machines

    def pull_thread(
        self, source_agent_id: str, thread_id: str, *, target_thread_id: str | None = None
    ) -> int:
        """Copy a thread of another agent from the relay into this store; return checkpoints.

        Reads every checkpoint and write of ``thread_id`` that agent ``source_agent_id`` has
        shipped (the relay's ACL must let this agent read it), and stores them here under
        ``target_thread_id`` (default: the same id), replacing rows with the same ids. The graph
        can then continue the thread on this machine. Raises
        :class:`~commander_os.errors.RelayError` if the relay cannot be read; nothing is
        written then.
        """
        target = str(target_thread_id or thread_id)
        key_prefix = orjson.dumps([str(thread_id)]).decode()[:-1] + ","  # '["t1",'
        checkpoints = self._remote_rows(source_agent_id, CHECKPOINTS_TABLE, key_prefix)
        writes = self._remote_rows(source_agent_id, WRITES_TABLE, key_prefix)
        with self.storage.transaction() as conn:
            conn.executemany(
                sql.UPSERT_CHECKPOINT, [_checkpoint_row(target, d) for d in checkpoints]
            )
            conn.executemany(sql.UPSERT_WRITE, [_write_row(target, d) for d in writes])
        return len(checkpoints)

    def _remote_rows(self, agent_id: str, table: str, key_prefix: str) -> _Rows:
        records = self.storage.relay.query_all(
            agent_id=agent_id, table=table, key_prefix=key_prefix, limit=1000
        )
        return [record["data"] for record in records if isinstance(record.get("data"), dict)]

    # --------------------------------------------------------------------------- async

    async def aget_tuple(self, config: RunnableConfig) -> CheckpointTuple | None:
        """:meth:`get_tuple` off the event loop."""
        return await asyncio.to_thread(self.get_tuple, config)

    async def alist(
        self,
        config: RunnableConfig | None,
        *,
        filter: dict[str, Any] | None = None,
        before: RunnableConfig | None = None,
        limit: int | None = None,
    ) -> AsyncIterator[CheckpointTuple]:
        """:meth:`list` off the event loop."""

        def collect() -> _Tuples:
            return list(self.list(config, filter=filter, before=before, limit=limit))

        for found in await asyncio.to_thread(collect):
            yield found

    async def aput(
        self,
        config: RunnableConfig,
        checkpoint: Checkpoint,
        metadata: CheckpointMetadata,
        new_versions: ChannelVersions,
    ) -> RunnableConfig:
        """:meth:`put` off the event loop."""
        return await asyncio.to_thread(self.put, config, checkpoint, metadata, new_versions)

    async def aput_writes(
        self,
        config: RunnableConfig,
        writes: Sequence[tuple[str, Any]],
        task_id: str,
        task_path: str = "",
    ) -> None:
        """:meth:`put_writes` off the event loop."""
        await asyncio.to_thread(self.put_writes, config, writes, task_id, task_path)

    async def adelete_thread(self, thread_id: str) -> None:
        """:meth:`delete_thread` off the event loop."""
        await asyncio.to_thread(self.delete_thread, thread_id)

    async def adelete_for_runs(self, run_ids: Sequence[str]) -> None:
        """:meth:`delete_for_runs` off the event loop."""
        await asyncio.to_thread(self.delete_for_runs, run_ids)

    async def acopy_thread(self, source_thread_id: str, target_thread_id: str) -> None:
        """:meth:`copy_thread` off the event loop."""
        await asyncio.to_thread(self.copy_thread, source_thread_id, target_thread_id)

    async def aprune(self, thread_ids: Sequence[str], *, strategy: str = "keep_latest") -> None:
        """:meth:`prune` off the event loop."""
        await asyncio.to_thread(self.prune, thread_ids, strategy=strategy)

    async def apull_thread(
        self, source_agent_id: str, thread_id: str, *, target_thread_id: str | None = None
    ) -> int:
        """:meth:`pull_thread` off the event loop."""
        return await asyncio.to_thread(
            self.pull_thread, source_agent_id, thread_id, target_thread_id=target_thread_id
        )

    # --------------------------------------------------------------------------- closing

    def close(self) -> None:
        """Close the storage if :meth:`open` created it."""
        if self._owns_storage:
            self.storage.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _thread(config: RunnableConfig) -> tuple[str, str]:
    configurable = config["configurable"]
    return str(configurable["thread_id"]), str(configurable.get("checkpoint_ns") or "")


def _config(thread_id: str, namespace: str, checkpoint_id: str) -> RunnableConfig:
    return {
        "configurable": {
            "thread_id": thread_id,
            "checkpoint_ns": namespace,
            "checkpoint_id": checkpoint_id,
        }
    }


def _encode_metadata(metadata: CheckpointMetadata) -> str:
    # Metadata is JSON in LangGraph's own savers too; anything else is kept as its text.
    return orjson.dumps(metadata, default=str, option=orjson.OPT_NON_STR_KEYS).decode()


def _list_where(
    config: RunnableConfig | None,
    filter: dict[str, Any] | None,
    before: RunnableConfig | None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    if config is not None:
        configurable = config["configurable"]
        clauses.append("thread_id = ?")
        params.append(str(configurable["thread_id"]))
        if configurable.get("checkpoint_ns") is not None:
            clauses.append("checkpoint_ns = ?")
            params.append(configurable["checkpoint_ns"])
        if checkpoint_id := get_checkpoint_id(config):
            clauses.append("checkpoint_id = ?")
            params.append(checkpoint_id)
    if filter:
        condition, extra = equality_filter_sql(filter, column="metadata")
        clauses.append(condition)
        params += extra
    if before is not None and (before_id := get_checkpoint_id(before)):
        clauses.append("checkpoint_id < ?")
        params.append(before_id)
    return (" AND ".join(clauses) or "1"), params


def _blob(value: Any) -> bytes | None:
    # The relay carries BLOB columns as hex text.
    return None if value is None else bytes.fromhex(value)


def _checkpoint_row(thread_id: str, data: dict[str, Any]) -> tuple[Any, ...]:
    return (
        thread_id,
        data["checkpoint_ns"],
        data["checkpoint_id"],
        data.get("parent_checkpoint_id"),
        data.get("type"),
        _blob(data.get("checkpoint")),
        orjson.dumps(data.get("metadata") or {}).decode(),
    )


def _write_row(thread_id: str, data: dict[str, Any]) -> tuple[Any, ...]:
    return (
        thread_id,
        data["checkpoint_ns"],
        data["checkpoint_id"],
        data["task_id"],
        data["idx"],
        data["channel"],
        data.get("type"),
        _blob(data.get("value")),
        data.get("task_path") or "",
    )
