"""The public API is declared once, in ``__all__``; internal modules are marked private."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import commander_os

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(commander_os.__path__, prefix="commander_os.")
    if not info.name.endswith("__main__")
)
#: The modules a user may import. Everything else has a leading underscore in its path.
PUBLIC_MODULES = {
    "commander_os",
    "commander_os.agents",
    "commander_os.agents.recruiter",
    "commander_os.agents.recruiter.errors",
    "commander_os.agents.recruiter.storage",
    "commander_os.agents.recruiter.storage_example",
    "commander_os.cli",
    "commander_os.config",
    "commander_os.errors",
    "commander_os.identifiers",
    "commander_os.integrations",
    "commander_os.integrations.examples",
    "commander_os.integrations.examples.langgraph_two_machines",
    "commander_os.integrations.langchain",
    "commander_os.integrations.langgraph",
    "commander_os.integrations.langgraph.saver",
    "commander_os.integrations.langgraph.store",
    "commander_os.network",
    "commander_os.network.relay",
    "commander_os.protocol",
    "commander_os.protocol.sqlite_filters",
    "commander_os.relay",
    "commander_os.relay.central",
    "commander_os.relay.dashboard",
    "commander_os.storage",
    "commander_os.storage.backups",
    "commander_os.storage.agent_storage",
    "commander_os.storage.base_storage",
}
TOP_LEVEL = {
    "AgentStorage",
    "BaseStorage",
    "CommanderStorageError",
    "ConfigError",
    "Migration",
    "RelayClient",
    "RelayConfig",
    "RelayError",
    "StorageBusy",
    "StorageConfig",
    "StorageError",
    "SyncedTable",
    "__version__",
    "load_relay_config",
    "load_storage_config",
}


def _is_private(name: str) -> bool:
    return any(part.startswith("_") for part in name.split("."))


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} does not declare its public API in __all__"
    missing = [symbol for symbol in exported if not hasattr(module, symbol)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"


def test_internal_modules_are_private() -> None:
    public = {name for name in ["commander_os", *MODULES] if not _is_private(name)}
    assert public == PUBLIC_MODULES


@pytest.mark.parametrize("name", sorted(PUBLIC_MODULES))
def test_public_modules_list_every_public_name(name: str) -> None:
    module = importlib.import_module(name)
    exported = set(module.__all__)
    defined = {
        symbol
        for symbol, value in vars(module).items()
        if not symbol.startswith("_")
        and (inspect.isclass(value) or inspect.isfunction(value))
        and value.__module__ == name
    }
    assert defined <= exported, (
        f"{name} defines public names it does not list: {defined - exported}"
    )
    private = {symbol for symbol in exported if symbol.startswith("_") and symbol != "__version__"}
    assert not private, f"{name}.__all__ lists private names: {private}"


def test_the_top_level_api_fits_in_a_head() -> None:
    assert set(commander_os.__all__) == TOP_LEVEL
    for name in TOP_LEVEL:
        assert getattr(commander_os, name) is not None


def test_seed_import_paths() -> None:
    from commander_os.network.relay import create_app, serve
    from commander_os.storage.agent_storage import AgentStorage
    from commander_os.storage.base_storage import BaseStorage

    assert issubclass(AgentStorage, BaseStorage)
    assert commander_os.AgentStorage is AgentStorage
    assert commander_os.BaseStorage is BaseStorage
    assert callable(create_app)
    assert callable(serve)


def test_every_error_derives_from_the_one_root() -> None:
    from commander_os import errors
    from commander_os.agents.recruiter import errors as recruiter_errors

    for module in (errors, recruiter_errors):
        for name in module.__all__:
            assert issubclass(getattr(module, name), errors.CommanderStorageError), name
