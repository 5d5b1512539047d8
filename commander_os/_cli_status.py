"""``commander-os status``: what each store holds back, and why.

Per store: whether it can be read, its queue, the age of its oldest waiting change, its dead
letters and its size with the ``-wal`` file. Per relay target of a store: reachable or not,
the last successful sync, the last error (kept in the store by the process that ships it, so
this process can read it), and the target's own queue. Thresholds (``--max-queue``,
``--max-lag``) make the exit status usable by monitoring.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from commander_os._cli_output import console, err_console, human_age, human_size

__all__ = ["EXIT_OVER_THRESHOLD", "EXIT_UNREADABLE", "apply_thresholds", "print_status"]

#: A store could not be read (damaged, or the wrong encryption key).
EXIT_UNREADABLE = 1
#: A store is over ``--max-queue`` or ``--max-lag``.
EXIT_OVER_THRESHOLD = 3


def apply_thresholds(
    reports: list[dict[str, Any]], max_queue: int | None, max_lag: float | None
) -> bool:
    """Add ``alerts`` (a list of reasons) to each report; True if any store is over."""
    over = False
    for report in reports:
        alerts = []
        queued = report.get("sync_queue_size")
        lag = report.get("oldest_pending_age")
        if max_queue is not None and queued is not None and queued > max_queue:
            alerts.append(f"{queued} changes queued (--max-queue {max_queue})")
        if max_lag is not None and lag is not None and lag > max_lag:
            alerts.append(f"oldest change waiting {lag:.1f} s (--max-lag {max_lag:g})")
        report["alerts"] = alerts
        over |= bool(alerts)
    return over


def _where(report: dict[str, Any], data_dir: Path) -> str:
    try:
        return str(Path(report["path"]).parent.relative_to(data_dir))
    except ValueError:
        return str(report["path"])


def _relay_cell(report: dict[str, Any]) -> str:
    rows = report.get("targets") or []
    if not rows:
        return "[dim]never shipped[/]"
    cells = []
    for row in rows:
        state = {True: "[green]reachable[/]", False: "[red]unreachable[/]", None: "not tried"}
        cells.append(f"{escape(row['target'])}: {state[row['reachable']]}")
    return "\n".join(cells)


def print_status(reports: list[dict[str, Any]], data_dir: Path) -> None:
    """The table for people, then one line per store that holds changes back, saying why."""
    if not reports:
        console.print(f"no agent stores under {data_dir}")
        return
    table = Table(title=f"agent stores under {data_dir}")
    columns = ("agent", "path", "ok", "schema", "queued", "oldest pending", "dead", "size")
    for column in (*columns, "relay", "last sync"):
        table.add_column(column, justify="right" if column in columns[3:] else "left")
    for report in reports:
        dead = report.get("dead_letters")
        table.add_row(
            escape(report["agent_id"]),
            escape(_where(report, data_dir)),
            "[green]yes[/]" if report["local_db"] else "[red]no[/]",
            str(report.get("schema_version", "-")),
            str(report.get("sync_queue_size", "-")),
            human_age(report.get("oldest_pending_age")),
            f"[red]{dead}[/]" if dead else str(dead if dead is not None else "-"),
            human_size(report.get("size_bytes")),
            _relay_cell(report),
            report.get("last_sync") or "-",
        )
    console.print(table)
    for report in reports:
        _explain(report)


def _explain(report: dict[str, Any]) -> None:
    agent = escape(report["agent_id"])
    if not report["local_db"]:
        err_console.print(f"[red]{agent}[/]: {escape(str(report.get('error', '')))}")
        return
    for row in report.get("targets") or []:
        if row["queued"] and row["last_error"]:
            console.print(
                f"[yellow]{agent}[/] -> {escape(row['target'])}: {row['queued']} queued, "
                f"oldest {human_age(row['oldest_pending_age'])}; last error "
                f"({row['last_attempt']}): {escape(row['last_error'])}",
                highlight=False,
            )
    if report.get("conflict"):
        console.print(
            f"[red]{agent}[/]: fenced, another store holds this agent ({report['conflict']}); "
            "claim or retire it",
            highlight=False,
        )
    if report.get("dead_letters"):
        console.print(
            f"[red]{agent}[/]: {report['dead_letters']} dead letter(s): "
            "commander-os dead-letters list",
            highlight=False,
        )
    for alert in report.get("alerts") or []:
        console.print(f"[red]{agent}[/]: over threshold: {escape(alert)}", highlight=False)
