"""One progress display for long commands (``sync``, ``relay export``, ``relay import``, and
the backups and restores): what is being done, a bar, done / total, the rate per second and the
time left.

It draws on stderr, so stdout keeps only the command's result (and ``--json`` its document);
when stderr is not a terminal rich draws nothing but the final state.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import (
    BarColumn,
    DownloadColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.text import Text

from commander_os._cli_output import err_console

__all__ = ["RateColumn", "progress"]


class RateColumn(ProgressColumn):
    """Items per second (rich's own speed column speaks of bytes)."""

    def __init__(self, unit: str) -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text(f"- {self.unit}/s", style="progress.data.speed")
        return Text(f"{speed:,.0f} {self.unit}/s", style="progress.data.speed")


@contextmanager
def progress(unit: str = "changes", *, quiet: bool = False) -> Iterator[Progress]:
    """A :class:`rich.progress.Progress` with count, rate and ETA columns, on stderr.

    ``unit="bytes"`` shows sizes and a transfer speed. ``quiet`` draws nothing.
    """
    if unit == "bytes":
        counting: tuple[ProgressColumn, ...] = (DownloadColumn(), TransferSpeedColumn())
    else:
        counting = (MofNCompleteColumn(), RateColumn(unit))
    columns = (
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        *counting,
        TextColumn("eta"),
        TimeRemainingColumn(),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=err_console, transient=False, disable=quiet) as bar:
        yield bar
