"""Fixtures for the security tests: relays with auth on, tokens, hostile inputs.

In-process relays run over a real SQLite central store in ``tmp_path`` (or, through
``any_store``, over each backend: SQLite and PostgreSQL) through ``httpx.ASGITransport``; the
TLS, start-up and slow-client tests run real relay processes on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pg_helpers import database_url, scratch_schema
from security_helpers import JSON_HEADERS, SECRET, TEST_LIMITS

from commander_os.config import RelayConfig
from commander_os.relay import create_app
from commander_os.relay.central import (
    CentralStore,
    PostgresCentralStore,
    SQLiteCentralStore,
    store_for_config,
)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def auth_config(tmp_path: Path) -> RelayConfig:
    return RelayConfig(
        agent_storage_dir=tmp_path / "relay", auth=True, secret=SECRET, limits=TEST_LIMITS
    )


@pytest.fixture
async def auth_store(auth_config: RelayConfig) -> AsyncIterator[CentralStore]:
    store = store_for_config(auth_config)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def auth_relay(
    auth_config: RelayConfig, auth_store: CentralStore
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client bound in-process to a relay with auth on (no token set)."""
    app = create_app(auth_config, store=auth_store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://localhost", headers=JSON_HEADERS
    ) as client:
        yield client


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[Callable[..., CentralStore]]:
    """Makes (unopened) central stores of each backend over one set of data; keyword
    arguments go to the store (``query_timeout``, ...)."""
    if request.param == "sqlite":
        yield lambda **options: SQLiteCentralStore.in_directory(tmp_path / "relay", **options)
        return
    url = database_url()  # skips when no server is configured
    with scratch_schema(url) as schema:
        yield lambda **options: PostgresCentralStore(url, schema=schema, **options)


@pytest.fixture
async def any_store(store_factory: Callable[..., CentralStore]) -> AsyncIterator[CentralStore]:
    """An open central store of each backend (SQLite, PostgreSQL)."""
    store = store_factory()
    await store.open()
    yield store
    await store.close()
