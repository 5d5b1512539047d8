"""The integration benchmarks run at tiny sizes and report every row with numbers.

No timing is asserted: the 1.5x goal lives in the benchmark report, never in tests.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import orjson

REPO_ROOT = Path(__file__).resolve().parents[2]
EXPECTED = (
    ("store put (1 KB, existing key), durability=normal", "SqliteStore"),
    ("store get", "SqliteStore"),
    ("store search (filter, limit 10", "SqliteStore"),
    ("saver put (checkpoint of ~2 KB), durability=normal", "SqliteSaver"),
    ("saver get_tuple (latest of a thread)", "SqliteSaver"),
    ("saver put (checkpoint of ~2 KB), durability=full", "SqliteSaver"),
    ("semantic search", "InMemoryStore"),
)


def test_quick_run_reports_every_comparison(tmp_path: Path) -> None:
    out = tmp_path / "integrations.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.integrations", "--quick", "--json", str(out)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = orjson.loads(out.read_bytes())["results"]
    for metric, peer in EXPECTED:
        found = [r for r in rows if r["metric"].startswith(metric) and r["peer_name"] == peer]
        assert found, f"no row {metric!r} against {peer}"
        assert all(math.isfinite(r["ratio"]) and r["ratio"] > 0 for r in found)
