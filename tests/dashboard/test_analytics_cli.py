"""``commander-os analytics`` against a real relay process (auth on)."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
from dashboard_helpers import token

from commander_os.relay import RelayProcess


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "commander_os", "analytics", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
    )


def test_analytics_json_names_the_scanning_shape_and_the_agents(
    seeded_relay: RelayProcess,
) -> None:
    done = _cli("--relay", seeded_relay.url, "--json", "--token", token("ops", admin=True))
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    shapes = {shape["shape"]: shape for shape in report["queries"]["shapes"]}
    hinted = shapes["query agent table where(value.status eq)"]
    assert hinted["index_hints"][0]["command"] == "commander-os relay index add value.status"
    health = {row["agent_id"]: row["health"] for row in report["agents"]}
    assert health["offline-agent"] == "behind"
    assert health["scout"] == "behind"


def test_analytics_table_shows_the_hint(seeded_relay: RelayProcess) -> None:
    done = _cli(
        "--relay", seeded_relay.url, env={"COMMANDER_OS_HTPC_TOKEN": token("ops", admin=True)}
    )
    assert done.returncode == 0, done.stderr
    assert "commander-os relay index add value.status" in done.stdout
    assert "offline-agent" in done.stdout


def test_analytics_without_an_admin_token_is_one_line_and_exit_1(
    seeded_relay: RelayProcess,
) -> None:
    done = _cli("--relay", seeded_relay.url, "--token", token("planner"))
    assert done.returncode == 1
    assert "403" in done.stderr
    assert "admin token" in done.stderr
    assert "Traceback" not in done.stderr
