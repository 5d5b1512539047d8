"""The central-store contract: every backend must pass this suite unchanged."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from relay_helpers import CONTRACT_MAX_VALUE_BYTES, make_record

from commander_os.errors import ValueTooLarge
from commander_os.protocol import QueryRequest, StoredRecord
from commander_os.relay.central import CentralStore, CentralStoreUnavailable, InvalidCursor

pytestmark = pytest.mark.anyio


async def everything(store: CentralStore, **filters: Any) -> list[StoredRecord]:
    """Every matching record, following cursors."""
    records: list[StoredRecord] = []
    cursor = filters.pop("cursor", None)
    while True:
        page = await store.query(QueryRequest(limit=1000, cursor=cursor, **filters))
        records += page.records
        if page.next_cursor is None:
            return records
        cursor = page.next_cursor


async def test_apply_then_query_returns_the_record(central_store: CentralStore) -> None:
    ts = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    (ack,) = await central_store.apply([make_record("config", 7, {"value": {"a": 1}}, ts=ts)])
    assert (ack.agent_id, ack.highest_version, ack.applied, ack.ignored) == ("agent-a", 7, 1, 0)
    (stored,) = (await central_store.query(QueryRequest(agent_id="agent-a"))).records
    assert (stored.table, stored.key, stored.version, stored.deleted) == ("kv", "config", 7, False)
    assert stored.data == {"value": {"a": 1}}
    assert stored.ts == ts
    assert stored.rev > 0


async def test_replaying_a_batch_changes_nothing(central_store: CentralStore) -> None:
    batch = [make_record(f"k{i}", i + 1, {"n": i}) for i in range(20)]
    (first,) = await central_store.apply(batch)
    before = await everything(central_store, include_deleted=True)
    for _ in range(3):
        (again,) = await central_store.apply(batch)
        assert (again.applied, again.ignored, again.highest_version) == (0, 20, 20)
    assert first.applied == 20
    assert await everything(central_store, include_deleted=True) == before


async def test_older_versions_never_overwrite_newer(central_store: CentralStore) -> None:
    await central_store.apply([make_record("k", 5, {"v": 5})])
    (ack,) = await central_store.apply([make_record("k", 3, {"v": 3})])
    assert (ack.applied, ack.ignored, ack.highest_version) == (0, 1, 5)
    await central_store.apply([make_record("k", 9, {"v": 9})])
    (stored,) = (await central_store.query(QueryRequest(key="k"))).records
    assert (stored.version, stored.data) == (9, {"v": 9})


async def test_one_batch_with_several_versions_of_a_key_keeps_the_newest(
    central_store: CentralStore,
) -> None:
    batch = [make_record("k", v, {"v": v}) for v in (4, 9, 2, 9, 7)]
    (ack,) = await central_store.apply(batch)
    assert (ack.applied, ack.ignored, ack.highest_version) == (1, 4, 9)
    (stored,) = (await central_store.query(QueryRequest(key="k"))).records
    assert stored.data == {"v": 9}


async def test_delete_leaves_a_tombstone(central_store: CentralStore) -> None:
    await central_store.apply([make_record("k", 1, {"v": 1}), make_record("other", 2, {"v": 2})])
    (ack,) = await central_store.apply([make_record("k", 3)])
    assert ack.applied == 1
    visible = await everything(central_store)
    assert [r.key for r in visible] == ["other"]
    everyone = await everything(central_store, include_deleted=True)
    tombstone = next(r for r in everyone if r.key == "k")
    assert (tombstone.deleted, tombstone.data, tombstone.version) == (True, None, 3)


async def test_stale_upsert_after_delete_does_not_resurrect(central_store: CentralStore) -> None:
    await central_store.apply([make_record("k", 5)])  # delete first, never seen before
    (ack,) = await central_store.apply([make_record("k", 4, {"v": 4})])
    assert (ack.applied, ack.ignored) == (0, 1)
    assert await everything(central_store) == []
    await central_store.apply([make_record("k", 6, {"v": 6})])  # a newer write does come back
    (stored,) = await everything(central_store)
    assert (stored.version, stored.deleted, stored.data) == (6, False, {"v": 6})


async def test_each_applied_change_gets_a_higher_rev(central_store: CentralStore) -> None:
    await central_store.apply([make_record("a", 1, {}), make_record("b", 2, {})])
    revs = {r.key: r.rev for r in await everything(central_store)}
    await central_store.apply([make_record("a", 3, {"x": 1})])
    moved = {r.key: r.rev for r in await everything(central_store)}
    assert moved["b"] == revs["b"]
    assert moved["a"] > max(revs.values())
    await central_store.apply([make_record("a", 3, {"x": 1})])  # ignored: no new rev
    assert {r.key: r.rev for r in await everything(central_store)} == moved


async def test_agents_report_counts_versions_and_last_seen(central_store: CentralStore) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    await central_store.apply(
        [make_record(f"k{i}", i + 1, {"i": i}) for i in range(3)]
        + [make_record("c1", 10, {"n": 1}, table="candidates")]
    )
    await central_store.apply([make_record("k0", 11)])  # delete: one live record less
    await central_store.apply([make_record("x", 4, {}, agent_id="agent-b")])
    summaries = {s.agent_id: s for s in await central_store.agents()}
    assert list(summaries) == ["agent-a", "agent-b"]
    a = summaries["agent-a"]
    assert (a.highest_version, a.record_count, a.tables) == (11, 3, {"candidates": 1, "kv": 2})
    assert a.last_seen is not None
    assert a.last_seen >= before
    assert summaries["agent-b"].record_count == 1


async def test_apply_answers_one_ack_per_agent(central_store: CentralStore) -> None:
    acks = await central_store.apply(
        [
            make_record("k", 3, {}, agent_id="agent-b"),
            make_record("k", 5, {}, agent_id="agent-a"),
            make_record("j", 8, {}, agent_id="agent-b"),
        ]
    )
    assert [(a.agent_id, a.applied, a.highest_version) for a in acks] == [
        ("agent-b", 2, 8),
        ("agent-a", 1, 5),
    ]


async def test_concurrent_applies_all_commit(central_store: CentralStore) -> None:
    batches = [
        [make_record(f"b{b}-{i}", b * 100 + i + 1, {"b": b}) for i in range(50)] for b in range(20)
    ]
    results = await asyncio.gather(*(central_store.apply(batch) for batch in batches))
    assert sum(acks[0].applied for acks in results) == 1000
    assert len(await everything(central_store)) == 1000


async def test_value_over_the_limit_is_refused_and_changes_nothing(
    central_store: CentralStore,
) -> None:
    big = {"blob": "x" * CONTRACT_MAX_VALUE_BYTES}
    with pytest.raises(ValueTooLarge, match="records\\[1\\]"):
        await central_store.apply([make_record("ok", 1, {"v": 1}), make_record("big", 2, big)])
    assert await everything(central_store, include_deleted=True) == []
    assert await central_store.agents() == []


async def test_data_that_is_not_storable_json_is_refused(central_store: CentralStore) -> None:
    with pytest.raises(ValueError, match="records\\[0\\]"):
        await central_store.apply([make_record("k", 1, {"n": 2**70})])
    assert await everything(central_store, include_deleted=True) == []


async def test_foreign_cursor_is_refused(central_store: CentralStore) -> None:
    for cursor in ("garbage!", "cmV2Oi0x", ""):
        with pytest.raises(InvalidCursor):
            await central_store.query(QueryRequest(cursor=cursor))


async def test_data_survives_close_and_reopen(
    central_factory: Callable[[], CentralStore], central_store: CentralStore
) -> None:
    await central_store.apply([make_record("k", 1, {"v": 1})])
    old_rev = (await everything(central_store))[0].rev
    await central_store.close()
    async with central_factory() as reopened:
        assert [r.data for r in await everything(reopened)] == [{"v": 1}]
        await reopened.apply([make_record("j", 2, {"v": 2})])
        assert max(r.rev for r in await everything(reopened)) > old_rev


async def test_closed_store_is_unavailable(central_factory: Callable[[], CentralStore]) -> None:
    store = central_factory()
    await store.open()
    assert (await store.health()).ok
    await store.close()
    await store.close()  # idempotent
    assert not (await store.health()).ok
    with pytest.raises(CentralStoreUnavailable):
        await store.apply([make_record("k", 1, {})])
    with pytest.raises(CentralStoreUnavailable):
        await store.query(QueryRequest())


# ------------------------------------------------------------------------------- queries

DATASET = {
    "k1": {
        "name": "alice",
        "age": 30,
        "score": 1.5,
        "tags": ["x", "y", 3, True],
        "address": [{"city": "paris"}],
        "flag": True,
        "nothing": None,
    },
    "k2": {"name": "bob", "age": "30", "tags": ["y"], "flag": False, "bio": "likes xylophones"},
    "k3": {"name": "carol", "age": 41, "tags": [], "nested": {"deep": {"v": 1}}},
    "k4": {"name": "dave", "age": 50},  # deleted below: never matches unless include_deleted
}

FILTER_CASES: list[tuple[str, str, Any, set[str]]] = [
    ("name", "eq", "alice", {"k1"}),
    ("age", "eq", 30, {"k1"}),
    ("age", "eq", "30", {"k2"}),
    ("age", "eq", 30.0, {"k1"}),
    ("flag", "eq", True, {"k1"}),
    ("flag", "eq", False, {"k2"}),
    ("nothing", "eq", None, {"k1"}),
    ("age", "ne", 30, {"k2", "k3"}),
    ("flag", "ne", True, {"k2", "k3"}),
    ("age", "lt", 35, {"k1"}),
    ("age", "lte", 30, {"k1"}),
    ("age", "gt", 30, {"k3"}),
    ("age", "gte", 30, {"k1", "k3"}),
    ("score", "gt", 1, {"k1"}),
    ("name", "gt", "b", {"k2", "k3"}),
    ("name", "lt", "bob", {"k1"}),
    ("age", "in", [30, "30"], {"k1", "k2"}),
    ("name", "in", ["alice", "carol", "zed"], {"k1", "k3"}),
    ("flag", "in", [True, None], {"k1"}),
    ("tags", "contains", "y", {"k1", "k2"}),
    ("tags", "contains", 3, {"k1"}),
    ("tags", "contains", True, {"k1"}),
    ("tags", "contains", "z", set()),
    ("bio", "contains", "xylo", {"k2"}),
    ("name", "contains", "aro", {"k3"}),
    ("flag", "exists", True, {"k1", "k2"}),
    ("flag", "exists", False, {"k3"}),
    ("nothing", "exists", True, {"k1"}),
    ("name", "prefix", "ca", {"k3"}),
    ("name", "prefix", "", {"k1", "k2", "k3"}),
    ("address.0.city", "eq", "paris", {"k1"}),
    ("nested.deep.v", "eq", 1, {"k3"}),
    ("nested.deep", "exists", True, {"k3"}),
    ("age", "eq", 2**70, set()),
    ("age", "lt", 2**70, {"k1", "k3"}),
]


@pytest.fixture
async def dataset(central_store: CentralStore) -> CentralStore:
    records = [make_record(key, i + 1, data) for i, (key, data) in enumerate(DATASET.items())]
    await central_store.apply(records)
    await central_store.apply([make_record("k4", 100)])
    return central_store


@pytest.mark.parametrize(("field", "op", "value", "expected"), FILTER_CASES)
async def test_field_filters(
    dataset: CentralStore, field: str, op: str, value: Any, expected: set[str]
) -> None:
    where = [{"field": field, "op": op, "value": value}]
    assert {r.key for r in await everything(dataset, where=where)} == expected


async def test_filters_combine_with_and(dataset: CentralStore) -> None:
    where = [
        {"field": "tags", "op": "contains", "value": "y"},
        {"field": "age", "op": "eq", "value": 30},
    ]
    assert {r.key for r in await everything(dataset, where=where)} == {"k1"}


async def test_include_deleted_shows_tombstones_to_filters_on_missing_fields(
    dataset: CentralStore,
) -> None:
    where = [{"field": "name", "op": "exists", "value": False}]
    assert await everything(dataset, where=where) == []
    found = await everything(dataset, where=where, include_deleted=True)
    assert [(r.key, r.deleted) for r in found] == [("k4", True)]


async def test_agent_table_key_and_prefix_filters(central_store: CentralStore) -> None:
    await central_store.apply(
        [
            make_record("user:1", 1, {}, agent_id="agent-a"),
            make_record("user:2", 2, {}, agent_id="agent-a"),
            make_record("user:2", 3, {}, agent_id="agent-a", table="other"),
            make_record("users", 4, {}, agent_id="agent-a"),
            make_record("user:é", 5, {}, agent_id="agent-a"),
        ]
    )
    await central_store.apply([make_record("user:1", 1, {}, agent_id="agent-b")])
    await central_store.apply([make_record("user:1", 1, {}, agent_id="agent-c")])

    async def keys(**filters: Any) -> list[tuple[str, str, str]]:
        found = await everything(central_store, **filters)
        return sorted((r.agent_id, r.table, r.key) for r in found)

    assert len(await keys(agent_id="agent-a")) == 5
    assert await keys(agent_id=["agent-b", "agent-c"]) == [
        ("agent-b", "kv", "user:1"),
        ("agent-c", "kv", "user:1"),
    ]
    assert await keys(agent_id="agent-a", key="user:2") == [
        ("agent-a", "kv", "user:2"),
        ("agent-a", "other", "user:2"),
    ]
    assert await keys(agent_id="agent-a", table="other") == [("agent-a", "other", "user:2")]
    assert [k for _, _, k in await keys(agent_id="agent-a", table="kv", key_prefix="user:")] == [
        "user:1",
        "user:2",
        "user:é",
    ]
    assert len(await keys(key="user:1")) == 3
    assert await keys(agent_id="nobody") == []


async def test_updated_since_filters_on_the_relays_receive_time(
    central_store: CentralStore,
) -> None:
    # Writers' clocks are not to be trusted (issue: updated_since under writer clock skew):
    # the filter uses the time the relay received each record; ts stays the writer's.
    skewed = datetime(2026, 1, 1, tzinfo=UTC) - timedelta(days=400)
    await central_store.apply([make_record(f"old{i}", i + 1, {}, ts=skewed) for i in range(3)])
    await asyncio.sleep(0.01)
    since = datetime.now(UTC)
    await asyncio.sleep(0.01)
    await central_store.apply(
        [make_record(f"new{i}", i + 10, {}, ts=skewed - timedelta(days=i)) for i in range(3)]
    )
    found = await everything(central_store, updated_since=since)
    assert [r.key for r in found] == ["new0", "new1", "new2"]
    assert {r.ts for r in found} == {skewed - timedelta(days=i) for i in range(3)}
    assert len(await everything(central_store, updated_since=since - timedelta(days=1))) == 6


async def test_pagination_visits_every_record_once(central_store: CentralStore) -> None:
    for start in range(0, 250, 50):
        chunk = range(start, start + 50)
        await central_store.apply([make_record(f"k{i:03d}", i + 1, {"i": i}) for i in chunk])
    await central_store.apply([make_record("k007", 1000)])  # a tombstone: not in the pages
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page = await central_store.query(QueryRequest(limit=37, cursor=cursor))
        assert len(page.records) <= 37
        seen += [r.key for r in page.records]
        pages += 1
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert pages == 7  # 249 records: six full pages, then 27
    assert len(seen) == len(set(seen)) == 249
    assert "k007" not in seen


async def test_limit_and_exact_last_page(central_store: CentralStore) -> None:
    await central_store.apply([make_record(f"k{i}", i + 1, {}) for i in range(10)])
    page = await central_store.query(QueryRequest(limit=10))
    assert len(page.records) == 10
    assert page.next_cursor is None  # no empty extra page
    page = await central_store.query(QueryRequest(limit=3))
    assert [r.rev for r in page.records] == sorted(r.rev for r in page.records)
    assert page.next_cursor is not None


async def test_writes_during_paging_are_not_missed(central_store: CentralStore) -> None:
    await central_store.apply([make_record(f"k{i}", i + 1, {"v": 0}) for i in range(10)])
    first = await central_store.query(QueryRequest(limit=5))
    # k0 (already read) and k9 (not yet read) change while we page: both show up again later.
    await central_store.apply([make_record("k0", 50, {"v": 1}), make_record("k9", 51, {"v": 1})])
    rest = await everything(central_store, cursor=first.next_cursor)
    assert [r.key for r in first.records] == ["k0", "k1", "k2", "k3", "k4"]
    assert sorted(r.key for r in rest) == ["k0", "k5", "k6", "k7", "k8", "k9"]
    assert {r.key: r.version for r in rest}["k9"] == 51


SPARSE = {3, 90, 91, 200, 299}


@pytest.mark.parametrize("limit", [1, 2, 7, 1000])
@pytest.mark.parametrize(
    ("clause", "matches"),
    [
        ({"field": "v.sparse", "op": "eq", "value": 1}, lambda i: i in SPARSE),
        ({"field": "v.sparse", "op": "in", "value": [1, "x"]}, lambda i: i in SPARSE),
        ({"field": "v.tags", "op": "contains", "value": 5}, lambda i: i in SPARSE),
        ({"field": "v.half", "op": "eq", "value": True}, lambda i: i % 2 == 0),
        ({"field": "v.half", "op": "eq", "value": "none"}, lambda i: False),
    ],
)
async def test_filter_pages_are_exact_whether_matches_are_dense_or_sparse(
    central_store: CentralStore, limit: int, clause: dict[str, Any], matches: Callable[[int], bool]
) -> None:
    """Stores may read rows in different orders or indexes depending on how many match (the
    PostgreSQL store walks the rev order first, then asks its GIN index): the pages are the
    same rows in rev order either way, including across the boundary and near the end."""
    for start in range(0, 300, 60):
        batch = []
        for i in range(start, start + 60):
            data = {"v": {"sparse": int(i in SPARSE), "half": i % 2 == 0, "tags": [i % 4]}}
            if i in SPARSE:
                data["v"]["tags"] = [5]
            batch.append(make_record(f"k{i:03d}", i + 1, data))
            batch.append(make_record(f"k{i:03d}", i + 1, data, agent_id="agent-b"))
            batch.append(make_record(f"k{i:03d}", i + 1, data, table="other"))
        await central_store.apply(batch)
    await central_store.apply([make_record("k090", 1000)])  # a tombstone among the matches
    ordered = await everything(central_store)  # rev order
    for filters in ({}, {"agent_id": "agent-a", "table": "kv"}):
        expected = [
            (r.agent_id, r.table, r.key)
            for r in ordered
            if matches(int(r.key[1:]))
            and (not filters or (r.agent_id, r.table) == ("agent-a", "kv"))
        ]
        seen: list[tuple[str, str, str]] = []
        cursor = None
        while True:
            page = await central_store.query(
                QueryRequest(where=[clause], limit=limit, cursor=cursor, **filters)
            )
            seen += [(r.agent_id, r.table, r.key) for r in page.records]
            if page.next_cursor is None:
                break
            assert len(page.records) == limit
            cursor = page.next_cursor
        assert seen == expected
