"""Render a benchmark JSON report as the Markdown table the README carries.

    python -m benchmarks.markdown benchmarks/results/latest.json            # print it
    python -m benchmarks.markdown benchmarks/results/latest.json --readme README.md

With ``--readme`` the text between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` is
replaced, so the README's table is always regenerated from a real run, never typed in.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import orjson

from benchmarks.core import format_value

__all__ = ["render", "replace_section"]

START = "<!-- bench:start -->"
END = "<!-- bench:end -->"


def _value(result: dict[str, Any], which: str) -> str:
    value = result.get(f"{which}_value")
    unit = result["unit"].split()[-1] if result["quantity"] == "items_per_s" else result["unit"]
    return "" if value is None else format_value(value, unit)


def _met(result: dict[str, Any]) -> str:
    if result.get("met") is None:
        return ""
    return "yes" if result["met"] else "**no**"


def _ratio(ratio: float | None) -> str:
    if ratio is None:
        return ""
    return f"{ratio:.2f}x" if ratio >= 0.1 else f"{ratio:.3f}x"


def render(doc: dict[str, Any]) -> str:
    """The Markdown heading line and table of one report."""
    machine = doc["machine"]
    versions = doc["versions"]
    summary = doc["summary"]
    lines = [
        f"Run {doc['date']} (`{doc['mode']}` sizes, commit {versions.get('git_commit', '?')}) on "
        f"{machine['cpu_model']}, {machine['cores']} cores, {machine['ram_gib']} GiB, "
        f"{machine['kernel']}; Python {versions['python']}, SQLite {versions['sqlite']}. "
        f"Load average at the start: {', '.join(f'{x:.2f}' for x in machine['load_average'])}. "
        f"Targets met: {summary['targets_met']} of {summary['targets']}.",
        "",
        "| metric | ours | peer | peer value | ours/peer | target | met |",
        "| --- | ---: | --- | ---: | ---: | ---: | :---: |",
    ]
    for result in doc["results"]:
        ratio = result.get("ratio")
        lines.append(
            "| "
            + " | ".join(
                [
                    result["metric"],
                    _value(result, "ours"),
                    result.get("peer_name") or "",
                    _value(result, "peer"),
                    _ratio(ratio),
                    result.get("target") or "",
                    _met(result),
                ]
            )
            + " |"
        )
    lines += ["", *(f"- {note}" for note in doc.get("notes", []))]
    return "\n".join(lines)


def replace_section(text: str, table: str) -> str:
    """``text`` with the part between the bench markers replaced by ``table``."""
    if START not in text or END not in text:
        raise ValueError(f"the README has no {START} ... {END} section")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """Print the table, or write it into a README."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.markdown")
    parser.add_argument("report", type=Path, help="a JSON report written by python -m benchmarks")
    parser.add_argument("--readme", type=Path, help="rewrite the bench section of this file")
    args = parser.parse_args(argv)
    table = render(orjson.loads(args.report.read_bytes()))
    if args.readme is None:
        sys.stdout.write(table + "\n")
        return 0
    args.readme.write_text(replace_section(args.readme.read_text(), table))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
