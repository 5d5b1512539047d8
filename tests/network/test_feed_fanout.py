"""Change-feed fan-out: every waiter gets every record exactly once, in order, while one query
per commit serves them all; relays on one PostgreSQL wake each other (LISTEN/NOTIFY)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import httpx
import pytest
from pg_helpers import database_url, scratch_schema
from relay_helpers import JSON_HEADERS, make_record

from commander_os.config import RelayConfig
from commander_os.protocol import QueryRequest, QueryResponse, format_ts
from commander_os.relay import create_app
from commander_os.relay.central import CentralStore, PostgresCentralStore

pytestmark = pytest.mark.anyio

AGENTS = 4
WHOLE_FEED_WAITERS = 20
PER_AGENT_WAITERS = 20
COMMITS = 30
PER_COMMIT = 5


def _records(agent: str, first: int) -> list[dict[str, Any]]:
    return [
        {
            "agent_id": agent,
            "table": "kv",
            "key": f"k{n:04d}",
            "op": "upsert",
            "data": {"n": n},
            "version": n,
            "ts": format_ts(1_764_210_000.5 + n),
        }
        for n in range(first, first + PER_COMMIT)
    ]


async def _follow(
    relay: httpx.AsyncClient, params: dict[str, Any], want: int, got: list[dict[str, Any]]
) -> None:
    cursor = params.pop("after")
    while len(got) < want:
        answer = await relay.get("/relay/changes", params={**params, "after": cursor})
        assert answer.status_code == 200, answer.text
        page = answer.json()
        got += page["records"]
        cursor = page["next_cursor"]


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
async def feed_store(
    request: pytest.FixtureRequest, relay_store: CentralStore
) -> AsyncIterator[CentralStore]:
    if request.param == "sqlite":
        yield relay_store
        return
    url = database_url()
    with scratch_schema(url) as schema:
        async with PostgresCentralStore(url, schema=schema) as store:
            yield store


async def test_every_waiter_gets_every_record_once_from_one_query_per_commit(
    relay_config: RelayConfig, feed_store: CentralStore
) -> None:
    relay_store = feed_store
    # One client address holds every waiter: let it run them all at once.
    limits = relay_config.limits.model_copy(update={"max_concurrent_queries": 100})
    app = create_app(relay_config.model_copy(update={"limits": limits}), store=relay_store)
    calls = 0
    query: Callable[[QueryRequest], Awaitable[QueryResponse]] = relay_store.query

    async def counted(request: QueryRequest) -> QueryResponse:
        nonlocal calls
        calls += 1
        return await query(request)

    relay_store.query = counted  # type: ignore[method-assign]  # counts, changes nothing
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://localhost", headers=JSON_HEADERS
    ) as relay:
        seed = {**_records("agent-0", 1)[0], "agent_id": "seed"}
        assert (await relay.post("/relay/immediate", json=seed)).status_code == 200
        start = (await relay.get("/relay/changes")).json()["next_cursor"]
        agents = [f"agent-{i}" for i in range(AGENTS)]
        total = COMMITS * PER_COMMIT
        whole: list[list[dict[str, Any]]] = [[] for _ in range(WHOLE_FEED_WAITERS)]
        mine: list[list[dict[str, Any]]] = [[] for _ in range(PER_AGENT_WAITERS)]
        followers = [
            _follow(relay, {"after": start, "wait": 10, "limit": 100}, total, got) for got in whole
        ] + [
            _follow(
                relay,
                {"after": start, "wait": 10, "agent_id": agents[i % AGENTS], "limit": 100},
                sum(1 for c in range(COMMITS) if c % AGENTS == i % AGENTS) * PER_COMMIT,
                got,
            )
            for i, got in enumerate(mine)
        ]

        async def write() -> None:
            for commit in range(COMMITS):
                agent = agents[commit % AGENTS]
                first = 1 + (commit // AGENTS) * PER_COMMIT
                answer = await relay.post(
                    "/relay/batch", json={"agent_id": agent, "records": _records(agent, first)}
                )
                assert answer.status_code == 200, answer.text
                await asyncio.sleep(0.01)

        calls_before = calls
        await asyncio.wait_for(asyncio.gather(write(), *followers), 60)
        feed_queries = calls - calls_before

    expected = [
        (agents[c % AGENTS], f"k{1 + (c // AGENTS) * PER_COMMIT + i:04d}")
        for c in range(COMMITS)
        for i in range(PER_COMMIT)
    ]
    for got in whole:
        assert [(r["agent_id"], r["key"]) for r in got] == expected
    for i, got in enumerate(mine):
        assert [(r["agent_id"], r["key"]) for r in got] == [
            e for e in expected if e[0] == agents[i % AGENTS]
        ]
    waiters = WHOLE_FEED_WAITERS + PER_AGENT_WAITERS
    print(f"{feed_queries} store queries served {waiters} waiters over {COMMITS} commits")
    # One query each to start (their cursors are behind the window), then about one per commit
    # for all of them: far below one per waiter per commit.
    assert feed_queries <= waiters + 3 * COMMITS


@pytest.mark.postgres
async def test_relays_on_one_database_wake_each_other() -> None:
    url = database_url()
    with scratch_schema(url) as schema:
        one = PostgresCentralStore(url, schema=schema)
        two = PostgresCentralStore(url, schema=schema)
        await one.open()
        await two.open()
        try:
            woken = asyncio.Event()
            two.add_change_listener(woken.set)
            silent = asyncio.Event()
            one.add_change_listener(silent.set)  # a relay is not told of its own commits
            await asyncio.sleep(0.2)  # both listening
            await one.apply([make_record("k", 1, {"n": 1})])
            await asyncio.wait_for(woken.wait(), 5)
            await asyncio.sleep(0.2)
            assert not silent.is_set()
        finally:
            await one.close()
            await two.close()
