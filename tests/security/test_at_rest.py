"""Data at rest is private, whatever the umask, and is never opened through a planted link.

Under ``umask 022`` (the common default, which leaves new files 0644 and folders 0755):

* an agent store's folders are 0700 and its database, WAL, shared memory and backups 0600;
* the relay's data folder is 0700 and ``central.db`` (with WAL and shared memory),
  ``relay.secret`` and ``relay export`` files are 0600;
* a symbolic link at a database path (dangling or not, or at its WAL) is refused with a clear
  ``StorageError`` and nothing is created where it points, unless ``follow_symlinks`` is set;
* key, token and secret files that other users can read get an ``InsecureFileWarning``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from commander_os.config import (
    RelayConfig,
    StorageConfig,
    read_encryption_key,
    read_token,
)
from commander_os.errors import CentralStoreUnavailable, InsecureFileWarning, StorageError
from commander_os.relay._auth import load_secret
from commander_os.relay._server import check_startable
from commander_os.relay.central import SQLiteCentralStore
from commander_os.storage.agent_storage import AgentStorage

pytestmark = pytest.mark.anyio


@pytest.fixture
def umask_022() -> Iterator[None]:
    previous = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def modes_below(root: Path) -> dict[str, int]:
    """The mode of ``root`` and of everything below it, by path relative to ``root``'s parent."""
    found = {root.name: mode(root)}
    for folder, folders, files in os.walk(root):
        for name in folders + files:
            path = Path(folder) / name
            found[str(path.relative_to(root.parent))] = mode(path)
    return found


@pytest.mark.usefixtures("umask_022")
def test_an_agent_store_and_its_backups_are_private(tmp_path: Path, dead_relay_url: str) -> None:
    data_dir = tmp_path / "data" / "agents" / "my-agent"
    # Sync on (towards a relay that is not there): the shipper's lock file exists too.
    with AgentStorage("my-agent", data_dir, htpc_url=dead_relay_url, enable_htpc=True) as storage:
        storage.set("k", {"secret": "value"})
        storage.backup(tmp_path / "backups" / "nightly" / "my-agent.db")
        found = modes_below(tmp_path / "data") | modes_below(tmp_path / "backups")
    names = {Path(name).name for name in found}
    assert {"my-agent.db", "my-agent.db-wal", "my-agent.db-shm", "my-agent.db.sync-lock"} <= names
    for name, bits in found.items():
        is_dir = (tmp_path / name).is_dir()
        assert bits == (0o700 if is_dir else 0o600), f"{name}: {bits:o}"


@pytest.mark.usefixtures("umask_022")
async def test_the_relays_data_is_private(tmp_path: Path) -> None:
    config = RelayConfig(agent_storage_dir=tmp_path / "relay" / "central", auth=True)
    load_secret(config, create=True)
    async with SQLiteCentralStore.in_directory(config.agent_storage_dir) as store:
        assert (await store.health()).ok
        found = modes_below(tmp_path / "relay")
    names = {Path(name).name for name in found}
    assert {"central.db", "central.db-wal", "central.db-shm", "relay.secret"} <= names
    for name, bits in found.items():
        is_dir = (tmp_path / name).is_dir()
        assert bits == (0o700 if is_dir else 0o600), f"{name}: {bits:o}"


@pytest.mark.usefixtures("umask_022")
def test_relay_export_files_are_private(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    for command in (
        ["relay", "migrate", "--data-dir", str(tmp_path / "relay")],
        ["relay", "export", "--data-dir", str(tmp_path / "relay"), "--out", str(tmp_path / "x")],
    ):
        done = subprocess.run(
            [sys.executable, "-m", "commander_os", *command],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    assert mode(tmp_path / "x") == 0o600


def test_a_dangling_link_at_the_db_path_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "agent"
    data_dir.mkdir()
    elsewhere = tmp_path / "elsewhere.db"
    (data_dir / "my-agent.db").symlink_to(elsewhere)
    with pytest.raises(StorageError, match="symbolic link"):
        AgentStorage("my-agent", data_dir, enable_htpc=False)
    assert not elsewhere.exists()


def test_a_link_to_a_real_store_is_refused_unless_allowed(tmp_path: Path) -> None:
    with AgentStorage("my-agent", tmp_path / "real", enable_htpc=False) as storage:
        storage.set("k", 1)
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / "my-agent.db").symlink_to(tmp_path / "real" / "my-agent.db")
    with pytest.raises(StorageError, match="follow_symlinks"):
        AgentStorage("my-agent", linked, enable_htpc=False)
    with AgentStorage("my-agent", linked, enable_htpc=False, follow_symlinks=True) as storage:
        assert storage.get("k") == 1


def test_a_link_at_the_wal_path_is_refused(tmp_path: Path) -> None:
    data_dir = tmp_path / "agent"
    data_dir.mkdir()
    (data_dir / "my-agent.db-wal").symlink_to(tmp_path / "stolen-wal")
    with pytest.raises(StorageError, match=r"my-agent\.db-wal is a symbolic link"):
        AgentStorage("my-agent", data_dir, enable_htpc=False)
    assert not (tmp_path / "stolen-wal").exists()


async def test_a_link_at_central_db_is_refused_unless_allowed(tmp_path: Path) -> None:
    folder = tmp_path / "relay"
    folder.mkdir()
    (folder / "central.db").symlink_to(tmp_path / "elsewhere.db")
    with pytest.raises(CentralStoreUnavailable, match="symbolic link"):
        await SQLiteCentralStore.in_directory(folder).open()
    assert not (tmp_path / "elsewhere.db").exists()
    async with SQLiteCentralStore.in_directory(folder, follow_symlinks=True) as store:
        assert (await store.health()).ok
    assert (tmp_path / "elsewhere.db").exists()


def test_key_token_and_secret_files_others_can_read_are_warned_about(tmp_path: Path) -> None:
    key, token, secret = tmp_path / "key", tmp_path / "token", tmp_path / "relay" / "relay.secret"
    secret.parent.mkdir()
    key.write_text("a-passphrase\n")
    token.write_text("cos1.a.b\n")
    secret.write_text("s" * 40 + "\n")
    readers = [
        lambda: read_encryption_key(StorageConfig(encryption_key_file=key)),
        lambda: read_encryption_key(RelayConfig(encryption_key_file=key)),
        lambda: read_token(StorageConfig(token_file=token)),
        lambda: load_secret(RelayConfig(agent_storage_dir=secret.parent, auth=True)),
    ]
    for loose in (0o644, 0o640, 0o604, 0o660):
        for path in (key, token, secret):
            path.chmod(loose)
        for read in readers:
            with pytest.warns(InsecureFileWarning, match="chmod 600"):
                read()
    for path in (key, token, secret):
        path.chmod(0o600)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for read in readers:
            read()


def test_a_tls_key_others_can_read_is_warned_about_at_start(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("certificate")
    key.write_text("key")
    config = RelayConfig(auth=True, tls={"certfile": cert, "keyfile": key})
    key.chmod(0o644)
    assert any("relay.tls.keyfile" in warning for warning in check_startable(config))
    key.chmod(0o600)
    assert not any("relay.tls.keyfile" in warning for warning in check_startable(config))


def test_status_reports_a_linked_store_instead_of_failing(tmp_path: Path) -> None:
    with AgentStorage("real-agent", tmp_path / "real", enable_htpc=False):
        pass
    agents = tmp_path / "agents"
    agents.mkdir()
    (agents / "linked.db").symlink_to(tmp_path / "real" / "real-agent.db")
    from commander_os.storage._inspect import inspect_stores

    (report,) = inspect_stores(agents)
    assert report["local_db"] is False
    assert "symbolic link" in report["error"]
