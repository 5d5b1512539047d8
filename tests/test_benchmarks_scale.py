"""``commander-os bench --scale`` runs at tiny sizes and reports every scale figure with numbers.

No timing is asserted here: the targets live in the benchmark report, never in tests.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Metric names (prefixes) a quick scale run must report, each with a target.
EXPECTED = (
    "open 50 stores in one process, vs 5",
    "open again 50 stores in one process, vs 5",
    "idle CPU of 50 open stores",
    "50 agents at 2 writes/s: achieved writes/s of offered",
    "50 agents at 2 writes/s: replication lag p99, vs one agent",
    "50 agents at 2 writes/s: host + relay CPU per replicated record",
)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def test_scale_section_reports_every_figure_and_loses_no_write(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    env = {k: v for k, v in os.environ.items() if k != "COMMANDER_OS_TEST_DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--scale", "--json", str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = orjson.loads(out.read_bytes())["results"]
    assert [row["metric"] for row in rows] == list(EXPECTED)
    for row in rows:
        assert _is_number(row["ours_value"]), row
        assert isinstance(row["met"], bool), row
    achieved = rows[3]
    assert achieved["note"].startswith("200 writes, 0 never seen on the relay"), achieved
    assert "not all acknowledged" not in achieved["note"]
