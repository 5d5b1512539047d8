"""LangGraph on Commander OS Storage: long-term memory and checkpoints that replicate.

- :class:`CommanderStore`, a LangGraph ``BaseStore`` (namespaces, filters in SQL, TTL,
  semantic search, search of other agents' items through the relay);
- :class:`CommanderSaver`, a LangGraph checkpointer (sync and async) whose threads can be
  resumed on another machine (:meth:`CommanderSaver.pull_thread`).

Both keep their data in an :class:`~commander_os.integrations.IntegrationStorage`, one agent's
SQLite store, and every row reaches the relay through the store's outbox. Needs the
``[langgraph]`` extra: ``pip install 'commander-os-storage[langgraph]'``.
"""

from __future__ import annotations

from commander_os.integrations._storage import IntegrationStorage
from commander_os.integrations.langgraph._network import NetworkItem
from commander_os.integrations.langgraph.saver import CommanderSaver
from commander_os.integrations.langgraph.store import CommanderStore

__all__ = ["CommanderSaver", "CommanderStore", "IntegrationStorage", "NetworkItem"]
