"""SQL of :class:`~commander_os.integrations.langgraph.CommanderSaver`.

Thread and run lists travel as one JSON parameter each (``json_each``), so any number binds.
"""

from __future__ import annotations

__all__ = [
    "COPY_CHECKPOINTS",
    "COPY_WRITES",
    "DELETE_RUN_CHECKPOINTS",
    "DELETE_RUN_WRITES",
    "DELETE_THREADS_CHECKPOINTS",
    "DELETE_THREADS_WRITES",
    "DELETE_THREAD_CHECKPOINTS",
    "DELETE_THREAD_WRITES",
    "INSERT_WRITE",
    "PRUNE_CHECKPOINTS",
    "PRUNE_WRITES",
    "SELECT_CHECKPOINT",
    "SELECT_CHECKPOINTS",
    "SELECT_LATEST",
    "SELECT_WRITES",
    "UPSERT_CHECKPOINT",
    "UPSERT_WRITE",
]

_COLUMNS = (
    "thread_id, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata"
)
SELECT_CHECKPOINTS = f"SELECT {_COLUMNS} FROM lg_checkpoints"
SELECT_CHECKPOINT = (
    f"{SELECT_CHECKPOINTS} WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ?"
)
SELECT_LATEST = (
    f"{SELECT_CHECKPOINTS} WHERE thread_id = ? AND checkpoint_ns = ? "
    "ORDER BY checkpoint_id DESC LIMIT 1"
)
# LangGraph's writes_sort_key order: (task_path, task_id, idx); BINARY collation compares like
# Python's str.
SELECT_WRITES = (
    "SELECT task_id, channel, type, value FROM lg_writes "
    "WHERE thread_id = ? AND checkpoint_ns = ? AND checkpoint_id = ? "
    "ORDER BY task_path, task_id, idx"
)
UPSERT_CHECKPOINT = f"""
INSERT INTO lg_checkpoints ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET
    parent_checkpoint_id = excluded.parent_checkpoint_id, type = excluded.type,
    checkpoint = excluded.checkpoint, metadata = excluded.metadata
"""
_WRITE_COLUMNS = (
    "thread_id, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, value, task_path"
)
_INSERT_WRITE = f"INSERT INTO lg_writes ({_WRITE_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
_WRITE_KEY = "(thread_id, checkpoint_ns, checkpoint_id, task_id, idx)"
INSERT_WRITE = f"{_INSERT_WRITE} ON CONFLICT {_WRITE_KEY} DO NOTHING"
UPSERT_WRITE = (
    f"{_INSERT_WRITE} ON CONFLICT {_WRITE_KEY} DO UPDATE SET channel = excluded.channel, "
    "type = excluded.type, value = excluded.value, task_path = excluded.task_path"
)

DELETE_THREAD_WRITES = "DELETE FROM lg_writes WHERE thread_id = ?"
DELETE_THREAD_CHECKPOINTS = "DELETE FROM lg_checkpoints WHERE thread_id = ?"
_THREADS = "thread_id IN (SELECT value FROM json_each(?))"
DELETE_THREADS_WRITES = f"DELETE FROM lg_writes WHERE {_THREADS}"
DELETE_THREADS_CHECKPOINTS = f"DELETE FROM lg_checkpoints WHERE {_THREADS}"

_OF_RUNS = "json_extract(metadata, '$.run_id') IN (SELECT value FROM json_each(?))"
DELETE_RUN_WRITES = (
    "DELETE FROM lg_writes WHERE (thread_id, checkpoint_ns, checkpoint_id) IN "
    f"(SELECT thread_id, checkpoint_ns, checkpoint_id FROM lg_checkpoints WHERE {_OF_RUNS})"
)
DELETE_RUN_CHECKPOINTS = f"DELETE FROM lg_checkpoints WHERE {_OF_RUNS}"

# The newest checkpoint of each (thread, namespace) among the listed threads.
_LATEST = (
    "SELECT thread_id, checkpoint_ns, max(checkpoint_id) FROM lg_checkpoints "
    f"WHERE {_THREADS} GROUP BY thread_id, checkpoint_ns"
)
PRUNE_WRITES = (
    f"DELETE FROM lg_writes WHERE {_THREADS} AND "
    f"(thread_id, checkpoint_ns, checkpoint_id) NOT IN ({_LATEST})"
)
PRUNE_CHECKPOINTS = (
    f"DELETE FROM lg_checkpoints WHERE {_THREADS} AND "
    f"(thread_id, checkpoint_ns, checkpoint_id) NOT IN ({_LATEST})"
)

COPY_CHECKPOINTS = f"""
INSERT INTO lg_checkpoints ({_COLUMNS})
SELECT ?, checkpoint_ns, checkpoint_id, parent_checkpoint_id, type, checkpoint, metadata
FROM lg_checkpoints WHERE thread_id = ?
ON CONFLICT (thread_id, checkpoint_ns, checkpoint_id) DO UPDATE SET
    parent_checkpoint_id = excluded.parent_checkpoint_id, type = excluded.type,
    checkpoint = excluded.checkpoint, metadata = excluded.metadata
"""
COPY_WRITES = f"""
INSERT INTO lg_writes ({_WRITE_COLUMNS})
SELECT ?, checkpoint_ns, checkpoint_id, task_id, idx, channel, type, value, task_path
FROM lg_writes WHERE thread_id = ?
ON CONFLICT {_WRITE_KEY} DO UPDATE SET channel = excluded.channel, type = excluded.type,
    value = excluded.value, task_path = excluded.task_path
"""
