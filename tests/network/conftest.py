"""Fixtures for the relay and central-store tests.

``central_factory`` / ``central_store`` are parametrised over every central-store backend; the
contract suite in ``test_central_contract.py`` runs once per backend. A PostgreSQL store adds
its name to ``CENTRAL_BACKENDS`` (skipping when no server is configured).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pg_helpers import database_url, scratch_schema
from relay_helpers import CONTRACT_MAX_VALUE_BYTES, JSON_HEADERS

from commander_os.config import LimitsConfig, RelayConfig
from commander_os.relay import create_app
from commander_os.relay.central import (
    CentralStore,
    PostgresCentralStore,
    SQLiteCentralStore,
    store_for_config,
)

CENTRAL_BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=CENTRAL_BACKENDS)
def central_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[[], CentralStore]]:
    """Makes (unopened) store objects that all point at the same central data."""
    if request.param == "sqlite":
        yield lambda: SQLiteCentralStore.in_directory(
            tmp_path / "central", max_value_bytes=CONTRACT_MAX_VALUE_BYTES, query_timeout=10.0
        )
    elif request.param == "postgresql":
        url = database_url()  # skips when no server is configured
        with scratch_schema(url) as schema:
            yield lambda: PostgresCentralStore(
                url, schema=schema, max_value_bytes=CONTRACT_MAX_VALUE_BYTES, query_timeout=10.0
            )
    else:
        raise AssertionError(f"unknown backend {request.param}")


@pytest.fixture
async def central_store(central_factory: Callable[[], CentralStore]) -> AsyncIterator[CentralStore]:
    store = central_factory()
    await store.open()
    yield store
    await store.close()


#: Small limits, so bad-request tests need no big payloads.
TEST_LIMITS = LimitsConfig(
    max_body_bytes=64 * 1024,
    max_batch_records=50,
    max_value_bytes=4096,
    max_json_depth=8,
    max_query_limit=100,
)


@pytest.fixture
def relay_config(tmp_path: Path) -> RelayConfig:
    return RelayConfig(agent_storage_dir=tmp_path / "relay", limits=TEST_LIMITS)


@pytest.fixture
async def relay_store(relay_config: RelayConfig) -> AsyncIterator[CentralStore]:
    store = store_for_config(relay_config)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def relay(
    relay_config: RelayConfig, relay_store: CentralStore
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client bound in-process to a relay app over an open SQLite store."""
    app = create_app(relay_config, store=relay_store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://localhost", headers=JSON_HEADERS
    ) as client:
        yield client
