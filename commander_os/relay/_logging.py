"""The relay's logs: one handler on stderr for ours and uvicorn's, as text or JSON lines, and
an optional access log.

``log_format: json`` writes one JSON object per line (``time``, ``level``, ``logger``,
``message`` and the record's extra fields) through python-json-logger, which the ``relay``
extra installs. The access log (``access_log: true``) is one line per request on the logger
``commander_os.relay.access``: client address, method, path, status, bytes sent and
milliseconds. It never holds a header or a query string, so no token or cursor reaches it.
"""

from __future__ import annotations

import logging
import logging.config
import time
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from commander_os.config import RelayConfig
from commander_os.errors import ConfigError

__all__ = ["ACCESS_LOGGER", "AccessLog", "configure_logging", "logging_config"]

ACCESS_LOGGER = "commander_os.relay.access"
_TEXT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_JSON_FIELDS = "%(asctime)s %(levelname)s %(name)s %(message)s"
_ISO = "%Y-%m-%dT%H:%M:%S%z"


def _formatter(log_format: str) -> dict[str, Any]:
    if log_format == "text":
        return {"format": _TEXT, "datefmt": _ISO}
    try:
        import pythonjsonlogger.json  # noqa: F401 - checked here, built by dictConfig
    except ImportError:
        raise ConfigError(
            "relay.log_format: json needs python-json-logger: "
            "pip install 'commander-os-storage[relay]'"
        ) from None
    return {
        "()": "pythonjsonlogger.json.JsonFormatter",
        "fmt": _JSON_FIELDS,
        "datefmt": _ISO,
        "rename_fields": {"asctime": "time", "levelname": "level", "name": "logger"},
    }


def logging_config(config: RelayConfig) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of a relay process."""
    level = config.log_level.upper()
    ours = {"handlers": ["stderr"], "level": level, "propagate": False}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"relay": _formatter(config.log_format)},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "relay",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "commander_os": ours,
            "uvicorn": ours,
            # uvicorn's own access log stays off: ours (AccessLog) has the duration and size.
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            ACCESS_LOGGER: {"level": "INFO"},
        },
    }


def configure_logging(config: RelayConfig) -> None:
    """Set up the logging of a relay process (its entry point calls this once)."""
    logging.config.dictConfig(logging_config(config))


class AccessLog:
    """ASGI middleware: one INFO line per HTTP request on :data:`ACCESS_LOGGER`."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.log = logging.getLogger(ACCESS_LOGGER)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        sent = 0

        async def observe(message: Message) -> None:
            nonlocal status, sent
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                sent += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, observe)
        finally:
            self._write(scope, status, sent, (time.perf_counter() - started) * 1000)

    def _write(self, scope: Scope, status: int, sent: int, ms: float) -> None:
        client = scope.get("client")
        address = client[0] if client else "-"
        # The path only: a query string may carry a cursor or, from a careless client, a token.
        path = scope.get("path", "")[:300]
        self.log.info(
            '%s "%s %s" %d %d B %.1f ms',
            address,
            scope["method"],
            path,
            status,
            sent,
            ms,
            extra={
                "client": address,
                "method": scope["method"],
                "path": path,
                "status": status,
                "bytes": sent,
                "duration_ms": round(ms, 2),
            },
        )
