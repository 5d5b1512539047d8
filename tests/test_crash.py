"""Crash safety: a writer SIGKILLed at random moments loses no acknowledged write.

Every key the writer printed was printed after ``set()`` / ``set_many()`` returned, so it was
acknowledged; each must be in the store with its value and exactly one sync-queue row (the
relay is unreachable, so the queue keeps everything).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from contextlib import closing
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

WRITER = """
import sys
from pathlib import Path
from commander_os.storage.agent_storage import AgentStorage

data_dir, relay_url, prefix = sys.argv[1:4]
storage = AgentStorage(
    "crash-agent", Path(data_dir), htpc_url=relay_url, enable_htpc=True,
    durability="full", sync_interval=30,
)
out = sys.stdout
i = 0
while True:
    if i % 5 == 4:
        batch = {f"{prefix}-{i}-{j}": {"i": i, "j": j} for j in range(3)}
        storage.set_many(batch)
        out.write("".join(key + "\\n" for key in batch))
    else:
        key = f"{prefix}-{i}"
        storage.set(key, {"i": i, "pad": "x" * (i % 300)})
        out.write(key + "\\n")
    out.flush()
    i += 1
"""


def expected_value(key: str) -> dict[str, object]:
    parts = key.split("-")
    i = int(parts[1])
    if len(parts) == 3:
        return {"i": i, "j": int(parts[2])}
    return {"i": i, "pad": "x" * (i % 300)}


def run_round(
    script: Path, data_dir: Path, relay_url: str, prefix: str, rng: random.Random
) -> list[str]:
    """Start a writer, SIGKILL it at a random moment, return the keys it acknowledged."""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data_dir), relay_url, prefix],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.stdout is not None
    first = ""
    if rng.random() < 0.25:
        # Some kills land while the store is still opening (schema, migrations, WAL recovery).
        time.sleep(rng.uniform(0.0, 0.4))
    else:
        first = proc.stdout.readline()
        if not first:
            proc.wait(10)
            raise AssertionError(f"writer died before writing: {proc.stderr.read()}")  # type: ignore[union-attr]
        time.sleep(rng.uniform(0.0, 0.15))
    proc.send_signal(signal.SIGKILL)
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err
    text = first + rest
    # A line without its newline was cut mid-print: its write may or may not have returned.
    return text.split("\n")[:-1]


def test_sigkill_loses_no_acknowledged_write(
    tmp_path: Path, dead_relay_url: str, full_run: bool
) -> None:
    rounds = 200 if full_run else 20
    seed = int(os.environ.get("COMMANDER_OS_CRASH_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    data_dir = tmp_path / "store"
    acknowledged: list[str] = []
    for round_no in range(rounds):
        acknowledged += run_round(script, data_dir, dead_relay_url, f"r{round_no}", rng)
    assert len(acknowledged) > rounds, f"too few writes to prove anything (seed {seed})"
    assert len(set(acknowledged)) == len(acknowledged)

    with closing(sqlite3.connect(data_dir / "crash-agent.db")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {
            key: json.loads(value) for key, value in conn.execute("SELECT key, value FROM kv")
        }
        queued = Counter(
            json.loads(pk)[0]
            for (pk,) in conn.execute("SELECT pk FROM _sync_queue WHERE tbl = 'kv'")
        )
        ops = {op for (op,) in conn.execute("SELECT DISTINCT op FROM _sync_queue")}
    missing = [key for key in acknowledged if key not in stored]
    assert missing == [], f"acknowledged writes lost (seed {seed}): {missing[:10]}"
    for key in acknowledged:
        assert stored[key] == expected_value(key), f"seed {seed}"
    # Every committed write (acknowledged or cut off just before its print) has exactly one
    # queue row, and no queue row lacks its write.
    assert queued == Counter(dict.fromkeys(stored, 1)), f"seed {seed}"
    assert ops == {"upsert"}
