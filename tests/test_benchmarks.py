"""The benchmark harness runs at tiny sizes and reports every metric with numbers.

No timing is asserted here: targets live in the benchmark report (issue 5), never in tests.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Metric names (prefixes) every quick run must report.
EXPECTED = (
    "get (1 KB JSON)",
    "prefix scan",
    "list_all",
    "set, durability=normal",
    "set, durability=full",
    "set, durability=normal, capture on",
    "set, durability=full, capture on",
    "set_many of 1000, durability=normal",
    "set_many of 1000, durability=full",
    "set (4 KB value), durability=normal",
    "set (4 KB value), durability=full",
    "set_many of 1000 (4 KB values), durability=normal",
    "set_many of 1000 (4 KB values), durability=full",
    "replication lag, steady",
    "replication lag, bursts",
    "drain a 500-record backlog",
    "agent memory growth while draining",
    "relay ingest /relay/batch",
    "relay /relay/batch round trip",
    "query agent + key @",
    "query agent + key prefix",
    "query field eq",
    "query agent + field gte",
    "network reads (100 concurrent, 3 pages each): aquery_network",
    "network reads (100 concurrent, 3 pages each): the event loop's worst stall",
    "relay GET /health round trip, access_log on",
    "relay ingest, analytics + heartbeats on vs off",
    "query round trip, analytics on vs off",
    "analytics bookkeeping per ingested record",
    "analytics bookkeeping per query",
    "local bytes per record",
    "central bytes per record",
    "backup, local store",
    "restore from a local backup",
    "restore from the relay",
    "relay CPU per 1-record request",
    "relay batched ingest, batches of 1000",
    "feed delivery, least whole-feed subscriber",
    "feed delivery lag p99",
    "relay CPU serving the feed",
)
PEERS = {"raw sqlite3", "diskcache", "sqlitedict"}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("bench") / "results.json"
    env = {k: v for k, v in os.environ.items() if k != "COMMANDER_OS_TEST_DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--json", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "ours/peer" in done.stdout  # the table was printed
    return dict(orjson.loads(out.read_bytes()))


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_report_describes_the_run(report: dict[str, Any]) -> None:
    assert report["mode"] == "quick"
    assert report["date"]
    for field in ("cpu_model", "cores", "ram_gib", "kernel"):
        assert report["machine"][field]
    for name in ("python", "sqlite", "orjson", "diskcache", "sqlitedict"):
        assert report["versions"][name]
    assert report["sizes"]["keys"] > 0


def test_every_metric_is_reported_with_numbers(report: dict[str, Any]) -> None:
    rows = report["results"]
    for expected in EXPECTED:
        matching = [row for row in rows if row["metric"].startswith(expected)]
        assert matching, f"no result for {expected!r}"
    for row in rows:
        assert _is_number(row["ours_value"]), row
        if row["peer_name"] is not None:
            assert _is_number(row["peer_value"]), row
            assert _is_number(row["ratio"]), row
        if row["target"] is not None:
            assert isinstance(row["met"], bool), row
        if isinstance(row["ours"], dict):
            stats = row["ours"]
            assert all(_is_number(stats[k]) for k in ("median_s", "p99_s", "ops_per_s")), row


def test_local_metrics_have_their_peers_side_by_side(report: dict[str, Any]) -> None:
    get_peers = {r["peer_name"] for r in report["results"] if r["metric"] == "get (1 KB JSON)"}
    assert get_peers >= PEERS
    set_rows = [r for r in report["results"] if r["metric"] == "set, durability=normal"]
    assert {r["peer_name"] for r in set_rows} >= {"raw sqlite3", "diskcache"}


def test_sync_figures_cover_every_write(report: dict[str, Any]) -> None:
    rows = [r for r in report["results"] if r["metric"].startswith("drain a")]
    drains = [r for r in rows if r["peer_name"] is None]
    assert len(drains) == 2
    (ratio,) = [r for r in rows if r["peer_name"] == "sync_batch_size 1000"]
    assert _is_number(ratio["ratio"]), ratio
    for drain in drains:
        assert drain["note"] == "500 queued, 0 left", drain
    lag = next(r for r in report["results"] if r["metric"].startswith("replication lag, steady"))
    assert "never seen" not in lag["note"], lag


def test_markdown_table_is_rendered_from_the_report(report: dict[str, Any]) -> None:
    from benchmarks.markdown import END, START, render, replace_section

    table = render(report)
    rows = [line for line in table.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(report["results"]) + 1  # the header, then one row per result
    assert report["versions"]["python"] in table
    readme = f"intro\n{START}\nold table\n{END}\noutro\n"
    updated = replace_section(readme, table)
    assert "old table" not in updated
    assert updated.startswith("intro\n")
    assert updated.endswith("outro\n")
    assert table in updated
