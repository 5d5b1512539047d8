"""Online backups of an agent store (SQLite's backup API)."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from commander_os import _sqlite as db
from commander_os._archive import copy_database
from commander_os._files import make_private_dir

__all__ = ["backup_to"]


def backup_to(source: sqlite3.Connection, target: Path, *, encryption_key: str | None) -> Path:
    """Write a consistent copy of ``source`` to ``target`` (which must not exist).

    The caller holds the store's lock. A copy that is restored later is behind the relay: the
    relay gives it a new incarnation, and its new writes win (the identity rule). The copy
    is created with mode 0600, and missing folders above it with 0700.
    """
    make_private_dir(target.parent)
    if target.exists():
        raise FileExistsError(f"backup target {target} already exists")
    partial = target.with_name(target.name + ".partial")
    partial.unlink(missing_ok=True)
    try:
        _copy(source, partial, encryption_key)
        # link(), unlike rename(), refuses to replace a file created meanwhile.
        os.link(partial, target)
    except db.Error as exc:
        raise db.translate_error(exc, f"backup to {target} failed") from exc
    finally:
        partial.unlink(missing_ok=True)
    return target


def _copy(source: sqlite3.Connection, path: Path, encryption_key: str | None) -> None:
    copy_database(source, path, encryption_key=encryption_key)
