"""No request and no stored record can make the relay answer 5xx, on either central store.

* ``ts`` values that leave years 1 to 9999 once converted to UTC are refused with 422 on the
  fast ingest path and on the models' path alike, and nothing is stored;
* a stored record that cannot be rendered (a ``ts`` an older relay let in, data that does not
  decode) keeps its place in query pages and the change feed, marked ``damaged``, and an export
  still completes (a damaged ``ts`` is exported clamped, undecodable data is left out and
  reported);
* cursors out of range are 400, U+0000 anywhere in a query 422, identically on both stores.
"""

from __future__ import annotations

import base64
import io
import sqlite3
from typing import Any

import orjson
import psycopg
import pytest
from security_helpers import all_records, record, relay_client

from commander_os.config import RelayConfig
from commander_os.protocol import ChangeRecord, StoredRecord
from commander_os.relay import create_app
from commander_os.relay.central import (
    CentralStore,
    PostgresCentralStore,
    SQLiteCentralStore,
    export_records,
    import_records,
)

pytestmark = pytest.mark.anyio

OUT_OF_RANGE = [
    "0001-01-01T00:00:00+23:59",
    "0001-01-01T00:00:00.000001+00:01",
    "9999-12-31T23:59:59-23:59",
    "9999-12-31T23:59:59.999999-00:01",
]
EDGES = ["0001-01-01T00:00:00Z", "9999-12-31T23:59:59.999999Z", "0001-01-01T00:00:00-23:59"]


def app_over(store: CentralStore, tmp_path: Any) -> Any:
    return create_app(RelayConfig(agent_storage_dir=tmp_path / "unused"), store=store)


def cursor_of(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


async def tamper(store: CentralStore, sql: str, params: tuple[Any, ...]) -> None:
    """Change the stored rows behind the relay's back, as a bug or an older relay could have."""
    if isinstance(store, SQLiteCentralStore):
        with sqlite3.connect(store.path) as conn:
            conn.execute(sql.replace("%s", "?"), params)
        return
    assert isinstance(store, PostgresCentralStore)
    async with await psycopg.AsyncConnection.connect(store.url, autocommit=True) as conn:
        await conn.execute(f"SET search_path TO {store.schema}")
        await conn.execute(sql, params)


async def test_timestamps_outside_years_1_to_9999_are_422_on_both_ingest_paths(
    any_store: CentralStore, tmp_path: Any
) -> None:
    async with relay_client(app_over(any_store, tmp_path)) as relay:
        for ts in OUT_OF_RANGE:
            fast = await relay.post("/relay/immediate", json=record("agent-a", "k", 1, ts=ts))
            # A non-ASCII key makes the fast path decline: the models decide.
            slow = await relay.post(
                "/relay/batch",
                json={"agent_id": "agent-a", "records": [record("agent-a", "ké", 1, ts=ts)]},
            )
            for answer in (fast, slow):
                assert answer.status_code == 422, (ts, answer.text)
                assert "years 1 to 9999" in answer.text
        assert await all_records(any_store) == []
        for version, ts in enumerate(EDGES, 1):
            answer = await relay.post(
                "/relay/immediate", json=record("agent-a", ts, version, ts=ts)
            )
            assert answer.status_code == 200, answer.text
        page = await relay.post("/relay/query", json={})
        assert page.status_code == 200
        assert [r["ts"] for r in page.json()["records"]] == [
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999Z",
            "0001-01-01T23:59:00Z",
        ]


async def test_updated_since_out_of_range_is_422(any_store: CentralStore, tmp_path: Any) -> None:
    async with relay_client(app_over(any_store, tmp_path)) as relay:
        answer = await relay.post("/relay/query", json={"updated_since": OUT_OF_RANGE[0]})
        assert answer.status_code == 422
        assert "years 1 to 9999" in answer.text


async def test_a_stored_ts_out_of_range_is_clamped_and_marked_not_fatal(
    any_store: CentralStore, tmp_path: Any
) -> None:
    await any_store.apply(
        [ChangeRecord.model_validate(record("agent-a", f"k{i}", i + 1)) for i in range(3)]
    )
    # Year 0 in UTC: what 0001-01-01T00:00:00+23:59 became before the relay checked it.
    await tamper(
        any_store, "UPDATE records SET ts = %s WHERE key = %s", (-62_135_683_140_000_000, "k1")
    )
    async with relay_client(app_over(any_store, tmp_path)) as relay:
        for answer in (
            await relay.post("/relay/query", json={}),
            await relay.get("/relay/changes"),
        ):
            assert answer.status_code == 200, answer.text
            records = answer.json()["records"]
            assert [r["key"] for r in records] == ["k0", "k1", "k2"]
            damaged = records[1]
            assert damaged["ts"] == "0001-01-01T00:00:00Z"
            assert "out of range" in damaged["damaged"]
            assert damaged["data"] == {"value": "k1"}
            assert "damaged" not in records[0]
    reported: list[StoredRecord] = []
    out = io.BytesIO()
    assert await export_records(any_store, out, on_damaged=reported.append) == 3
    assert [r.key for r in reported] == ["k1"]
    async with SQLiteCentralStore.in_directory(tmp_path / "copy") as copy:
        result = await import_records(copy, out.getvalue().splitlines())
        assert result.applied == 3


async def test_stored_data_that_does_not_decode_is_marked_and_left_out_of_exports(
    any_store: CentralStore, tmp_path: Any
) -> None:
    await any_store.apply(
        [ChangeRecord.model_validate(record("agent-a", f"k{i}", i + 1)) for i in range(3)]
    )
    # SQLite keeps text: truncated JSON. JSONB holds only valid JSON, but a number beyond the
    # double range (stored by hand) is one orjson cannot read.
    broken = '{"value": "k1' if isinstance(any_store, SQLiteCentralStore) else '{"value": 1e400}'
    await tamper(any_store, "UPDATE records SET data = %s WHERE key = %s", (broken, "k1"))
    async with relay_client(app_over(any_store, tmp_path)) as relay:
        answer = await relay.post("/relay/query", json={"agent_id": "agent-a"})
        assert answer.status_code == 200, answer.text
        records = answer.json()["records"]
        assert [(r["key"], r["data"]) for r in records] == [
            ("k0", {"value": "k0"}),
            ("k1", None),
            ("k2", {"value": "k2"}),
        ]
        assert "cannot be decoded" in records[1]["damaged"]
        feed = await relay.get("/relay/changes")
        assert feed.status_code == 200
        filtered = await relay.post(
            "/relay/query", json={"where": [{"field": "value", "op": "exists", "value": True}]}
        )
        assert filtered.status_code == 200
    reported: list[StoredRecord] = []
    out = io.BytesIO()
    assert await export_records(any_store, out, on_damaged=reported.append) == 2
    assert [r.key for r in reported] == ["k1"]
    assert [orjson.loads(line)["key"] for line in out.getvalue().splitlines()] == ["k0", "k2"]


CURSORS = [
    cursor_of("rev:9999999999999999999"),  # 19 digits, beyond a signed 64-bit integer
    cursor_of("rev:9223372036854775808"),  # 2**63
    cursor_of("rev:" + "9" * 40),
    cursor_of("rev:-1"),
    cursor_of("rev:+1"),
    cursor_of("rev:1e3"),
    cursor_of("rev:١٢"),  # Arabic-Indic digits
    cursor_of("nope:12"),
    "not base64 at all!",
    "é",
]


async def test_cursors_out_of_range_or_foreign_are_400_on_both_stores(
    any_store: CentralStore, tmp_path: Any
) -> None:
    await any_store.apply([ChangeRecord.model_validate(record("agent-a", "k", 1))])
    async with relay_client(app_over(any_store, tmp_path)) as relay:
        for cursor in CURSORS:
            query = await relay.post("/relay/query", json={"cursor": cursor})
            feed = await relay.get("/relay/changes", params={"after": cursor})
            for answer in (query, feed):
                assert answer.status_code == 400, (cursor, answer.status_code, answer.text)
                assert answer.json()["error"] == "invalid_cursor"
        last = await relay.post(
            "/relay/query", json={"cursor": cursor_of("rev:9223372036854775807")}
        )
        assert last.status_code == 200
        assert last.json()["records"] == []


NUL_QUERIES = [
    {"key": "k\x00"},
    {"key_prefix": "\x00"},
    {"where": [{"field": "value", "op": "eq", "value": "k\x00"}]},
    {"where": [{"field": "value", "op": "ne", "value": "\x00"}]},
    {"where": [{"field": "value", "op": "in", "value": ["k", "\x00"]}]},
    {"where": [{"field": "value", "op": "prefix", "value": "\x00"}]},
    {"where": [{"field": "value", "op": "contains", "value": "\x00"}]},
    {"where": [{"field": "value", "op": "gte", "value": "a\x00"}]},
]


async def test_nul_in_a_query_is_422_on_both_stores(any_store: CentralStore, tmp_path: Any) -> None:
    await any_store.apply([ChangeRecord.model_validate(record("agent-a", "k", 1))])
    async with relay_client(app_over(any_store, tmp_path)) as relay:
        for query in NUL_QUERIES:
            answer = await relay.post("/relay/query", json=query)
            assert answer.status_code == 422, (query, answer.text)
            assert "U+0000" in answer.text
        plain = await relay.post("/relay/query", json={"key": "k"})
        assert [r["key"] for r in plain.json()["records"]] == ["k"]
