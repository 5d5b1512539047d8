"""The relay side: the HTTP relay, its central stores, tokens, and a process runner.

Nothing here imports the agent side (``commander_os.storage``); both speak
:mod:`commander_os.protocol`.

* :func:`create_app` builds the ASGI app over a central store (:mod:`.central`);
* :func:`serve` runs it (``commander-os relay serve`` and ``python -m commander_os.network.relay``
  are the command-line forms);
* :class:`RelayProcess` runs a relay as a child process, for tests, demos and benchmarks;
* :func:`issue_token` / :func:`verify_token` are the agent tokens of ``relay.auth``.
"""

from __future__ import annotations

from commander_os.relay._app import create_app
from commander_os.relay._auth import issue_token, verify_token
from commander_os.relay._process import RelayProcess
from commander_os.relay._server import LISTENING_PREFIX, serve, serve_async

__all__ = [
    "LISTENING_PREFIX",
    "RelayProcess",
    "create_app",
    "issue_token",
    "serve",
    "serve_async",
    "verify_token",
]
