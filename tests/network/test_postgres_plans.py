"""PostgreSQL queries follow their matches: the plans, by EXPLAIN, at a size the suite affords
(budgets at 1M and 5M records are the benchmarks' to check). Also: the per-agent counts
``/relay/agents`` reads are kept by every commit, and a filter no index serves is stopped by
the query budget with an answer naming the index to create."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from pg_helpers import database_url, scratch_schema
from relay_helpers import make_record

from commander_os.errors import QueryTimeout
from commander_os.protocol import QueryRequest
from commander_os.relay.central import PostgresCentralStore

pytestmark = [pytest.mark.postgres, pytest.mark.anyio]

AGENTS = 20
PER_AGENT = 1000


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def schema() -> Iterator[str]:
    url = database_url()
    with scratch_schema(url) as name:
        yield name


@pytest.fixture
async def store(schema: str) -> AsyncIterator[PostgresCentralStore]:
    store = PostgresCentralStore(database_url(), schema=schema)
    await store.open()
    if not (await store.query(QueryRequest(limit=1))).records:
        await _fill(store)
    yield store
    await store.close()


async def _fill(store: PostgresCentralStore) -> None:
    for agent in range(AGENTS):
        await store.apply(
            [
                make_record(
                    f"k{i:05d}",
                    1,
                    # status: 10 values (10% each); rare: 0.1% of records.
                    {"status": f"s{i % 10}", "n": i, "rare": i == 7 and agent < 20},
                    agent_id=f"a{agent:02d}",
                )
                for i in range(PER_AGENT)
            ]
        )
    await store.add_field_index("status")
    await store.add_field_index("rare")
    with psycopg.connect(store.url, autocommit=True) as conn:
        for table in ("records", "changes"):
            conn.execute(f"ANALYZE {store.schema}.{table}")


async def _plan(store: PostgresCentralStore, **query: Any) -> str:
    plan = await store.explain(QueryRequest(**query))
    return "\n".join(plan.steps)


async def test_agent_and_key_is_a_primary_key_lookup(store: PostgresCentralStore) -> None:
    plan = await _plan(store, agent_id="a03", key="k00010")
    assert "records_pkey" in plan
    assert "Seq Scan" not in plan


async def test_agent_and_key_prefix_reads_the_key_range(store: PostgresCentralStore) -> None:
    plan = await _plan(store, agent_id="a03", table="kv", key_prefix="k0001")
    assert "records_pkey" in plan or "changes_pkey" in plan
    assert "Seq Scan" not in plan
    page = await store.query(QueryRequest(agent_id="a03", table="kv", key_prefix="k0001"))
    assert len(page.records) == 10


async def test_agent_and_field_walks_the_agents_log(store: PostgresCentralStore) -> None:
    plan = await _plan(
        store, agent_id="a03", table="kv", where=[{"field": "n", "op": "lt", "value": 5}]
    )
    # That agent's log in rev order (with or without its table in the index), not the whole.
    assert "changes_agent_table_rev" in plan or "changes_agent_rev" in plan
    assert "Seq Scan" not in plan


async def test_agent_and_field_without_a_table_walks_only_that_agent(
    store: PostgresCentralStore,
) -> None:
    request = QueryRequest(agent_id="a03", where=[{"field": "n", "op": "gte", "value": 990}])
    plan = await store.explain(request)
    assert "changes_agent_rev" in "\n".join(plan.steps), plan.steps
    # It reads that agent's changes (1,000), not the whole log (20,000).
    assert plan.examined is not None
    assert plan.examined <= PER_AGENT + 10
    assert len((await store.query(request)).records) == 10


async def test_field_eq_uses_the_field_index(store: PostgresCentralStore) -> None:
    (rare, status) = await store.field_indexes()
    for field, name, value, count in (
        ("status", status.name, "s3", 100),
        ("rare", rare.name, True, 20),
    ):
        where = [{"field": field, "op": "eq", "value": value}]
        plan = await _plan(store, where=where, limit=100)
        assert name in plan or "changes_rev" in plan, plan
        page = await store.query(QueryRequest(where=where, limit=100))
        assert len(page.records) == count
    # The rare value: the walk finds too few, the index answers (no scan of every record).
    plan = await store.explain(
        QueryRequest(where=[{"field": "rare", "op": "eq", "value": True}], limit=100)
    )
    assert rare.name in "\n".join(plan.steps)
    assert plan.examined is not None
    assert plan.examined < AGENTS * PER_AGENT / 2


async def test_a_filter_no_index_serves_names_the_index_to_create(schema: str) -> None:
    slow = PostgresCentralStore(database_url(), schema=schema, query_timeout=0.001)
    await slow.open()
    try:
        # 1 ms: a scan of 20,000 records cannot make it.
        request = QueryRequest(where=[{"field": "value_missing", "op": "eq", "value": 1}])
        with pytest.raises(QueryTimeout, match="relay index add value_missing"):
            await slow.query(request)
    finally:
        await slow.close()


async def test_per_agent_counts_are_kept_by_every_commit() -> None:
    url = database_url()
    rng = random.Random(15)
    with scratch_schema(url) as name:
        async with PostgresCentralStore(url, schema=name) as store:
            versions: dict[tuple[str, str, str], int] = {}
            for _ in range(30):
                batch = []
                for _ in range(rng.randint(1, 40)):
                    ident = (
                        f"g{rng.randint(0, 3)}",
                        rng.choice(["kv", "t2"]),
                        f"k{rng.randint(0, 30)}",
                    )
                    version = versions.get(ident, 0) + rng.choice([-1, 0, 1, 2])
                    versions[ident] = max(versions.get(ident, 0), version)
                    data = None if rng.random() < 0.3 else {"v": version}
                    batch.append(
                        make_record(
                            ident[2], max(version, 1), data, agent_id=ident[0], table=ident[1]
                        )
                    )
                await store.apply(batch)
            kept = {(a.agent_id, t): n for a in await store.agents() for t, n in a.tables.items()}
            with psycopg.connect(url, autocommit=True) as conn:
                counted = {
                    (agent, tbl): int(n)
                    for agent, tbl, n in conn.execute(
                        f"SELECT agent_id, tbl, count(*) FROM {name}.records "
                        "WHERE NOT deleted GROUP BY 1, 2"
                    )
                }
    assert kept == counted
    assert kept
