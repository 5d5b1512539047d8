"""Fixtures for the dashboard tests: in-process relays with auth on (httpx over ASGI), and one
real relay process, seeded with several agents, for the browser and the CLI."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from dashboard_helpers import SECRET, seed

from commander_os.config import RelayConfig
from commander_os.relay import RelayProcess, create_app
from commander_os.relay.central import CentralStore, store_for_config


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def dash_config(tmp_path: Path) -> RelayConfig:
    return RelayConfig(
        agent_storage_dir=tmp_path / "relay", auth=True, secret=SECRET, slow_query_ms=0
    )


@pytest.fixture
async def dash_store(dash_config: RelayConfig) -> AsyncIterator[CentralStore]:
    store = store_for_config(dash_config)
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def dash(
    dash_config: RelayConfig, dash_store: CentralStore
) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client (it keeps cookies, as a browser) bound to a relay with auth on."""
    app = create_app(dash_config, store=dash_store)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
        yield client


@pytest.fixture(scope="module")
def seeded_relay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """A relay process with auth on, seeded by ``dashboard_helpers.seed``."""
    folder = tmp_path_factory.mktemp("dashboard-relay")
    config = folder / "relay.yaml"
    config.write_text(f"relay:\n  auth: true\n  secret: {SECRET}\n  slow_query_ms: 0\n")
    with RelayProcess(data_dir=folder / "data", config=config) as relay:
        with httpx.Client(base_url=relay.url, timeout=30) as client:
            seed(client)
        yield relay
