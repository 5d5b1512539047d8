"""The relay as a real process: ``python -m commander_os.network.relay`` on an ephemeral port."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import orjson
import zstandard
from relay_helpers import JSON_HEADERS

from commander_os.protocol import format_ts
from commander_os.relay import LISTENING_PREFIX
from commander_os.relay._process import RelayProcess


def records(count: int, version_base: int = 0) -> list[dict[str, Any]]:
    return [
        {
            "agent_id": "agent-a",
            "table": "kv",
            "key": f"k{i:04d}",
            "op": "upsert",
            "data": {"value": {"i": i, "v": version_base}},
            "version": version_base + i + 1,
            "ts": format_ts(1_764_210_000 + i),
        }
        for i in range(count)
    ]


def test_serve_persist_sigterm_restart(tmp_path: Path) -> None:
    relay = RelayProcess(data_dir=tmp_path / "relay")
    url = relay.start()
    try:
        assert url.startswith("http://127.0.0.1:")
        assert any(line.startswith(LISTENING_PREFIX) for line in relay.output)
        assert relay.port != 0
        with httpx.Client(base_url=url, timeout=10) as http:
            body = zstandard.ZstdCompressor().compress(
                orjson.dumps({"agent_id": "agent-a", "records": records(500)})
            )
            ack = http.post(
                "/relay/batch",
                content=body,
                headers={**JSON_HEADERS, "content-encoding": "zstd"},
            )
            assert ack.json() == {
                "agent_id": "agent-a",
                "highest_version": 500,
                "applied": 500,
                "ignored": 0,
            }
            found = http.post("/relay/query", json={"agent_id": "agent-a", "key": "k0042"}).json()
            assert found["records"][0]["data"] == {"value": {"i": 42, "v": 0}}

            # A long-poll in flight when SIGTERM arrives still gets its answer.
            answers: list[int] = []
            poll = threading.Thread(
                target=lambda: answers.append(
                    http.get(
                        "/relay/changes", params={"after": "cmV2OjUwMA", "wait": 1.5}
                    ).status_code
                )
            )
            poll.start()
            threading.Event().wait(0.3)
            assert relay.stop() == 0  # graceful: exit status 0
            poll.join(10)
            assert answers == [200]

        relay.start()
        with httpx.Client(base_url=relay.url, timeout=10) as http:
            assert http.get("/health").json()["status"] == "ok"
            page = http.post("/relay/query", json={"agent_id": "agent-a", "limit": 1000}).json()
            assert len(page["records"]) == 500
            again = http.post("/relay/batch", json={"agent_id": "agent-a", "records": records(500)})
            assert again.json()["ignored"] == 500
            (agent,) = http.get("/relay/agents").json()["agents"]
            assert (agent["agent_id"], agent["record_count"]) == ("agent-a", 500)
    finally:
        relay.stop()


def test_config_file_and_refusal_of_public_address(tmp_path: Path) -> None:
    config = tmp_path / "relay.yaml"
    config.write_text(f"relay:\n  host: 127.0.0.1\n  port: 0\n  agent_storage_dir: {tmp_path}\n")
    with RelayProcess(data_dir=tmp_path / "d", config=config) as relay:
        health = httpx.get(relay.url + "/health", timeout=10).json()
        assert health["central_store"]["path"] == str(tmp_path / "d" / "central.db")

    refused = subprocess.run(
        [sys.executable, "-m", "commander_os.network.relay", "--host", "0.0.0.0", "--port", "0"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
    )
    assert refused.returncode == 2
    assert "non-loopback" in refused.stderr
