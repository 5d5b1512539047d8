"""Configuration: pydantic models for the two YAML files, plus their loaders.

``config/storage_config.yaml`` holds ``agent_storage:`` (agent side) and ``config/relay.yaml``
holds ``relay:`` (relay side), as the seed shows them. Environment variables override the
file, and the loaders' ``overrides`` (command-line options) override both:

* agent settings are ``COMMANDER_OS_<SETTING>``, e.g. ``COMMANDER_OS_HTPC_URL``;
* relay settings are ``COMMANDER_OS_RELAY_<SETTING>``, e.g. ``COMMANDER_OS_RELAY_PORT``. The
  names the relay read before it had a prefix of its own (``COMMANDER_OS_PORT``,
  ``COMMANDER_OS_DATABASE_URL``, ...: :data:`RELAY_ENV_ALIASES`) still work; the prefixed name
  wins when both are set;
* nested settings join with ``__``: ``COMMANDER_OS_RELAY_LIMITS__MAX_BODY_BYTES``; a whole
  section also takes one JSON/YAML mapping (``COMMANDER_OS_RELAY_LIMITS='{max_body_bytes: 2048}'``);
* lists take JSON/YAML (``[a, b]``) or commas (``a,b``).

:func:`environment_variables` lists every variable. pydantic-settings reads them; the loaders
merge them with the file and the overrides, and report every problem as one
:class:`~commander_os.errors.ConfigError` naming the file, the variable, the key and the fix.

Only the CLI and these loaders read files and the environment; everything else takes a config
object, and building one (``StorageConfig(htpc_url=...)``) reads nothing but its arguments.
"""

from __future__ import annotations

import ipaddress
import os
import re
import typing
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AnyHttpUrl,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

from commander_os._files import warn_if_exposed
from commander_os.errors import ConfigError

__all__ = [
    "DEFAULT_RELAY_URL",
    "ENV_NESTED_DELIMITER",
    "ENV_PREFIX",
    "LOOPBACK_NAMES",
    "RELAY_ENV_ALIASES",
    "RELAY_ENV_PREFIX",
    "AlertsConfig",
    "LimitsConfig",
    "RelayConfig",
    "StorageConfig",
    "TLSConfig",
    "environment_variables",
    "load_relay_config",
    "load_storage_config",
    "read_encryption_key",
    "read_token",
]

ENV_PREFIX = "COMMANDER_OS_"
RELAY_ENV_PREFIX = "COMMANDER_OS_RELAY_"
ENV_NESTED_DELIMITER = "__"
DEFAULT_RELAY_URL = "http://127.0.0.1:8001"

#: The relay's variables from before it had a prefix of its own, and the setting each sets.
#: ``COMMANDER_OS_DURABILITY`` and ``COMMANDER_OS_ENCRYPTION_KEY(_FILE)`` are not among them:
#: agent and relay both read those once, and now they are the agent's only.
RELAY_ENV_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        ENV_PREFIX + name.upper(): name
        for name in (
            "host",
            "port",
            "agent_storage_dir",
            "enable_storage_sync",
            "backend",
            "database_url",
            "auth",
            "secret",
            "tls",
            "limits",
            "log_level",
        )
    }
)

Durability = Literal["full", "normal"]
SyncMode = Literal["async", "sync"]
#: The names every loopback relay answers to by default (``relay.allowed_hosts``).
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
#: A field path as queries take it (``protocol.FIELD_PATH_PATTERN``), without array positions
#: (all-digit segments): the paths a value index can hold.
INDEXABLE_FIELD_PATTERN = (
    r"^[A-Za-z_][A-Za-z0-9_]{0,63}(\.(?![0-9]+(\.|$))[A-Za-z0-9_]{1,64}){0,7}$"
)

_HTTP_URL: TypeAdapter[AnyHttpUrl] = TypeAdapter(AnyHttpUrl)


def _check_http_url(url: str) -> str:
    """``url`` without its trailing slash, if it is an http(s) URL a client can use.

    Checked here so that a typo (``http://127.0.0.1:8O01``) stops the store from being built,
    instead of failing in the background on the first sync.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{url!r} is not an http:// or https:// URL")
    if parts.username is not None or parts.password is not None:
        # A password in the URL would be shown in every log line and status that names the
        # relay; the relay's credential is a bearer token, given on its own.
        shown = f"{parts.scheme}://***@{parts.netloc.rpartition('@')[2]}{parts.path}"
        raise ValueError(
            f"{shown} holds credentials in the URL: give the relay's token as htpc_token or "
            "token_file instead"
        )
    try:
        _HTTP_URL.validate_python(url)
    except ValidationError as exc:
        reason = str(exc.errors()[0]["msg"]).removeprefix("Input should be a valid URL, ")
        raise ValueError(f"{url!r} is not a valid URL: {reason}") from None
    return url.rstrip("/")


class _Section(BaseModel):
    # hide_input_in_errors: a validation error must not print a secret (key, token) back.
    model_config = ConfigDict(
        extra="forbid", frozen=True, validate_default=True, hide_input_in_errors=True
    )


class _Settings(BaseSettings):
    """A top-level section: a YAML section, a family of environment variables, and a model.

    Building one directly reads only its arguments (the environment is the loaders' business,
    never a constructor's), and a bad argument is a :class:`ConfigError` naming the setting.
    """

    model_config = SettingsConfigDict(
        extra="forbid",
        frozen=True,
        validate_default=True,
        hide_input_in_errors=True,
        case_sensitive=False,
        env_nested_delimiter=ENV_NESTED_DELIMITER,
    )
    #: The top-level key of this section in its YAML file.
    yaml_section: ClassVar[str]
    #: Older environment variable names, each mapped to the setting it sets.
    env_aliases: ClassVar[Mapping[str, str]] = MappingProxyType({})

    def __init__(self, **values: Any) -> None:
        try:
            # BaseModel's __init__, not BaseSettings': a config built in code takes its
            # arguments only (and no settings sources are run for it).
            BaseModel.__init__(self, **values)
        except ValidationError as exc:
            raise ConfigError(_describe(type(self), exc, "settings given in code", {})) from None

    # pydantic runs a model's own __init__ inside model_validate too, where this ConfigError
    # would be wrapped into a ValidationError; the flag (pydantic's, set on its own
    # BaseModel.__init__) tells it to validate there without calling it. So model_validate
    # raises ValidationError (the loaders turn it into a ConfigError naming file and variable)
    # and reads nothing but its input.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]


class StorageConfig(_Settings):
    """The ``agent_storage:`` section of ``storage_config.yaml`` (variables ``COMMANDER_OS_*``).

    ``local_data_dir`` is the folder that holds one sub-folder per agent.
    """

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX)
    yaml_section: ClassVar[str] = "agent_storage"

    local_data_dir: Path = Path("./data/agents")
    htpc_url: str = DEFAULT_RELAY_URL
    #: Further relays to fail over to, tried in order after ``htpc_url``: several fronts of ONE
    #: central store (a write goes to whichever answers). Not redundancy: see ``replicate_to``.
    htpc_urls: list[str] = Field(default_factory=list)
    #: Further central stores that each receive every write (redundancy): one entry per store,
    #: a URL or a fail-over list of relays in front of it. Each keeps its own cursor.
    replicate_to: list[str | list[str]] = Field(default_factory=list)
    #: How many targets (``htpc_url`` plus ``replicate_to``) must hold a write before it counts
    #: as acknowledged (``sync_mode="sync"``, ``wait_for_sync``, ``process_sync_queue``,
    #: ``close``): a number, ``majority`` or ``all``.
    sync_quorum: int | Literal["majority", "all"] = "majority"
    #: While a target is away, keep only each key's newest change in the outbox, so it stays
    #: bounded by the keys changed rather than the writes made (off: keep every change).
    compact_outbox: bool = True
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
    #: Seconds ``close()`` keeps shipping what is queued (retrying a relay that blinks) before
    #: it closes anyway; what could not ship stays queued for the next open.
    close_timeout: float = Field(default=10.0, ge=0, le=3600)
    #: While a request is in flight, new changes gather for the next one until its answer
    #: arrives (an idle relay still gets a lone write at once); only a backlog sends the next
    #: request earlier, this many seconds after the previous one.
    sync_linger: float = Field(default=0.002, ge=0, le=1)
    #: Requests one shipper keeps in flight to a relay while a backlog drains.
    sync_pipeline: int = Field(default=4, ge=1, le=64)
    #: Seconds between two cheap looks for changes committed by other processes.
    poll_interval: float = Field(default=1.0, gt=0, le=3600)
    #: Seconds between two reports of the process's stores' outboxes to each relay (one
    #: request for all of them); 0 sends none.
    heartbeat_interval: float = Field(default=60.0, ge=0, le=3600)
    #: Open the database even if its path is a symbolic link (refused by default: a link
    #: planted there would send every write elsewhere).
    follow_symlinks: bool = False
    #: Seconds between two automatic backups of an open store; None: none.
    backup_interval: float | None = Field(default=None, gt=0, le=366 * 86400)
    #: Backups kept per agent in its backup folder (older ones go after each automatic one).
    backup_keep: int = Field(default=7, ge=1, le=100_000)
    #: Folder of the backups; None: ``backups`` beside the store's database.
    backup_dir: Path | None = None

    @field_validator("htpc_url")
    @classmethod
    def _url(cls, value: str) -> str:
        return _check_http_url(value)

    @field_validator("htpc_urls")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        return [_check_http_url(url) for url in value]

    @field_validator("replicate_to")
    @classmethod
    def _replicas(cls, value: list[str | list[str]]) -> list[str | list[str]]:
        checked: list[str | list[str]] = []
        for entry in value:
            if isinstance(entry, str):
                checked.append(_check_http_url(entry))
            elif not entry:
                raise ValueError("a replicate_to entry is a URL or a non-empty list of URLs")
            else:
                checked.append([_check_http_url(url) for url in entry])
        return checked

    @model_validator(mode="after")
    def _quorum(self) -> StorageConfig:
        targets = len(self.target_urls())
        if isinstance(self.sync_quorum, int) and not 1 <= self.sync_quorum <= targets:
            raise ValueError(
                f"sync_quorum {self.sync_quorum} must be between 1 and the number of targets "
                f"({targets}: htpc_url and {targets - 1} replicate_to entries), or 'majority' "
                "or 'all'"
            )
        return self

    def relay_urls(self) -> list[str]:
        """``htpc_url`` followed by any further ``htpc_urls``, without repeats."""
        return list(dict.fromkeys([self.htpc_url, *self.htpc_urls]))

    def target_urls(self) -> list[list[str]]:
        """Every central store a write goes to: the first is ``htpc_url`` with its fail-over
        ``htpc_urls``, then each ``replicate_to`` entry. A store named twice counts once."""
        stores = [self.relay_urls()]
        seen = {stores[0][0]}
        for entry in self.replicate_to:
            urls = list(dict.fromkeys([entry] if isinstance(entry, str) else entry))
            if urls[0] not in seen:
                seen.add(urls[0])
                stores.append(urls)
        return stores

    def quorum_size(self) -> int:
        """How many targets must hold a write for it to count as acknowledged."""
        targets = len(self.target_urls())
        if self.sync_quorum == "all":
            return targets
        if self.sync_quorum == "majority":
            return targets // 2 + 1
        return self.sync_quorum


class TLSConfig(_Section):
    """``relay.tls``: serve HTTPS with this certificate and key."""

    certfile: Path
    keyfile: Path


class LimitsConfig(_Section):
    """``relay.limits``: request bounds; violations answer 408 / 413 / 422 / 429 / 431."""

    max_body_bytes: int = Field(default=32 * 1024 * 1024, ge=1024)
    max_batch_records: int = Field(default=5000, ge=1, le=5000)
    max_value_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    max_json_depth: int = Field(default=64, ge=2, le=512)
    max_query_limit: int = Field(default=1000, ge=1, le=1000)
    #: Seconds a query (or change-feed page) may take, waiting for a reader included.
    query_timeout: float = Field(default=5.0, gt=0, le=300)
    #: Requests per second per agent (per client address without auth); None: no limit.
    requests_per_second: float | None = Field(default=None, gt=0)
    #: Queries one token (one client address without auth) may run at once; 429 past it.
    max_concurrent_queries: int = Field(default=8, ge=1, le=1000)
    #: Failed authentications per client address per minute (bursts up to as many); past
    #: it, every request of that address gets 429 until the bucket refills. None: no limit.
    auth_failures_per_minute: float | None = Field(default=30.0, gt=0)
    #: Seconds a client has to send a request's line and headers, from the connection's start
    #: (or the request's first byte on a kept-alive connection); then 408 and closed.
    header_timeout: float = Field(default=10.0, gt=0, le=600)
    #: Seconds a client has to send a request's body once its headers are in; then 408.
    body_timeout: float = Field(default=30.0, gt=0, le=3600)
    #: Bytes of request line and headers; past it, 431 and closed.
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, le=1024 * 1024)
    #: Open connections; past it, new ones are closed at once (nothing read, nothing answered).
    max_connections: int = Field(default=1000, ge=1, le=1_000_000)


class AlertsConfig(_Section):
    """``relay.alerts``: when an agent counts as behind; shown on the dashboard and in
    ``/metrics`` (``commander_relay_alert_*``)."""

    #: Changes waiting in an agent's outbox (from its heartbeats) above which it is behind.
    max_queue: int = Field(default=1000, ge=0)
    #: Seconds between an agent's write and its arrival at the relay above which it is behind.
    max_lag_seconds: float = Field(default=60.0, gt=0)
    #: Seconds without a record or heartbeat after which an agent counts as silent.
    max_silence_seconds: float = Field(default=300.0, gt=0)


class RelayConfig(_Settings):
    """The ``relay:`` section of ``relay.yaml`` (variables ``COMMANDER_OS_RELAY_*``).

    A ``database_url`` without a ``backend`` selects ``backend: postgresql``.
    """

    model_config = SettingsConfigDict(env_prefix=RELAY_ENV_PREFIX)
    yaml_section: ClassVar[str] = "relay"
    env_aliases: ClassVar[Mapping[str, str]] = RELAY_ENV_ALIASES

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
    #: ``text`` lines, or ``json``: one JSON object per line (python-json-logger).
    log_format: Literal["text", "json"] = "text"
    #: One log line per request (client, method, path, status, bytes, ms); off by default,
    #: as a line per request costs more than a small request.
    access_log: bool = False
    #: ``Host`` header names the relay answers to (besides ``host`` itself): a name, an IP
    #: address, ``*.example.com`` (its subdomains) or ``*`` (any). Others get 400: a web page
    #: that re-points its own name at 127.0.0.1 (DNS rebinding) cannot reach the relay.
    allowed_hosts: list[str] = Field(default_factory=lambda: list(LOOPBACK_NAMES))
    #: Addresses or networks (``10.0.0.0/8``) of reverse proxies whose ``X-Forwarded-For``
    #: names the client; from anyone else the header is ignored.
    trusted_proxies: list[str] = Field(default_factory=list)
    #: Open ``central.db`` even if its path is a symbolic link (refused by default).
    follow_symlinks: bool = False
    #: Query and data analytics (``/relay/analytics``, the dashboard's views, per-agent
    #: metrics); off, the relay keeps only its plain counters (for comparisons of cost).
    analytics: bool = True
    #: Queries slower than this (milliseconds) go to the slow-query log.
    slow_query_ms: float = Field(default=250.0, ge=0)
    alerts: AlertsConfig = Field(default_factory=AlertsConfig)
    #: Agents exported one by one in ``/metrics`` (the rest are summed as agent="other").
    metrics_max_agents: int = Field(default=50, ge=1, le=10_000)
    #: Seconds between two online backups of the SQLite central store; None: none.
    backup_interval: float | None = Field(default=None, gt=0, le=366 * 86400)
    #: Relay backups kept in ``backup_dir`` (older ones go after each scheduled one).
    backup_keep: int = Field(default=7, ge=1, le=100_000)
    #: Folder of the relay's backups; None: ``backups`` in ``agent_storage_dir``.
    backup_dir: Path | None = None
    #: Fields of ``data`` with a value index in the central store (dotted paths such as
    #: ``value.status``), created at start; ``commander-os relay index`` adds more.
    indexed_fields: list[str] = Field(default_factory=list)
    #: Seconds the PostgreSQL change log keeps what a lagging reader needs: tombstones of
    #: deleted records and superseded entries are swept past it, and a cursor older than it
    #: gets 410 "resync needed".
    retention: float = Field(default=7 * 86_400.0, ge=60)

    @field_validator("host")
    @classmethod
    def _host(cls, value: str) -> str:
        if not value or any(ch.isspace() for ch in value):
            raise ValueError("host must be a host name or IP address such as 127.0.0.1")
        return value

    @model_validator(mode="before")
    @classmethod
    def _url_selects_postgresql(cls, data: Any) -> Any:
        # A database_url only ever names a PostgreSQL central store, so giving one (in the
        # file, the environment or an option) is choosing that backend, unless one is named.
        if isinstance(data, Mapping) and data.get("database_url") and "backend" not in data:
            return {**data, "backend": "postgresql"}
        return data

    @field_validator("allowed_hosts")
    @classmethod
    def _allowed_hosts(cls, value: list[str]) -> list[str]:
        names = [name.strip().lower().strip("[]") for name in value]
        for name in names:
            if not name or any(ch.isspace() or ch in "/@" for ch in name) or "://" in name:
                raise ValueError(
                    f"{name!r} is not a host name: give names such as relay.example.com, "
                    "*.example.com, 10.0.0.5 or *"
                )
        return names

    @field_validator("indexed_fields")
    @classmethod
    def _indexed_fields(cls, value: list[str]) -> list[str]:
        fields = [field.strip() for field in value]
        for field in fields:
            if not re.fullmatch(INDEXABLE_FIELD_PATTERN, field):
                raise ValueError(
                    f"{field!r} is not an indexable field: give a dotted path into the data "
                    "without array positions, such as value.status"
                )
        return list(dict.fromkeys(fields))

    @field_validator("trusted_proxies")
    @classmethod
    def _trusted_proxies(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry.strip(), strict=False)
            except ValueError:
                raise ValueError(
                    f"{entry!r} is not an IP address or network such as 10.0.0.1 or 10.0.0.0/8"
                ) from None
        return [entry.strip() for entry in value]

    @model_validator(mode="after")
    def _backend_needs_url(self) -> RelayConfig:
        if self.backend == "postgresql" and not self.database_url:
            raise ValueError(
                "backend 'postgresql' needs database_url (postgresql://user@host:5432/db)"
            )
        if self.database_url and not self.database_url.startswith(("postgresql://", "postgres://")):
            raise ValueError("database_url must start with postgresql://")
        if self.backend == "sqlite" and self.database_url:
            raise ValueError(
                "backend is 'sqlite' but database_url is set: set backend to 'postgresql' (or "
                "leave backend out) to use the database, or remove database_url"
            )
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


# ------------------------------------------------------------------------------- secrets


def _read_secret_file(path: Path, setting: str, hint: str = "") -> str:
    """The one-line secret in ``path``; errors name the file and setting, never the content.

    Warns (:class:`~commander_os.errors.InsecureFileWarning`) when other users may read it.
    """
    warn_if_exposed(path, setting)
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


# --------------------------------------------------------------------------- environment


def _nested_section(field: FieldInfo) -> type[BaseModel] | None:
    """The model of a nested section (``limits``, ``tls``: optional or not), else None."""
    for candidate in (field.annotation, *typing.get_args(field.annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def environment_variables(model: type[StorageConfig] | type[RelayConfig]) -> dict[str, str]:
    """Every environment variable ``model`` reads, mapped to the setting it sets.

    A nested section has one variable per setting (``COMMANDER_OS_RELAY_LIMITS__MAX_BODY_BYTES``
    sets ``relay.limits.max_body_bytes``) and one for the whole section as a JSON/YAML mapping
    (``COMMANDER_OS_RELAY_LIMITS``). The older names of relay settings are in
    :data:`RELAY_ENV_ALIASES`.
    """
    prefix = str(model.model_config.get("env_prefix", "")).upper()
    variables: dict[str, str] = {}
    for name, field in model.model_fields.items():
        variable = prefix + name.upper()
        variables[variable] = f"{model.yaml_section}.{name}"
        nested = _nested_section(field)
        for sub in nested.model_fields if nested is not None else ():
            variables[variable + ENV_NESTED_DELIMITER + sub.upper()] = (
                f"{model.yaml_section}.{name}.{sub}"
            )
    return variables


class _BadVariable(ValueError):
    """An environment value that cannot be parsed for ``setting``."""

    def __init__(self, setting: str, reason: str) -> None:
        super().__init__(reason)
        self.setting = setting


class _Environment(EnvSettingsSource):
    """One section's settings from environment variables.

    pydantic-settings does the naming (prefix, ``__`` nesting, case) and hands values to
    pydantic; this adds what it lacks: a given mapping instead of ``os.environ`` (so the
    loaders can be called with any environment), the relay's older names, and lists written
    with commas or as YAML (``[http://a, http://b]`` is YAML, not JSON).
    """

    def __init__(self, model: type[_Settings], environ: Mapping[str, str]) -> None:
        # case_sensitive=False: pydantic-settings looks names up in lower case.
        variables = {name.lower(): value for name, value in environ.items()}
        for old, setting in model.env_aliases.items():
            current = (str(model.model_config.get("env_prefix", "")) + setting).lower()
            if old.lower() in variables and current not in variables:
                variables[current] = variables[old.lower()]
        self._variables = variables
        super().__init__(model)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return self._variables

    def decode_complex_value(self, field_name: str, field: FieldInfo | None, value: Any) -> Any:
        text = str(value).strip()
        if text.startswith(("[", "{")):
            try:
                return yaml.safe_load(text)
            except yaml.YAMLError as exc:
                problem = str(exc).replace("\n", " ")
                raise _BadVariable(field_name, f"not a valid JSON/YAML value: {problem}") from None
        if field is not None and typing.get_origin(field.annotation) is list:
            return [item.strip() for item in text.split(",") if item.strip()]
        raise _BadVariable(field_name, "expected a JSON/YAML mapping such as '{key: value}'")


def _variables_for(model: type[_Settings], setting: str, environ: Mapping[str, str]) -> list[str]:
    """The variables of ``environ`` that set ``setting`` (its name, nested names, aliases)."""
    own = (str(model.model_config.get("env_prefix", "")) + setting).lower()
    old = {alias.lower() for alias, name in model.env_aliases.items() if name == setting}
    return sorted(
        name
        for name in environ
        if name.lower() in old
        or name.lower() == own
        or name.lower().startswith(own + ENV_NESTED_DELIMITER)
    )


def _from_environment(
    model: type[_Settings], environ: Mapping[str, str], source: str
) -> tuple[dict[str, Any], dict[str, list[str]]]:
    """The settings ``environ`` gives ``model``, and the variables behind each."""
    try:
        values = _Environment(model, environ)()
    except SettingsError as exc:
        cause = exc.__cause__
        if not isinstance(cause, _BadVariable):
            raise ConfigError(f"{source}: environment: {exc}") from None
        setting = cause.setting
        names = ", ".join(_variables_for(model, setting, environ)) or setting
        raise ConfigError(
            f"{source}: invalid configuration\n  {model.yaml_section}.{setting}: {cause} "
            f"(from {names})"
        ) from None
    return values, {name: _variables_for(model, name, environ) for name in values}


# ---------------------------------------------------------------------------------- loading

_Model = TypeVar("_Model", bound=_Settings)


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


def _merge(base: Mapping[str, Any], top: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` updated by ``top``; nested sections merge key by key (``limits`` from the
    file keeps the settings the environment does not name)."""
    merged = dict(base)
    for key, value in top.items():
        below = merged.get(key)
        if isinstance(value, Mapping) and isinstance(below, Mapping):
            merged[key] = _merge(below, value)
        else:
            merged[key] = value
    return merged


def _model_at(model: type[BaseModel], loc: tuple[int | str, ...]) -> type[BaseModel]:
    """The (nested) model an error at ``loc`` belongs to, for listing its known settings."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        nested = _nested_section(field) if field is not None else None
        if nested is None:
            break
        model = nested
    return model


def _describe(
    model: type[_Settings], exc: ValidationError, source: str, variables: dict[str, list[str]]
) -> str:
    """One line per problem: section, key, what is wrong and, for the environment, which
    variable said so."""
    problems = []
    for error in exc.errors():
        loc = error["loc"]
        where = "".join(f".{part}" for part in loc)
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            known = ", ".join(sorted(_model_at(model, loc).model_fields))
            message = f"unknown setting (known: {known})"
        names = variables.get(str(loc[0]), []) if loc else []
        if names:
            message += f" (from {', '.join(names)})"
        problems.append(f"{model.yaml_section}{where}: {message}")
    return f"{source}: invalid configuration\n  " + "\n  ".join(problems)


def _load(
    model: type[_Model],
    path: Path | str | None,
    environ: Mapping[str, str] | None,
    overrides: Mapping[str, Any] | None,
) -> _Model:
    """Defaults, then the file, then the environment, then ``overrides``: the last one wins."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    source = "defaults and command-line options"
    if path is not None:
        values = _read_yaml(Path(path), model.yaml_section)
        source = str(path)
    env, variables = _from_environment(model, environ, source)
    given = {key: value for key, value in (overrides or {}).items() if value is not None}
    values = _merge(_merge(values, env), given)
    if env:
        used = sorted({name for names in variables.values() for name in names})
        source += " (with " + ", ".join(used) + ")"
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(_describe(model, exc, source, variables)) from None


def load_storage_config(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> StorageConfig:
    """Load ``agent_storage:`` from ``path`` (or defaults), then ``COMMANDER_OS_*``, then
    ``overrides``.

    ``environ`` defaults to ``os.environ``. Raises
    :class:`~commander_os.errors.ConfigError` naming the file, variable and key on any problem.
    """
    return _load(StorageConfig, path, environ, overrides)


def load_relay_config(
    path: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> RelayConfig:
    """Load ``relay:`` from ``path`` (or defaults), then ``COMMANDER_OS_RELAY_*`` (and the
    older names in :data:`RELAY_ENV_ALIASES`), then ``overrides``.

    ``overrides`` (command-line options) win over the environment, which wins over the file.
    Raises :class:`~commander_os.errors.ConfigError` naming the file, variable and key.
    """
    return _load(RelayConfig, path, environ, overrides)
