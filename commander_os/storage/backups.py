"""Backups and restores of agent stores.

* :func:`create_backup` writes a consistent online copy of an open store as one compressed file
  with a manifest (format: :mod:`commander_os._archive`); ``storage.backup()`` calls it.
* :func:`list_backups`, :func:`verify_backup` and :func:`prune_backups` look after a folder of
  them (``commander-os backup list|verify``; scheduled backups keep ``backup_keep``).
* :func:`restore_backup` puts a backup back as the agent's store. The restored store asks the
  relay for a new incarnation (it takes the agent over: the identity rule) and is first brought
  up to date from the relay: every row its original wrote after the backup comes back, so store
  and relay agree, and from then on its own writes win.
* :func:`rebuild_from_relay` builds the agent's store from the relay's records alone (a lost
  disk): every synced table of the storage class, row for row, then claims the agent.

Example::

    info = storage.backup()                      # -> <data_dir>/backups/<agent>-<time>.db.zst
    report = verify_backup(info)                 # decompress, integrity_check, manifest
    restore_backup(info, data_dir, config=StorageConfig(htpc_url=url))
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from commander_os import _archive
from commander_os import _sqlite as db
from commander_os._archive import BACKUP_SUFFIX, Manifest, Progress
from commander_os._files import make_private_dir
from commander_os.config import StorageConfig
from commander_os.errors import BackupError, StorageError
from commander_os.identifiers import validate_agent_id
from commander_os.storage import _outbox as outbox
from commander_os.storage._delivery import identity
from commander_os.storage._delivery.client import RelayClient
from commander_os.storage._migrations import current_version
from commander_os.storage._rebuild import Applied, apply_records, captures_suspended, relay_records

if TYPE_CHECKING:
    import sqlite3

    from commander_os.storage.base_storage import BaseStorage

__all__ = [
    "BACKUP_SUFFIX",
    "BackupInfo",
    "Manifest",
    "RestoreReport",
    "VerifyReport",
    "backup_file",
    "backup_folder",
    "backup_name",
    "create_backup",
    "list_backups",
    "prune_backups",
    "rebuild_from_relay",
    "restore_backup",
    "verify_backup",
    "wait_claimed",
]

_log = logging.getLogger("commander_os.backup")
DB_SUFFIX = ".db"


def _ignore(done: int, total: int) -> None:
    return None


@dataclass(frozen=True)
class BackupInfo:
    """A backup file and its manifest."""

    path: Path
    manifest: Manifest
    #: Size of the backup file in bytes.
    size: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: the path, the file size and the manifest's fields."""
        return {"path": str(self.path), "size": self.size, **vars(self.manifest)}


@dataclass(frozen=True)
class VerifyReport:
    """What :func:`verify_backup` found; ``ok`` only if nothing is in ``problems``."""

    path: Path
    manifest: Manifest | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        """True when the backup decompressed, passed ``integrity_check`` and matches its
        manifest."""
        return not self.problems

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "path": str(self.path),
            "ok": self.ok,
            "problems": list(self.problems),
            "manifest": None if self.manifest is None else vars(self.manifest),
        }


@dataclass
class RestoreReport:
    """What a restore did."""

    agent_id: str
    path: Path
    #: The manifest of the backup restored (None for a rebuild from the relay).
    manifest: Manifest | None = None
    #: Rows written from the relay (changes made after the backup, or every row).
    from_relay: Applied = field(default_factory=Applied)
    #: Whether the relay was asked (a restore with ``catch_up=False`` does not).
    caught_up: bool = False
    #: Tables the relay holds for the agent that the storage class does not declare.
    skipped_tables: tuple[str, ...] = ()
    #: Where a store that was in the way was moved (``force=True``).
    moved_aside: Path | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "agent_id": self.agent_id,
            "path": str(self.path),
            "manifest": None if self.manifest is None else vars(self.manifest),
            "caught_up": self.caught_up,
            "upserts": self.from_relay.upserts,
            "deletes": self.from_relay.deletes,
            "records_read": self.from_relay.records_read,
            "skipped_tables": list(self.skipped_tables),
            "moved_aside": None if self.moved_aside is None else str(self.moved_aside),
            "seconds": round(self.seconds, 3),
        }


# ------------------------------------------------------------------------------ creating


def backup_folder(data_dir: Path, config: StorageConfig) -> Path:
    """Where a store in ``data_dir`` keeps its backups: ``backup_dir``, else
    ``data_dir/backups``."""
    return config.backup_dir if config.backup_dir is not None else data_dir / "backups"


def backup_name(agent_id: str, when: datetime | None = None) -> str:
    """``<agent>-<UTC time to the microsecond>.db.zst``: names sort by time."""
    when = when or datetime.now(UTC)
    return f"{agent_id}-{when.strftime('%Y%m%dT%H%M%S%fZ')}{BACKUP_SUFFIX}"


def _storage_class(storage: BaseStorage) -> str:
    kind = type(storage)
    return f"{kind.__module__}:{kind.__qualname__}"


def create_backup(
    storage: BaseStorage,
    target: Path | str | None = None,
    *,
    progress: Progress = _ignore,
    created: datetime | None = None,
) -> BackupInfo:
    """Back up the open ``storage`` into ``target``: a folder (default: its backup folder) or
    a file name ending in ``.db.zst``. Returns the backup.

    The store's pages are copied under its lock (writers wait only for the copy, not for the
    compression). ``created`` is the time the manifest states (default: now). Raises
    :class:`~commander_os.errors.StorageClosed` if closed, ``FileExistsError`` if the file
    exists.
    """
    folder, name = _target(storage, target)
    make_private_dir(folder)
    key = storage._encryption_key
    with _scratch(folder) as scratch:
        copy = scratch / "copy.db"
        with storage.shipping_connection() as conn:
            _archive.copy_database(conn, copy, encryption_key=key, progress=progress)
        manifest = _manifest_of(copy, storage.agent_id, key, _storage_class(storage))
        if created is not None:
            manifest = replace(manifest, created=created.isoformat())
        out = folder / (name or backup_name(storage.agent_id, manifest.created_at))
        manifest = _archive.write_archive(copy, out, manifest, progress=progress)
    return BackupInfo(out, manifest, out.stat().st_size)


def backup_file(
    db_path: Path, target: Path, *, encryption_key: str | None, progress: Progress = _ignore
) -> BackupInfo:
    """Back up the store at ``db_path`` (not opened through its class: any schema) into the
    folder or ``.db.zst`` file ``target``; what ``commander-os backup create`` runs."""
    agent_id = validate_agent_id(db_path.name.removesuffix(DB_SUFFIX))
    folder, name = (target.parent, target.name) if _is_archive(target) else (target, None)
    make_private_dir(folder)
    key = encryption_key if db.is_encrypted(db_path) else None
    source = db.connect(db_path, encryption_key=key, query_only=True)
    try:
        with _scratch(folder) as scratch:
            copy = scratch / "copy.db"
            _archive.copy_database(source, copy, encryption_key=key, progress=progress)
            manifest = _manifest_of(copy, agent_id, key, None)
            out = folder / (name or backup_name(agent_id, manifest.created_at))
            manifest = _archive.write_archive(copy, out, manifest, progress=progress)
    finally:
        source.close()
    return BackupInfo(out, manifest, out.stat().st_size)


def _is_archive(path: Path) -> bool:
    return path.name.endswith(BACKUP_SUFFIX)


def _target(storage: BaseStorage, target: Path | str | None) -> tuple[Path, str | None]:
    if target is None:
        return backup_folder(storage.data_dir, storage.config), None
    path = Path(target)
    if _is_archive(path):
        return path.parent, path.name
    return path, None


@contextmanager
def _scratch(near: Path) -> Iterator[Path]:
    """A private temporary folder beside ``near`` (same filesystem: no plaintext elsewhere)."""
    folder = Path(tempfile.mkdtemp(prefix=".backup-", dir=near))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _manifest_of(copy: Path, agent_id: str, key: str | None, storage_class: str | None) -> Manifest:
    """The manifest of a copy, read from the copy itself (never from the live store, which
    may have moved on meanwhile)."""
    conn = db.open_file(copy, encryption_key=key, read_only=True)
    try:
        incarnation, last_seq, schema = _identity_of(conn)
    finally:
        conn.close()
    return Manifest(
        kind="agent",
        agent_id=agent_id,
        incarnation=incarnation,
        last_seq=last_seq,
        schema_version=schema,
        sha256="",
        db_bytes=0,
        encrypted=key is not None,
        storage_class=storage_class,
    )


def _identity_of(conn: sqlite3.Connection) -> tuple[int, int, int]:
    if conn.execute(outbox.TABLE_EXISTS, ("_sync_queue",)).fetchone() is None:
        raise BackupError("not an agent store (it has no sync queue)")
    return identity.incarnation(conn), outbox.last_seq(conn), current_version(conn)


def _relay_identity_of(conn: sqlite3.Connection) -> tuple[int, int, int]:
    # A relay's central store, read without importing the relay side: its newest revision
    # and its schema version (PRAGMA user_version).
    if conn.execute(outbox.TABLE_EXISTS, ("records",)).fetchone() is None:
        raise BackupError("not a central store (it has no records table)")
    last = int(conn.execute("SELECT ifnull(max(rev), 0) FROM records").fetchone()[0])
    return 0, last, int(conn.execute("PRAGMA user_version").fetchone()[0])


# ------------------------------------------------------------------------------ listing


def list_backups(folder: Path, *, agent_id: str | None = None) -> list[BackupInfo]:
    """The backups under ``folder`` (searched recursively), newest first; files whose manifest
    cannot be read are left out (``verify_backup`` says why)."""
    found = []
    if not folder.is_dir():
        return []
    for path in folder.rglob(f"*{BACKUP_SUFFIX}"):
        if not path.is_file():
            continue
        try:
            manifest = _archive.read_manifest(path)
        except BackupError as exc:
            _log.warning("%s", exc)
            continue
        if agent_id is None or manifest.agent_id == agent_id:
            found.append(BackupInfo(path, manifest, path.stat().st_size))
    found.sort(key=lambda info: (info.manifest.created_at, info.path.name), reverse=True)
    return found


def prune_backups(folder: Path, agent_id: str, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` backups of ``agent_id`` directly in ``folder``;
    the paths deleted."""
    mine = [info for info in list_backups(folder, agent_id=agent_id) if info.path.parent == folder]
    removed = []
    for info in mine[keep:]:
        with suppress(FileNotFoundError):
            info.path.unlink()
            removed.append(info.path)
    return removed


# ----------------------------------------------------------------------------- verifying


def verify_backup(
    backup: Path | str | BackupInfo,
    *,
    encryption_key: str | None = None,
    progress: Progress = _ignore,
) -> VerifyReport:
    """Decompress the backup, check its checksum, open it, run ``integrity_check`` and compare
    the manifest with the database (agent, incarnation, last seq, schema version).

    Never raises for a bad backup: the report lists the problems. An encrypted backup needs
    its store's ``encryption_key``.
    """
    path = backup.path if isinstance(backup, BackupInfo) else Path(backup)
    try:
        manifest = _archive.read_manifest(path)
    except BackupError as exc:
        return VerifyReport(path, None, (str(exc),))
    folder = Path(tempfile.mkdtemp(prefix="commander-os-verify-"))
    try:
        copy = folder / "copy.db"
        try:
            _archive.extract(path, copy, progress=progress)
        except BackupError as exc:
            return VerifyReport(path, manifest, (str(exc),))
        return VerifyReport(path, manifest, tuple(_check(copy, manifest, encryption_key)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _check(copy: Path, manifest: Manifest, key: str | None) -> Iterator[str]:
    if manifest.encrypted and key is None:
        yield "encrypted backup: give the store's encryption key to check it"
        return
    key = key if manifest.encrypted else None
    verdict = _archive.integrity_check(copy, encryption_key=key)
    if verdict != "ok":
        yield f"integrity_check: {verdict}"
        return
    conn = db.open_file(copy, encryption_key=key, read_only=True)
    try:
        found = _identity_of(conn) if manifest.kind == "agent" else _relay_identity_of(conn)
    except BackupError as exc:
        yield str(exc)
        return
    finally:
        conn.close()
    stated = (manifest.incarnation, manifest.last_seq, manifest.schema_version)
    for name, said, held in zip(
        ("incarnation", "last_seq", "schema_version"), stated, found, strict=True
    ):
        if said != held:
            yield f"manifest says {name} {said}, the database holds {held}"


# ----------------------------------------------------------------------------- restoring


def restore_backup(
    backup: Path | str | BackupInfo,
    data_dir: Path | str,
    *,
    config: StorageConfig | None = None,
    encryption_key: str | None = None,
    catch_up: bool = True,
    force: bool = False,
    progress: Progress = _ignore,
) -> RestoreReport:
    """Put the agent store of ``backup`` in ``data_dir`` (as ``<agent>.db``).

    With ``catch_up`` (and sync on in ``config``) the rows the relay holds of this agent that
    are newer than the backup (written by the original after it was taken, deletions too)
    are written into the restored store first, so that it and the relay agree. The restored
    store then asks for a new incarnation on its first delivery: its writes win from then on,
    and the store that wrote after the backup (if it still runs) is fenced.

    Raises :class:`~commander_os.errors.BackupError` for a damaged backup, ``StorageError`` if
    a store is already there (``force`` moves it aside, to ``<agent>.db.replaced-<time>``),
    :class:`~commander_os.errors.RelayError` if the relay cannot be asked (nothing changes then;
    ``catch_up=False`` restores without it).
    """
    started = time.monotonic()
    path = backup.path if isinstance(backup, BackupInfo) else Path(backup)
    config = config or StorageConfig()
    manifest = _archive.read_manifest(path)
    if manifest.kind != "agent" or manifest.agent_id is None:
        raise BackupError(f"{path}: a {manifest.kind} backup, not an agent store's")
    agent_id = validate_agent_id(manifest.agent_id)
    folder = make_private_dir(Path(data_dir))
    target = folder / f"{agent_id}{DB_SUFFIX}"
    _refuse_existing(target, force)
    key = encryption_key if manifest.encrypted else None
    if manifest.encrypted and key is None:
        raise BackupError(f"{path}: encrypted backup: give the store's encryption key")
    report = RestoreReport(agent_id, target, manifest)
    with _scratch(folder) as scratch:
        copy = scratch / target.name
        _archive.extract(path, copy, progress=progress)
        verdict = _archive.integrity_check(copy, encryption_key=key)
        if verdict != "ok":
            raise BackupError(f"{path}: integrity_check: {verdict}")
        conn = db.connect(copy, encryption_key=key, durability=config.durability)
        try:
            with db.write_transaction(conn, "restoring a backup"):
                if catch_up and config.enable_htpc:
                    floor = (manifest.incarnation << 32) | manifest.last_seq
                    report.from_relay = _pull(conn, agent_id, config, newer_than=floor)
                    report.caught_up = True
                _take_over(conn)
            conn.execute("PRAGMA journal_mode = DELETE")  # one file to move into place
        finally:
            conn.close()
        report.moved_aside = _move_into_place(copy, target, force)
    report.seconds = time.monotonic() - started
    _log.info(
        "agent %s: restored from %s (seq %d), %d rows newer from the relay",
        agent_id,
        path,
        manifest.last_seq,
        report.from_relay.upserts + report.from_relay.deletes,
    )
    return report


def _pull(
    conn: sqlite3.Connection,
    agent_id: str,
    config: StorageConfig,
    *,
    newer_than: int = -1,
    encoder: Any = None,
) -> Applied:
    """Write the relay's rows of ``agent_id`` (above version ``newer_than``) into every synced
    table; inside a write transaction."""
    total = Applied()
    conn.execute("PRAGMA defer_foreign_keys = ON")
    with RelayClient.from_config(config) as client, captures_suspended(conn) as tables:
        for table in tables.values():
            if conn.execute(outbox.TABLE_EXISTS, (table.name,)).fetchone() is None:
                continue
            records = relay_records(client, agent_id, table.name, include_deleted=newer_than >= 0)
            total.add(apply_records(conn, table, records, newer_than=newer_than, encoder=encoder))
    return total


def _take_over(conn: sqlite3.Connection) -> None:
    """The restored store asks for a new incarnation (a claim) on its first delivery; a
    conflict recorded in the backup is void."""
    outbox.write_meta(conn, "captured", 1)
    identity.set_claim(conn, True)
    identity.clear_conflict(conn)


def _refuse_existing(target: Path, force: bool) -> None:
    if target.exists() and not force:
        raise StorageError(
            f"{target} already exists: restore into another folder, or pass force=True "
            "(--force) to move it aside first (stop every process using it)"
        )


def _move_into_place(copy: Path, target: Path, force: bool) -> Path | None:
    aside = None
    if target.exists() and force:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        aside = target.with_name(f"{target.name}.replaced-{stamp}")
        os.replace(target, aside)
        for suffix in db.COMPANION_SUFFIXES:
            companion = target.with_name(target.name + suffix)
            if companion.exists():
                os.replace(companion, aside.with_name(aside.name + suffix))
    os.link(copy, target)  # never replaces a store that appeared meanwhile
    return aside


# ----------------------------------------------------------------------- from the relay


def rebuild_from_relay(
    storage_class: type[BaseStorage],
    agent_id: str,
    data_dir: Path | str,
    *,
    config: StorageConfig | None = None,
    force: bool = False,
) -> RestoreReport:
    """Build ``agent_id``'s store in ``data_dir`` from the relay's records alone: every synced
    table ``storage_class`` declares (its migrations give the schema), row for row. The store
    then claims the agent on its first delivery and syncs from there.

    Raises :class:`~commander_os.errors.RelayError` if the relay cannot be read (nothing is
    left behind), ``StorageError`` if a store is already there (``force`` moves it aside).
    """
    started = time.monotonic()
    agent_id = validate_agent_id(agent_id)
    config = config or StorageConfig()
    folder = make_private_dir(Path(data_dir))
    target = folder / f"{agent_id}{DB_SUFFIX}"
    _refuse_existing(target, force)
    report = RestoreReport(agent_id, target)
    with _scratch(folder) as scratch:
        store = storage_class(agent_id, scratch, config=config, enable_htpc=False)
        try:
            with store.transaction() as conn:
                report.from_relay = _pull(conn, agent_id, config, encoder=store._restored_row)
                _take_over(conn)
                declared = set(outbox.registered_tables(conn))
            report.skipped_tables = _relay_tables(agent_id, config, declared)
        finally:
            store.close()
        copy = scratch / target.name
        conn = db.connect(copy, encryption_key=store._encryption_key)
        try:
            conn.execute("PRAGMA journal_mode = DELETE")
        finally:
            conn.close()
        report.moved_aside = _move_into_place(copy, target, force)
    report.caught_up = True
    report.seconds = time.monotonic() - started
    return report


def _relay_tables(agent_id: str, config: StorageConfig, declared: set[str]) -> tuple[str, ...]:
    """Tables the relay holds for ``agent_id`` beyond ``declared`` (reported, not restored)."""
    with RelayClient.from_config(config) as client:
        for agent in client.agents():
            if agent.get("agent_id") == agent_id:
                tables = agent.get("tables") or {}
                return tuple(sorted(name for name in tables if name not in declared))
    return ()


def wait_claimed(storage: BaseStorage, timeout: float) -> bool:
    """Block until a relay granted ``storage``'s claim (True), or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while True:
        with storage.reading() as conn:
            if not identity.wants_claim(conn) and identity.incarnation(conn):
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
