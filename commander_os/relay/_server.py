"""Running the relay: startup checks, uvicorn on a socket we bind, GC tuning, signals.

:func:`serve` runs it in the foreground and prints ``relay listening on URL`` once it accepts
connections (the real port when port 0 asked for an ephemeral one). SIGTERM / SIGINT shut it
down gracefully: in-flight requests finish, the central store's writer drains, the database
closes.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI

from commander_os.config import LOOPBACK_NAMES, RelayConfig
from commander_os.errors import ConfigError
from commander_os.protocol import RELAY_KEEPALIVE_SECONDS
from commander_os.relay._app import create_app
from commander_os.relay._auth import load_secret
from commander_os.relay._connections import guarded_protocol
from commander_os.relay._feed import MAX_WAIT_SECONDS
from commander_os.relay._logging import configure_logging
from commander_os.relay.central import store_for_config

__all__ = ["LISTENING_PREFIX", "check_startable", "serve", "serve_async"]

#: The first words of the line printed once the relay accepts connections.
LISTENING_PREFIX = "relay listening on "
#: Allocations between two young-generation collections in a relay process (default 700).
GC_YOUNG_THRESHOLD = 50_000
_log = logging.getLogger("commander_os.relay")


def check_startable(config: RelayConfig) -> list[str]:
    """Refuse unsafe settings with a fix; return warnings for risky but allowed ones."""
    if config.tls is not None:
        for name, path in (("certfile", config.tls.certfile), ("keyfile", config.tls.keyfile)):
            if not path.is_file():
                raise ConfigError(f"relay.tls.{name}: {path} is not a readable file")
    return _auth_problems(config) + _exposure_problems(config)


def _auth_problems(config: RelayConfig) -> list[str]:
    if not config.auth:
        if not config.is_loopback():
            raise ConfigError(
                f"relay.host: refusing to listen on non-loopback address {config.host!r} "
                "without auth: anyone who can reach it could write as any agent. Set "
                "'auth: true' (and 'tls:') in relay.yaml and give each agent a token from "
                "'commander-os token create AGENT_ID', or listen on 127.0.0.1"
            )
        return [
            "relay.auth is off: every local process may read and write as any agent "
            "(acceptable on loopback for development; set 'auth: true' otherwise)"
        ]
    if config.tls is None and not config.is_loopback():
        return [
            f"relay.tls is not set: tokens and records cross the network to {config.host} in "
            "clear text; set tls.certfile and tls.keyfile in relay.yaml"
        ]
    return []


def _exposure_problems(config: RelayConfig) -> list[str]:
    warnings = []
    if config.tls is not None and config.tls.keyfile.stat().st_mode & 0o077:
        warnings.append(
            f"relay.tls.keyfile: {config.tls.keyfile} is accessible by other users; "
            f"restrict it with: chmod 600 {config.tls.keyfile}"
        )
    wildcard = config.host.strip("[]") in ("0.0.0.0", "::")  # noqa: S104 (a comparison)
    if wildcard and set(config.allowed_hosts) <= set(LOOPBACK_NAMES):
        warnings.append(
            f"relay.allowed_hosts: listening on {config.host}, but only requests naming "
            f"{', '.join(config.allowed_hosts) or 'nothing'} in their Host header are answered; "
            "add the names agents use to reach the relay (or '*')"
        )
    return warnings


async def serve_async(
    config: RelayConfig, *, on_ready: Callable[[str], Awaitable[None] | None] | None = None
) -> None:
    """Run the relay until SIGTERM / SIGINT, then shut down gracefully.

    ``on_ready(url)`` is called once the socket accepts connections, with the bound port.
    Raises :class:`ConfigError` for unsafe settings (no auth beyond loopback, missing TLS files,
    a short secret); with auth on and no ``relay.secret``, the secret file is created on first
    start.
    """
    for warning in check_startable(config):
        _log.warning("relay: warning: %s", warning)
    secret = load_secret(config, create=True) if config.auth else None
    # Open the central store before listening: a bad database_url or an unreachable database
    # then fails fast with one clear line (CentralStoreUnavailable), not a uvicorn traceback.
    store = store_for_config(config)
    await store.open()
    try:
        await _run_server(config, create_app(config, store=store, secret=secret), on_ready)
    finally:
        await store.close()


async def _run_server(
    config: RelayConfig,
    app: FastAPI,
    on_ready: Callable[[str], Awaitable[None] | None] | None,
) -> None:
    import uvicorn

    tls: dict[str, Any] = {}
    if config.tls is not None:
        tls = {"ssl_certfile": str(config.tls.certfile), "ssl_keyfile": str(config.tls.keyfile)}
    server = uvicorn.Server(
        uvicorn.Config(
            app,
            host=config.host,
            port=config.port,
            log_level=config.log_level,
            log_config=None,  # serve() configured logging: text or JSON, ours and uvicorn's
            access_log=False,  # relay.access_log is ours (_logging.AccessLog): it has the time
            server_header=False,
            # Longer than agents keep idle connections (protocol.RELAY_KEEPALIVE_SECONDS).
            timeout_keep_alive=int(RELAY_KEEPALIVE_SECONDS),
            timeout_graceful_shutdown=int(MAX_WAIT_SECONDS) + 5,
            # Header and body deadlines, a header size cap and a connection bound (uvicorn has
            # none of the first three): see _connections.
            http=guarded_protocol(config.limits),
            # uvicorn would believe X-Forwarded-For from 127.0.0.1 by default, so any local
            # process could pick the address the rate limits key on; relay.trusted_proxies
            # decides instead (_http_guard).
            proxy_headers=False,
            **tls,
        )
    )
    # Bind here rather than in uvicorn: a busy port then raises one clear OSError instead of
    # uvicorn's sys.exit(1) buried in a task traceback.
    sock = _bind(config.host, config.port)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started and not task.done():
        await asyncio.sleep(0.01)
    if server.started:
        port = server.servers[0].sockets[0].getsockname()[1]
        scheme = "https" if config.tls else "http"
        host = f"[{config.host}]" if ":" in config.host else config.host
        result = on_ready(f"{scheme}://{host}:{port}") if on_ready else None
        if result is not None:
            await result
    await task
    if not server.started:
        raise OSError(f"relay could not start on {config.host}:{config.port}")


def _bind(host: str, port: int) -> socket.socket:
    """A listening-ready TCP socket on ``host:port``, or an OSError that says what is wrong."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((bare, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise OSError(f"cannot listen on {host}:{port}: the port is already in use") from None
        raise OSError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed, else asyncio's. With uvloop (and httptools,
    which uvicorn picks by itself when installed) ingest ran ~20% more records/s."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def serve(config: RelayConfig) -> None:
    """Run the relay in the foreground (blocking); prints ``relay listening on URL``.

    Sets up the process's logging first (``log_level``, ``log_format``): this is a relay
    process's entry point.
    """
    configure_logging(config)

    def announce(url: str) -> None:
        print(LISTENING_PREFIX + url, flush=True)

    # uvicorn re-raises the signal that stopped it after its graceful shutdown; with these
    # handlers in place that re-raise is a no-op and the process exits with status 0.
    previous = {sig: signal.signal(sig, lambda *_: None) for sig in (signal.SIGTERM, signal.SIGINT)}
    thresholds = gc.get_threshold()
    # A batch of 1,000 records parses into ~3,000 short-lived containers: at the default
    # threshold (700) every request ran several collections, each re-walking the ~300k objects
    # of the imported modules (~25% of the ingest CPU). Move those out of the collector's
    # sight (freeze) and collect the young generation less often; cycles are still collected.
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *thresholds[1:])
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve_async(config, on_ready=announce))
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
