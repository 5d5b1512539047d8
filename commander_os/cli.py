"""``commander-os``: the command line.

Every error of ours becomes one line on stderr and exit code 1 (2 for usage errors); nothing
prints a traceback at a user unless ``COMMANDER_OS_DEBUG=1``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from commander_os import __version__
from commander_os.errors import CentralStoreUnavailable, CommanderStorageError, InvalidAgentId

__all__ = ["app", "main", "run_relay_command"]

app = typer.Typer(
    name="commander-os",
    help="Commander OS Storage: local-first agent storage with a central relay.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
relay_app = typer.Typer(help="Run and manage the relay.", no_args_is_help=True)
app.add_typer(relay_app, name="relay")
token_app = typer.Typer(help="Issue and check agent tokens for a relay.", no_args_is_help=True)
app.add_typer(token_app, name="token")

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

DataDir = Annotated[
    Path, typer.Option("--data-dir", help="Folder holding agent stores (searched recursively).")
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config file.")]
KeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--encryption-key-file",
        help="File holding the key of encrypted stores (default: $COMMANDER_OS_ENCRYPTION_KEY).",
    ),
]


def _version(value: bool) -> None:
    if value:
        console.print(f"commander-os {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Commander OS Storage command line."""


# ------------------------------------------------------------------------------ status


@app.command("status")
def _status(
    data_dir: DataDir = Path("./data/agents"),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    encryption_key_file: KeyFileOpt = None,
) -> None:
    """Show health and sync-queue size of every agent store under DATA_DIR.

    Exits 1 when a store cannot be read (damaged, or the wrong encryption key), so it can serve
    as a health check.
    """
    from commander_os.config import load_storage_config, read_encryption_key
    from commander_os.storage._inspect import inspect_stores

    settings = _with_key_file(load_storage_config(), encryption_key_file)
    reports = inspect_stores(data_dir, encryption_key=read_encryption_key(settings))
    failed = [report for report in reports if not report["local_db"]]
    if as_json:
        sys.stdout.write(orjson.dumps(reports, option=orjson.OPT_INDENT_2).decode() + "\n")
        raise typer.Exit(1 if failed else 0)
    if not reports:
        console.print(f"no agent stores under {data_dir}")
        return
    table = Table(title=f"agent stores under {data_dir}")
    for column in ("agent", "path", "ok", "schema", "queued", "oldest pending", "dead", "size"):
        table.add_column(column, justify="left" if column in ("agent", "path") else "right")
    for report in reports:
        age = report.get("oldest_pending_age")
        table.add_row(
            report["agent_id"],
            escape(str(Path(report["path"]).parent.relative_to(data_dir))),
            "[green]yes[/]" if report["local_db"] else "[red]no[/]",
            str(report.get("schema_version", "-")),
            str(report.get("sync_queue_size", "-")),
            "-" if age is None else f"{age:.1f} s",
            _dead(report.get("dead_letters")),
            _size(report.get("size_bytes")),
        )
    console.print(table)
    for report in failed:
        err_console.print(
            f"[red]{escape(report['agent_id'])}[/]: {escape(str(report.get('error', '')))}",
            highlight=False,
        )
    if failed:
        raise typer.Exit(1)


def _dead(count: int | None) -> str:
    if not count:
        return "0"
    return f"[red]{count}[/]"


def _size(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024:
            return f"{size:.0f} {unit}"
        size //= 1024
    return f"{size} TiB"


# -------------------------------------------------------------------------------- sync


@app.command("sync")
def _sync(
    data_dir: DataDir = Path("./data/agents"),
    config: ConfigOpt = None,
    relay: Annotated[
        str | None,
        typer.Option(help="One of the relays the stores ship to (default: all of them)."),
    ] = None,
    to_other_relay: Annotated[
        bool,
        typer.Option(
            "--to-other-relay",
            help="The stores' central store moved to --relay: ship there from now on.",
        ),
    ] = False,
    encryption_key_file: KeyFileOpt = None,
) -> None:
    """Ship every queued change of the stores under DATA_DIR to the relay now."""
    from rich.progress import Progress

    from commander_os.config import load_storage_config, read_encryption_key
    from commander_os.storage._inspect import drain_store, find_stores

    settings = load_storage_config(config, overrides={"htpc_url": relay})
    settings = _with_key_file(settings, encryption_key_file)
    stores = find_stores(data_dir, encryption_key=read_encryption_key(settings))
    if not stores:
        console.print(f"no agent stores under {data_dir}")
        return
    total = 0
    with Progress(console=console) as progress:
        for path in stores:
            task = progress.add_task(path.stem, total=None)

            def advance(done: int, task: Any = task) -> None:
                progress.update(task, completed=done)

            shipped = drain_store(
                path, settings, relay=relay, to_other_relay=to_other_relay, on_progress=advance
            )
            progress.update(task, total=max(shipped, 1), completed=max(shipped, 1))
            total += shipped
    console.print(f"synced {total} change(s) from {len(stores)} store(s) to {settings.htpc_url}")


def _with_key_file(settings: Any, key_file: Path | None) -> Any:
    """``settings`` whose key comes from ``key_file`` when given (it beats the environment)."""
    if key_file is None:
        return settings
    return settings.model_copy(update={"encryption_key": None, "encryption_key_file": key_file})


# ------------------------------------------------------------------------------- query


@app.command("query")
def _query(
    relay: Annotated[
        str, typer.Option(envvar="COMMANDER_OS_HTPC_URL", help="Relay URL.")
    ] = "http://127.0.0.1:8001",
    agent: Annotated[
        list[str] | None, typer.Option("--agent", help="Agent id (repeatable).")
    ] = None,
    table: Annotated[str | None, typer.Option(help="Table name, e.g. kv.")] = None,
    key: Annotated[str | None, typer.Option(help="Exact key.")] = None,
    prefix: Annotated[str | None, typer.Option("--prefix", help="Key prefix.")] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(
            help="Field filter 'FIELD OP VALUE', e.g. 'value.theme eq \"dark\"' (VALUE is JSON, "
            "or a bare word taken as a string). Repeatable.",
        ),
    ] = None,
    since: Annotated[
        str | None, typer.Option(help="Only records written since (ISO time).")
    ] = None,
    include_deleted: Annotated[bool, typer.Option(help="Include deletions.")] = False,
    limit: Annotated[int, typer.Option(help="Most records to print.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON lines.")] = False,
    token: Annotated[
        str | None, typer.Option(envvar="COMMANDER_OS_HTPC_TOKEN", help="Bearer token.")
    ] = None,
) -> None:
    """Query records of any agent on the relay."""
    from commander_os.storage._delivery.client import RelayClient

    clauses = [_parse_where(text) for text in where or []]
    agents: Any = agent[0] if agent and len(agent) == 1 else agent
    with RelayClient(relay, token=token) as client:
        records = list(
            client.query_all(
                max_records=limit,
                agent_id=agents,
                table=table,
                key=key,
                key_prefix=prefix,
                where=clauses or None,
                updated_since=since,
                include_deleted=include_deleted or None,
                limit=min(limit, 1000),
            )
        )
    if as_json:
        for record in records:
            sys.stdout.write(orjson.dumps(record).decode() + "\n")
        return
    out = Table(title=f"{len(records)} record(s) from {relay}")
    for column in ("agent", "table", "key", "version", "ts", "data"):
        out.add_column(column, overflow="fold")
    for record in records:
        data = "[dim]deleted[/]" if record.get("deleted") else orjson.dumps(record["data"]).decode()
        out.add_row(
            record["agent_id"],
            record["table"],
            record["key"],
            str(record["version"]),
            str(record["ts"]),
            data[:200],
        )
    console.print(out)


def _parse_where(text: str) -> dict[str, Any]:
    parts = text.split(None, 2)
    if len(parts) < 2:
        raise typer.BadParameter(f"expected 'FIELD OP VALUE', got {text!r}", param_hint="--where")
    field, op = parts[0], parts[1]
    raw = parts[2] if len(parts) == 3 else "true"
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        value = raw
    return {"field": field, "op": op, "value": value}


# --------------------------------------------------------------------------- analytics


@app.command("analytics")
def _analytics(
    relay: Annotated[
        str, typer.Option(envvar="COMMANDER_OS_HTPC_URL", help="Relay URL.")
    ] = "http://127.0.0.1:8001",
    as_json: Annotated[bool, typer.Option("--json", help="Print the relay's JSON.")] = False,
    token: Annotated[
        str | None,
        typer.Option(envvar="COMMANDER_OS_HTPC_TOKEN", help="Admin token (when auth is on)."),
    ] = None,
) -> None:
    """Show the relay's query shapes (latency, rows examined, index hints), slow queries and
    every agent's health."""
    report = _fetch_analytics(relay, token)
    if as_json:
        sys.stdout.write(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    if not report.get("enabled"):
        console.print(f"analytics are off on {relay} (relay.analytics: false)")
        return
    _print_agents(report["agents"])
    _print_shapes(report["queries"])


def _fetch_analytics(relay: str, token: str | None) -> dict[str, Any]:
    """``GET /relay/analytics``; our errors for anything but a 200."""
    import httpx

    from commander_os.errors import RelayError

    headers = {"authorization": f"Bearer {token}"} if token else {}
    try:
        answer = httpx.get(relay.rstrip("/") + "/relay/analytics", headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise RelayError(f"cannot reach the relay at {relay}: {exc}") from exc
    if answer.status_code != 200:
        try:
            detail = answer.json().get("detail")
        except ValueError:
            detail = answer.text[:200]
        raise RelayError(f"relay answered {answer.status_code}: {detail}")
    body: dict[str, Any] = answer.json()
    return body


_HEALTH_STYLE = {"ok": "green", "warning": "yellow", "silent": "magenta", "behind": "red"}


def _print_agents(agents: list[dict[str, Any]]) -> None:
    table = Table(title="agents")
    for column in ("health", "agent", "records", "lag", "queue", "dead", "why"):
        table.add_column(column, overflow="fold")
    for row in agents:
        beat = row.get("heartbeat") or {}
        lag = row.get("lag_seconds")
        style = _HEALTH_STYLE.get(row["health"], "white")
        table.add_row(
            f"[{style}]{row['health']}[/]",
            escape(row["agent_id"]),
            str(row["records"]),
            "-" if lag is None else f"{lag:.1f} s",
            str(beat.get("queue_size", "-")),
            str(beat.get("dead_letters", "-")),
            escape("; ".join(row["reasons"])),
        )
    console.print(table)


def _print_shapes(queries: dict[str, Any]) -> None:
    table = Table(title=f"query shapes (slow: >= {queries['slow_query_ms']:g} ms)")
    for column in ("shape", "count", "p50 ms", "p95 ms", "p99 ms", "examined/returned", "hint"):
        table.add_column(column, overflow="fold")
    for shape in queries["shapes"]:
        examined = shape["rows_examined_per_query"]
        hints = " ".join(hint["command"] for hint in shape["index_hints"])
        table.add_row(
            escape(shape["shape"]),
            str(shape["count"]),
            *(
                f"{shape[k]:.2f}" if shape[k] is not None else "-"
                for k in ("p50_ms", "p95_ms", "p99_ms")
            ),
            ("-" if examined is None else f"{examined:,.0f}")
            + f" / {shape['rows_returned_per_query']:,.0f}",
            f"[yellow]{escape(hints)}[/]" if hints else "",
        )
    console.print(table)
    for entry in queries["slow_queries"][:20]:
        console.print(
            f"slow: {entry['ms']:.1f} ms  {escape(entry['shape'])}  ({entry['returned']} rows)",
            highlight=False,
        )


# ------------------------------------------------------------------------------- relay


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
    config: ConfigOpt = None, data_dir: CentralDirOpt = None, database_url: DatabaseUrlOpt = None
) -> None:
    """Create or upgrade the central store's schema (the relay also does it when it starts)."""
    import asyncio

    store = _central_store(config, data_dir, database_url)

    async def run() -> Any:
        async with store:
            return await store.health()

    health = asyncio.run(run())
    console.print(f"central store ready ({health.backend}): {health.detail}", highlight=False)


@relay_app.command("export")
def _relay_export(
    out: Annotated[Path, typer.Option("--out", help="JSON-lines file to write.")],
    config: ConfigOpt = None,
    data_dir: CentralDirOpt = None,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Write every record of the central store (tombstones too) to a JSON-lines file."""
    import asyncio

    from commander_os.relay.central._transfer import export_records, is_exportable

    store = _central_store(config, data_dir, database_url)
    source = getattr(store, "path", None)
    if isinstance(source, Path) and not source.exists():
        raise CentralStoreUnavailable(f"no central store at {source}: check --data-dir / --config")

    damaged: list[Any] = []

    async def run() -> int:
        async with store:
            # 0600: the export holds every agent's records, like the store itself.
            with os.fdopen(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
                return await export_records(store, f, on_damaged=damaged.append)

    count = asyncio.run(run())
    for record in damaged:
        left = "exported" if is_exportable(record) else "LEFT OUT"
        err_console.print(
            f"warning: {record.agent_id}/{record.table}/{record.key} (rev {record.rev}) is "
            f"damaged, {left}: {record.damaged}",
            highlight=False,
        )
    console.print(f"exported {count} record(s) from {store.backend} to {out}", highlight=False)


@relay_app.command("import")
def _relay_import(
    file: Annotated[Path, typer.Argument(help="JSON-lines file written by 'relay export'.")],
    config: ConfigOpt = None,
    data_dir: CentralDirOpt = None,
    database_url: DatabaseUrlOpt = None,
) -> None:
    """Apply an export to the central store; newer records already there win, re-runs are no-ops."""
    import asyncio

    from commander_os.relay.central._transfer import ImportResult, import_records

    if not file.is_file():
        raise typer.BadParameter(f"{file}: no such file", param_hint="FILE")
    store = _central_store(config, data_dir, database_url)

    async def run() -> ImportResult:
        async with store:
            with file.open("rb") as lines:
                return await import_records(store, lines)

    try:
        result = asyncio.run(run())
    except ValueError as exc:
        raise typer.BadParameter(f"{file}: {exc}", param_hint="FILE") from None
    console.print(
        f"imported {result.records} record(s) into {store.backend}: {result.applied} applied, "
        f"{result.ignored} already there",
        highlight=False,
    )


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
    sys.stdout.write(token + "\n")


@token_app.command("verify")
def _token_verify(
    token: Annotated[str, typer.Argument(help="The token to check.")],
    config: ConfigOpt = None,
    data_dir: RelayDirOpt = None,
    secret_file: SecretFileOpt = None,
) -> None:
    """Check a token against the relay secret and print what it grants (exit 1 if invalid)."""
    from commander_os.relay._auth import describe_expiry, verify_token

    claims = verify_token(_relay_secret(config, data_dir, secret_file), token.strip())
    readable = claims.readable()
    reads = "every agent" if readable is None else ", ".join(sorted(readable))
    host = "" if claims.write_prefix is None else f" (host: writes {claims.write_prefix}*)"
    sys.stdout.write(
        f"valid token {claims.token_id} for {claims.agent_id}{host}: reads {reads}; "
        f"admin: {'yes' if claims.admin else 'no'}; expires: {describe_expiry(claims)}\n"
    )


# -------------------------------------------------------------------------------- demo


@app.command("demo")
def _demo(
    port: Annotated[int, typer.Option(help="Relay port (0 picks a free one).")] = 8001,
    data_dir: Annotated[Path, typer.Option("--data-dir", help="Where to keep data.")] = Path(
        "./data/demo"
    ),
    keep_running: Annotated[
        bool, typer.Option(help="Keep the relay running after the demo, until Ctrl-C.")
    ] = True,
) -> None:
    """Start a relay on 127.0.0.1 and show two agents writing and reading each other's data."""
    from commander_os._demo import run_demo

    run_demo(port=port, data_dir=data_dir, keep_running=keep_running, console=console)


# ------------------------------------------------------------------------------- bench


@app.command("bench")
def _bench(
    quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes (seconds).")] = False,
    full: Annotated[bool, typer.Option("--full", help="Full sizes (100k keys, 1M).")] = False,
    only: Annotated[
        str, typer.Option("--only", help="Areas to run, comma-separated.")
    ] = "local,sync,relay",
    scale: Annotated[
        bool,
        typer.Option("--scale", help="Only the scale section: one host with many stores."),
    ] = False,
    json_path: Annotated[
        Path | None, typer.Option("--json", help="Write the results as JSON here.")
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="Also measure the relay on this PostgreSQL."),
    ] = None,
) -> None:
    """Run the benchmark suite (``python -m benchmarks``): a table of ours vs peers."""
    # The suite lives in the source tree (benchmarks/), beside this package, not in the wheel.
    try:
        from benchmarks.runner import main as run_benchmarks
    except ImportError:
        err_console.print("error: the benchmarks/ folder is not importable; run from a checkout")
        raise typer.Exit(2) from None
    argv = ["--scale"] if scale else ["--only", only]
    argv += ["--quick"] if quick else ["--full"] if full else []
    argv += ["--json", str(json_path)] if json_path is not None else []
    argv += ["--database-url", database_url] if database_url else []
    raise typer.Exit(run_benchmarks(argv))


#: The optional extras of the package (pyproject.toml), by the modules each one installs.
_EXTRA_OF_MODULE = {
    "fastapi": "relay",
    "starlette": "relay",
    "uvicorn": "relay",
    "psycopg": "postgres",
    "psycopg_pool": "postgres",
    "sqlcipher3": "encryption",
}


def _missing_extra(exc: ModuleNotFoundError) -> str | None:
    """What to install when ``exc`` is a module of an optional extra, else ``None``.

    The core installs everywhere; the relay, PostgreSQL and SQLCipher come as extras, so a
    command that needs one says which instead of showing a traceback.
    """
    extra = _EXTRA_OF_MODULE.get((exc.name or "").partition(".")[0])
    if extra is None:
        return None
    return (
        f"the '{extra}' extra is not installed (no module {exc.name!r}): "
        f"pip install 'commander-os-storage[{extra}]'"
    )


def _refusal(exc: BaseException) -> str | None:
    """The one-line message for an error of ours (or a missing extra), else ``None``."""
    if isinstance(exc, CommanderStorageError | OSError):
        return str(exc)
    if isinstance(exc, ModuleNotFoundError):
        return _missing_extra(exc)
    return None


def main() -> None:
    """Entry point of the ``commander-os`` console script."""
    try:
        app()
    except (CommanderStorageError, OSError, ModuleNotFoundError) as exc:
        message = _refusal(exc)
        if message is None or os.environ.get("COMMANDER_OS_DEBUG"):
            raise
        err_console.print(f"[red]error:[/] {escape(message)}", highlight=False)
        sys.exit(1)


def run_relay_command(argv: list[str]) -> int:
    """``commander-os relay serve ARGV`` as ``python -m commander_os.network.relay`` runs it:
    a refusal to start is one line, ``relay: <why>``, and exit status 2."""
    try:
        app(args=["relay", "serve", *argv], prog_name="python -m commander_os.network.relay")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except (CommanderStorageError, OSError, ModuleNotFoundError) as exc:
        message = _refusal(exc)
        if message is None or os.environ.get("COMMANDER_OS_DEBUG"):
            raise
        print(f"relay: {message}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    main()
