"""Commander OS Storage: local-first agent storage with network-wide visibility.

Each agent keeps its own SQLite database (WAL) for fast local reads and writes; every write is
also captured in a durable outbox and shipped to a central relay, where any agent can query any
other agent's data.

>>> from pathlib import Path
>>> from commander_os import AgentStorage

The public API is the names below; the packages beneath are ``storage`` (the agent side),
``relay`` (the relay side), ``protocol`` (what crosses the network between them), ``config``
and ``errors``.
"""

from __future__ import annotations

from typing import Any

from commander_os._version import __version__
from commander_os.config import RelayConfig, StorageConfig, load_relay_config, load_storage_config
from commander_os.errors import (
    CommanderStorageError,
    ConfigError,
    RelayError,
    StorageBusy,
    StorageError,
)

__all__ = [
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
]

# The agent side is imported on first use, so that `import commander_os` (for example by the
# relay process) does not load it.
_AGENT_SIDE = frozenset({"AgentStorage", "BaseStorage", "Migration", "RelayClient", "SyncedTable"})


def __getattr__(name: str) -> Any:
    if name in _AGENT_SIDE:
        import commander_os.storage

        return getattr(commander_os.storage, name)
    raise AttributeError(f"module 'commander_os' has no attribute {name!r}")
