"""Opt-in field indexes on every central store: the same answers as without the index, dense
or rare values, page after page; the plan uses the index; add, list and drop."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from relay_helpers import make_record

from commander_os.errors import QueryTimeout
from commander_os.protocol import QueryRequest
from commander_os.relay.central import CentralStore, SQLiteCentralStore
from commander_os.relay.central._base import field_index_name

pytestmark = pytest.mark.anyio

RECORDS = 3000


async def _pages(store: CentralStore, **query: Any) -> list[tuple[str, str]]:
    seen: list[tuple[str, str]] = []
    cursor = None
    while True:
        page = await store.query(QueryRequest(**query, cursor=cursor))
        seen += [(r.agent_id, r.key) for r in page.records]
        cursor = page.next_cursor
        if cursor is None:
            return seen


QUERIES: list[dict[str, Any]] = [
    {"where": [{"field": "status", "op": "eq", "value": "s3"}], "limit": 50},  # 10%
    {"where": [{"field": "status", "op": "eq", "value": "rare"}], "limit": 50},  # 0.1%
    {"where": [{"field": "status", "op": "in", "value": ["rare", "s1"]}], "limit": 70},
    {"where": [{"field": "flag", "op": "eq", "value": True}], "limit": 40},
    {"where": [{"field": "flag", "op": "eq", "value": 1}], "limit": 40},
    {
        "agent_id": "a1",
        "table": "kv",
        "where": [{"field": "status", "op": "eq", "value": "s3"}],
        "limit": 20,
    },
]


async def test_an_index_changes_no_answer_and_serves_rare_values(
    central_store: CentralStore,
) -> None:
    for start in range(0, RECORDS, 1000):
        await central_store.apply(
            [
                make_record(
                    f"k{i:05d}",
                    1,
                    {
                        "status": "rare" if i % 1000 == 7 else f"s{i % 10}",
                        "flag": True if i % 7 == 0 else (1 if i % 7 == 1 else False),
                    },
                    agent_id=f"a{i % 3}",
                )
                for i in range(start, start + 1000)
            ]
        )
    before = [await _pages(central_store, **query) for query in QUERIES]
    assert all(before[:2]), "the dataset has no matches"
    assert hasattr(central_store, "add_field_index")
    await central_store.add_field_index("status")
    await central_store.add_field_index("flag")
    indexes = await central_store.field_indexes()
    assert [(i.field, i.name) for i in indexes] == [
        ("flag", field_index_name("flag")),
        ("status", field_index_name("status")),
    ]
    after = [await _pages(central_store, **query) for query in QUERIES]
    assert after == before
    plan = await central_store.explain(QueryRequest(**QUERIES[1]))
    assert field_index_name("status") in "\n".join(plan.steps), plan.steps
    assert await central_store.drop_field_index("flag") is True
    assert [i.field for i in await central_store.field_indexes()] == ["status"]
    with pytest.raises(ValueError, match="array position"):
        await central_store.add_field_index("status.0")


async def test_a_filter_no_index_serves_names_the_index_on_sqlite(tmp_path: Path) -> None:
    store = SQLiteCentralStore.in_directory(tmp_path / "central", query_timeout=0.002)
    async with store:
        for start in range(0, 40_000, 10_000):
            await store.apply(
                [make_record(f"k{i:06d}", 1, {"n": i}) for i in range(start, start + 10_000)]
            )
        # 2 ms: a scan of 40,000 records cannot make it.
        request = QueryRequest(where=[{"field": "missing", "op": "eq", "value": 1}])
        with pytest.raises(QueryTimeout, match="relay index add missing"):
            await store.query(request)
