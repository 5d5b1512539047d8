"""A relay on PostgreSQL: unreachable at start → one clear line; gone while running → 503,
then it recovers by itself and nothing acknowledged (or queued by agents) is lost."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
import pytest
from pg_helpers import database_url, scratch_schema, with_search_path
from tcp_proxy import TcpProxy

from commander_os.relay._process import RelayProcess
from commander_os.storage.agent_storage import AgentStorage

pytestmark = pytest.mark.postgres


def through(url: str, port: int) -> str:
    """``url`` pointed at ``127.0.0.1:port`` instead of its own host."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@127.0.0.1:{port}" if userinfo else f"127.0.0.1:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def test_relay_start_fails_fast_on_an_unreachable_database(tmp_path: Path) -> None:
    database_url()  # only meaningful with the PostgreSQL suite
    started = time.monotonic()
    result = subprocess.run(
        [
            *(sys.executable, "-m", "commander_os.network.relay", "--port", "0"),
            *("--data-dir", str(tmp_path), "--database-url", "postgresql://postgres@127.0.0.1:9/x"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert time.monotonic() - started < 15
    last = result.stderr.strip().splitlines()[-1]  # after any startup warnings
    assert last.startswith("relay: cannot connect to PostgreSQL at postgres@127.0.0.1:9/x")
    assert "Traceback" not in result.stderr + result.stdout


def test_database_outage_answers_503_then_recovers_losing_nothing(tmp_path: Path) -> None:
    url = database_url()
    parts = urlsplit(url)
    proxy = TcpProxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    proxy.up()
    with scratch_schema(url, create=True) as schema:
        relay = RelayProcess(
            data_dir=tmp_path / "relay",
            extra_args=("--database-url", with_search_path(through(url, proxy.port), schema)),
        )
        relay.start()
        agent = AgentStorage("outage", tmp_path / "agent", htpc_url=relay.url, sync_interval=0.2)
        try:
            for i in range(50):
                agent.set(f"before{i}", i)
            assert agent.wait_for_sync(30)

            proxy.down()
            for i in range(50):
                agent.set(f"during{i}", i)  # local writes go on; the queue keeps them
            with httpx.Client(timeout=30) as http:
                answer = http.post(relay.url + "/relay/query", json={"agent_id": "outage"})
                assert answer.status_code == 503, answer.text
                assert agent.get_sync_queue_size() > 0

                proxy.up()  # same port: the pools reconnect by themselves
                for i in range(50):
                    agent.set(f"after{i}", i)
                assert agent.wait_for_sync(60), "the relay did not recover"
                assert http.get(relay.url + "/health").status_code == 200
                keys = [r["key"] for r in agent.query_network(agent_id="outage", page_size=1000)]
            assert len(keys) == len(set(keys)) == 150
            print(
                f"[database outage] acknowledged writes 150: lost {150 - len(keys)}, duplicates 0"
            )
        finally:
            agent.close()
            relay.stop()
            proxy.down()
