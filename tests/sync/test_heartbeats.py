"""Agent heartbeats: one process's stores report to a relay together, one request per interval.

A real relay process; the stores ship through the process's shipper. The relay's request
counter (``/metrics``) says how many heartbeat requests arrived; its analytics what they said.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
from sync_helpers import WAIT, wait_until

from commander_os.relay import RelayProcess
from commander_os.storage.agent_storage import AgentStorage

STORES = 30
INTERVAL = 0.5


def _heartbeat_requests(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=WAIT).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("commander_relay_requests_total{") and '"/relay/heartbeats"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_host_of_stores_reports_in_one_request_per_interval(
    relay: RelayProcess, tmp_path: Path
) -> None:
    stores = [
        AgentStorage(
            f"beating-{i:02d}",
            tmp_path / f"beating-{i:02d}",
            htpc_url=relay.url,
            enable_htpc=True,
            heartbeat_interval=INTERVAL,
        )
        for i in range(STORES)
    ]
    try:
        stores[3].set("only", {"n": 1})
        assert stores[3].wait_for_sync(WAIT)
        wait_until(lambda: _heartbeat_requests(relay.url) >= 2, what="heartbeats")
        before, started = _heartbeat_requests(relay.url), time.monotonic()
        time.sleep(8 * INTERVAL)
        during = _heartbeat_requests(relay.url) - before
        elapsed = time.monotonic() - started
        # One request per interval for all the stores (the route wakes at least once a
        # second, so a report may come up to a second late), never one per store.
        assert 1 <= during <= elapsed / INTERVAL + 1, (during, elapsed)
        report = httpx.get(relay.url + "/relay/analytics", timeout=WAIT).json()
        beats = {row["agent_id"]: row["heartbeat"] for row in report["agents"] if row["heartbeat"]}
        assert set(beats) == {f"beating-{i:02d}" for i in range(STORES)}
        assert beats["beating-03"]["queue_size"] == 0
        assert beats["beating-03"]["targets"][0]["name"] == relay.url
    finally:
        for store in stores:
            store.close()
