"""Backups of the embedded SQLite central store: the agents' backup format (a manifest, then the
database zstd-compressed; :mod:`commander_os._archive`), with ``kind: "relay"``.

Taken online (SQLite's backup API on a connection of its own, beside a running relay) by
``commander-os relay backup`` or on a schedule (``relay.backup_interval``: one asyncio task in
the relay, :func:`backup_loop`). A relay restored from an older backup is behind what agents
saw acknowledged: each agent notices on its next delivery (the relay's answer shows its
position below the one it acknowledged) and re-ships its whole current state, deletions
included, so nothing acknowledged stays lost.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from commander_os import _archive
from commander_os import _sqlite as db
from commander_os._archive import BACKUP_SUFFIX, Manifest, Progress
from commander_os._files import make_private_dir
from commander_os.config import RelayConfig, read_encryption_key
from commander_os.errors import BackupError, CentralStoreUnavailable

__all__ = ["backup_central", "backup_loop", "prune_relay_backups", "restore_central"]

_log = logging.getLogger("commander_os.relay.backup")
SELECT_MAX_REV = "SELECT ifnull(max(rev), 0) FROM records"
CENTRAL_DB = "central.db"
_BACKUP_FAILURES: tuple[type[Exception], ...] = (
    OSError,
    BackupError,
    CentralStoreUnavailable,
    *db.Error,
)


def _ignore(done: int, total: int) -> None:
    return None


def backup_central(
    directory: Path,
    target: Path,
    *,
    encryption_key: str | None = None,
    progress: Progress = _ignore,
    created: datetime | None = None,
) -> tuple[Path, Manifest]:
    """Back up ``directory/central.db`` into the folder (or ``.db.zst`` file) ``target``."""
    source_path = directory / CENTRAL_DB
    if not source_path.exists():
        raise CentralStoreUnavailable(f"no central store at {source_path}")
    archive = target.name.endswith(BACKUP_SUFFIX)
    folder = make_private_dir(target.parent if archive else target)
    when = created or datetime.now(UTC)
    out = (
        target if archive else folder / f"relay-{when.strftime('%Y%m%dT%H%M%S%fZ')}{BACKUP_SUFFIX}"
    )
    source = db.connect(source_path, encryption_key=encryption_key, query_only=True)
    scratch = Path(tempfile.mkdtemp(prefix=".backup-", dir=folder))
    try:
        copy = scratch / CENTRAL_DB
        _archive.copy_database(source, copy, encryption_key=encryption_key, progress=progress)
        manifest = _manifest(copy, encryption_key, when)
        manifest = _archive.write_archive(copy, out, manifest, progress=progress)
    finally:
        source.close()
        shutil.rmtree(scratch, ignore_errors=True)
    return out, manifest


def _manifest(copy: Path, key: str | None, when: datetime) -> Manifest:
    conn = db.open_file(copy, encryption_key=key, read_only=True)
    try:
        last = int(conn.execute(SELECT_MAX_REV).fetchone()[0])
        schema = int(conn.execute("PRAGMA user_version").fetchone()[0])
    finally:
        conn.close()
    return Manifest(
        kind="relay",
        agent_id=None,
        incarnation=0,
        last_seq=last,
        schema_version=schema,
        sha256="",
        db_bytes=0,
        encrypted=key is not None,
        created=when.isoformat(),
    )


def restore_central(
    backup: Path,
    directory: Path,
    *,
    encryption_key: str | None = None,
    force: bool = False,
    progress: Progress = _ignore,
) -> tuple[Manifest, Path | None]:
    """Put a relay backup in place as ``directory/central.db`` (the relay must be stopped).

    A central store already there is refused unless ``force``, which moves it (and its WAL)
    aside. Returns the manifest and where the old store went.
    """
    manifest = _archive.read_manifest(backup)
    if manifest.kind != "relay":
        raise BackupError(f"{backup}: an agent store's backup, not a relay's")
    key = encryption_key if manifest.encrypted else None
    if manifest.encrypted and key is None:
        raise BackupError(f"{backup}: encrypted backup: give the relay's encryption key")
    folder = make_private_dir(directory)
    target = folder / CENTRAL_DB
    if target.exists() and not force:
        raise BackupError(f"{target} already exists: stop the relay and pass --force")
    scratch = Path(tempfile.mkdtemp(prefix=".restore-", dir=folder))
    try:
        copy = scratch / CENTRAL_DB
        _archive.extract(backup, copy, progress=progress)
        verdict = _archive.integrity_check(copy, encryption_key=key)
        if verdict != "ok":
            raise BackupError(f"{backup}: integrity_check: {verdict}")
        aside = _move_aside(target) if target.exists() else None
        os.link(copy, target)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return manifest, aside


def _move_aside(target: Path) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    aside = target.with_name(f"{target.name}.replaced-{stamp}")
    os.replace(target, aside)
    for suffix in db.COMPANION_SUFFIXES:
        companion = target.with_name(target.name + suffix)
        if companion.exists():
            os.replace(companion, aside.with_name(aside.name + suffix))
    return aside


def prune_relay_backups(folder: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` relay backups directly in ``folder``."""
    found = []
    for path in folder.glob(f"relay-*{BACKUP_SUFFIX}"):
        try:
            found.append((_archive.read_manifest(path).created_at, path))
        except BackupError:
            continue
    found.sort(reverse=True)
    removed = []
    for _, path in found[keep:]:
        path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def backup_folder(config: RelayConfig) -> Path:
    """Where the relay's scheduled backups go: ``backup_dir``, else ``<data dir>/backups``."""
    return config.backup_dir or config.agent_storage_dir / "backups"


def _backup_and_prune(
    data_dir: Path, folder: Path, key: str | None, keep: int
) -> tuple[Path, list[Path]]:
    path, _ = backup_central(data_dir, folder, encryption_key=key)
    return path, prune_relay_backups(folder, keep)


async def backup_loop(config: RelayConfig) -> None:
    """Back the SQLite central store up every ``backup_interval`` seconds (until cancelled)."""
    interval = config.backup_interval
    if not interval or config.backend != "sqlite":
        return
    folder = backup_folder(config)
    key = read_encryption_key(config)
    while True:
        await asyncio.sleep(interval)
        try:
            # One job in the thread: a loop cancelled meanwhile still prunes what it wrote.
            path, removed = await asyncio.to_thread(
                _backup_and_prune, config.agent_storage_dir, folder, key, config.backup_keep
            )
            _log.info("relay backup %s (%d older removed)", path, len(removed))
        except _BACKUP_FAILURES as exc:
            _log.warning("scheduled relay backup failed: %s", exc)
