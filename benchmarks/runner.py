"""The command line of the suite: choose sizes and areas, run them, print and save results.

``python -m benchmarks [--quick|--full] [--only local,sync,relay] [--scale] [--json PATH]
[--database-url URL] [--workdir DIR]``

``--scale`` runs the scale section (one agent host with many stores, ``benchmarks/scale.py``)
alone; it is also the area ``scale`` of ``--only``. The default run leaves it out.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from benchmarks.core import Result, cpus, pin_to_cpu
from benchmarks.machine import machine_info, versions
from benchmarks.report import document, print_table, write_json
from benchmarks.sizes import SIZES, Sizes

__all__ = ["AREAS", "main", "run"]

AREAS = (
    "local",
    "sync",
    "replication",
    "relay",
    "integrations",
    "footprint",
    "fleet",
    "scale",
)
#: What runs without ``--only`` or ``--scale``.
DEFAULT_AREAS = AREAS[:-1]
DATABASE_URL_ENV = "COMMANDER_OS_TEST_DATABASE_URL"

NOTES = (
    "ratio = ours / peer of the compared quantity: for latencies (median) lower is better, "
    "for throughputs (items/s) higher is better",
    "peers are measured in the same run, round-robin with a rotated order per round",
    "the benchmark process is pinned to one CPU and servers (relay, redis) to another "
    "(ARCHITECTURE.md §9); every write changes its value",
    "diskcache get returns its stored JSON string without decoding; all other gets decode",
    "sqlitedict runs with autocommit=True and WAL, but hard-codes synchronous=OFF (no fsync): "
    "its writes are a reference point at either durability",
    "redis is a reference point over loopback without persistence (no fsync)",
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks", description="Commander OS Storage benchmarks."
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="tiny sizes, seconds (as the tests)")
    size.add_argument("--full", action="store_true", help="full sizes (100k keys, 1M records)")
    parser.add_argument(
        "--only", default=",".join(DEFAULT_AREAS), help="comma-separated areas to run"
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="run the scale section (many stores in one host) instead of the default areas",
    )
    parser.add_argument("--json", type=Path, help="write the results as JSON to this path")
    parser.add_argument(
        "--print-json",
        action="store_true",
        help="print the results as JSON on stdout (the table and the log go to stderr)",
    )
    parser.add_argument(
        "--database-url",
        default=os.environ.get(DATABASE_URL_ENV),
        help=f"PostgreSQL URL: also measure the relay on it (default ${DATABASE_URL_ENV})",
    )
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a temp folder)")
    parser.add_argument(
        "--records",
        type=int,
        help="central store size for the relay's query matrix (e.g. 1000000 or 5000000; "
        "default: the size's own)",
    )
    return parser


def _areas(text: str) -> list[str]:
    chosen = [part.strip() for part in text.split(",") if part.strip()]
    unknown = sorted(set(chosen) - set(AREAS))
    if unknown or not chosen:
        raise SystemExit(f"--only: unknown area(s) {unknown}; choose from {', '.join(AREAS)}")
    return [area for area in AREAS if area in chosen]


def _integrations(
    sizes: Sizes, workdir: Path, *, server_cpu: int | None, log: Callable[[str], None]
) -> list[Result]:
    """The LangGraph integration beside LangGraph's own stores, when the extra is installed."""
    try:
        from benchmarks.integrations import SIZES as INTEGRATION_SIZES
        from benchmarks.integrations import run_integrations
    except ImportError as exc:  # the [langgraph] extra is missing
        log(f"integrations: skipped ({exc.name} is not installed: pip install '.[langgraph]')")
        return []
    return run_integrations(INTEGRATION_SIZES[sizes.name], workdir, server_cpu=server_cpu, log=log)


def run(
    sizes: Sizes,
    areas: Sequence[str],
    workdir: Path,
    *,
    database_url: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[Result], dict[str, Any]]:
    """Run ``areas`` at ``sizes`` under ``workdir``; return the rows and the CPU pinning used."""
    client_cpu, server_cpu = cpus()
    pinned = pin_to_cpu(client_cpu)
    pinning = {"client_cpu": pinned, "server_cpu": server_cpu if pinned is not None else None}
    server = pinning["server_cpu"]
    results: list[Result] = []
    for area in areas:
        started = time.monotonic()
        area_dir = workdir / area
        area_dir.mkdir(parents=True, exist_ok=True)
        if area == "local":
            from benchmarks.local import run_local

            results += run_local(sizes, area_dir, server_cpu=server, log=log)
        elif area == "sync":
            from benchmarks.sync import run_sync

            results += run_sync(sizes, area_dir, server_cpu=server, log=log)
        elif area == "replication":
            from benchmarks.replication import run_replication

            results += run_replication(sizes, area_dir, server_cpu=server, log=log)
        elif area == "integrations":
            results += _integrations(sizes, area_dir, server_cpu=server, log=log)
        elif area == "footprint":
            from benchmarks.footprint import run_footprint

            results += run_footprint(sizes, area_dir, server_cpu=server, log=log)
        elif area == "fleet":
            from benchmarks.fleet import run_fleet

            results += run_fleet(
                sizes, area_dir, server_cpu=server, database_url=database_url, log=log
            )
        elif area == "scale":
            from benchmarks.scale import run_scale

            results += run_scale(sizes, area_dir, server_cpu=server, log=log)
        else:
            from benchmarks.relay import run_relay

            results += run_relay(
                sizes, area_dir, server_cpu=server, database_url=database_url, log=log
            )
        log(f"{area}: done in {time.monotonic() - started:.1f} s")
        shutil.rmtree(area_dir, ignore_errors=True)
    return results, pinning


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m benchmarks`` and ``commander-os bench``; returns 0."""
    args = _parser().parse_args(argv)
    mode = "quick" if args.quick else "full" if args.full else "standard"
    sizes = SIZES[mode]
    if args.records:
        sizes = dataclasses.replace(sizes, central_records=args.records)
    areas = ["scale"] if args.scale else _areas(args.only)
    # Wide enough for the table when the output is a file or a pipe (rich defaults to 80).
    console = Console(width=None if Console().is_terminal else 160, stderr=args.print_json)

    def log(message: str) -> None:
        console.log(message, markup=False)

    # Before the run: the code measured is the code checked out when it started.
    found_versions = versions()
    owned = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="commander-bench-")) if owned else args.workdir
    try:
        results, pinning = run(sizes, areas, workdir, database_url=args.database_url, log=log)
    finally:
        if owned:
            shutil.rmtree(workdir, ignore_errors=True)
    machine = machine_info()
    title = (
        f"Commander OS Storage benchmarks ({mode}) — {machine['cpu_model']}, "
        f"{machine['cores']} cores, {machine['ram_gib']} GiB"
    )
    print_table(results, title=title, console=console)
    doc = document(
        results,
        mode=mode,
        sizes=sizes.to_json(),
        machine=machine,
        versions=found_versions,
        pinning=pinning,
        notes=NOTES,
    )
    if args.json is not None:
        write_json(args.json, doc)
        console.print(f"results written to {args.json}")
    if args.print_json:
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")
    return 0
