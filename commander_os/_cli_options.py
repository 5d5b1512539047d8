"""Options and settings shared by the ``commander-os`` commands (one definition each)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from commander_os.config import StorageConfig, load_storage_config

__all__ = [
    "ConfigOpt",
    "DataDirOpt",
    "JsonOpt",
    "KeyFileOpt",
    "storage_settings",
]

DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Folder holding agent stores, searched recursively (default: local_data_dir of "
        "the config).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout instead.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML config file.")]
KeyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--encryption-key-file",
        help="File holding the key of encrypted stores (default: $COMMANDER_OS_ENCRYPTION_KEY).",
    ),
]


def storage_settings(
    config: Path | None, key_file: Path | None = None, **overrides: Any
) -> StorageConfig:
    """The agent settings of ``config`` (and the environment, and ``overrides``); with
    ``key_file`` the encryption key comes from it (it beats the environment)."""
    settings = load_storage_config(config, overrides=overrides)
    if key_file is None:
        return settings
    return settings.model_copy(update={"encryption_key": None, "encryption_key_file": key_file})
