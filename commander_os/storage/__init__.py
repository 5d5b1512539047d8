"""The local half: one SQLite database per agent, with a transactional outbox for sync."""

from __future__ import annotations

from commander_os.storage.agent_storage import AgentStorage
from commander_os.storage.base_storage import BaseStorage, SyncedTable
from commander_os.storage.migrations import Migration

__all__ = ["AgentStorage", "BaseStorage", "Migration", "SyncedTable"]
