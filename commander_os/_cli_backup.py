"""``commander-os backup create|list|verify|restore`` and ``commander-os restore AGENT
--from-relay``: the command line of :mod:`commander_os.storage.backups`.

Progress goes to stderr, so ``--json`` output on stdout stays machine-readable.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

__all__ = ["backup_app", "register"]

backup_app = typer.Typer(
    help="Back up, list, verify and restore agent stores.", no_args_is_help=True
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config file.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON.")]
KeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--encryption-key-file",
        help="File holding the key of encrypted stores (default: $COMMANDER_OS_ENCRYPTION_KEY).",
    ),
]
DEFAULT_STORAGE_CLASS = "commander_os.storage.agent_storage:AgentStorage"


def register(app: typer.Typer) -> None:
    """Add ``backup`` and ``restore`` to the ``commander-os`` application."""
    app.add_typer(backup_app, name="backup")
    app.command("restore")(_restore_from_relay)


def _settings(config: Path | None, key_file: Path | None, **overrides: Any) -> Any:
    from commander_os.config import load_storage_config

    settings = load_storage_config(config, overrides=overrides)
    if key_file is not None:
        settings = settings.model_copy(
            update={"encryption_key": None, "encryption_key_file": key_file}
        )
    return settings


def _key(settings: Any) -> str | None:
    from commander_os.config import read_encryption_key

    key: str | None = read_encryption_key(settings)
    return key


@contextmanager
def _progress(what: str, quiet: bool = False) -> Iterator[Any]:
    """A progress bar on stderr (bytes, speed, time left); yields ``update(done, total)``."""
    from commander_os._cli_progress import progress

    with progress("bytes", quiet=quiet or not err_console.is_terminal) as bar:
        task = bar.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total or None)

        yield update


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


# ------------------------------------------------------------------------------ create


@backup_app.command("create")
def _create(
    agents: Annotated[
        list[str] | None, typer.Argument(help="Agents to back up (default: every store).")
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="Folder of agent stores (default: local_data_dir)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Folder (or one .db.zst file) to write to (default: "
            "backup_dir, else backups/ beside each store).",
        ),
    ] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    encryption_key_file: KeyFileOpt = None,
) -> None:
    """Write a compressed, checksummed backup of agent stores (online: they may be in use)."""
    from commander_os.storage import backups
    from commander_os.storage._inspect import find_stores

    settings = _settings(config, encryption_key_file)
    key = _key(settings)
    folder = data_dir or settings.local_data_dir
    stores = find_stores(folder, encryption_key=key)
    if agents:
        stores = [path for path in stores if path.stem in agents]
        missing = sorted(set(agents) - {path.stem for path in stores})
        if missing:
            raise typer.BadParameter(f"no store of {', '.join(missing)} under {folder}")
    if not stores:
        raise typer.BadParameter(f"no agent stores under {folder}", param_hint="--data-dir")
    if out is not None and out.name.endswith(backups.BACKUP_SUFFIX) and len(stores) > 1:
        raise typer.BadParameter(
            "one file name for several stores: give a folder", param_hint="--out"
        )
    made = []
    for path in stores:
        target = out or backups.backup_folder(path.parent, settings)
        with _progress(f"backing up {path.stem}", as_json) as update:
            info = backups.backup_file(path, target, encryption_key=key, progress=update)
        made.append(info)
        if not as_json:
            console.print(
                f"{escape(info.manifest.agent_id or '')}: {escape(str(info.path))} "
                f"({info.size:,} bytes, seq {info.manifest.last_seq})",
                highlight=False,
            )
    if as_json:
        _print_json([info.as_dict() for info in made])


# -------------------------------------------------------------------------------- list


@backup_app.command("list")
def _list(
    folder: Annotated[
        Path | None,
        typer.Option(
            "--dir", help="Folder searched for backups (default: backup_dir, else local_data_dir)."
        ),
    ] = None,
    agent: Annotated[str | None, typer.Option("--agent", help="Only this agent's.")] = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """List backups, newest first, with what their manifests say."""
    from commander_os.storage import backups

    settings = _settings(config, None)
    where = folder or settings.backup_dir or settings.local_data_dir
    found = backups.list_backups(where, agent_id=agent)
    if as_json:
        _print_json([info.as_dict() for info in found])
        return
    table = Table(title=f"{len(found)} backup(s) under {where}")
    for column in ("agent", "created", "incarnation", "seq", "schema", "size", "file"):
        table.add_column(column, overflow="fold")
    for info in found:
        m = info.manifest
        table.add_row(
            escape(m.agent_id or "(relay)"),
            m.created,
            str(m.incarnation),
            str(m.last_seq),
            str(m.schema_version),
            f"{info.size:,}",
            escape(str(info.path)),
        )
    console.print(table)


# ------------------------------------------------------------------------------ verify


@backup_app.command("verify")
def _verify(
    files: Annotated[list[Path], typer.Argument(help="Backup files to check.")],
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    encryption_key_file: KeyFileOpt = None,
) -> None:
    """Decompress, check the checksum, run integrity_check and compare the manifest with the
    database. Exits 1 if any backup fails."""
    from commander_os.storage import backups

    key = _key(_settings(config, encryption_key_file))
    reports = []
    for path in files:
        with _progress(f"verifying {path.name}", as_json) as update:
            reports.append(backups.verify_backup(path, encryption_key=key, progress=update))
    if as_json:
        _print_json([report.as_dict() for report in reports])
    else:
        for report in reports:
            if report.ok:
                console.print(f"[green]ok[/] {escape(str(report.path))}", highlight=False)
            else:
                problems = "; ".join(report.problems)
                err_console.print(
                    f"[red]FAILED[/] {escape(str(report.path))}: {escape(problems)}",
                    highlight=False,
                )
    if not all(report.ok for report in reports):
        raise typer.Exit(1)


# ----------------------------------------------------------------------------- restore


@backup_app.command("restore")
def _restore(
    file: Annotated[Path, typer.Argument(help="The backup to restore.")],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="The agent's folder (default: local_data_dir/AGENT)."),
    ] = None,
    relay: Annotated[
        str | None, typer.Option("--relay", help="Relay to catch up from (default: htpc_url).")
    ] = None,
    offline: Annotated[
        bool,
        typer.Option(
            "--offline",
            help="Do not ask the relay for the changes made after the "
            "backup (the store then holds only what the backup held).",
        ),
    ] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Move a store already there aside first.")
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    encryption_key_file: KeyFileOpt = None,
) -> None:
    """Restore an agent store from a backup, brought up to date from the relay; it then
    continues as a new incarnation (its writes win)."""
    from commander_os._archive import read_manifest
    from commander_os.storage import backups

    settings = _settings(config, encryption_key_file, htpc_url=relay)
    manifest = read_manifest(file)
    target = data_dir or settings.local_data_dir / (manifest.agent_id or "")
    with _progress(f"restoring {file.name}", as_json) as update:
        report = backups.restore_backup(
            file,
            target,
            config=settings,
            encryption_key=_key(settings),
            catch_up=not offline,
            force=force,
            progress=update,
        )
    if as_json:
        _print_json(report.as_dict())
        return
    relay_note = (
        f"{report.from_relay.upserts} row(s) and {report.from_relay.deletes} deletion(s) newer "
        f"than the backup from {settings.htpc_url}"
        if report.caught_up
        else "not caught up from the relay (--offline)"
    )
    console.print(
        f"restored {escape(report.agent_id)} to {escape(str(report.path))} (seq "
        f"{manifest.last_seq}); {relay_note}",
        highlight=False,
    )
    if report.moved_aside is not None:
        console.print(f"the store that was there is now {escape(str(report.moved_aside))}")


# -------------------------------------------------------------------- from the relay


def _load_class(spec: str) -> Any:
    from commander_os.storage.base_storage import BaseStorage

    module_name, _, name = spec.partition(":")
    try:
        kind = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise typer.BadParameter(
            f"cannot load {spec!r}: {exc}", param_hint="--storage-class"
        ) from None
    if not (isinstance(kind, type) and issubclass(kind, BaseStorage)):
        raise typer.BadParameter(f"{spec!r} is not a storage class", param_hint="--storage-class")
    return kind


def _restore_from_relay(
    agent: Annotated[str, typer.Argument(help="The agent whose store to rebuild.")],
    from_relay: Annotated[str, typer.Option("--from-relay", help="The relay's URL.")],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="The agent's folder (default: local_data_dir/AGENT)."),
    ] = None,
    storage_class: Annotated[
        str,
        typer.Option(
            "--storage-class",
            help="module:Class giving the schema (e.g. "
            "commander_os.agents.recruiter.storage:RecruiterAgentStorage).",
        ),
    ] = DEFAULT_STORAGE_CLASS,
    token: Annotated[
        str | None, typer.Option("--token", help="The agent's token (default: htpc_token).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Move a store already there aside first.")
    ] = False,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    encryption_key_file: KeyFileOpt = None,
) -> None:
    """Rebuild AGENT's store from the relay's records (a lost disk), claim the agent, and
    hand it over syncing."""
    from commander_os.storage import backups

    kind = _load_class(storage_class)
    settings = _settings(
        config, encryption_key_file, htpc_url=from_relay, htpc_token=token, enable_htpc=True
    )
    target = data_dir or settings.local_data_dir / agent
    with _progress(f"rebuilding {agent} from {from_relay}", as_json):
        report = backups.rebuild_from_relay(kind, agent, target, config=settings, force=force)
    store = kind(agent, target, config=settings)
    try:
        claimed = backups.wait_claimed(store, max(settings.close_timeout, 5.0))
    finally:
        store.close()
    result = {**report.as_dict(), "claimed": claimed}
    if as_json:
        _print_json(result)
    else:
        console.print(
            f"rebuilt {escape(agent)} in {escape(str(report.path))}: "
            f"{report.from_relay.upserts} row(s) from {escape(from_relay)}"
            + ("; agent claimed" if claimed else "; the claim is queued (relay unreachable)"),
            highlight=False,
        )
        if report.skipped_tables:
            err_console.print(
                "warning: the relay also holds tables this storage class does not declare "
                f"(not restored): {', '.join(report.skipped_tables)}",
                highlight=False,
            )
    if not claimed:
        raise typer.Exit(1)
