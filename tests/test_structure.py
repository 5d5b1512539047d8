"""The architecture as tested rules: the relay never loads the agent side; a busy store is
``StorageBusy``."""

from __future__ import annotations

import multiprocessing
import subprocess
import sys
from pathlib import Path

import pytest

from commander_os.errors import StorageBusy
from commander_os.storage.agent_storage import AgentStorage

REPO_ROOT = Path(__file__).resolve().parent.parent

# Runs the relay as `python -m commander_os.network.relay` does; once it serves, writes and
# queries through it, then prints the commander_os modules it has loaded and stops itself.
RELAY_PROBE = """
import asyncio, os, signal, sys, urllib.request
from commander_os.relay import _server

serve_async = _server.serve_async

def post(url, body):
    request = urllib.request.Request(url, body.encode(), {"content-type": "application/json"})
    return urllib.request.urlopen(request, timeout=10).read()

async def probing(config, on_ready=None):
    async def ready(url):
        record = ('{"agent_id": "a", "table": "kv", "key": "k", "op": "upsert", "data": {},'
                  ' "version": 1, "ts": "2026-01-01T00:00:00Z"}')
        await asyncio.to_thread(post, url + "/relay/immediate", record)
        await asyncio.to_thread(post, url + "/relay/query", '{"agent_id": "a"}')
        await asyncio.to_thread(urllib.request.urlopen, url + "/relay/changes", None, 10)
        loaded = sorted(name for name in sys.modules if name.startswith("commander_os"))
        print("LOADED " + " ".join(loaded), flush=True)
        os.kill(os.getpid(), signal.SIGTERM)
    await serve_async(config, on_ready=ready)

_server.serve_async = probing
sys.argv = ["relay", "--port", "0", "--data-dir", sys.argv[1]]
import commander_os.network.relay as entry
sys.exit(entry.main())
"""


def test_the_relay_process_loads_no_agent_side_module(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", RELAY_PROBE, str(tmp_path / "relay")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO_ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    (line,) = [out for out in done.stdout.splitlines() if out.startswith("LOADED ")]
    loaded = line.split()[1:]
    assert "commander_os.relay._ingest" in loaded  # the probe did write through it
    agent_side = [
        name for name in loaded if name.startswith(("commander_os.storage", "commander_os.agents"))
    ]
    assert agent_side == []


def _hold_write_lock(
    path: str, ready: multiprocessing.synchronize.Event, release: multiprocessing.synchronize.Event
) -> None:
    import sqlite3

    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN IMMEDIATE")
    ready.set()
    release.wait(30)
    conn.execute("ROLLBACK")
    conn.close()


def test_opening_a_store_another_process_holds_is_storage_busy(tmp_path: Path) -> None:
    AgentStorage("busy", tmp_path, enable_htpc=False).close()
    context = multiprocessing.get_context("spawn")
    ready, release = context.Event(), context.Event()
    holder = context.Process(
        target=_hold_write_lock, args=(str(tmp_path / "busy.db"), ready, release)
    )
    holder.start()
    try:
        assert ready.wait(30)
        with pytest.raises(StorageBusy, match="locked"):
            AgentStorage("busy", tmp_path, enable_htpc=False, busy_timeout=0.2)
    finally:
        release.set()
        holder.join(30)
    AgentStorage("busy", tmp_path, enable_htpc=False).close()  # and it opens once free
