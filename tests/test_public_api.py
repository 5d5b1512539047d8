"""The public API is declared once, in ``__all__``, and every name there exists."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import commander_os

MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages(commander_os.__path__, prefix="commander_os.")
    if not info.name.endswith("__main__")
)


@pytest.mark.parametrize("name", MODULES)
def test_every_name_in_all_exists(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", None)
    assert exported is not None, f"{name} does not declare its public API in __all__"
    missing = [symbol for symbol in exported if not hasattr(module, symbol)]
    assert not missing, f"{name}.__all__ names what it does not define: {missing}"
    assert len(set(exported)) == len(exported), f"{name}.__all__ repeats a name"


def test_seed_import_paths() -> None:
    from commander_os.storage.agent_storage import AgentStorage
    from commander_os.storage.base_storage import BaseStorage

    assert issubclass(AgentStorage, BaseStorage)
    assert commander_os.AgentStorage is AgentStorage
    assert commander_os.BaseStorage is BaseStorage


def test_every_error_derives_from_the_one_root() -> None:
    from commander_os import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.CommanderStorageError), name
