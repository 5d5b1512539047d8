"""RelayProcess: run a relay as a child process on loopback and learn its URL.

Used by the demo, the recruiter example, the tests and the benchmarks::

    with RelayProcess(data_dir=tmp_path / "relay") as relay:
        client = RelayClient(relay.url)
        ...
    # stopped with SIGTERM (graceful) on exit

``kill()`` sends SIGKILL and ``restart()`` starts it again on the same port and data, for fault
tests. With ``stop_with_parent`` (the demo) the relay gets SIGTERM when the process that
started it dies, even by SIGKILL, where the OS offers that (Linux ``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from commander_os.errors import RelayError

__all__ = ["RelayProcess"]

_LISTENING = re.compile(r"listening on (https?://\S+)")
DEFAULT_START_TIMEOUT = 30.0


class RelayProcess:
    """A relay child process (``python -m commander_os.network.relay``)."""

    def __init__(
        self,
        *,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 0,
        config: Path | None = None,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        start_timeout: float = DEFAULT_START_TIMEOUT,
        cpu: int | None = None,
        stop_with_parent: bool = False,
    ) -> None:
        self.data_dir = data_dir
        self.host = host
        self.port = port
        self.config = config
        self.extra_args = extra_args
        self.env = env
        self.start_timeout = start_timeout
        self.cpu = cpu
        self.stop_with_parent = stop_with_parent
        self.url: str = ""
        self.output: deque[str] = deque(maxlen=200)
        self._process: subprocess.Popen[str] | None = None

    @property
    def pid(self) -> int | None:
        """The child's pid while it runs."""
        return None if self._process is None else self._process.pid

    def _argv(self) -> list[str]:
        argv = [sys.executable, "-m", "commander_os.network.relay"]
        if self.config is not None:
            argv += ["--config", str(self.config)]
        argv += ["--host", self.host, "--port", str(self.port), "--data-dir", str(self.data_dir)]
        argv += list(self.extra_args)
        if self.cpu is not None:
            argv = ["taskset", "-c", str(self.cpu), *argv]
        return argv

    def start(self) -> str:
        """Start the relay; return its URL once it accepts connections."""
        env = {**os.environ, **(self.env or {}), "PYTHONUNBUFFERED": "1"}
        on_parent_death = _parent_death_signal() if self.stop_with_parent else None
        self._process = subprocess.Popen(
            self._argv(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
            preexec_fn=on_parent_death,
        )
        found = threading.Event()
        threading.Thread(target=self._pump, args=(self._process, found), daemon=True).start()
        if not found.wait(self.start_timeout) or not self.url:
            self.kill()
            reason = self.output[-1] if self.output else "no output"
            raise RelayError(f"relay did not start: {reason}")
        # Keep the port, so a restart comes back at the same address.
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])
        return self.url

    def _pump(self, process: subprocess.Popen[str], found: threading.Event) -> None:
        assert process.stdout is not None
        # Closing the pipe here, at EOF (the child exited), keeps a killed or stopped relay
        # from leaving an unclosed file behind (a ResourceWarning when its Popen is collected).
        with process.stdout:
            for line in process.stdout:
                self.output.append(line.rstrip())
                match = _LISTENING.search(line)
                if match and not found.is_set():
                    self.url = match.group(1).rstrip("/")
                    found.set()
        found.set()

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM (graceful shutdown) and wait; SIGKILL if it does not exit in time."""
        process = self._process
        if process is None:
            return None
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self._process = None
        return process.returncode

    def kill(self) -> None:
        """SIGKILL: the relay dies at once, as in a crash."""
        process = self._process
        if process is not None:
            if process.poll() is None:
                process.kill()
            process.wait()
        self._process = None

    def restart(self) -> str:
        """Start again on the same port and data folder."""
        self.kill()
        return self.start()

    def __enter__(self) -> RelayProcess:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send the child SIGTERM when its parent dies; None
    elsewhere (the parent's signal handlers are all there is then)."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return None
    prctl = libc.prctl
    set_pdeathsig = 1  # PR_SET_PDEATHSIG, <linux/prctl.h>

    def request() -> None:
        prctl(set_pdeathsig, signal.SIGTERM)

    return request
