"""The core names the integrations use, imported in exactly one place.

The integrations depend on the core only through the storage classes
(``commander_os.storage``), :mod:`commander_os.errors` and the SQL filter translator
(:mod:`commander_os.protocol.sqlite_filters`): the public API, which stays stable while the
core changes underneath.
"""

from __future__ import annotations

from commander_os.storage import AgentStorage, BaseStorage, Migration, RelayClient, SyncedTable

__all__ = ["AgentStorage", "BaseStorage", "Migration", "RelayClient", "SyncedTable"]
