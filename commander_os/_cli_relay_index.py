"""``commander-os relay index add|list|drop``: opt-in value indexes on fields of the data."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from commander_os._cli_options import ConfigOpt, JsonOpt
from commander_os._cli_output import console, human_size, print_json
from commander_os._cli_relay_core import CentralDirOpt, DatabaseUrlOpt, _central_store

__all__ = ["index_app"]

index_app = typer.Typer(
    help="Opt-in value indexes on fields of the data (eq and in filters use them).",
    no_args_is_help=True,
)
FieldArg = Annotated[str, typer.Argument(help="Dotted path into the data, e.g. value.status.")]


def _with_field_indexes(
    config: Path | None,
    data_dir: Path | None,
    database_url: str | None,
    action: Callable[[Any], Awaitable[Any]],
) -> Any:
    """Open the configured central store and run ``action`` on it."""
    import asyncio

    store = _central_store(config, data_dir, database_url)

    async def run() -> Any:
        async with store:
            return await action(store)

    try:
        return asyncio.run(run())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="FIELD") from None


def _index_json(index: Any) -> dict[str, Any]:
    return {"field": index.field, "name": index.name, "bytes": index.bytes, "valid": index.valid}


@index_app.command("add")
def _index_add(
    field: FieldArg,
    config: ConfigOpt = None,
    data_dir: CentralDirOpt = None,
    database_url: DatabaseUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Create the value index of FIELD (PostgreSQL builds it while writes go on; SQLite holds
    writes meanwhile); idempotent."""
    index = _with_field_indexes(
        config, data_dir, database_url, lambda store: store.add_field_index(field)
    )
    if as_json:
        print_json(_index_json(index))
    else:
        console.print(
            f"indexed {index.field} ({index.name}, {human_size(index.bytes)})", highlight=False
        )


@index_app.command("list")
def _index_list(
    config: ConfigOpt = None,
    data_dir: CentralDirOpt = None,
    database_url: DatabaseUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Every field with a value index, its size and whether queries can use it."""
    indexes = _with_field_indexes(
        config, data_dir, database_url, lambda store: store.field_indexes()
    )
    if as_json:
        print_json([_index_json(index) for index in indexes])
        return
    if not indexes:
        console.print("no field indexes (add one: commander-os relay index add FIELD)")
    for index in indexes:
        state = "" if index.valid else " [red]INVALID: add it again[/]"
        console.print(
            f"{index.field}  {index.name}  {human_size(index.bytes)}{state}", highlight=False
        )


@index_app.command("drop")
def _index_drop(
    field: FieldArg,
    config: ConfigOpt = None,
    data_dir: CentralDirOpt = None,
    database_url: DatabaseUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Drop the value index of FIELD (queries on it then scan)."""
    dropped = _with_field_indexes(
        config, data_dir, database_url, lambda store: store.drop_field_index(field)
    )
    if as_json:
        print_json({"field": field, "dropped": dropped})
    else:
        console.print(f"dropped the index of {field}" if dropped else f"{field} had no index")
