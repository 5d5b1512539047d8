"""Configuration: pydantic models for the two YAML files, plus their loaders.

``config/storage_config.yaml`` holds ``agent_storage:`` (agent side) and ``config/relay.yaml``
holds ``relay:`` (relay side), as the seed shows them. Environment variables named
``COMMANDER_OS_<KEY>`` (for example ``COMMANDER_OS_HTPC_URL`` or ``COMMANDER_OS_PORT``) override
the file. Every error names the file, the key and what is wrong.

Only the CLI and these loaders read files and the environment; everything else takes a config
object.
"""

from __future__ import annotations

import ipaddress
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from commander_os.errors import ConfigError

__all__ = [
    "DEFAULT_RELAY_URL",
    "ENV_PREFIX",
    "AlertsConfig",
    "LimitsConfig",
    "RelayConfig",
    "StorageConfig",
    "TLSConfig",
    "load_relay_config",
    "load_storage_config",
    "read_encryption_key",
    "read_token",
]

ENV_PREFIX = "COMMANDER_OS_"
DEFAULT_RELAY_URL = "http://127.0.0.1:8001"

Durability = Literal["full", "normal"]
SyncMode = Literal["async", "sync"]


def _check_http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not an http:// or https:// URL with a host")
    return url.rstrip("/")


class _Section(BaseModel):
    # hide_input_in_errors: a validation error must not print a secret (key, token) back.
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, hide_input_in_errors=True
    )


class StorageConfig(_Section):
    """The ``agent_storage:`` section of ``storage_config.yaml``.

    ``local_data_dir`` is the folder that holds one sub-folder per agent.
    """

    local_data_dir: Path = Path("./data/agents")
    htpc_url: str = DEFAULT_RELAY_URL
    #: Further relays to fail over to, tried in order after ``htpc_url``.
    htpc_urls: list[str] = Field(default_factory=list)
    enable_htpc: bool = True
    #: Seconds; the longest pause between retries while the relay is away.
    sync_interval: float = Field(default=60, gt=0, le=86400)
    sync_batch_size: int = Field(default=100, ge=1, le=5000)
    #: How many times a record the relay rejects (4xx) is retried before it is dead-lettered.
    max_retry_count: int = Field(default=5, ge=1, le=1000)
    durability: Durability = "full"
    sync_mode: SyncMode = "async"
    #: Seconds a ``sync_mode="sync"`` write waits for the relay (then returns, write queued).
    sync_timeout: float = Field(default=5.0, gt=0, le=600)
    #: Seconds a writer waits for another connection's lock before StorageBusy.
    busy_timeout: float = Field(default=30.0, gt=0, le=3600)
    request_timeout: float = Field(default=10.0, gt=0, le=600)
    #: The agent's relay token (``commander-os token create``); never shown in repr or errors.
    htpc_token: str | None = Field(default=None, repr=False)
    token_file: Path | None = None
    htpc_ca_file: Path | None = None
    #: Encrypt the store at rest (SQLCipher): a passphrase, or 64 hex digits for a raw key.
    #: Never shown in repr or errors. ``encryption_key_file`` holds it instead (one line).
    encryption_key: str | None = Field(default=None, repr=False)
    encryption_key_file: Path | None = None
    max_value_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)

    @field_validator("htpc_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_http_url(value)

    @field_validator("htpc_urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        return [_check_http_url(url) for url in value]

    def relay_urls(self) -> list[str]:
        """``htpc_url`` followed by any further ``htpc_urls``, without repeats."""
        return list(dict.fromkeys([self.htpc_url, *self.htpc_urls]))


class TLSConfig(_Section):
    """``relay.tls``: serve HTTPS with this certificate and key."""

    certfile: Path
    keyfile: Path


class LimitsConfig(_Section):
    """``relay.limits``: request bounds; violations answer 413 / 422 / 429."""

    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_batch_records: int = Field(default=5000, ge=1, le=5000)
    max_value_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_json_depth: int = Field(default=64, ge=2, le=512)
    max_query_limit: int = Field(default=1000, ge=1, le=1000)
    query_timeout: float = Field(default=5.0, gt=0, le=300)
    requests_per_second: float | None = Field(default=None, gt=0)


class AlertsConfig(_Section):
    """``relay.alerts``: when an agent counts as behind; shown on the dashboard and in
    ``/metrics`` (``commander_relay_alert_*``)."""

    #: Changes waiting in an agent's outbox (from its heartbeats) above which it is behind.
    max_queue: int = Field(default=1000, ge=0)
    #: Seconds between an agent's write and its arrival at the relay above which it is behind.
    max_lag_seconds: float = Field(default=60.0, gt=0)
    #: Seconds without a record or heartbeat after which an agent counts as silent.
    max_silence_seconds: float = Field(default=300.0, gt=0)


class RelayConfig(_Section):
    """The ``relay:`` section of ``relay.yaml``."""

    host: str = "127.0.0.1"
    port: int = Field(default=8001, ge=0, le=65535)
    agent_storage_dir: Path = Path("./data/relay")
    enable_storage_sync: bool = True
    backend: Literal["sqlite", "postgresql"] = "sqlite"
    database_url: str | None = None
    durability: Durability = "full"
    auth: bool = False
    #: HMAC key for agent tokens (at least 32 characters); default: ``relay.secret`` in
    #: ``agent_storage_dir``, generated on first start. Never shown in repr or errors.
    secret: str | None = Field(default=None, repr=False)
    tls: TLSConfig | None = None
    limits: LimitsConfig = Field(default_factory=LimitsConfig)
    #: Encrypt the SQLite central store at rest, as ``StorageConfig.encryption_key``.
    encryption_key: str | None = Field(default=None, repr=False)
    encryption_key_file: Path | None = None
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    #: Query and data analytics (``/relay/analytics``, the dashboard's views, per-agent
    #: metrics); off, the relay keeps only its plain counters (for comparisons of cost).
    analytics: bool = True
    #: Queries slower than this (milliseconds) go to the slow-query log.
    slow_query_ms: float = Field(default=250.0, ge=0)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    #: Agents exported one by one in ``/metrics`` (the rest are summed as agent="other").
    metrics_max_agents: int = Field(default=50, ge=1, le=10_000)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value or any(ch.isspace() for ch in value):
            raise ValueError("host must be a host name or IP address such as 127.0.0.1")
        return value

    @model_validator(mode="after")
    def _backend_needs_url(self) -> RelayConfig:
        if self.backend == "postgresql" and not self.database_url:
            raise ValueError(
                "backend 'postgresql' needs database_url (postgresql://user@host:5432/db)"
            )
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            raise ValueError("database_url must start with postgresql://")
        if self.backend == "postgresql" and (self.encryption_key or self.encryption_key_file):
            raise ValueError(
                "encryption_key applies to the sqlite backend only; encrypt PostgreSQL's "
                "storage with its own means"
            )
        return self

    def is_loopback(self) -> bool:
        """True when the relay listens on a loopback address only."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host.strip("[]")).is_loopback
        except ValueError:
            return False


def _read_secret_file(path: Path, setting: str, hint: str = "") -> str:
    """The one-line secret in ``path``; errors name the file and setting, never the content."""
    try:
        secret = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read {setting}: {exc}") from None
    if not secret:
        raise ConfigError(f"{path}: {setting} is empty{hint}")
    return secret


def read_token(config: StorageConfig) -> str | None:
    """The relay token from ``htpc_token`` or ``token_file``, if any.

    Raises :class:`~commander_os.errors.ConfigError` naming the file (never its content) when
    ``token_file`` cannot be read or is empty.
    """
    if config.htpc_token:
        return config.htpc_token
    if config.token_file is None:
        return None
    return _read_secret_file(
        config.token_file, "token_file", " (commander-os token create AGENT_ID)"
    )


def read_encryption_key(section: StorageConfig | RelayConfig) -> str | None:
    """The encryption key of ``section``: ``encryption_key``, else ``encryption_key_file``.

    The file holds the key on one line (surrounding whitespace is dropped). Returns None when
    neither is set. Raises :class:`~commander_os.errors.ConfigError` naming the file (never
    the key) if it cannot be read or is empty.
    """
    if section.encryption_key is not None:
        return section.encryption_key
    if section.encryption_key_file is None:
        return None
    return _read_secret_file(section.encryption_key_file, "encryption_key_file")


_Model = TypeVar("_Model", bound=BaseModel)


def _read_yaml(path: Path, section: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc}") from exc
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict) or section not in document:
        raise ConfigError(f"{path}: expected a top-level '{section}:' section")
    body = document[section]
    if body is None:
        return {}
    if not isinstance(body, dict):
        raise ConfigError(f"{path}: '{section}' must be a mapping of settings")
    return body


def _env_overrides(model: type[BaseModel], environ: Mapping[str, str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        raw = environ.get(ENV_PREFIX + name.upper())
        if raw is None:
            continue
        if field.annotation is not str and raw.strip()[:1] in ("[", "{"):
            overrides[name] = yaml.safe_load(raw)
        elif typing.get_origin(field.annotation) is list:
            # COMMANDER_OS_HTPC_URLS=http://a:8001,http://b:8001 (a YAML list works as well)
            overrides[name] = [item.strip() for item in raw.split(",") if item.strip()]
        else:
            overrides[name] = raw
    return overrides


def _build(model: type[_Model], values: dict[str, Any], *, source: str, section: str) -> _Model:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = ".".join(str(part) for part in error["loc"]) or "(section)"
            message = error["msg"]
            if error["type"] == "extra_forbidden":
                message = f"unknown setting (known: {', '.join(sorted(model.model_fields))})"
            problems.append(f"{section}.{where}: {message}")
        raise ConfigError(f"{source}: invalid configuration\n  " + "\n  ".join(problems)) from None


def _load(
    model: type[_Model],
    section: str,
    path: Path | str | None,
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, Any] | None,
) -> _Model:
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    source = "defaults and command-line options"
    if path is not None:
        values.update(_read_yaml(Path(path), section))
        source = str(path)
    env = _env_overrides(model, environ)
    values.update(env)
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    if env:
        source += " (with " + ", ".join(ENV_PREFIX + k.upper() for k in env) + ")"
    return _build(model, values, source=source, section=section)


def load_storage_config(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> StorageConfig:
    """Load ``agent_storage:`` from ``path`` (or defaults), then apply ``COMMANDER_OS_*``.

    Raises :class:`~commander_os.errors.ConfigError` naming the file and key on any problem.
    """
    return _load(StorageConfig, "agent_storage", path, environ, overrides)


def load_relay_config(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RelayConfig:
    """Load ``relay:`` from ``path`` (or defaults), then ``COMMANDER_OS_*``, then ``overrides``.

    ``overrides`` (command-line options) win over the environment, which wins over the file.
    """
    return _load(RelayConfig, "relay", path, environ, overrides)
