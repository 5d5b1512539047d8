"""``commander-os relay backup|restore|verify``: backups of the SQLite central store, and a
comparison of what a relay holds with the agents' stores or with another relay."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape

__all__ = ["compare_relays", "compare_with_stores", "register"]

console = Console()
err_console = Console(stderr=True, soft_wrap=True)
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
DataDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="The relay's agent_storage_dir.")
]


def register(relay_app: typer.Typer) -> None:
    """Add ``backup``, ``restore`` and ``verify`` to ``commander-os relay``."""
    relay_app.command("backup")(_backup)
    relay_app.command("restore")(_restore)
    relay_app.command("verify")(_verify)


def _relay_config(config: Path | None, data_dir: Path | None) -> Any:
    from commander_os.config import load_relay_config

    settings = load_relay_config(config, overrides={"agent_storage_dir": data_dir})
    if settings.backend != "sqlite":
        raise typer.BadParameter(
            "relay backups are for the SQLite central store; back PostgreSQL up with pg_dump "
            "or base backups (see the README)"
        )
    return settings


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _backup(
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder or .db.zst file (default: backup_dir, else agent_storage_dir/backups).",
        ),
    ] = None,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Back up the SQLite central store online (the relay may be running)."""
    from commander_os.config import read_encryption_key
    from commander_os.relay.central._backup import backup_central, backup_folder

    settings = _relay_config(config, data_dir)
    path, manifest = backup_central(
        settings.agent_storage_dir,
        out or backup_folder(settings),
        encryption_key=read_encryption_key(settings),
    )
    if as_json:
        _print_json({"path": str(path), "size": path.stat().st_size, **vars(manifest)})
    else:
        console.print(
            f"relay backup {escape(str(path))} (revision {manifest.last_seq})", highlight=False
        )


def _restore(
    file: Annotated[Path, typer.Argument(help="The relay backup to restore.")],
    force: Annotated[
        bool, typer.Option("--force", help="Move the central store there aside first.")
    ] = False,
    config: ConfigOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Put a relay backup in place (stop the relay first). Agents refill what it lacks."""
    from commander_os.config import read_encryption_key
    from commander_os.relay.central._backup import restore_central

    settings = _relay_config(config, data_dir)
    manifest, aside = restore_central(
        file,
        settings.agent_storage_dir,
        encryption_key=read_encryption_key(settings),
        force=force,
    )
    if as_json:
        _print_json({"restored": str(file), "moved_aside": aside and str(aside), **vars(manifest)})
        return
    console.print(
        f"restored {escape(str(file))} (revision {manifest.last_seq}, {manifest.created}) into "
        f"{escape(str(settings.agent_storage_dir))}",
        highlight=False,
    )
    if aside is not None:
        console.print(f"the central store that was there is now {escape(str(aside))}")


def _verify(
    relay: Annotated[str, typer.Option("--relay", help="The relay to check.")],
    other: Annotated[
        str | None, typer.Option("--other", help="Compare with this relay instead.")
    ] = None,
    stores: Annotated[
        Path | None, typer.Option("--data-dir", help="Compare with the agent stores here.")
    ] = None,
    token: Annotated[
        str | None, typer.Option(envvar="COMMANDER_OS_HTPC_TOKEN", help="Bearer token.")
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    encryption_key_file: Annotated[
        Path | None, typer.Option("--encryption-key-file", help="Key of encrypted stores.")
    ] = None,
) -> None:
    """Compare per-agent record counts and highest versions of a relay with another relay
    (--other) or with the agents' stores (--data-dir). Exits 1 on any difference."""
    from commander_os.config import load_storage_config, read_encryption_key

    if (other is None) == (stores is None):
        raise typer.BadParameter("give --other URL or --data-dir DIR")
    if other is not None:
        differences = compare_relays(relay, other, token)
    else:
        assert stores is not None
        settings = load_storage_config(config)
        if encryption_key_file is not None:
            settings = settings.model_copy(
                update={"encryption_key": None, "encryption_key_file": encryption_key_file}
            )
        differences = compare_with_stores(relay, stores, token, read_encryption_key(settings))
    if as_json:
        _print_json({"relay": relay, "differences": differences, "ok": not differences})
    elif differences:
        for entry in differences:
            err_console.print(f"[red]differs[/] {escape(entry['problem'])}", highlight=False)
    else:
        console.print(f"[green]ok[/] {escape(relay)} agrees", highlight=False)
    if differences:
        raise typer.Exit(1)


def _agents(url: str, token: str | None) -> dict[str, dict[str, Any]]:
    from commander_os.storage._delivery.client import RelayClient

    with RelayClient(url, token=token) as client:
        return {agent["agent_id"]: agent for agent in client.agents()}


def compare_relays(first: str, second: str, token: str | None) -> list[dict[str, Any]]:
    """Per-agent differences (tables' record counts, highest version) between two relays."""
    left, right = _agents(first, token), _agents(second, token)
    differences = []
    for agent in sorted(set(left) | set(right)):
        a, b = left.get(agent), right.get(agent)
        if a is None or b is None:
            where = second if a is not None else first
            differences.append({"agent_id": agent, "problem": f"{agent}: missing on {where}"})
            continue
        for field in ("tables", "highest_version"):
            if a.get(field) != b.get(field):
                differences.append(
                    {
                        "agent_id": agent,
                        "problem": f"{agent}: {field} {a.get(field)} vs {b.get(field)}",
                    }
                )
    return differences


def compare_with_stores(
    relay: str, data_dir: Path, token: str | None, key: str | None
) -> list[dict[str, Any]]:
    """Per-agent differences between a relay and the stores under ``data_dir``: rows per synced
    table (when nothing is queued), and whether the relay holds the store's incarnation."""
    from commander_os.storage._inspect import find_stores

    held = _agents(relay, token)
    differences = []
    for path in find_stores(data_dir, encryption_key=key):
        local = _store_counts(path, key)
        agent = path.stem
        remote = held.get(agent)
        if remote is None:
            if any(local["tables"].values()):
                differences.append({"agent_id": agent, "problem": f"{agent}: not on the relay"})
            continue
        tables = {name: count for name, count in remote.get("tables", {}).items() if count}
        mine = {name: count for name, count in local["tables"].items() if count}
        if local["queued"] == 0 and tables != mine:
            differences.append(
                {"agent_id": agent, "problem": f"{agent}: rows {mine} locally, {tables} on relay"}
            )
        incarnation = int(remote.get("highest_version", 0)) >> 32
        if local["incarnation"] and incarnation > local["incarnation"]:
            differences.append(
                {
                    "agent_id": agent,
                    "problem": f"{agent}: relay holds incarnation {incarnation}, the store "
                    f"{local['incarnation']} (another store took the agent over)",
                }
            )
    return differences


def _store_counts(path: Path, key: str | None) -> dict[str, Any]:
    from commander_os import _sqlite as db
    from commander_os.storage import _outbox as outbox
    from commander_os.storage._delivery import identity

    conn = db.open_file(path, encryption_key=key if db.is_encrypted(path) else None, read_only=True)
    try:
        tables = {}
        for name in outbox.registered_tables(conn):
            if conn.execute(outbox.TABLE_EXISTS, (name,)).fetchone() is not None:
                quoted = outbox.quote(name)
                tables[name] = int(conn.execute(f"SELECT count(*) FROM {quoted}").fetchone()[0])
        return {
            "tables": tables,
            "queued": outbox.queue_size(conn),
            "incarnation": identity.incarnation(conn),
        }
    finally:
        conn.close()
