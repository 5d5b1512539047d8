"""Presenting results: the rich table and the JSON document."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from benchmarks.core import Result, Stats, format_value

__all__ = ["document", "print_table", "write_json"]


def _cell(result: Result, which: Stats | float | None) -> str:
    if which is None:
        return ""
    if isinstance(which, Stats) and result.quantity == "median":
        return f"{format_value(which.median, 's')} (p99 {format_value(which.p99, 's')})"
    return format_value(result.value(which), result.unit)


def _met(result: Result) -> str:
    if result.met is None:
        return ""
    return "[green]yes[/]" if result.met else "[red]no[/]"


def print_table(results: Sequence[Result], *, title: str, console: Console | None = None) -> None:
    """Print one row per result: metric, ours, peer, ratio, target, met?"""
    table = Table(title=title, show_lines=False)
    for column in ("metric", "ours", "peer", "peer value", "ours/peer", "target", "met?"):
        table.add_column(column, justify="left" if column in ("metric", "peer") else "right")
    for result in results:
        ratio = result.ratio
        table.add_row(
            escape(result.metric),
            _cell(result, result.ours),
            escape(result.peer_name or ""),
            _cell(result, result.peer),
            "" if ratio is None else f"{ratio:.2f}x",
            "" if result.target is None else result.target.describe(result.unit),
            _met(result),
        )
    (console or Console()).print(table)


def document(
    results: Sequence[Result],
    *,
    mode: str,
    sizes: dict[str, Any],
    machine: dict[str, Any],
    versions: dict[str, Any],
    pinning: dict[str, Any],
    notes: Sequence[str],
) -> dict[str, Any]:
    """The JSON report: when, where, with what, at which sizes, and every row."""
    met = [r.met for r in results if r.met is not None]
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": mode,
        "machine": machine,
        "versions": versions,
        "pinning": pinning,
        "sizes": sizes,
        "summary": {"rows": len(results), "targets": len(met), "targets_met": sum(met)},
        "notes": list(notes),
        "results": [r.to_json() for r in results],
    }


def write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` as indented JSON, creating the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2) + b"\n")
