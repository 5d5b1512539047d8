"""The limits per caller: request rate per agent, failed authentications per address, concurrent
queries per token, and the query time budget under load on both central stores.

Each limit answers 429 (or 422 for a query past its budget) with a JSON error and changes
nothing; callers under their limits are served meanwhile.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from security_helpers import (
    HEAVY_QUERY,
    SECRET,
    all_records,
    bearer,
    load_heavy,
    record,
    relay_client,
    token,
)

from commander_os.config import LimitsConfig, RelayConfig
from commander_os.relay import create_app
from commander_os.relay.central import CentralStore

pytestmark = pytest.mark.anyio


def auth_app(store: CentralStore, tmp_path: Path, **limits: Any) -> Any:
    config = RelayConfig(
        agent_storage_dir=tmp_path / "relay",
        auth=True,
        secret=SECRET,
        limits=LimitsConfig(**limits),
    )
    return create_app(config, store=store)


async def test_the_request_rate_is_per_agent_not_per_token(
    any_store: CentralStore, tmp_path: Path
) -> None:
    first, second = bearer(token("agent-a")), bearer(token("agent-a"))
    other = bearer(token("agent-b"))
    async with relay_client(auth_app(any_store, tmp_path, requests_per_second=5)) as relay:
        answers = [await relay.post("/relay/query", json={}, headers=first) for _ in range(5)]
        assert [a.status_code for a in answers] == [200] * 5
        # A second token of the same agent shares the agent's bucket.
        limited = await relay.post("/relay/query", json={}, headers=second)
        assert limited.status_code == 429
        assert limited.json()["error"] == "rate_limited"
        assert int(limited.headers["retry-after"]) >= 1
        assert (await relay.post("/relay/query", json={}, headers=other)).status_code == 200


async def test_failed_authentications_are_limited_per_address(
    any_store: CentralStore, tmp_path: Path
) -> None:
    app = auth_app(any_store, tmp_path, auth_failures_per_minute=5)
    forged = bearer(token("agent-a", secret="forged-" + SECRET))
    valid = bearer(token("agent-a"))
    async with relay_client(app, client=("192.0.2.1", 1)) as attacker:
        # No token at all is not a guess: it never counts.
        for _ in range(10):
            assert (await attacker.post("/relay/query", json={})).status_code == 401
        statuses = [
            (
                await attacker.post("/relay/immediate", json=record("agent-a"), headers=forged)
            ).status_code
            for _ in range(8)
        ]
        assert statuses == [401] * 5 + [429] * 3
        blocked = await attacker.post("/relay/query", json={}, headers=valid)
        assert blocked.status_code == 429
        assert blocked.json()["error"] == "too_many_failed_authentications"
        assert int(blocked.headers["retry-after"]) >= 1
    async with relay_client(app, client=("192.0.2.2", 1)) as neighbour:
        assert (await neighbour.post("/relay/query", json={}, headers=valid)).status_code == 200
        assert (await neighbour.post("/relay/query", json={}, headers=forged)).status_code == 401
    assert await all_records(any_store) == []


class Gate:
    """Holds every query of a store at its start until opened (a slow store, injected)."""

    def __init__(self, store: CentralStore, monkeypatch: pytest.MonkeyPatch) -> None:
        self.open = asyncio.Event()
        self.inside = 0
        # Plain queries select; queries counted for analytics select and count rows examined.
        for name in ("_select", "_select_counted"):
            monkeypatch.setattr(store, name, self._held(getattr(store, name)))

    def _held(self, select: Any) -> Any:
        async def held(*args: Any) -> Any:
            self.inside += 1
            await self.open.wait()
            return await select(*args)

        return held

    async def wait_inside(self, count: int) -> None:
        deadline = time.monotonic() + 10
        while self.inside < count:
            assert time.monotonic() < deadline, f"{self.inside} of {count} queries arrived"
            await asyncio.sleep(0.001)


async def test_concurrent_queries_are_capped_per_token(
    any_store: CentralStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(any_store, monkeypatch)
    busy, same_agent, other = (bearer(token(agent)) for agent in ("agent-a", "agent-a", "agent-b"))
    app = auth_app(any_store, tmp_path, max_concurrent_queries=2)
    async with relay_client(app) as relay:

        def query(headers: dict[str, str]) -> Any:
            return asyncio.create_task(relay.post("/relay/query", json={}, headers=headers))

        running = [query(busy), query(busy)]
        await gate.wait_inside(2)
        refused = [
            await relay.post("/relay/query", json={}, headers=busy),
            await relay.get("/relay/changes", headers=busy),
            await relay.get("/relay/agents", headers=busy),
        ]
        for answer in refused:
            assert answer.status_code == 429
            assert answer.json()["error"] == "too_many_queries"
        running += [query(same_agent), query(other)]  # other tokens are not held up
        await gate.wait_inside(4)
        gate.open.set()
        assert [(await task).status_code for task in running] == [200] * 4
        assert (await relay.post("/relay/query", json={}, headers=busy)).status_code == 200


async def test_queries_are_capped_per_address_without_auth(
    any_store: CentralStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gate = Gate(any_store, monkeypatch)
    config = RelayConfig(
        agent_storage_dir=tmp_path / "relay", limits=LimitsConfig(max_concurrent_queries=1)
    )
    app = create_app(config, store=any_store)
    async with relay_client(app) as first, relay_client(app, client=("127.0.0.2", 1)) as second:
        held = asyncio.create_task(first.post("/relay/query", json={}))
        await gate.wait_inside(1)
        assert (await first.post("/relay/query", json={})).status_code == 429
        other = asyncio.create_task(second.post("/relay/query", json={}))
        await gate.wait_inside(2)
        gate.open.set()
        assert (await held).status_code == (await other).status_code == 200


#: Budgets well below what HEAVY_QUERY takes alone over LOADS records on each store (about 1 s
#: on SQLite, 0.2 s on PostgreSQL here); PostgreSQL's statement_timeout counts whole ms.
BUDGETS = {"sqlite": 0.2, "postgresql": 0.005}
LOADS = {"sqlite": 20_000, "postgresql": 2_000}
#: Generous: a query answers within its budget plus scheduling; this only catches hangs.
LIVENESS_SECONDS = 5.0


async def timed(relay: httpx.AsyncClient, path: str, **kwargs: Any) -> tuple[int, str, float]:
    started = time.monotonic()
    answer = await relay.request("POST" if path == "/relay/query" else "GET", path, **kwargs)
    error = answer.json().get("error", "") if answer.status_code != 200 else ""
    return answer.status_code, error, time.monotonic() - started


async def test_query_budgets_hold_under_load_on_both_stores(
    store_factory: Any, tmp_path: Path
) -> None:
    backend = store_factory().backend  # a class attribute: that store is never opened
    store = store_factory(query_timeout=BUDGETS[backend])
    await store.open()
    try:
        await load_heavy(store, LOADS[backend])
        config = RelayConfig(
            agent_storage_dir=tmp_path / "relay", limits=LimitsConfig(max_concurrent_queries=16)
        )
        async with relay_client(create_app(config, store=store)) as relay:
            load = [timed(relay, "/relay/query", json=HEAVY_QUERY) for _ in range(12)]
            health = [timed(relay, "/health")]
            answers = await asyncio.gather(*load, *health)
    finally:
        await store.close()
    *queries, (health_status, _, health_seconds) = answers
    assert {status for status, _, _ in queries} <= {200, 422}
    assert {error for status, error, _ in queries if status == 422} == {"query_timeout"}
    assert any(status == 422 for status, _, _ in queries)
    assert max(seconds for _, _, seconds in queries) < LIVENESS_SECONDS
    assert health_status == 200
    assert health_seconds < 1.0
