"""``commander-os dead-letters list|retry|purge``: the changes a relay refused for good.

(The agent side is imported inside the commands: the relay process runs this CLI too.)

A dead letter keeps the table, the key, the operation and the relay's reason. ``retry`` queues
the row again as it is *now* (fix the data, or the relay's limits, first); ``purge`` forgets
the letters (with ``--yes``: the relay will never have those changes).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer
from rich.markup import escape
from rich.table import Table

from commander_os._cli_options import ConfigOpt, DataDirOpt, JsonOpt, KeyFileOpt, storage_settings
from commander_os._cli_output import console, print_json

__all__ = ["dead_letters_app"]

dead_letters_app = typer.Typer(
    help="List, retry or purge changes a relay refused for good.", no_args_is_help=True
)

AgentOpt = Annotated[
    list[str] | None,
    typer.Option("--agent", help="Only this agent's store (repeatable; default: every store)."),
]
SeqOpt = Annotated[
    list[int] | None,
    typer.Option("--seq", help="Only the dead letter with this seq (repeatable; needs --agent)."),
]


def _collect(
    action: Literal["list", "retry", "purge"],
    data_dir: Path | None,
    config: Path | None,
    agents: list[str] | None,
    seqs: list[int] | None,
    key_file: Path | None,
) -> list[dict[str, Any]]:
    from commander_os.config import read_encryption_key
    from commander_os.identifiers import validate_agent_id
    from commander_os.storage._delivery.status import iso
    from commander_os.storage._inspect import find_stores, handle_dead_letters

    if seqs and (not agents or len(agents) != 1):
        raise typer.BadParameter(
            "--seq numbers belong to one store: give one --agent", param_hint="--seq"
        )
    wanted = {validate_agent_id(agent) for agent in agents or []}
    settings = storage_settings(config, key_file)
    key = read_encryption_key(settings)
    folder = data_dir or settings.local_data_dir
    rows = []
    for path in find_stores(folder, encryption_key=key):
        if wanted and path.stem not in wanted:
            continue
        for letter in handle_dead_letters(path, action, seqs=seqs, encryption_key=key):
            row = letter.as_dict()
            row["failed_at"] = iso(letter.failed_at)
            rows.append({"agent_id": path.stem, "path": str(path), **row})
    return rows


def _show(rows: list[dict[str, Any]], title: str) -> None:
    table = Table(title=title)
    for column in ("agent", "seq", "table", "key", "op", "attempts", "failed at", "reason"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            escape(row["agent_id"]),
            str(row["seq"]),
            escape(row["table"]),
            escape(", ".join(map(str, row["key"]))),
            row["op"],
            str(row["attempts"]),
            row["failed_at"] or "-",
            escape(row["error"]),
        )
    console.print(table)


@dead_letters_app.command("list")
def _list(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    agent: AgentOpt = None,
    seq: SeqOpt = None,
    as_json: JsonOpt = False,
    encryption_key_file: KeyFileOpt = None,
) -> None:
    """Show the dead letters of the stores under DATA_DIR, with the relay's reasons."""
    rows = _collect("list", data_dir, config, agent, seq, encryption_key_file)
    if as_json:
        print_json(rows)
    elif not rows:
        console.print("no dead letters")
    else:
        _show(rows, f"{len(rows)} dead letter(s)")


@dead_letters_app.command("retry")
def _retry(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    agent: AgentOpt = None,
    seq: SeqOpt = None,
    as_json: JsonOpt = False,
    encryption_key_file: KeyFileOpt = None,
) -> None:
    """Queue dead letters again: each row ships as it is now (the store's own process, or
    `commander-os sync`, sends it)."""
    rows = _collect("retry", data_dir, config, agent, seq, encryption_key_file)
    if as_json:
        print_json({"action": "retry", "count": len(rows), "dead_letters": rows})
        return
    console.print(f"queued {len(rows)} dead letter(s) again", highlight=False)


@dead_letters_app.command("purge")
def _purge(
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    agent: AgentOpt = None,
    seq: SeqOpt = None,
    yes: Annotated[
        bool, typer.Option("--yes", help="Confirm: these changes never reach the relay.")
    ] = False,
    as_json: JsonOpt = False,
    encryption_key_file: KeyFileOpt = None,
) -> None:
    """Forget dead letters for good (needs --yes)."""
    if not yes:
        raise typer.BadParameter(
            "purging drops changes the relay will then never have; add --yes to confirm "
            "(see them first: commander-os dead-letters list)",
            param_hint="--yes",
        )
    rows = _collect("purge", data_dir, config, agent, seq, encryption_key_file)
    if as_json:
        print_json({"action": "purge", "count": len(rows), "dead_letters": rows})
        return
    console.print(f"purged {len(rows)} dead letter(s)", highlight=False)
