"""Fixtures for the security tests: relays with auth on, tokens, hostile inputs.

In-process relays run over a real SQLite central store in ``tmp_path`` through
``httpx.ASGITransport``; the TLS and start-up tests run real relay processes on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from security_helpers import JSON_HEADERS, SECRET, TEST_LIMITS

from commander_os.config import RelayConfig
from commander_os.relay import create_app
from commander_os.relay.central import CentralStore, store_for_config


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
