"""Commander OS Storage: local-first agent storage with network-wide visibility.

Each agent keeps its own SQLite database (WAL) for fast local reads and writes; every write is
also captured in a durable outbox and shipped to a central relay, where any agent can query any
other agent's data.

>>> from pathlib import Path
>>> from commander_os import AgentStorage
"""

from __future__ import annotations

__version__ = "1.0.0"

from commander_os.errors import CommanderStorageError

__all__ = ["AgentStorage", "BaseStorage", "CommanderStorageError", "__version__"]


def __getattr__(name: str) -> object:
    # Lazy so that `import commander_os` (e.g. for the relay) does not open the storage stack.
    if name == "AgentStorage":
        from commander_os.storage.agent_storage import AgentStorage

        return AgentStorage
    if name == "BaseStorage":
        from commander_os.storage.base_storage import BaseStorage

        return BaseStorage
    raise AttributeError(f"module 'commander_os' has no attribute {name!r}")
