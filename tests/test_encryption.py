"""Encryption at rest: with an ``encryption_key`` no plaintext reaches the disk.

A sentinel string is written through every path an agent store has (``set``, ``set_many``, a
custom synced table, raw SQL, the outbox) and through the relay into its SQLite central store;
then every file under the data folders (database, ``-wal``, ``-shm``, backups, lock files) is
read raw and searched for the sentinel in UTF-8 and UTF-16. The same scan finds it in a plain
store (so it is able to). A wrong or missing key, or a key given for a plain file, is an
:class:`~commander_os.errors.EncryptionError` that leaves the file's bytes as they were; a
writer SIGKILLed mid-stream leaves a store the key opens and ``integrity_check`` passes.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from commander_os import _sqlite as db
from commander_os.config import (
    RelayConfig,
    StorageConfig,
    load_relay_config,
    load_storage_config,
    read_encryption_key,
)
from commander_os.errors import CentralStoreUnavailable, ConfigError, EncryptionError
from commander_os.protocol import QueryRequest
from commander_os.relay._process import RelayProcess
from commander_os.relay.central import SQLiteCentralStore
from commander_os.storage._inspect import inspect_store
from commander_os.storage.agent_storage import AgentStorage

REPO_ROOT = Path(__file__).resolve().parent.parent
SENTINEL = "zq-sentinel-4be1-do-not-leak"
#: A raw 256-bit key (64 hex digits): no key derivation on open, so the tests stay fast.
KEY = "3f" * 16 + "a7" * 16
OTHER_KEY = "3f" * 16 + "a7" * 15 + "a8"
#: A passphrase with a quote and non-ASCII letters, to prove the key is quoted, not spliced.
PASSPHRASE = "it's a pässphrase; DROP TABLE kv; --"


def needles(text: str) -> dict[str, bytes]:
    """``text`` as it could appear in a file: UTF-8 and both UTF-16 byte orders."""
    return {
        "utf-8": text.encode("utf-8"),
        "utf-16-le": text.encode("utf-16-le"),
        "utf-16-be": text.encode("utf-16-be"),
    }


def leaks(folder: Path, text: str = SENTINEL) -> list[str]:
    """Every file under ``folder`` whose raw bytes contain ``text``, with the encoding found."""
    found = []
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            data = path.read_bytes()
            found += [f"{path} ({name})" for name, raw in needles(text).items() if raw in data]
    return found


def snapshot(folder: Path) -> dict[str, bytes]:
    """The bytes of every file under ``folder`` (databases, WALs), by relative path.

    ``-shm`` files are left out: they hold no data, only an index of the WAL that the first
    connection to open a store after a crash rebuilds, whatever its key.
    """
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and not path.name.endswith("-shm")
    }


def write_sentinel_everywhere(store: AgentStorage) -> None:
    """The sentinel through set, set_many, a custom synced table, raw SQL and a long value."""
    store.set(f"{SENTINEL}-key", {"note": SENTINEL})
    store.set_many({f"{SENTINEL}-{i}": [SENTINEL, i] for i in range(3)})
    store.set("long", SENTINEL * 500)  # spills into overflow pages
    with store.transaction() as conn:
        conn.execute("CREATE TABLE secrets (id TEXT PRIMARY KEY, body TEXT NOT NULL)")
    store.register_synced_table("secrets")
    with store.transaction() as conn:
        conn.execute("INSERT INTO secrets VALUES (?, ?)", (SENTINEL, f"body {SENTINEL}"))
    store.conn.execute("UPDATE secrets SET body = ? WHERE id = ?", (SENTINEL * 2, SENTINEL))


# ------------------------------------------------------------------------- agent stores


def test_the_scan_finds_the_sentinel_in_a_plain_store(tmp_path: Path) -> None:
    with AgentStorage("plain", tmp_path, enable_htpc=False) as store:
        store.set("k", SENTINEL)
        assert any("plain.db-wal" in leak for leak in leaks(tmp_path))


def test_sentinel_is_absent_from_every_file_of_an_encrypted_store(
    tmp_path: Path, dead_relay_url: str
) -> None:
    data_dir = tmp_path / "agents" / "vault"
    wal = data_dir / "vault.db-wal"
    # Sync on (towards a relay that is down): the outbox fills and the worker's own
    # connection, keyed the same way, reads the rows to ship them.
    store = AgentStorage(
        "vault",
        data_dir,
        htpc_url=dead_relay_url,
        enable_htpc=True,
        encryption_key=KEY,
        close_timeout=0,
    )
    try:
        write_sentinel_everywhere(store)
        queued = [pk for (pk,) in store.conn.execute("SELECT pk FROM _sync_queue")]
        assert sum(SENTINEL in pk for pk in queued) >= 5, "the outbox holds the sentinel"
        assert wal.stat().st_size > 0, "the WAL holds the writes (not yet checkpointed)"
        assert leaks(tmp_path) == []

        busy, frames, copied = store.conn.execute("PRAGMA wal_checkpoint(FULL)").fetchone()
        assert (busy, frames) != (0, 0)
        assert copied > 0
        assert leaks(tmp_path) == []

        backup = store.backup(data_dir / "backups" / "vault.db")
        assert leaks(tmp_path) == []
        assert db.is_encrypted(backup) is True
        copy = db.connect(backup, encryption_key=KEY)
        try:
            assert copy.execute("SELECT body FROM secrets").fetchone() == (SENTINEL * 2,)
        finally:
            copy.close()
        health = store.health_check()
        assert health["encrypted"] is True
        assert KEY not in repr(store) + repr(store.config) + json.dumps(health, default=str)
    finally:
        store.close()
    assert leaks(tmp_path) == []
    with AgentStorage("vault", data_dir, enable_htpc=False, encryption_key=KEY) as reopened:
        assert reopened.get(f"{SENTINEL}-key") == {"note": SENTINEL}
        assert reopened.get("long") == SENTINEL * 500


def test_a_passphrase_is_quoted_not_spliced(tmp_path: Path) -> None:
    with AgentStorage("pass", tmp_path, enable_htpc=False, encryption_key=PASSPHRASE) as store:
        store.set("k", SENTINEL)
    assert leaks(tmp_path) == []
    with AgentStorage("pass", tmp_path, enable_htpc=False, encryption_key=PASSPHRASE) as store:
        assert store.get("k") == SENTINEL
    with pytest.raises(EncryptionError, match="wrong encryption key"):
        AgentStorage("pass", tmp_path, enable_htpc=False, encryption_key="it's a pässphrase")


# ------------------------------------------------------------------- wrong or missing key


@pytest.fixture
def encrypted_store(tmp_path: Path) -> Path:
    """A closed encrypted store holding ``k`` -> SENTINEL; returns its data folder."""
    data_dir = tmp_path / "enc"
    with AgentStorage("enc", data_dir, enable_htpc=False, encryption_key=KEY) as store:
        store.set("k", SENTINEL)
    return data_dir


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (None, "is encrypted .*: give encryption_key"),
        (OTHER_KEY, "wrong encryption key for .*enc.db"),
        (PASSPHRASE, "wrong encryption key for .*enc.db"),
    ],
)
def test_a_wrong_or_missing_key_changes_nothing(
    encrypted_store: Path, key: str | None, message: str
) -> None:
    before = snapshot(encrypted_store)
    with pytest.raises(EncryptionError, match=message) as caught:
        AgentStorage("enc", encrypted_store, enable_htpc=False, encryption_key=key)
    assert KEY not in str(caught.value)
    assert PASSPHRASE not in str(caught.value)
    report = inspect_store(encrypted_store / "enc.db", encryption_key=key)
    assert report["local_db"] is False
    assert report["encrypted"] is True
    assert snapshot(encrypted_store) == before
    with AgentStorage("enc", encrypted_store, enable_htpc=False, encryption_key=KEY) as store:
        assert store.get("k") == SENTINEL


def test_a_key_for_a_plain_store_is_refused(tmp_path: Path) -> None:
    with AgentStorage("plain", tmp_path, enable_htpc=False) as store:
        store.set("k", "v")
    before = snapshot(tmp_path)
    with pytest.raises(EncryptionError, match=r"plain\.db is not encrypted"):
        AgentStorage("plain", tmp_path, enable_htpc=False, encryption_key=KEY)
    assert snapshot(tmp_path) == before
    with AgentStorage("plain", tmp_path, enable_htpc=False) as store:
        assert store.get("k") == "v"


@pytest.mark.parametrize("key", ["", "nul\x00inside"])
def test_unusable_keys_are_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(EncryptionError, match="encryption_key must"):
        AgentStorage("odd", tmp_path, enable_htpc=False, encryption_key=key)


# --------------------------------------------------------------------------- crash safety

WRITER = f"""
import sys
from pathlib import Path
from commander_os.storage.agent_storage import AgentStorage

data_dir, relay_url, key, prefix = sys.argv[1:5]
store = AgentStorage("crashy", Path(data_dir), htpc_url=relay_url, enable_htpc=True,
                     sync_interval=30, encryption_key=key)
i = 0
while True:
    store.set(f"{{prefix}}-{{i}}", {{"i": i, "secret": "{SENTINEL}", "pad": "x" * (i % 700)}})
    sys.stdout.write(f"{{prefix}}-{{i}}\\n")
    sys.stdout.flush()
    i += 1
"""


def kill_writer_mid_stream(script: Path, data_dir: Path, relay_url: str, prefix: str) -> list[str]:
    """Run the writer until it acknowledged some writes, SIGKILL it; return those keys."""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(data_dir), relay_url, KEY, prefix],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline() for _ in range(40)]
    proc.send_signal(signal.SIGKILL)
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL, err
    # A line without its newline was cut mid-print: its write may or may not have returned.
    return ("".join(lines) + rest).split("\n")[:-1]


def test_sigkilled_writer_leaves_an_encrypted_store_that_opens_and_checks(
    tmp_path: Path, dead_relay_url: str
) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    data_dir = tmp_path / "crash"
    acknowledged: list[str] = []
    for round_no in range(3):
        acknowledged += kill_writer_mid_stream(script, data_dir, dead_relay_url, f"r{round_no}")
        assert (data_dir / "crashy.db-wal").stat().st_size > 0, "the kill left a WAL"
        assert leaks(data_dir) == []
        before = snapshot(data_dir)
        for key in (None, OTHER_KEY):
            with pytest.raises(EncryptionError):
                AgentStorage("crashy", data_dir, enable_htpc=False, encryption_key=key)
        assert snapshot(data_dir) == before, "a refused open wrote to the files"
    with AgentStorage("crashy", data_dir, enable_htpc=False, encryption_key=KEY) as store:
        assert store.conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert store.conn.execute("PRAGMA cipher_integrity_check").fetchall() == []
        stored = set(store.keys())
        assert set(acknowledged) <= stored
        assert store.get_sync_queue_size() >= len(acknowledged)
    assert leaks(data_dir) == []


# ------------------------------------------------------------------ the relay's central store


def test_records_applied_through_the_relay_leave_no_plaintext(tmp_path: Path) -> None:
    relay_dir = tmp_path / "relay"
    relay = RelayProcess(data_dir=relay_dir, env={"COMMANDER_OS_RELAY_ENCRYPTION_KEY": KEY})
    url = relay.start()
    try:
        with AgentStorage(
            "sender",
            tmp_path / "agents",
            htpc_url=url,
            enable_htpc=True,
            encryption_key=OTHER_KEY,
            sync_interval=0.5,
        ) as agent:
            write_sentinel_everywhere(agent)
            assert agent.wait_for_sync(timeout=30)
            found = agent.query_network(agent_id="sender", key=f"{SENTINEL}-key")
            assert [record["data"]["value"] for record in found] == [{"note": SENTINEL}]
        health = httpx.get(f"{url}/health", timeout=10).text
        assert KEY not in health
        assert '"encrypted":true' in health.replace(" ", "")
        assert (relay_dir / "central.db-wal").exists()
        assert leaks(tmp_path) == []
    finally:
        relay.stop()
    assert leaks(tmp_path) == []
    assert asyncio.run(central_records(relay_dir, KEY)) >= 6

    before = snapshot(relay_dir)
    for key, message in ((None, "is encrypted"), (OTHER_KEY, "wrong encryption key")):
        with pytest.raises(CentralStoreUnavailable, match=message):
            asyncio.run(central_records(relay_dir, key))
    assert snapshot(relay_dir) == before


async def central_records(relay_dir: Path, key: str | None) -> int:
    """How many records the central store in ``relay_dir`` holds, opened with ``key``."""
    async with SQLiteCentralStore.in_directory(relay_dir, encryption_key=key) as store:
        page = await store.query(QueryRequest(agent_id="sender", limit=100))
        return len(page.records)


# ----------------------------------------------------------------------------- config, CLI


def test_keys_come_from_config_file_and_environment_and_stay_hidden(tmp_path: Path) -> None:
    env = {"COMMANDER_OS_ENCRYPTION_KEY": PASSPHRASE}
    relay_env = {"COMMANDER_OS_RELAY_ENCRYPTION_KEY": PASSPHRASE}
    assert read_encryption_key(load_storage_config(environ=env)) == PASSPHRASE
    assert read_encryption_key(load_relay_config(environ=relay_env)) == PASSPHRASE
    # Each side reads its own variable only: an agent's key never opens the relay's store.
    assert read_encryption_key(load_relay_config(environ=env)) is None
    assert read_encryption_key(load_storage_config(environ=relay_env)) is None
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)
    assert read_encryption_key(StorageConfig(encryption_key_file=key_file)) == KEY
    assert read_encryption_key(RelayConfig(encryption_key_file=key_file)) == KEY
    config = StorageConfig(encryption_key=PASSPHRASE)
    assert PASSPHRASE not in repr(config)
    assert PASSPHRASE not in str(config)
    with pytest.raises(ConfigError) as caught:
        load_storage_config(environ={**env, "COMMANDER_OS_SYNC_INTERVAL": "-1"})
    assert PASSPHRASE not in str(caught.value)
    key_file.write_text("\n")
    with pytest.raises(ConfigError, match="encryption_key_file is empty"):
        read_encryption_key(StorageConfig(encryption_key_file=key_file))
    with pytest.raises(ConfigError, match="sqlite backend only"):
        load_relay_config(
            environ={**relay_env, "COMMANDER_OS_DATABASE_URL": "postgresql://db/x"},
            overrides={"backend": "postgresql"},
        )


def test_cli_status_reads_encrypted_stores_with_the_key_file(
    encrypted_store: Path, tmp_path: Path
) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY)
    key_file.chmod(0o600)

    def status(*extra: str, exit_code: int = 0) -> dict[str, Any]:
        result = subprocess.run(
            [sys.executable, "-m", "commander_os", "status", "--json", *extra],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            env={k: v for k, v in os.environ.items() if k != "COMMANDER_OS_ENCRYPTION_KEY"},
        )
        assert result.returncode == exit_code, result.stderr
        assert KEY not in result.stdout + result.stderr
        (report,) = json.loads(result.stdout)
        return dict(report)

    unlocked = status("--data-dir", str(encrypted_store), "--encryption-key-file", str(key_file))
    assert unlocked["local_db"] is True
    assert unlocked["encrypted"] is True
    assert unlocked["schema_version"] >= 1
    locked = status("--data-dir", str(encrypted_store), exit_code=1)  # unreadable: not healthy
    assert locked["local_db"] is False
    assert "is encrypted" in locked["error"]


def test_keys_become_sql_literals_safely(encrypted_store: Path) -> None:
    assert db.is_encrypted(encrypted_store / "enc.db") is True
    assert db.is_encrypted(encrypted_store / "missing.db") is None
    assert db.key_literal(KEY) == f"\"x'{KEY}'\""
    assert db.key_literal("a'b") == "'a''b'"


def test_an_encrypted_store_raises_sqlcipher_errors_that_db_tuples_catch(tmp_path: Path) -> None:
    with AgentStorage("tuples", tmp_path, enable_htpc=False, encryption_key=KEY) as store:
        with pytest.raises(db.IntegrityError) as caught, store.transaction() as conn:
            conn.execute("INSERT INTO kv (key, value, updated_at) VALUES (NULL, 'v', 0)")
        assert type(caught.value).__module__.startswith("sqlcipher3")
        assert store.health_check()["local_db"] is True
