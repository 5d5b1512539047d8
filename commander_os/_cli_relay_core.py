"""``commander-os relay serve|migrate|export|import|sync`` and ``commander-os token ...``: run
and manage the relay (its backups are in :mod:`._cli_relay`).

The relay process itself runs this CLI (``python -m commander_os.network.relay``), so nothing
of the agent side is imported here.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from commander_os._cli_options import ConfigOpt, JsonOpt
from commander_os._cli_output import console, err_console, print_json
from commander_os.errors import CentralStoreUnavailable, CommanderStorageError, InvalidAgentId

__all__ = ["relay_app", "token_app"]

relay_app = typer.Typer(help="Run and manage the relay.", no_args_is_help=True)
token_app = typer.Typer(help="Issue and check agent tokens for a relay.", no_args_is_help=True)


# The environment (COMMANDER_OS_RELAY_DATABASE_URL, or COMMANDER_OS_DATABASE_URL) is read by
# load_relay_config with every other setting, not by these options.
DatabaseUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--database-url",
        help="PostgreSQL central store URL; selects backend postgresql (default: from the "
        "config file or $COMMANDER_OS_RELAY_DATABASE_URL).",
    ),
]


@relay_app.command("serve")
def _relay_serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port (0 picks a free one).")] = None,
    data_dir: Annotated[
        Path | None, typer.Option("--data-dir", help="Central store folder.")
    ] = None,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Run the relay (the embedded SQLite central store unless a database_url is given)."""
    from commander_os.config import load_relay_config
    from commander_os.relay import serve

    overrides = {
        "host": host,
        "port": port,
        "agent_storage_dir": data_dir,
        "database_url": database_url,
    }
    serve(load_relay_config(config, overrides=overrides))


CentralDirOpt = Annotated[
    Path | None, typer.Option("--data-dir", help="SQLite central store folder.")
]


def _central_store(config: Path | None, data_dir: Path | None, database_url: str | None) -> Any:
    """The (unopened) central store that the relay config and options describe."""
    from commander_os.config import load_relay_config
    from commander_os.relay.central import store_for_config

    overrides = {"agent_storage_dir": data_dir, "database_url": database_url}
    return store_for_config(load_relay_config(config, overrides=overrides))


@relay_app.command("migrate")
def _relay_migrate(
    config: ConfigOpt = None,
    data_dir: CentralDirOpt = None,
    database_url: DatabaseUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create or upgrade the central store's schema (the relay also does it when it starts)."""
    import asyncio

    store = _central_store(config, data_dir, database_url)

    async def run() -> Any:
        async with store:
            return await store.health()

    health = asyncio.run(run())
    if as_json:
        print_json({"ready": health.ok, "backend": health.backend, "detail": health.detail})
        return
    console.print(f"central store ready ({health.backend}): {health.detail}", highlight=False)


@relay_app.command("export")
def _relay_export(
    out: Annotated[Path, typer.Option("--out", help="JSON-lines file to write.")],
    config: ConfigOpt = None,
    data_dir: CentralDirOpt = None,
    database_url: DatabaseUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write every record of the central store (tombstones too) to a JSON-lines file, with
    progress (count, rate, time left) on stderr."""
    import asyncio

    from commander_os._cli_progress import progress
    from commander_os.relay.central._transfer import export_records, is_exportable

    store = _central_store(config, data_dir, database_url)
    source = getattr(store, "path", None)
    if isinstance(source, Path) and not source.exists():
        raise CentralStoreUnavailable(f"no central store at {source}: check --data-dir / --config")

    damaged: list[Any] = []

    async def run() -> int:
        async with store:
            # The agents' record counts: the total for the time left (an estimate: the store
            # may change meanwhile; the bar follows what is really written).
            expected = sum(agent.record_count for agent in await store.agents())
            with progress("records") as bar:
                task = bar.add_task("export", total=expected or None)

                def advance(done: int) -> None:
                    bar.update(task, completed=done, total=max(expected, done))

                # 0600: the export holds every agent's records, like the store itself.
                flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
                with os.fdopen(os.open(out, flags, 0o600), "wb") as f:
                    return await export_records(
                        store, f, on_damaged=damaged.append, on_progress=advance
                    )

    count = asyncio.run(run())
    for record in damaged:
        left = "exported" if is_exportable(record) else "LEFT OUT"
        err_console.print(
            f"warning: {record.agent_id}/{record.table}/{record.key} (rev {record.rev}) is "
            f"damaged, {left}: {record.damaged}",
            highlight=False,
        )
    if as_json:
        print_json(
            {
                "exported": count,
                "backend": store.backend,
                "out": str(out),
                "damaged": [
                    {
                        "agent_id": record.agent_id,
                        "table": record.table,
                        "key": record.key,
                        "rev": record.rev,
                        "exported": is_exportable(record),
                        "reason": record.damaged,
                    }
                    for record in damaged
                ],
            }
        )
        return
    console.print(f"exported {count} record(s) from {store.backend} to {out}", highlight=False)


@relay_app.command("import")
def _relay_import(
    file: Annotated[Path, typer.Argument(help="JSON-lines file written by 'relay export'.")],
    config: ConfigOpt = None,
    data_dir: CentralDirOpt = None,
    database_url: DatabaseUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Apply an export to the central store; newer records already there win, re-runs are no-ops.

    Progress (count, rate, time left) goes to stderr."""
    import asyncio

    from commander_os._cli_progress import progress
    from commander_os.relay.central._transfer import ImportResult, import_records

    if not file.is_file():
        raise typer.BadParameter(f"{file}: no such file", param_hint="FILE")
    store = _central_store(config, data_dir, database_url)

    expected = _count_lines(file)

    async def run() -> ImportResult:
        async with store:
            with progress("records") as bar, file.open("rb") as lines:
                task = bar.add_task("import", total=expected)
                return await import_records(
                    store, lines, on_progress=lambda done: bar.update(task, completed=done)
                )

    try:
        result = asyncio.run(run())
    except ValueError as exc:
        raise typer.BadParameter(f"{file}: {exc}", param_hint="FILE") from None
    if as_json:
        print_json(
            {
                "imported": result.records,
                "applied": result.applied,
                "ignored": result.ignored,
                "backend": store.backend,
            }
        )
        return
    console.print(
        f"imported {result.records} record(s) into {store.backend}: {result.applied} applied, "
        f"{result.ignored} already there",
        highlight=False,
    )


def _count_lines(file: Path) -> int:
    """Lines in ``file`` (the import's total), read in 1 MiB blocks."""
    count = 0
    with file.open("rb") as stream:
        while block := stream.read(1 << 20):
            count += block.count(b"\n")
    return count


@relay_app.command("sync")
def _relay_sync(
    source: Annotated[
        str, typer.Option("--from", help="URL of the relay whose records to copy in.")
    ],
    config: ConfigOpt = None,
    data_dir: CentralDirOpt = None,
    database_url: DatabaseUrlOpt = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="File holding a token the source relay accepts."),
    ] = None,
    state: Annotated[
        Path | None,
        typer.Option(
            "--state", help="Cursor file for resuming (default: in the relay's data folder)."
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Copy another relay's records (deletions too) into this relay's central store.

    Idempotent (the highest version of each row wins) and resumable: a rerun continues after
    the last page copied, then copies only what changed since. Use it to fill a new or wiped
    replica from a healthy one; agents also re-ship their state to a relay that lost it.
    """
    import asyncio

    from commander_os.config import load_relay_config
    from commander_os.relay.central import store_for_config
    from commander_os.relay.central._copy import (
        CopyError,
        CopyProgress,
        copy_from_relay,
        state_file,
    )

    relay_config = load_relay_config(
        config, overrides={"agent_storage_dir": data_dir, "database_url": database_url}
    )
    try:
        url = _check_source_url(source)
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--from") from None
    token = None
    if token_file is not None:
        if not token_file.is_file():
            raise typer.BadParameter(f"{token_file}: no such file", param_hint="--token-file")
        token = token_file.read_text(encoding="utf-8").strip()
    cursor_path = state or state_file(relay_config.agent_storage_dir, url)
    store = store_for_config(relay_config)

    def report(progress: CopyProgress) -> None:
        rate = progress.records / progress.seconds if progress.seconds else 0.0
        err_console.print(
            f"copied {progress.records} record(s) from {url} ({rate:,.0f}/s): "
            f"{progress.applied} applied, {progress.ignored} already here",
            highlight=False,
        )

    async def run() -> CopyProgress:
        async with store:
            return await copy_from_relay(
                store, url, token=token, state=cursor_path, on_progress=report
            )

    try:
        result = asyncio.run(run())
    except CopyError as exc:
        err_console.print(f"error: {exc}", highlight=False)
        raise typer.Exit(1) from None
    summary = {
        "source": url,
        "records": result.records,
        "applied": result.applied,
        "already_here": result.ignored,
        "damaged": result.damaged,
        "seconds": round(result.seconds, 3),
        "state": str(cursor_path),
    }
    if as_json:
        print_json(summary)
    else:
        console.print(
            f"copied {result.records} record(s) from {url} into {store.backend}: "
            f"{result.applied} applied, {result.ignored} already here"
            + (f", {result.damaged} damaged at the source (left out)" if result.damaged else ""),
            highlight=False,
        )


def _check_source_url(url: str) -> str:
    from commander_os.config import StorageConfig

    return StorageConfig(htpc_url=url).htpc_url


# ------------------------------------------------------------------------------- token

SecretFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--secret-file", help="File holding the relay secret (default: from the relay config)."
    ),
]
RelayDirOpt = Annotated[
    Path | None,
    typer.Option("--data-dir", help="The relay's agent_storage_dir, where relay.secret lives."),
]


def _relay_secret(config: Path | None, data_dir: Path | None, secret_file: Path | None) -> bytes:
    """The secret the relay uses: --secret-file, else relay.secret / COMMANDER_OS_SECRET, else
    <agent_storage_dir>/relay.secret (created if missing, as the relay would on first start)."""
    from commander_os.config import load_relay_config
    from commander_os.relay._auth import load_secret, read_secret_file

    if secret_file is not None:
        return read_secret_file(secret_file)
    relay_config = load_relay_config(config, overrides={"agent_storage_dir": data_dir})
    return load_secret(relay_config, create=True)


@token_app.command("create")
def _token_create(
    agent_id: Annotated[str, typer.Argument(help="The agent the token writes as.")],
    read_all: Annotated[
        bool, typer.Option("--read-all", help="May read every agent (the default).")
    ] = False,
    read: Annotated[
        str | None,
        typer.Option("--read", help="Only these agents (comma-separated) besides its own."),
    ] = None,
    admin: Annotated[
        bool, typer.Option("--admin", help="Admin: /metrics, dashboard, reads all.")
    ] = False,
    expires: Annotated[
        str | None, typer.Option("--expires", help="30d, 12h, 90m, 2w or an ISO time.")
    ] = None,
    writes_prefix: Annotated[
        str | None,
        typer.Option(
            "--writes-prefix",
            help="A host token: also writes every agent whose id starts with this prefix.",
        ),
    ] = None,
    config: ConfigOpt = None,
    data_dir: RelayDirOpt = None,
    secret_file: SecretFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Print a signed token for AGENT_ID (pass it to the agent as htpc_token or token_file)."""
    from commander_os.relay._auth import issue_token, parse_expiry

    if read_all and read is not None:
        raise typer.BadParameter("give --read-all or --read, not both", param_hint="--read")
    readable = None if read is None else [a.strip() for a in read.split(",") if a.strip()]
    try:
        expires_at = None if expires is None else parse_expiry(expires)
        secret = _relay_secret(config, data_dir, secret_file)
        token = issue_token(
            secret,
            agent_id,
            read=readable,
            admin=admin,
            expires_at=expires_at,
            write_prefix=writes_prefix,
        )
    except ValueError as exc:
        if isinstance(exc, CommanderStorageError) and not isinstance(exc, InvalidAgentId):
            raise
        raise typer.BadParameter(str(exc)) from None
    if as_json:
        print_json(
            {
                "token": token,
                "agent_id": agent_id,
                "read": readable,
                "admin": admin,
                "writes_prefix": writes_prefix,
                "expires_at": _iso(expires_at),
            }
        )
        return
    sys.stdout.write(token + "\n")


@token_app.command("verify")
def _token_verify(
    token: Annotated[str, typer.Argument(help="The token to check.")],
    config: ConfigOpt = None,
    data_dir: RelayDirOpt = None,
    secret_file: SecretFileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check a token against the relay secret and print what it grants (exit 1 if invalid)."""
    from commander_os.relay._auth import describe_expiry, verify_token

    claims = verify_token(_relay_secret(config, data_dir, secret_file), token.strip())
    readable = claims.readable()
    if as_json:
        print_json(
            {
                "valid": True,
                "token_id": claims.token_id,
                "agent_id": claims.agent_id,
                "read": None if readable is None else sorted(readable),
                "admin": claims.admin,
                "writes_prefix": claims.write_prefix,
                "issued_at": _iso(claims.issued_at),
                "expires_at": _iso(claims.expires_at),
            }
        )
        return
    reads = "every agent" if readable is None else ", ".join(sorted(readable))
    host = "" if claims.write_prefix is None else f" (host: writes {claims.write_prefix}*)"
    sys.stdout.write(
        f"valid token {claims.token_id} for {claims.agent_id}{host}: reads {reads}; "
        f"admin: {'yes' if claims.admin else 'no'}; expires: {describe_expiry(claims)}\n"
    )


def _iso(moment: float | None) -> str | None:
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="seconds")
