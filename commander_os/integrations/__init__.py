"""Framework integrations: LangGraph and LangChain on an agent's replicated store.

- :mod:`commander_os.integrations.langgraph`: ``CommanderStore`` (a LangGraph ``BaseStore``)
  and ``CommanderSaver`` (a LangGraph checkpointer); extra ``[langgraph]``.
- :mod:`commander_os.integrations.langchain`: ``CommanderByteStore`` and ``CommanderJSONStore``
  (LangChain ``BaseStore``s); extra ``[langchain]``.

All of them keep their data in an :class:`IntegrationStorage` (one agent's SQLite database,
synced to the relay like any other store). This package imports no framework itself, so it is
importable without the extras.
"""

from __future__ import annotations

from commander_os.integrations._storage import IntegrationStorage

__all__ = ["IntegrationStorage"]
