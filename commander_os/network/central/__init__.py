"""Central stores: where a relay keeps every agent's replicated records.

``base.CentralStore`` is the contract; ``sqlite.SQLiteCentralStore`` the embedded default and
``postgres.PostgresCentralStore`` the one several relays can share.
Use :func:`open_store` to build the store a :class:`~commander_os.config.RelayConfig` asks for.
"""

from __future__ import annotations

from commander_os.config import RelayConfig, read_encryption_key
from commander_os.network.central.base import (
    CentralStore,
    CentralStoreError,
    CentralStoreUnavailable,
    InvalidCursor,
    QueryTimeout,
    StoreHealth,
)
from commander_os.network.central.postgres import PostgresCentralStore
from commander_os.network.central.sqlite import SQLiteCentralStore

__all__ = [
    "CentralStore",
    "CentralStoreError",
    "CentralStoreUnavailable",
    "InvalidCursor",
    "PostgresCentralStore",
    "QueryTimeout",
    "SQLiteCentralStore",
    "StoreHealth",
    "store_for_config",
]


def store_for_config(config: RelayConfig) -> CentralStore:
    """The (unopened) central store described by ``config``.

    Raises :class:`CentralStoreUnavailable` for a backend this build does not provide.
    """
    if config.backend == "sqlite":
        return SQLiteCentralStore.in_directory(
            config.agent_storage_dir,
            durability=config.durability,
            max_value_bytes=config.limits.max_value_bytes,
            query_timeout=config.limits.query_timeout,
            encryption_key=read_encryption_key(config),
        )
    if config.backend == "postgresql" and config.database_url:
        return PostgresCentralStore(
            config.database_url,
            durability=config.durability,
            max_value_bytes=config.limits.max_value_bytes,
            query_timeout=config.limits.query_timeout,
        )
    raise CentralStoreUnavailable(
        f"central store backend {config.backend!r} is not available in this build"
    )
