"""Central stores: where a relay keeps every agent's replicated records.

:class:`CentralStore` is the contract; :class:`SQLiteCentralStore` the embedded default and
:class:`PostgresCentralStore` the one several relays can share (imported on first use, so a
relay on SQLite never loads the PostgreSQL driver). :func:`store_for_config` builds the store a
:class:`~commander_os.config.RelayConfig` asks for; :func:`export_records` and
:func:`import_records` move records between stores.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from commander_os.config import RelayConfig, read_encryption_key
from commander_os.relay.central._base import (
    CentralStore,
    CentralStoreError,
    CentralStoreUnavailable,
    InvalidCursor,
    QueryPlan,
    QueryTimeout,
    StoreHealth,
)
from commander_os.relay.central._group_commit import SegmentResult
from commander_os.relay.central._identity import AgentState, Outcome, SegmentHeader, WriteSegment
from commander_os.relay.central._sqlite_store import SQLiteCentralStore
from commander_os.relay.central._transfer import ImportResult, export_records, import_records

if TYPE_CHECKING:
    from commander_os.relay.central._postgres_store import PostgresCentralStore

__all__ = [
    "AgentState",
    "CentralStore",
    "CentralStoreError",
    "CentralStoreUnavailable",
    "ImportResult",
    "InvalidCursor",
    "Outcome",
    "PostgresCentralStore",
    "QueryPlan",
    "QueryTimeout",
    "SQLiteCentralStore",
    "SegmentHeader",
    "SegmentResult",
    "StoreHealth",
    "WriteSegment",
    "export_records",
    "import_records",
    "store_for_config",
]


def __getattr__(name: str) -> Any:
    if name == "PostgresCentralStore":
        from commander_os.relay.central._postgres_store import PostgresCentralStore

        return PostgresCentralStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
            follow_symlinks=config.follow_symlinks,
            indexed_fields=config.indexed_fields,
        )
    if config.backend == "postgresql" and config.database_url:
        from commander_os.relay.central._postgres_store import PostgresCentralStore

        return PostgresCentralStore(
            config.database_url,
            durability=config.durability,
            max_value_bytes=config.limits.max_value_bytes,
            query_timeout=config.limits.query_timeout,
            indexed_fields=config.indexed_fields,
            retention=config.retention,
        )
    raise CentralStoreUnavailable(
        f"central store backend {config.backend!r} is not available in this build"
    )
