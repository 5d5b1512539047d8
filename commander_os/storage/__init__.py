"""The agent side: one SQLite database per agent, with a transactional outbox for sync.

Nothing here imports the relay side (``commander_os.relay``); both speak
:mod:`commander_os.protocol`.
"""

from __future__ import annotations

from commander_os.storage._delivery.client import RelayClient
from commander_os.storage._migrations import Migration
from commander_os.storage._outbox import SyncedTable
from commander_os.storage.agent_storage import AgentStorage
from commander_os.storage.base_storage import BaseStorage

__all__ = ["AgentStorage", "BaseStorage", "Migration", "RelayClient", "SyncedTable"]
