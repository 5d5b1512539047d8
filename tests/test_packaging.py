"""The package installs everywhere: its dependencies resolve from wheels on every platform.

uv (a dev dependency) resolves ``pyproject.toml`` for each platform and Python version below
as a resolver on that machine would, without installing or building anything, and only from
wheels (``--only-binary :all:``): a dependency without a wheel for one of them fails here, as
``sqlcipher3-binary`` (Linux x86_64 wheels only) would as a core dependency. It needs PyPI;
when PyPI cannot be reached the tests are skipped with a reason that says nothing was checked.
uv keeps what it fetched in its cache, so a second run takes a few seconds.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PYPI = "https://pypi.org/simple"
INDEX = os.environ.get("UV_DEFAULT_INDEX") or os.environ.get("UV_INDEX_URL") or PYPI


#: Where the package must install, as uv names the platforms.
PLATFORMS = {
    "linux-x86_64": "x86_64-manylinux_2_17",
    "linux-aarch64": "aarch64-manylinux_2_17",
    "macos-arm64": "aarch64-apple-darwin",
    "macos-x86_64": "x86_64-apple-darwin",
    "windows-x86_64": "x86_64-pc-windows-msvc",
}
#: The oldest Python the package supports and a recent one.
PYTHONS = ("3.11", "3.13")
#: The core alone, and everything `make test` installs.
EXTRAS = ("core", "all")


def uv() -> list[str]:
    found = shutil.which("uv", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "uv"]


@pytest.fixture(scope="module")
def index_reachable() -> None:
    try:
        httpx.head(f"{INDEX.rstrip('/')}/pip/", timeout=10, follow_redirects=True)
    except httpx.HTTPError as exc:
        pytest.skip(
            f"NOT CHECKED: the package index {INDEX} is unreachable ({exc}), so dependency "
            "resolution for Linux, macOS and Windows was not tested"
        )


def resolve(
    platform: str, python: str, *requirements: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``uv pip compile`` for ``platform``: the pinned set on stdout, or why it cannot be."""
    command = [*uv(), "pip", "compile", "--quiet", "--no-header", "--only-binary", ":all:"]
    command += ["--python-platform", platform, "--python-version", python, "--index-url", INDEX]
    # The running interpreter serves for every target version: uv must not fetch Pythons.
    command += ["--python", sys.executable, "--no-python-downloads", *requirements]
    return subprocess.run(
        command,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=REPO_ROOT,
        env={**os.environ, "UV_HTTP_TIMEOUT": "30"},
    )


@pytest.mark.parametrize("extras", EXTRAS)
@pytest.mark.parametrize("python", PYTHONS)
@pytest.mark.parametrize("platform", sorted(PLATFORMS))
def test_dependencies_resolve_from_wheels(
    index_reachable: None, platform: str, python: str, extras: str
) -> None:
    chosen = () if extras == "core" else ("--extra", extras)
    result = resolve(PLATFORMS[platform], python, "pyproject.toml", *chosen)
    assert result.returncode == 0, f"{platform}, Python {python}, {extras}:\n{result.stderr}"
    pinned = {line.split("==")[0] for line in result.stdout.splitlines() if "==" in line}
    assert {"httpx", "pydantic-settings", "filelock", "typer"} <= pinned
    has_relay = "fastapi" in pinned
    assert has_relay == (extras == "all")
    if extras == "core":
        assert not pinned & {"fastapi", "uvicorn", "psycopg", "sqlcipher3-binary"}


def test_the_check_can_fail(index_reachable: None) -> None:
    # SQLCipher's wheels are for Linux x86_64 only: as a plain dependency, macOS must fail.
    macos = PLATFORMS["macos-arm64"]
    assert resolve(macos, "3.11", "-", stdin="zstandard>=0.22\n").returncode == 0
    failing = resolve(macos, "3.11", "-", stdin="sqlcipher3-binary>=0.6\n")
    assert failing.returncode != 0
    assert "sqlcipher3-binary" in failing.stderr
