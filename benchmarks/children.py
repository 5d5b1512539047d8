"""Code the sync benchmarks run in child processes: ``python -m benchmarks.children ...``.

* ``watch URL AGENT COUNT OUT``: follow the relay's change feed (``/relay/changes``, long-poll)
  and write, for each key of ``AGENT``, the ``CLOCK_MONOTONIC`` nanosecond at which it became
  visible. Prints ``ready`` once it follows the feed.
* ``drain DIR URL OUT BATCH``: open the agent store in ``DIR`` against the relay at ``URL``
  (``sync_batch_size`` BATCH), drain its backlog and write the time taken and the memory used
  (``VmRSS`` before, ``VmHWM`` after).
* ``ingest URL AGENT BATCHES SIZE OUT``: build ``BATCHES`` zstd bodies of ``SIZE`` records as
  ``RelayClient.push`` does, print ``ready``, wait for a line on stdin, post them one after
  the other to ``/relay/batch``, and write the start, end and per-batch latencies.

A separate process for each keeps the measuring out of the measured process's GIL and memory.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import orjson

__all__ = ["drain", "ingest", "proc_status_kib", "watch"]

WATCH_WAIT_SECONDS = 5.0


def proc_status_kib(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``) in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def watch(url: str, agent_id: str, count: int, out: Path, timeout: float = 300.0) -> None:
    """Record when each of ``count`` keys of ``agent_id`` shows up in the change feed."""
    import httpx

    seen: dict[str, int] = {}
    cursor: str | None = None
    deadline = time.monotonic() + timeout
    with httpx.Client(base_url=url, timeout=WATCH_WAIT_SECONDS + 10) as http:
        ready = False
        while len(seen) < count and time.monotonic() < deadline:
            params: dict[str, Any] = {"agent_id": agent_id, "limit": 1000}
            params["wait"] = WATCH_WAIT_SECONDS if ready else 0
            if cursor:
                params["after"] = cursor
            page = orjson.loads(http.get("/relay/changes", params=params).content)
            now = time.monotonic_ns()
            for record in page["records"]:
                seen.setdefault(record["key"], now)
            cursor = page.get("next_cursor") or cursor
            if not ready:
                ready = True
                print("ready", flush=True)
    out.write_bytes(orjson.dumps(seen))


def _queue_size(path: Path) -> int:
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        sql = "SELECT COUNT(*) FROM _sync_queue WHERE op != 'mark'"
        return int(conn.execute(sql).fetchone()[0])
    finally:
        conn.close()


def drain(directory: Path, url: str, out: Path, batch_size: int = 100) -> None:
    """Open the store with a backlog, ship all of it, report seconds and memory."""
    rss_before = proc_status_kib("VmRSS")
    from commander_os.storage.agent_storage import AgentStorage

    queued = _queue_size(directory / "backlog.db")  # before the worker starts shipping
    rss_imported = proc_status_kib("VmRSS")
    started = time.perf_counter()
    store = AgentStorage(
        agent_id="backlog",
        data_dir=directory,
        enable_htpc=True,
        htpc_url=url,
        sync_batch_size=batch_size,
    )
    # The process's shipper starts shipping at once; this returns when the relay has it all.
    assert store.wait_for_sync(None)
    seconds = time.perf_counter() - started
    left = store.get_sync_queue_size()
    store.close()
    result = {
        "seconds": seconds,
        "queued": queued,
        "left": left,
        "rss_before_kib": rss_before,
        "rss_imported_kib": rss_imported,
        "hwm_kib": proc_status_kib("VmHWM"),
        "batch_size": store.config.sync_batch_size,
    }
    out.write_bytes(orjson.dumps(result))


def _bodies(agent_id: str, batches: int, size: int) -> list[bytes]:
    import zstandard

    from benchmarks import workload
    from commander_os.protocol import format_ts

    compressor = zstandard.ZstdCompressor(level=1)  # as RelayClient does
    now = format_ts(time.time())
    bodies = []
    for batch in range(batches):
        records = [
            {
                "agent_id": agent_id,
                "table": "kv",
                "key": workload.key(batch * size + i),
                "op": "upsert",
                "data": {
                    "key": workload.key(batch * size + i),
                    "value": workload.value(batch * size + i, 1),
                    "updated_at": time.time(),
                },
                "version": (1 << 32) | (batch * size + i + 1),
                "ts": now,
            }
            for i in range(size)
        ]
        bodies.append(compressor.compress(orjson.dumps({"agent_id": agent_id, "records": records})))
    return bodies


def ingest(url: str, agent_id: str, batches: int, size: int, out: Path) -> None:
    """Push prepared batches as fast as the relay acknowledges them; write the timings."""
    import httpx

    bodies = _bodies(agent_id, batches, size)
    headers = {"content-type": "application/json", "content-encoding": "zstd"}
    latencies = []
    with httpx.Client(base_url=url, timeout=120) as http:
        http.get("/health")  # connect before the start signal
        print("ready", flush=True)
        sys.stdin.readline()
        started = time.monotonic_ns()
        for body in bodies:
            sent = time.perf_counter()
            response = http.post("/relay/batch", content=body, headers=headers)
            response.raise_for_status()
            latencies.append(time.perf_counter() - sent)
        ended = time.monotonic_ns()
    out.write_bytes(orjson.dumps({"start": started, "end": ended, "latencies": latencies}))


def main(argv: list[str]) -> int:
    """Dispatch ``watch`` / ``drain`` (see the module docstring)."""
    command, *args = argv
    if command == "watch":
        watch(args[0], args[1], int(args[2]), Path(args[3]))
    elif command == "drain":
        drain(Path(args[0]), args[1], Path(args[2]), int(args[3]))
    elif command == "ingest":
        ingest(args[0], args[1], int(args[2]), int(args[3]), Path(args[4]))
    else:
        raise SystemExit(f"unknown command {command!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
