"""``commander-os demo`` stops its relay on SIGINT, SIGTERM and SIGHUP (and, on Linux, when it
is killed outright): no orphan process, and the port is free for the next ``make run``."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/task").is_dir(), reason="finds the relay child through /proc (Linux)"
)

READY = re.compile(r"The relay keeps running at http://127\.0\.0\.1:(\d+)")


def _children(pid: int) -> set[int]:
    found: set[int] = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text()
        found.update(int(child) for child in text.split())
    return found


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.parametrize(
    "signum", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGKILL], ids=lambda s: s.name
)
def test_demo_stops_its_relay_on_a_signal(tmp_path: Path, signum: signal.Signals) -> None:
    demo = subprocess.Popen(
        [sys.executable, "-m", "commander_os", "demo", "--port", "0", "--data-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    )
    relays: set[int] = set()
    try:
        assert demo.stdout is not None
        port = None
        for line in demo.stdout:
            match = READY.search(line)
            if match:
                port = int(match.group(1))
                break
        assert port is not None, "the demo never said its relay keeps running"
        relays = _children(demo.pid)
        assert len(relays) == 1
        assert not _port_free(port)

        demo.send_signal(signum)
        rest = demo.stdout.read()
        if signum == signal.SIGKILL:  # no handler runs: the relay learns it from the kernel
            assert demo.wait(30) == -signal.SIGKILL
        else:
            assert demo.wait(30) == 0, rest
            assert "stopping the relay" in rest
        (relay,) = relays
        deadline = time.monotonic() + 10
        while _alive(relay) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(relay), "the relay outlived the demo"
        assert _port_free(port)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
        for pid in relays:  # a failed run must not leave its orphan behind either
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        if demo.stdout is not None:
            demo.stdout.close()
