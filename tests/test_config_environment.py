"""Every setting of both config sections from the environment, and the rules around it.

The settings are found by walking the models, so a setting added without a way to set it from
the environment (or without a value this test knows how to write) fails here. Precedence is
overrides > environment > file > defaults; agent and relay read separate variables, and the
relay's older names keep working.
"""

from __future__ import annotations

import os
import typing
from pathlib import Path
from typing import Any, Literal

import pytest
import yaml
from pydantic import BaseModel

from commander_os.config import (
    ENV_NESTED_DELIMITER,
    RELAY_ENV_ALIASES,
    LimitsConfig,
    RelayConfig,
    StorageConfig,
    environment_variables,
    load_relay_config,
    load_storage_config,
)
from commander_os.errors import ConfigError
from commander_os.storage.agent_storage import AgentStorage

REPO_ROOT = Path(__file__).resolve().parent.parent
PG_URL = "postgresql://commander@127.0.0.1:5432/commander"
Section = type[StorageConfig] | type[RelayConfig]
LOADERS = {StorageConfig: load_storage_config, RelayConfig: load_relay_config}

#: Values for settings whose text has a format of its own (a generic one would be refused).
SAMPLES: dict[str, Any] = {
    "agent_storage.htpc_url": "http://127.0.0.1:9101",
    "agent_storage.htpc_urls": ["http://127.0.0.1:9102", "http://127.0.0.1:9103"],
    "agent_storage.replicate_to": ["http://127.0.0.1:9104", "http://127.0.0.1:9105"],
    "agent_storage.sync_quorum": "all",
    "relay.database_url": PG_URL,
    "relay.allowed_hosts": ["relay.example.com", "*.example.org"],
    "relay.trusted_proxies": ["10.0.0.0/8"],
    "relay.indexed_fields": ["value.status", "value.kind"],
}
#: File contents a setting needs beside it to be valid, chosen so that the file alone gives
#: a different value (or no valid config): the variable must be what changes it.
FILE_BESIDE: dict[str, dict[str, Any]] = {
    "relay.backend": {"backend": "sqlite", "database_url": PG_URL},
    "relay.tls.certfile": {"tls": {"certfile": "/etc/c/file.crt", "keyfile": "/etc/c/file.key"}},
    "relay.tls.keyfile": {"tls": {"certfile": "/etc/c/file.crt", "keyfile": "/etc/c/file.key"}},
}


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("COMMANDER_OS_"):
            monkeypatch.delenv(name)


def leaf_settings(model: type[BaseModel], path: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every setting of ``model`` that holds a value, nested sections walked into."""
    found = []
    for name, field in model.model_fields.items():
        nested = [
            arg
            for arg in (field.annotation, *typing.get_args(field.annotation))
            if isinstance(arg, type) and issubclass(arg, BaseModel)
        ]
        found += leaf_settings(nested[0], (*path, name)) if nested else [(*path, name)]
    return found


def field_of(model: type[BaseModel], path: tuple[str, ...]) -> Any:
    for name in path[:-1]:
        annotation = model.model_fields[name].annotation
        model = next(
            arg
            for arg in (annotation, *typing.get_args(annotation))
            if isinstance(arg, type) and issubclass(arg, BaseModel)
        )
    return model.model_fields[path[-1]]


def candidates(setting: str, field: Any) -> list[Any]:
    """Values to try for a setting: valid ones, each different from its default."""
    if setting in SAMPLES:
        return [SAMPLES[setting]]
    default = field.get_default(call_default_factory=True)
    kinds = [arg for arg in typing.get_args(field.annotation) if arg is not type(None)]
    kind = kinds[0] if kinds and typing.get_origin(field.annotation) is not Literal else None
    kind = kind or field.annotation
    if typing.get_origin(kind) is Literal:
        return [choice for choice in typing.get_args(kind) if choice != default]
    if kind is bool:
        return [not default]
    if kind is int:
        return [default + 1, default - 1] if default is not None else [2]
    if kind is float:
        return [default / 2, default * 2] if default is not None else [2.5]
    if kind is Path:
        return [Path("/srv/from-env") / setting.replace(".", "-")]
    if kind is str:
        return ["from-env-" + "x" * 40]
    return []


def as_text(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return ",".join(value)
    return str(value)


def variable_of(model: Section, path: tuple[str, ...]) -> str:
    prefix = str(model.model_config.get("env_prefix"))
    return (prefix + ENV_NESTED_DELIMITER.join(path)).upper()


def value_at(config: BaseModel, path: tuple[str, ...]) -> Any:
    value: Any = config
    for name in path:
        value = getattr(value, name)
    return value


def load(model: Section, tmp_path: Path, file: dict[str, Any], env: dict[str, str]) -> BaseModel:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({model.yaml_section: file}), encoding="utf-8")
    loaded: BaseModel = LOADERS[model](path, environ=env)
    return loaded


SETTINGS = [
    (model, path) for model in (StorageConfig, RelayConfig) for path in leaf_settings(model)
]


@pytest.mark.parametrize(
    ("model", "path"),
    SETTINGS,
    ids=[f"{model.yaml_section}.{'.'.join(path)}" for model, path in SETTINGS],
)
def test_every_setting_can_come_from_the_environment(
    tmp_path: Path, model: Section, path: tuple[str, ...]
) -> None:
    setting = f"{model.yaml_section}.{'.'.join(path)}"
    variable = variable_of(model, path)
    assert environment_variables(model)[variable] == setting
    file = FILE_BESIDE.get(setting, {})
    tried = candidates(setting, field_of(model, path))
    assert tried, f"no sample value for {setting}: add one to SAMPLES"
    for value in tried:
        try:
            config = load(model, tmp_path, file, {variable: as_text(value)})
        except ConfigError:
            continue
        assert value_at(config, path) == value, f"{variable} did not set {setting}"
        try:
            without = value_at(load(model, tmp_path, file, {}), path)
        except ConfigError:
            return  # the file alone is not even valid: the variable made the difference
        assert without != value
        return
    pytest.fail(f"{variable}: none of {tried!r} loaded; add a valid sample to SAMPLES")


def test_environment_variables_lists_every_setting_and_whole_sections() -> None:
    for model in (StorageConfig, RelayConfig):
        listed = environment_variables(model)
        for path in leaf_settings(model):
            assert variable_of(model, path) in listed
    relay = environment_variables(RelayConfig)
    assert relay["COMMANDER_OS_RELAY_LIMITS"] == "relay.limits"
    assert relay["COMMANDER_OS_RELAY_LIMITS__MAX_BODY_BYTES"] == "relay.limits.max_body_bytes"
    assert relay["COMMANDER_OS_RELAY_TLS__CERTFILE"] == "relay.tls.certfile"
    assert environment_variables(StorageConfig)["COMMANDER_OS_HTPC_URL"] == (
        "agent_storage.htpc_url"
    )


# ------------------------------------------------------------- agent and relay apart, aliases


@pytest.mark.parametrize("setting", ["durability", "encryption_key", "encryption_key_file"])
def test_agent_and_relay_read_separate_variables(setting: str) -> None:
    value = {"durability": "normal", "encryption_key": "k" * 64}.get(setting, "/keys/key")
    agent_env = {f"COMMANDER_OS_{setting.upper()}": value}
    relay_env = {f"COMMANDER_OS_RELAY_{setting.upper()}": value}
    expected = Path(value) if setting.endswith("_file") else value
    assert getattr(load_storage_config(environ=agent_env), setting) == expected
    assert getattr(load_relay_config(environ=agent_env), setting) != expected
    assert getattr(load_relay_config(environ=relay_env), setting) == expected
    assert getattr(load_storage_config(environ=relay_env), setting) != expected


def test_aliases_are_relay_settings_no_agent_variable_shares() -> None:
    assert set(RELAY_ENV_ALIASES.values()) <= set(RelayConfig.model_fields)
    assert not set(RELAY_ENV_ALIASES) & set(environment_variables(StorageConfig))
    assert not set(RELAY_ENV_ALIASES) & set(environment_variables(RelayConfig))
    documented = {"HOST", "PORT", "AGENT_STORAGE_DIR", "DATABASE_URL", "SECRET"}
    assert {f"COMMANDER_OS_{name}" for name in documented} <= set(RELAY_ENV_ALIASES)


@pytest.mark.parametrize(("alias", "setting"), sorted(RELAY_ENV_ALIASES.items()))
def test_each_older_relay_name_still_works(tmp_path: Path, alias: str, setting: str) -> None:
    if setting in ("tls", "limits"):
        text, check = "{max_json_depth: 9}", ("limits", "max_json_depth")
        if setting == "tls":
            text, check = "{certfile: /c.crt, keyfile: /c.key}", ("tls", "certfile")
        config = load_relay_config(environ={alias: text})
        assert value_at(config, check) in (9, Path("/c.crt"))
        return
    value = next(iter(candidates(f"relay.{setting}", RelayConfig.model_fields[setting])))
    environ = {alias: as_text(value)}
    if setting == "backend":
        environ["COMMANDER_OS_RELAY_DATABASE_URL"] = PG_URL
    assert getattr(load_relay_config(environ=environ), setting) == value


def test_the_prefixed_name_wins_over_the_older_one() -> None:
    environ = {"COMMANDER_OS_PORT": "9000", "COMMANDER_OS_RELAY_PORT": "9001"}
    assert load_relay_config(environ=environ).port == 9001
    assert load_relay_config(environ={"COMMANDER_OS_PORT": "9000"}).port == 9000


def test_building_a_config_in_code_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COMMANDER_OS_HTPC_URL", "http://127.0.0.1:9999")
    monkeypatch.setenv("COMMANDER_OS_RELAY_PORT", "9999")
    monkeypatch.setenv("COMMANDER_OS_PORT", "9999")
    assert StorageConfig().htpc_url == "http://127.0.0.1:8001"
    assert RelayConfig().port == 8001
    assert StorageConfig.model_validate({}).htpc_url == "http://127.0.0.1:8001"
    assert load_storage_config().htpc_url == "http://127.0.0.1:9999"
    assert load_relay_config().port == 9999


# ----------------------------------------------------------------------- limits and nesting


def test_limits_one_by_one_merge_with_the_file_and_the_whole_section(tmp_path: Path) -> None:
    file = {"limits": {"max_body_bytes": 4096, "max_json_depth": 10}}
    env = {
        "COMMANDER_OS_RELAY_LIMITS__MAX_JSON_DEPTH": "12",
        "COMMANDER_OS_RELAY_LIMITS__REQUESTS_PER_SECOND": "7.5",
    }
    limits = value_at(load(RelayConfig, tmp_path, file, env), ("limits",))
    assert (limits.max_body_bytes, limits.max_json_depth) == (4096, 12)
    assert limits.requests_per_second == 7.5
    assert limits.max_batch_records == LimitsConfig().max_batch_records
    env["COMMANDER_OS_RELAY_LIMITS"] = '{"max_batch_records": 20, "max_json_depth": 3}'
    limits = value_at(load(RelayConfig, tmp_path, file, env), ("limits",))
    # The section as one mapping, then its settings one by one on top.
    assert limits.max_batch_records == 20
    assert (limits.max_json_depth, limits.max_body_bytes) == (12, 4096)


def test_precedence_overrides_environment_file_defaults(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text("relay:\n  port: 8100\n  limits:\n    max_query_limit: 500\n")
    assert load_relay_config(environ={}).port == 8001
    assert load_relay_config(path, environ={}).port == 8100
    env = {"COMMANDER_OS_RELAY_PORT": "8200", "COMMANDER_OS_RELAY_LIMITS__MAX_QUERY_LIMIT": "400"}
    config = load_relay_config(path, environ=env)
    assert (config.port, config.limits.max_query_limit) == (8200, 400)
    config = load_relay_config(
        path, environ=env, overrides={"port": 8300, "limits": {"max_query_limit": 300}}
    )
    assert (config.port, config.limits.max_query_limit) == (8300, 300)
    assert load_relay_config(path, environ=env, overrides={"port": None}).port == 8200


@pytest.mark.parametrize(
    ("env", "names"),
    [
        ({"COMMANDER_OS_RELAY_LIMITS__MAX_BODY_BYTES": "lots"}, ["relay.limits.max_body_bytes"]),
        ({"COMMANDER_OS_RELAY_LIMITS__MAX_BODY": "5"}, ["relay.limits.max_body", "max_body_bytes"]),
        ({"COMMANDER_OS_RELAY_LIMITS": "{max_body_bytes: [1"}, ["relay.limits", "YAML"]),
        ({"COMMANDER_OS_LIMITS": "big"}, ["relay.limits", "mapping"]),
        ({"COMMANDER_OS_RELAY_TLS__CERTFILE": "/c.crt"}, ["relay.tls.keyfile", "required"]),
        ({"COMMANDER_OS_PORT": "eighty"}, ["relay.port"]),
    ],
)
def test_bad_variables_are_named_with_the_setting(env: dict[str, str], names: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        load_relay_config(environ=env)
    message = str(caught.value)
    for name in [*env, *names]:
        assert name in message, f"{name!r} not in {message!r}"


def test_comma_and_yaml_lists_and_empty_list() -> None:
    urls = ["http://127.0.0.1:8002", "http://127.0.0.1:8003"]
    for text in (",".join(urls), " , ".join(urls) + ",", f"[{urls[0]}, {urls[1]}]"):
        assert load_storage_config(environ={"COMMANDER_OS_HTPC_URLS": text}).htpc_urls == urls
    assert load_storage_config(environ={"COMMANDER_OS_HTPC_URLS": ""}).htpc_urls == []


# ---------------------------------------------------------------- database_url and backend


@pytest.mark.parametrize("where", ["file", "variable", "older variable", "override", "code"])
def test_a_database_url_selects_postgresql(tmp_path: Path, where: str) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text(f"relay:\n  database_url: {PG_URL}\n" if where == "file" else "relay: {}\n")
    env = {
        "variable": {"COMMANDER_OS_RELAY_DATABASE_URL": PG_URL},
        "older variable": {"COMMANDER_OS_DATABASE_URL": PG_URL},
    }.get(where, {})
    overrides = {"database_url": PG_URL} if where == "override" else None
    if where == "code":
        config = RelayConfig(database_url=PG_URL)
    else:
        config = load_relay_config(path, environ=env, overrides=overrides)
    assert (config.backend, config.database_url) == ("postgresql", PG_URL)
    assert load_relay_config(path if where != "file" else None, environ={}).backend == "sqlite"


def test_a_database_url_beside_an_explicit_sqlite_backend_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "relay.yaml"
    path.write_text("relay:\n  backend: sqlite\n")
    with pytest.raises(ConfigError) as caught:
        load_relay_config(path, environ={"COMMANDER_OS_DATABASE_URL": PG_URL})
    message = str(caught.value)
    for word in (str(path), "COMMANDER_OS_DATABASE_URL", "backend", "database_url", "sqlite"):
        assert word in message
    with pytest.raises(ConfigError, match="database_url"):
        RelayConfig(backend="sqlite", database_url=PG_URL)
    explicit = load_relay_config(
        path,
        environ={"COMMANDER_OS_RELAY_BACKEND": "postgresql"}
        | {"COMMANDER_OS_DATABASE_URL": PG_URL},
    )
    assert explicit.backend == "postgresql"


# ------------------------------------------------------------------------------------ URLs

BAD_URL = "http://127.0.0.1:8O01"


def test_a_bad_url_stops_the_config_and_the_store_at_construction(tmp_path: Path) -> None:
    for build in (
        lambda: StorageConfig(htpc_url=BAD_URL),
        lambda: StorageConfig(htpc_urls=["http://127.0.0.1:8002", BAD_URL]),
        lambda: AgentStorage("agent", tmp_path / "agents", htpc_url=BAD_URL),
        lambda: AgentStorage("agent", tmp_path / "agents", enable_htpc=False, htpc_url=BAD_URL),
        lambda: load_storage_config(environ={"COMMANDER_OS_HTPC_URL": BAD_URL}),
    ):
        with pytest.raises(ConfigError) as caught:
            build()
        message = str(caught.value)
        assert "htpc_url" in message
        assert "8O01" in message
        assert "port" in message
    assert not (tmp_path / "agents").exists()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("ftp://127.0.0.1:8001", "http"),
        ("http://", "host"),
        ("http://exa mple:8001", "URL"),
        ("http://127.0.0.1:99999", "port"),
        ("127.0.0.1:8001", "http"),
    ],
)
def test_bad_relay_urls(url: str, why: str) -> None:
    with pytest.raises(ConfigError, match=why):
        StorageConfig(htpc_url=url)


def test_good_relay_urls_lose_only_their_trailing_slash() -> None:
    for url in ("http://127.0.0.1:8001/", "https://relay.example:443/base/", "http://[::1]:8001"):
        assert StorageConfig(htpc_url=url).htpc_url == url.rstrip("/")


# ---------------------------------------------------------------------------------- README


def test_readme_documents_every_variable_and_alias() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Configuration") : readme.index("## Command line")]
    names = [
        *environment_variables(StorageConfig),
        *environment_variables(RelayConfig),
        *RELAY_ENV_ALIASES,
    ]
    missing = [name for name in names if f"`{name}`" not in section]
    assert not missing, f"README's Configuration section does not name {missing}"
