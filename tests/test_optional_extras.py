"""The core works without the optional extras, and whatever needs one names it.

Each check runs in a child Python in which the modules of the extras cannot be imported (a
finder placed first on ``sys.meta_path`` refuses them, as a machine without them installed
would), so the real import graph of the package is what is tested.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from commander_os import _sqlite as db
from commander_os.errors import EncryptionError
from commander_os.storage.agent_storage import AgentStorage

REPO_ROOT = Path(__file__).resolve().parent.parent
RELAY = ("fastapi", "starlette", "uvicorn", "httptools", "uvloop")
POSTGRES = ("psycopg", "psycopg_pool", "psycopg_binary")
ENCRYPTION = ("sqlcipher3",)
KEY = "3f" * 32

BLOCKER = """
import importlib.abc, sys

class _Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {blocked!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, _Absent())
"""


def run_without(blocked: tuple[str, ...], code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    script = BLOCKER.format(blocked=set(blocked)) + textwrap.dedent(code)
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMMANDER_OS_")}
    return subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=cwd,
        env={**env, "PYTHONPATH": str(REPO_ROOT), "NO_COLOR": "1", "COLUMNS": "200"},
    )


def test_the_core_works_without_any_extra(tmp_path: Path) -> None:
    result = run_without(
        RELAY + POSTGRES + ENCRYPTION,
        f"""
        import commander_os
        from commander_os import AgentStorage, StorageConfig, load_relay_config
        from commander_os.errors import EncryptionError

        with AgentStorage("agent", {str(tmp_path)!r}, htpc_url="http://127.0.0.1:9") as store:
            store.set("k", {{"v": 1}})
            assert store.get("k") == {{"v": 1}}
            assert store.get_sync_queue_size() == 1
        try:
            AgentStorage("locked", {str(tmp_path)!r}, enable_htpc=False, encryption_key={KEY!r})
        except EncryptionError as exc:
            print("encryption:", exc)
        assert load_relay_config(environ={{}}).port == 8001
        loaded = sorted(m for m in sys.modules if m.partition(".")[0] in {set(RELAY + POSTGRES)!r})
        print("loaded:", loaded)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert "loaded: []" in result.stdout
    assert "pip install 'commander-os-storage[encryption]'" in result.stdout
    assert not (tmp_path / "locked.db").exists()


def cli_without(
    blocked: tuple[str, ...], args: list[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    return run_without(
        blocked,
        f"""
        sys.argv = ["commander-os", *{args!r}]
        from commander_os.cli import main
        main()
        """,
        cwd,
    )


@pytest.mark.parametrize(
    "args",
    [
        ["relay", "serve", "--port", "0"],
        ["relay", "migrate"],
        ["token", "create", "my-agent"],
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_relay_commands_name_the_relay_extra(tmp_path: Path, args: list[str]) -> None:
    result = cli_without(RELAY, [*args, "--data-dir", str(tmp_path / "relay")], tmp_path)
    assert result.returncode == 1
    assert "pip install 'commander-os-storage[relay]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "relay").exists()


def test_a_postgresql_store_names_the_postgres_extra(tmp_path: Path) -> None:
    url = "postgresql://nobody@127.0.0.1:9/none"
    result = cli_without(POSTGRES, ["relay", "migrate", "--database-url", url], tmp_path)
    assert result.returncode == 1
    assert "pip install 'commander-os-storage[postgres]'" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_seed_relay_entry_point_names_the_extra_too(tmp_path: Path) -> None:
    result = run_without(
        POSTGRES,
        """
        from commander_os.network.relay import main
        sys.exit(main(["--database-url", "postgresql://nobody@127.0.0.1:9/none"]))
        """,
        tmp_path,
    )
    assert result.returncode == 2
    assert "relay: the 'postgres' extra is not installed" in result.stderr


def test_a_key_without_sqlcipher_names_the_encryption_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "sqlcipher", None)  # as on a machine without the extra
    with pytest.raises(EncryptionError) as caught:
        AgentStorage("agent", tmp_path, enable_htpc=False, encryption_key=KEY)
    assert "pip install 'commander-os-storage[encryption]'" in str(caught.value)
    assert KEY not in str(caught.value)
    assert not (tmp_path / "agent.db").exists()
