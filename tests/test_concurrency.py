"""Several processes and threads on one store: no "database is locked", nothing lost."""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from commander_os.storage.agent_storage import AgentStorage

REPO_ROOT = Path(__file__).resolve().parent.parent
MakeStorage = Callable[..., AgentStorage]

WORKER = """
import os, sys, threading, time
from pathlib import Path
from commander_os.storage.agent_storage import AgentStorage

data_dir, relay_url, name, writes, go = sys.argv[1:6]
writes = int(writes)
while not os.path.exists(go):
    time.sleep(0.001)
# compact_outbox off: the test counts every captured write in the queue.
storage = AgentStorage("shared", Path(data_dir), htpc_url=relay_url, enable_htpc=True,
                       sync_interval=0.5, compact_outbox=False)
errors = []

def work(thread):
    try:
        for i in range(writes):
            key = f"{name}-t{thread}-{i}"
            if i % 10 == 9:
                storage.set_many({key: i, key + "-b": i})
            else:
                storage.set(key, {"i": i})
            if i % 5 == 0:
                # read-modify-write: only correct if the transaction holds the lock throughout
                with storage.transaction():
                    storage.set("counter", storage.get("counter", 0) + 1)
            assert storage.get(key) is not None
    except BaseException as exc:
        errors.append(repr(exc))

threads = [threading.Thread(target=work, args=(t,)) for t in range(2)]
for t in threads:
    t.start()
for t in threads:
    t.join()
storage.close()
if errors:
    print("\\n".join(errors), file=sys.stderr)
    sys.exit(1)
print("done")
"""


def expected_keys(processes: int, threads: int, writes: int) -> set[str]:
    keys = set()
    for p in range(processes):
        for t in range(threads):
            for i in range(writes):
                keys.add(f"p{p}-t{t}-{i}")
                if i % 10 == 9:
                    keys.add(f"p{p}-t{t}-{i}-b")
    return keys


def test_processes_and_threads_write_one_store(
    tmp_path: Path, dead_relay_url: str, full_run: bool
) -> None:
    processes, threads, writes = 4, 2, (1000 if full_run else 120)
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    go = tmp_path / "go"
    data_dir = tmp_path / "store"  # does not exist yet: creation races too
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(data_dir), dead_relay_url, f"p{p}", str(writes), go],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for p in range(processes)
    ]
    time.sleep(0.3)  # let the interpreters import; correctness does not depend on it
    go.touch()
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        assert out.strip() == "done"

    keys = expected_keys(processes, threads, writes)
    increments = processes * threads * len(range(0, writes, 5))
    with closing(sqlite3.connect(data_dir / "shared.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {key for (key,) in conn.execute("SELECT key FROM kv WHERE key != 'counter'")}
        counter = json.loads(
            conn.execute("SELECT value FROM kv WHERE key = 'counter'").fetchone()[0]
        )
        queued = Counter(json.loads(pk)[0] for (pk,) in conn.execute("SELECT pk FROM _sync_queue"))
    assert stored == keys
    assert counter == increments
    assert queued == Counter({**dict.fromkeys(keys, 1), "counter": increments})


def test_threads_share_one_store(make_storage: MakeStorage, dead_relay_url: str) -> None:
    # compact_outbox off: the test counts every captured write in the queue.
    settings = {"htpc_url": dead_relay_url, "sync_interval": 0.5, "compact_outbox": False}
    storage = make_storage(enable_htpc=True, **settings)
    other = make_storage(enable_htpc=True, **settings)
    errors: list[BaseException] = []

    def work(store: AgentStorage, name: str) -> None:
        try:
            for i in range(100):
                store.set(f"{name}-{i}", i)
                with store.transaction():
                    store.set("counter", store.get("counter", 0) + 1)
                assert store.get(f"{name}-{i}") == i
                store.keys(prefix=name)
                store.health_check()
        except BaseException as exc:
            errors.append(exc)

    workers = [
        threading.Thread(target=work, args=(storage if n % 2 else other, f"t{n}")) for n in range(6)
    ]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join(60)
    assert errors == []
    assert len(storage) == 6 * 100 + 1
    assert storage.get("counter") == 600
    assert storage.get_sync_queue_size() == 1200


def _fork_child(storage: AgentStorage) -> int:
    """Runs in a forked child: use the inherited store, report 0 on success."""
    try:
        assert storage.get("parent-before") == "p"
        storage.set("child", os.getpid())
        with storage.transaction():
            storage.set("child-tx", storage.get("child"))
        assert storage.get("child-tx") == os.getpid()
        return 0
    except BaseException:
        import traceback

        traceback.print_exc()
        return 1


@pytest.mark.parametrize("sync", [False, True], ids=["local", "sync-on"])
def test_os_fork_child_uses_the_inherited_store(
    make_storage: MakeStorage, dead_relay_url: str, sync: bool
) -> None:
    settings: dict[str, Any] = (
        {"htpc_url": dead_relay_url, "sync_interval": 0.5, "close_timeout": 0} if sync else {}
    )
    storage = make_storage(enable_htpc=sync, **settings)
    storage.set("parent-before", "p")
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's result travels back as its exit code
        code = 1
        try:
            code = _fork_child(storage)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert storage.get("child") == pid
    assert storage.get("child-tx") == pid
    storage.set("parent-after", 1)  # the parent's own connection still works
    assert storage.keys() == ["child", "child-tx", "parent-after", "parent-before"]
    if sync:
        assert storage.get_sync_queue_size() == 4


_INHERITED: list[AgentStorage] = []


def _mp_child(queue: Any) -> None:
    queue.put(_fork_child(_INHERITED[0]))


def test_multiprocessing_fork_child(make_storage: MakeStorage) -> None:
    storage = make_storage()
    storage.set("parent-before", "p")
    _INHERITED.append(storage)
    try:
        ctx = multiprocessing.get_context("fork")
        queue = ctx.Queue()
        proc = ctx.Process(target=_mp_child, args=(queue,))
        proc.start()
        result = queue.get(timeout=60)
        proc.join(60)
        queue.close()
        queue.join_thread()
    finally:
        _INHERITED.clear()
    assert result == 0
    assert proc.exitcode == 0
    assert storage.get("child") == proc.pid


def test_fork_while_another_thread_is_in_a_transaction(make_storage: MakeStorage) -> None:
    storage = make_storage(busy_timeout=2)
    storage.set("before", 1)
    inside = threading.Event()

    def hold_a_transaction() -> None:
        with storage.transaction():
            storage.set("held", 1)
            inside.set()
            time.sleep(0.2)  # still inside when the main thread forks

    thread = threading.Thread(target=hold_a_transaction)
    thread.start()
    inside.wait()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child's result travels back as its exit code
        code = 1
        try:
            storage.set("child", 1)  # would stay "locked" if fork split the transaction
            code = 0 if storage.get("held") == 1 else 2
        finally:
            os._exit(code)
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert storage.keys() == ["before", "child", "held"]
