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
from rich.markup import escape
from rich.table import Table

from commander_os import __version__
from commander_os._cli_backup import register as register_backup_commands
from commander_os._cli_dead_letters import dead_letters_app
from commander_os._cli_options import ConfigOpt, DataDirOpt, JsonOpt, KeyFileOpt, storage_settings
from commander_os._cli_output import console, err_console, print_json
from commander_os._cli_relay import register as register_relay_backup_commands
from commander_os._cli_relay_core import relay_app, token_app
from commander_os._cli_relay_index import index_app
from commander_os.errors import CommanderStorageError

__all__ = ["app", "main", "run_relay_command"]

app = typer.Typer(
    name="commander-os",
    help="Commander OS Storage: local-first agent storage with a central relay.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(relay_app, name="relay")
relay_app.add_typer(index_app, name="index")
register_relay_backup_commands(relay_app)
app.add_typer(token_app, name="token")
register_backup_commands(app)
app.add_typer(dead_letters_app, name="dead-letters")


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
    data_dir: DataDirOpt = None,
    config: ConfigOpt = None,
    as_json: JsonOpt = False,
    encryption_key_file: KeyFileOpt = None,
    max_queue: Annotated[
        int | None,
        typer.Option("--max-queue", min=0, help="Exit 3 if a store has more changes queued."),
    ] = None,
    max_lag: Annotated[
        float | None,
        typer.Option(
            "--max-lag", min=0, help="Exit 3 if a store's oldest queued change is older (s)."
        ),
    ] = None,
) -> None:
    """Show every agent store under DATA_DIR: queue, oldest pending change, dead letters, size
    (with -wal), and per relay: reachable, last sync, last error.

    Exits 1 when a store cannot be read (damaged, or the wrong encryption key) and 3 when one
    is over --max-queue or --max-lag, so it can serve as a health check.
    """
    from commander_os._cli_status import (
        EXIT_OVER_THRESHOLD,
        EXIT_UNREADABLE,
        apply_thresholds,
        print_status,
    )
    from commander_os.config import read_encryption_key
    from commander_os.storage._inspect import inspect_stores

    settings = storage_settings(config, encryption_key_file)
    folder = data_dir or settings.local_data_dir
    reports = inspect_stores(folder, encryption_key=read_encryption_key(settings))
    over = apply_thresholds(reports, max_queue, max_lag)
    if as_json:
        print_json(reports)
    else:
        print_status(reports, folder)
    if any(not report["local_db"] for report in reports):
        raise typer.Exit(EXIT_UNREADABLE)
    if over:
        raise typer.Exit(EXIT_OVER_THRESHOLD)


# -------------------------------------------------------------------------------- sync


@app.command("sync")
def _sync(
    data_dir: DataDirOpt = None,
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
    as_json: JsonOpt = False,
    encryption_key_file: KeyFileOpt = None,
) -> None:
    """Ship every queued change of the stores under DATA_DIR to their relay now (progress
    with count, rate and time left on stderr).

    A store ships only to the relay it remembers; --relay naming another one is refused
    unless --to-other-relay confirms that the store's central store moved there.
    """
    from commander_os._cli_progress import progress
    from commander_os.config import read_encryption_key
    from commander_os.storage._inspect import drain_store, find_stores

    settings = storage_settings(config, encryption_key_file, htpc_url=relay)
    folder = data_dir or settings.local_data_dir
    stores = find_stores(folder, encryption_key=read_encryption_key(settings))
    results: list[dict[str, Any]] = []
    with progress("changes") as bar:
        for path in stores:
            task = bar.add_task(path.stem, total=None)

            def advance(done: int, total: int, task: Any = task) -> None:
                bar.update(task, completed=done, total=max(total, done))

            shipped = drain_store(
                path, settings, relay=relay, to_other_relay=to_other_relay, on_progress=advance
            )
            bar.update(task, total=max(shipped, 1), completed=max(shipped, 1))
            results.append({"agent_id": path.stem, "path": str(path), "shipped": shipped})
    total = sum(result["shipped"] for result in results)
    if as_json:
        print_json({"synced": total, "relay": relay, "stores": results})
        return
    if not stores:
        console.print(f"no agent stores under {folder}")
        return
    where = relay or "their relays"
    console.print(f"synced {total} change(s) from {len(stores)} store(s) to {where}")


# ------------------------------------------------------------------------------- query


RelayUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--relay", help="Relay URL (default: htpc_url of the config, or $COMMANDER_OS_HTPC_URL)."
    ),
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        "--token", help="Bearer token (default: the config's, or $COMMANDER_OS_HTPC_TOKEN)."
    ),
]


def _relay_and_token(
    config: Path | None, relay: str | None, token: str | None
) -> tuple[str, str | None]:
    """The relay URL (checked) and token of the options, else of the agent config."""
    from commander_os.config import read_token

    settings = storage_settings(config, htpc_url=relay)
    return settings.htpc_url, token or read_token(settings)


@app.command("query")
def _query(
    relay: RelayUrlOpt = None,
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
    as_json: JsonOpt = False,
    token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Query records of any agent on the relay."""
    from commander_os.storage._delivery.client import RelayClient

    relay, token = _relay_and_token(config, relay, token)
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
        print_json(records)
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
    relay: RelayUrlOpt = None,
    as_json: JsonOpt = False,
    token: TokenOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Show the relay's query shapes (latency, rows examined, index hints), slow queries and
    every agent's health (an admin token when auth is on)."""
    relay, token = _relay_and_token(config, relay, token)
    report = _fetch_analytics(relay, token)
    if as_json:
        print_json(report)
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
    config: Annotated[
        Path | None, typer.Option("--config", help="The demo relay's YAML config (relay:).")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Start a relay on 127.0.0.1 and show two agents writing and reading each other's data.

    Ctrl-C, SIGTERM and SIGHUP stop the relay before the demo exits. With --json the story
    goes to stderr and a summary to stdout.
    """
    from commander_os._demo import run_demo

    summary = run_demo(
        port=port,
        data_dir=data_dir,
        keep_running=keep_running,
        console=err_console if as_json else console,
        config=config,
    )
    if as_json:
        print_json(summary)


# ------------------------------------------------------------------------------- bench


@app.command("bench")
def _bench(
    quick: Annotated[bool, typer.Option("--quick", help="Tiny sizes (seconds).")] = False,
    full: Annotated[bool, typer.Option("--full", help="Full sizes (100k keys, 1M).")] = False,
    only: Annotated[
        str | None,
        typer.Option("--only", help="Areas to run, comma-separated (default: every area)."),
    ] = None,
    scale: Annotated[
        bool,
        typer.Option("--scale", help="Only the scale section: one host with many stores."),
    ] = False,
    as_json: JsonOpt = False,
    output: Annotated[
        Path | None, typer.Option("--output", help="Also write the results as JSON here.")
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option("--database-url", help="Also measure the relay on this PostgreSQL."),
    ] = None,
    records: Annotated[
        int | None,
        typer.Option("--records", help="Central store size of the query matrix (1000000...)."),
    ] = None,
) -> None:
    """Run the benchmark suite (``python -m benchmarks``): a table of ours vs peers.

    ``--only fleet`` runs the relay fleet rows (CPU per request, ingest vs raw sqlite3, feed
    subscribers, PostgreSQL with 1-3 relays); ``--only replication`` the replication rows."""
    # The suite lives in the source tree (benchmarks/), beside this package, not in the wheel.
    try:
        from benchmarks.runner import main as run_benchmarks
    except ImportError:
        err_console.print("error: the benchmarks/ folder is not importable; run from a checkout")
        raise typer.Exit(2) from None
    argv = ["--scale"] if scale else ["--only", only] if only else []
    argv += ["--quick"] if quick else ["--full"] if full else []
    argv += ["--json", str(output)] if output is not None else []
    argv += ["--print-json"] if as_json else []
    argv += ["--database-url", database_url] if database_url else []
    argv += ["--records", str(records)] if records else []
    raise typer.Exit(run_benchmarks(argv))


#: The optional extras of the package (pyproject.toml), by the modules each one installs.
_EXTRA_OF_MODULE = {
    "fastapi": "relay",
    "starlette": "relay",
    "uvicorn": "relay",
    "pythonjsonlogger": "relay",
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
