"""Backup files: the manifest, verify (checksum, integrity_check, manifest against the
database), damaged and forged files refused, retention, encryption, local restores.

The restore drills against a live relay are in ``tests/sync/test_restore.py``.
"""

from __future__ import annotations

import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import zstandard

from commander_os import _archive
from commander_os.errors import BackupError, StorageError
from commander_os.storage import backups
from commander_os.storage._scheduler import BackupScheduler
from commander_os.storage.agent_storage import AgentStorage

MakeStorage = Callable[..., AgentStorage]
KEY = "3f" * 16 + "a7" * 16


def _backup(make_storage: MakeStorage, tmp_path: Path, **settings: Any) -> tuple[Path, Any]:
    storage = make_storage("bk-agent", **settings)
    storage.set_many({f"k{i}": {"n": i, "text": "secret-value " * 20} for i in range(200)})
    info = backups.create_backup(storage, tmp_path / "backups")
    return info.path, storage


def test_a_backup_carries_its_manifest(make_storage: MakeStorage, tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    storage = make_storage("bk-agent")
    storage.set_many({f"k{i}": i for i in range(50)})
    path = storage.backup(tmp_path / "out.db.zst", progress=lambda d, t: seen.append((d, t)))
    manifest = _archive.read_manifest(path)
    assert manifest.kind == "agent"
    assert manifest.agent_id == "bk-agent"
    assert manifest.schema_version == 1
    assert manifest.last_seq == 0  # sync never on: nothing was queued
    assert manifest.incarnation == 0
    assert manifest.encrypted is False
    assert len(manifest.sha256) == 64
    assert manifest.storage_class == "commander_os.storage.agent_storage:AgentStorage"
    assert manifest.created_at.tzinfo is not None
    assert seen
    assert seen[-1][0] == seen[-1][1]
    assert path.stat().st_mode & 0o777 == 0o600
    report = backups.verify_backup(path)
    assert report.ok, report.problems
    assert report.as_dict()["manifest"]["agent_id"] == "bk-agent"


def test_standard_zstd_reads_the_database(make_storage: MakeStorage, tmp_path: Path) -> None:
    path, _storage = _backup(make_storage, tmp_path)
    with path.open("rb") as source:
        reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
        data = reader.read()
    assert data.startswith(b"SQLite format 3\x00")
    assert len(data) == _archive.read_manifest(path).db_bytes
    assert path.stat().st_size < len(data) / 3  # JSON pages compress


def test_a_default_backup_goes_to_the_backup_folder(
    make_storage: MakeStorage, tmp_path: Path
) -> None:
    storage = make_storage("bk-agent", backup_dir=tmp_path / "elsewhere")
    storage.set("a", 1)
    path = storage.backup()
    assert path.parent == tmp_path / "elsewhere"
    assert path.name.startswith("bk-agent-")
    assert path.name.endswith(".db.zst")
    other = make_storage("bk-other")
    assert other.backup().parent == other.data_dir / "backups"


def _flip(path: Path, offset_from_end: int) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["flip", "truncate", "garbage", "empty"])
def test_verify_refuses_a_damaged_backup(
    make_storage: MakeStorage, tmp_path: Path, damage: str
) -> None:
    path, _ = _backup(make_storage, tmp_path)
    if damage == "flip":
        _flip(path, 100)
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif damage == "garbage":
        path.write_bytes(b"SQLite format 3\x00" + b"x" * 5000)
    else:
        path.write_bytes(b"")
    report = backups.verify_backup(path)
    assert not report.ok
    assert report.problems
    with pytest.raises(BackupError):
        backups.restore_backup(path, tmp_path / "restored", catch_up=False)
    assert not (tmp_path / "restored" / "bk-agent.db").exists()


def _rewrite_manifest(path: Path, **changes: Any) -> None:
    raw = path.read_bytes()
    magic, length = struct.unpack("<II", raw[:8])
    manifest = {**orjson.loads(raw[8 : 8 + length]), **changes}
    body = orjson.dumps(manifest)
    path.write_bytes(struct.pack("<II", magic, len(body)) + body + raw[8 + length :])


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"last_seq": 99}, "last_seq"),
        ({"incarnation": 7}, "incarnation"),
        ({"schema_version": 3}, "schema_version"),
        ({"sha256": "0" * 64}, "checksum"),
        ({"format": 99}, "format"),
        ({"kind": "nope"}, "kind"),
    ],
)
def test_verify_checks_the_manifest_against_the_database(
    make_storage: MakeStorage, tmp_path: Path, change: dict[str, Any], problem: str
) -> None:
    path, _ = _backup(make_storage, tmp_path)
    _rewrite_manifest(path, **change)
    report = backups.verify_backup(path)
    assert not report.ok
    assert problem in " ".join(report.problems)


def test_list_and_prune_keep_the_newest(make_storage: MakeStorage, tmp_path: Path) -> None:
    storage = make_storage("bk-agent")
    folder = tmp_path / "backups"
    folder.mkdir()
    made = []
    for i in range(5):
        storage.set("n", i)
        made.append(storage.backup(folder))
    (folder / "junk.db.zst").write_bytes(b"not a backup")
    listed = backups.list_backups(folder, agent_id="bk-agent")
    assert [info.path for info in listed] == made[::-1]
    removed = backups.prune_backups(folder, "bk-agent", keep=2)
    assert sorted(removed) == sorted(made[:3])
    assert [info.path for info in backups.list_backups(folder)] == made[:2:-1]


def test_restore_refuses_a_store_in_the_way(make_storage: MakeStorage, tmp_path: Path) -> None:
    path, storage = _backup(make_storage, tmp_path)
    storage.set("after", True)
    storage.close()
    with pytest.raises(StorageError, match="already exists"):
        backups.restore_backup(path, storage.data_dir, catch_up=False)
    report = backups.restore_backup(path, storage.data_dir, catch_up=False, force=True)
    assert report.moved_aside is not None
    assert report.moved_aside.exists()
    restored = make_storage("bk-agent", data_dir=storage.data_dir)
    assert restored.get("after") is None
    assert restored.get("k3") == {"n": 3, "text": "secret-value " * 20}
    assert restored.health_check()["incarnation"] == 0  # it asks for a new one when it ships


def test_an_encrypted_store_gives_an_encrypted_backup(
    make_storage: MakeStorage, tmp_path: Path
) -> None:
    pytest.importorskip("sqlcipher3")
    path, _ = _backup(make_storage, tmp_path, encryption_key=KEY)
    manifest = _archive.read_manifest(path)
    assert manifest.encrypted is True
    with path.open("rb") as source:
        reader = zstandard.ZstdDecompressor().stream_reader(source, read_across_frames=True)
        assert b"secret-value" not in reader.read()
    assert not backups.verify_backup(path).ok  # no key: cannot be checked
    assert backups.verify_backup(path, encryption_key=KEY).ok
    with pytest.raises(BackupError, match="encryption key"):
        backups.restore_backup(path, tmp_path / "r", catch_up=False)
    backups.restore_backup(path, tmp_path / "r", encryption_key=KEY, catch_up=False)
    restored = make_storage("bk-agent", data_dir=tmp_path / "r", encryption_key=KEY)
    assert restored.get("k1")["n"] == 1


def test_plain_copies_are_unchanged(make_storage: MakeStorage, tmp_path: Path) -> None:
    storage = make_storage("bk-agent")
    storage.set("a", 1)
    copy = storage.backup(tmp_path / "plain.db")
    assert copy.read_bytes().startswith(b"SQLite format 3\x00")
    shutil.copy(copy, tmp_path / "x.db")


class FakeClock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def test_scheduled_backups_keep_the_newest(make_storage: MakeStorage, tmp_path: Path) -> None:
    clock = FakeClock()
    scheduler = BackupScheduler(clock=clock, background=False)
    storage = make_storage("bk-agent", backup_dir=tmp_path / "auto", backup_keep=3)
    storage.config = storage.config.model_copy(update={"backup_interval": 3600.0})
    scheduler.add(storage)
    assert len(scheduler.run_due()) == 1  # none yet: the first one at once
    assert scheduler.run_due() == []
    made = []
    for hour in range(1, 6):
        storage.set("hour", hour)
        clock.now += 1800
        assert scheduler.run_due() == []
        clock.now += 1800
        [path] = scheduler.run_due()
        made.append(path)
    kept = backups.list_backups(tmp_path / "auto", agent_id="bk-agent")
    assert [info.path for info in kept] == made[:-4:-1]  # the newest three
    assert all(backups.verify_backup(info).ok for info in kept)

    # A new process picks the rhythm up from the newest backup, not from zero.
    again = BackupScheduler(clock=clock, background=False)
    again.add(storage)
    assert again.run_due() == []
    clock.now += 3600
    assert len(again.run_due()) == 1
    scheduler.remove(storage)
    again.remove(storage)
    clock.now += 10 * 3600
    assert again.run_due() == []


def test_a_store_with_an_interval_joins_the_process_scheduler(
    make_storage: MakeStorage, tmp_path: Path
) -> None:
    storage = make_storage("bk-timed", backup_dir=tmp_path / "timed", backup_interval=3600)
    scheduler = BackupScheduler.for_process()
    assert id(storage) in scheduler._stores
    deadline = time.monotonic() + 30
    while not backups.list_backups(tmp_path / "timed") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(backups.list_backups(tmp_path / "timed")) == 1  # the first one at once
    storage.close()
    assert id(storage) not in scheduler._stores


def test_a_failed_scheduled_backup_is_retried(
    make_storage: MakeStorage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = FakeClock()
    scheduler = BackupScheduler(clock=clock, background=False)
    storage = make_storage("bk-agent", backup_dir=tmp_path / "auto")
    storage.config = storage.config.model_copy(update={"backup_interval": 3600.0})
    scheduler.add(storage)

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(_archive, "write_archive", full)
    assert scheduler.run_due() == []
    monkeypatch.undo()
    clock.now += 61
    assert len(scheduler.run_due()) == 1
