"""Footprint and backups: bytes per record on disk (local and central), and the throughput of
backups and restores, on a corpus of agent-memory JSON documents of 0.5 to 20 KB.

* local bytes per record, *before* (every value as JSON text: what stores kept before large
  values were compressed; a raw sqlite3 table with the same schema, the same documents) and
  *after* (``AgentStorage``, values over 4 KiB zstd-compressed);
* central bytes per record: the relay's SQLite central store after the agent shipped them;
* backup MB/s (``storage.backup()``: online copy, checksum, zstd) and restore MB/s
  (``restore_backup``: decompress, check, integrity_check), in MB of database per second;
* rebuild from the relay (``restore_from_relay``): records/s read from the relay and written.

Sizes: ``--quick`` 200 documents, standard 2,000, ``--full`` 100,000.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from benchmarks.core import Result
from benchmarks.sizes import Sizes
from commander_os.config import StorageConfig
from commander_os.relay import RelayProcess
from commander_os.storage import backups
from commander_os.storage.agent_storage import AgentStorage

__all__ = ["DOCUMENTS", "corpus", "run_footprint"]

DOCUMENTS = {"quick": 200, "standard": 2000, "full": 100_000}
SENTENCE = (
    "the user asked about the plan for tomorrow and the agent noted a follow-up task with "
    "context from the previous observation tool result summary memory goal step python sql "
    "meeting deadline budget risk customer candidate interview schedule priority"
)
WORDS = tuple(SENTENCE.split())


def document(rng: random.Random, index: int) -> dict[str, object]:
    """One agent-memory document of 0.5-20 KB (sizes log-uniform, text from a small vocabulary,
    as notes, observations and summaries are)."""
    target = int(2 ** rng.uniform(9, 14.3))  # 512 B .. 20 KB
    doc: dict[str, object] = {
        "id": f"mem-{index:07d}",
        "kind": rng.choice(["observation", "plan", "summary", "tool_result", "note"]),
        "ts": 1_790_000_000 + index * 7.5,
        "tags": rng.sample(list(WORDS), 3),
        "importance": round(rng.random(), 3),
        "text": "",
    }
    parts = []
    size = len(orjson.dumps(doc))
    while size < target:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 18))) + ". "
        parts.append(sentence)
        size += len(sentence)
    doc["text"] = "".join(parts)
    return doc


def corpus(count: int, seed: int = 16) -> list[dict[str, object]]:
    """``count`` documents, the same ones every run."""
    rng = random.Random(seed)
    return [document(rng, index) for index in range(count)]


def _file_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.parent.glob(path.name + "*") if p.is_file())


def _before(docs: list[dict[str, object]], path: Path) -> int:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE kv (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL, "
                 "updated_at REAL NOT NULL)")  # fmt: skip
    conn.execute("BEGIN")
    conn.executemany(
        "INSERT INTO kv VALUES (?, ?, ?)",
        ((f"m/{i:07d}", orjson.dumps(doc).decode(), 0.0) for i, doc in enumerate(docs)),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return _file_size(path)


def _fill(store: AgentStorage, docs: list[dict[str, object]]) -> None:
    for start in range(0, len(docs), 1000):
        store.set_many(
            {f"m/{start + i:07d}": doc for i, doc in enumerate(docs[start : start + 1000])}
        )


def run_footprint(
    sizes: Sizes, workdir: Path, *, server_cpu: int | None, log: Callable[[str], None]
) -> list[Result]:
    """Every row of this area (see the module docstring)."""
    count = DOCUMENTS[sizes.name]
    docs = corpus(count)
    corpus_mb = sum(len(orjson.dumps(doc)) for doc in docs) / 1e6
    log(f"footprint: {count} documents, {corpus_mb:.1f} MB of JSON")
    before = _before(docs, workdir / "before.db")
    results: list[Result] = []
    with RelayProcess(data_dir=workdir / "relay", cpu=server_cpu) as relay:
        data = workdir / "agent"
        with AgentStorage("memory", data, htpc_url=relay.url, sync_batch_size=1000) as store:
            _fill(store, docs)
            store.wait_for_sync(600)
            store.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            after = _file_size(store.db_path)
            started = time.perf_counter()
            backup = store.backup(workdir / "memory.db.zst")
            backup_s = time.perf_counter() - started
        db_mb = backups.list_backups(workdir)[0].manifest.db_bytes / 1e6
        central = _file_size(relay.data_dir / "central.db")
        started = time.perf_counter()
        backups.restore_backup(backup, workdir / "restored", catch_up=False)
        restore_s = time.perf_counter() - started
        started = time.perf_counter()
        config = StorageConfig(htpc_url=relay.url)
        report = backups.rebuild_from_relay(AgentStorage, "memory", workdir / "rebuilt",
                                            config=config)  # fmt: skip
        rebuild_s = time.perf_counter() - started
    kind = f"agent-memory JSON 0.5-20 KB, {count} docs"
    results.append(Result(f"local bytes per record ({kind})", "value", "B", after / count,
                          "JSON text (before)", before / count))  # fmt: skip
    results.append(Result(f"central bytes per record, SQLite ({kind})", "value", "B",
                          central / count))  # fmt: skip
    file_mb = backup.stat().st_size / 1e6
    results.append(Result(f"backup, local store of {db_mb:.1f} MB", "value", "MB/s",
                          db_mb / backup_s, extra={"file_mb": file_mb}))  # fmt: skip
    results.append(Result("restore from a local backup", "value", "MB/s", db_mb / restore_s))
    results.append(Result("restore from the relay (rebuild)", "value", "records/s",
                          report.from_relay.upserts / rebuild_s))  # fmt: skip
    return results
