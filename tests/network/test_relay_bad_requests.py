"""Bad requests get a 4xx JSON error naming the problem, never a 5xx, and change nothing.

The relay under test has small limits (``TEST_LIMITS`` in conftest): 64 KiB bodies, 50 records
per batch, 4 KiB values, JSON data nested at most 8 levels, queries capped at 100 records.
"""

from __future__ import annotations

import gzip
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import zstandard

from commander_os.protocol import QueryRequest, format_ts
from commander_os.relay.central import CentralStore

pytestmark = pytest.mark.anyio


def record(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "agent_id": "agent-a",
        "table": "kv",
        "key": "k",
        "op": "upsert",
        "data": {"v": 1},
        "version": 10,
        "ts": format_ts(1_764_210_000),
    }
    base.update(changes)
    return {k: v for k, v in base.items() if v is not ...}


def batch(records: list[dict[str, Any]], agent_id: str = "agent-a") -> bytes:
    return orjson.dumps({"agent_id": agent_id, "records": records})


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def snapshot(store: CentralStore) -> tuple[Any, ...]:
    page = await store.query(QueryRequest(include_deleted=True, limit=1000))
    agents = [(a.agent_id, a.highest_version, a.record_count) for a in await store.agents()]
    return tuple(page.records), tuple(agents)


@pytest.fixture
async def seeded(
    relay: httpx.AsyncClient, relay_store: CentralStore
) -> AsyncIterator[tuple[Any, ...]]:
    seed = await relay.post("/relay/immediate", json=record(key="seed", version=1))
    assert seed.status_code == 200
    before = await snapshot(relay_store)
    yield before
    assert await snapshot(relay_store) == before, "a refused request changed the store"


def refused(answer: httpx.Response, status: int, error: str, *mentions: str) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == error
    text = str(body["detail"])
    for word in mentions:
        assert word in text, f"{word!r} not named in {text!r}"


IMMEDIATE_CASES: list[tuple[str, bytes, int, str, tuple[str, ...]]] = [
    ("malformed JSON", b'{"agent_id": "agent-a",', 400, "invalid_json", ("EOF",)),
    ("empty body", b"", 400, "invalid_json", ("empty",)),
    ("not an object", b"[1, 2]", 422, "invalid_request", ("object",)),
    (
        "version not a number",
        orjson.dumps(record(version="ten")),
        422,
        "invalid_request",
        ("version",),
    ),
    ("version zero", orjson.dumps(record(version=0)), 422, "invalid_request", ("version",)),
    (
        "version over 64 bits",
        orjson.dumps(record(version=2**63)),
        422,
        "invalid_request",
        ("version",),
    ),
    (
        "unknown field",
        orjson.dumps(record(colour="red")),
        422,
        "invalid_request",
        ("colour", "Extra"),
    ),
    ("unknown op", orjson.dumps(record(op="merge")), 422, "invalid_request", ("op",)),
    ("upsert without data", orjson.dumps(record(data=...)), 422, "invalid_request", ("data",)),
    ("delete with data", orjson.dumps(record(op="delete")), 422, "invalid_request", ("delete",)),
    ("data not an object", orjson.dumps(record(data=[1, 2])), 422, "invalid_request", ("data",)),
    (
        "hostile agent id",
        orjson.dumps(record(agent_id="../../etc")),
        422,
        "invalid_request",
        ("agent_id",),
    ),
    (
        "uppercase agent id",
        orjson.dumps(record(agent_id="Agent")),
        422,
        "invalid_request",
        ("agent_id",),
    ),
    (
        "hostile table",
        orjson.dumps(record(table="kv; DROP TABLE records")),
        422,
        "invalid_request",
        ("table",),
    ),
    ("empty key", orjson.dumps(record(key="")), 422, "invalid_request", ("key",)),
    ("NUL in key", orjson.dumps(record(key="a\x00b")), 422, "invalid_key", ("NUL",)),
    ("key too long", orjson.dumps(record(key="é" * 600)), 422, "invalid_key", ("1024",)),
    ("bad timestamp", orjson.dumps(record(ts="yesterday")), 422, "invalid_request", ("ts",)),
    (
        "integer beyond 64 bits in data",
        b'{"agent_id":"agent-a","table":"kv","key":"k",'
        b'"op":"upsert","data":{"n":123456789012345678901234567890},"version":10,'
        b'"ts":"2026-01-01T00:00:00Z"}',
        422,
        "invalid_value",
        ("records[0]",),
    ),
    (
        "lone surrogate",
        b'{"agent_id":"agent-a","table":"kv","key":"\\ud800","op":"delete",'
        b'"version":10,"ts":"2026-01-01T00:00:00Z"}',
        400,
        "invalid_json",
        (),
    ),
    (
        "data nested too deep",
        orjson.dumps(record(data={"v": nested(9)})),
        422,
        "json_too_deep",
        ("records.0.data", "8"),
    ),
    (
        "JSON nested beyond the parser",
        b'{"agent_id":"agent-a","data":' + b"[" * 5000 + b"]" * 5000 + b"}",
        422,
        "json_too_deep",
        (),
    ),
    (
        "value over max_value_bytes",
        orjson.dumps(record(data={"v": "x" * 5000})),
        413,
        "value_too_large",
        ("4096",),
    ),
]


@pytest.mark.parametrize(
    ("body", "status", "error", "mentions"),
    [case[1:] for case in IMMEDIATE_CASES],
    ids=[case[0] for case in IMMEDIATE_CASES],
)
async def test_bad_immediate_records_are_refused(
    relay: httpx.AsyncClient,
    seeded: tuple[Any, ...],
    body: bytes,
    status: int,
    error: str,
    mentions: tuple[str, ...],
) -> None:
    answer = await relay.post("/relay/immediate", content=body)
    refused(answer, status, error, *mentions)


async def test_data_at_the_depth_limit_is_accepted(relay: httpx.AsyncClient) -> None:
    answer = await relay.post("/relay/immediate", json=record(data={"v": nested(8)}))
    assert answer.status_code == 200


async def test_too_many_records(relay: httpx.AsyncClient, seeded: tuple[Any, ...]) -> None:
    records = [record(key=f"k{i}", version=i + 2) for i in range(51)]
    refused(await relay.post("/relay/batch", content=batch(records)), 413, "too_many_records", "50")


async def test_batch_mixing_agents(relay: httpx.AsyncClient, seeded: tuple[Any, ...]) -> None:
    records = [record(key="a"), record(key="b", agent_id="agent-b")]
    answer = await relay.post("/relay/batch", content=batch(records))
    refused(answer, 422, "invalid_request", "one agent")


async def test_one_bad_record_refuses_the_whole_batch(
    relay: httpx.AsyncClient, seeded: tuple[Any, ...]
) -> None:
    records = [record(key=f"k{i}", version=i + 2) for i in range(10)]
    records[7]["op"] = "merge"
    refused(await relay.post("/relay/batch", content=batch(records)), 422, "invalid_request", "7")
    records[7] = record(key="big", data={"v": "x" * 5000})
    refused(await relay.post("/relay/batch", content=batch(records)), 413, "value_too_large")


async def test_empty_batch(relay: httpx.AsyncClient, seeded: tuple[Any, ...]) -> None:
    refused(await relay.post("/relay/batch", content=batch([])), 422, "invalid_request", "records")


async def test_declared_oversized_body(relay: httpx.AsyncClient, seeded: tuple[Any, ...]) -> None:
    body = batch([record(key=f"k{i}", version=i + 2, data={"v": "x" * 2000}) for i in range(40)])
    assert len(body) > 64 * 1024
    refused(await relay.post("/relay/batch", content=body), 413, "body_too_large", "65536")


async def test_streamed_oversized_body(relay: httpx.AsyncClient, seeded: tuple[Any, ...]) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(100):
            yield b" " * 1024  # no Content-Length: the cap applies while reading

    answer = await relay.post("/relay/batch", content=chunks())
    refused(answer, 413, "body_too_large")


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
async def test_compression_bomb(
    relay: httpx.AsyncClient, seeded: tuple[Any, ...], encoding: str
) -> None:
    inflated = b"[" + b" " * (50 * 1024 * 1024) + b"]"
    if encoding == "gzip":
        body = gzip.compress(inflated)
    else:
        body = zstandard.ZstdCompressor().compress(inflated)
    assert len(body) < 64 * 1024
    answer = await relay.post("/relay/batch", content=body, headers={"content-encoding": encoding})
    refused(answer, 413, "body_too_large", "decompressed")


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
async def test_corrupt_compressed_body(
    relay: httpx.AsyncClient, seeded: tuple[Any, ...], encoding: str
) -> None:
    answer = await relay.post(
        "/relay/batch", content=b"definitely not compressed", headers={"content-encoding": encoding}
    )
    refused(answer, 400, "bad_encoding", encoding)


async def test_unsupported_encoding(relay: httpx.AsyncClient, seeded: tuple[Any, ...]) -> None:
    answer = await relay.post("/relay/batch", content=b"x", headers={"content-encoding": "br"})
    refused(answer, 415, "unsupported_encoding", "br")


QUERY_CASES: list[tuple[str, Any, int, str, tuple[str, ...]]] = [
    (
        "unknown filter op",
        {"where": [{"field": "v", "op": "like", "value": "x"}]},
        422,
        "invalid_request",
        ("op",),
    ),
    (
        "SQL in a field path",
        {"where": [{"field": "v') OR 1=1 --", "op": "eq", "value": 1}]},
        422,
        "invalid_request",
        ("field",),
    ),
    (
        "JSONPath syntax",
        {"where": [{"field": "$.v[0]", "op": "eq", "value": 1}]},
        422,
        "invalid_request",
        ("field",),
    ),
    (
        "path too deep",
        {"where": [{"field": ".".join("a" * 10), "op": "eq", "value": 1}]},
        422,
        "invalid_request",
        ("field",),
    ),
    (
        "empty path segment",
        {"where": [{"field": "a..b", "op": "eq", "value": 1}]},
        422,
        "invalid_request",
        ("field",),
    ),
    (
        "in without a list",
        {"where": [{"field": "v", "op": "in", "value": 1}]},
        422,
        "invalid_request",
        ("in",),
    ),
    (
        "exists without a bool",
        {"where": [{"field": "v", "op": "exists", "value": "yes"}]},
        422,
        "invalid_request",
        ("exists",),
    ),
    (
        "eq on an object",
        {"where": [{"field": "v", "op": "eq", "value": {"a": 1}}]},
        422,
        "invalid_request",
        ("scalars",),
    ),
    (
        "too many clauses",
        {"where": [{"field": "v", "op": "exists", "value": True}] * 17},
        422,
        "invalid_request",
        ("where",),
    ),
    ("limit too large", {"limit": 100000}, 422, "invalid_request", ("limit",)),
    ("limit zero", {"limit": 0}, 422, "invalid_request", ("limit",)),
    ("unknown query field", {"agent": "x"}, 422, "invalid_request", ("agent",)),
    ("bad agent in list", {"agent_id": ["agent-a", "../x"]}, 422, "invalid_request", ("agent_id",)),
    ("foreign cursor", {"cursor": "not-a-cursor"}, 400, "invalid_cursor", ("cursor",)),
    (
        "bad updated_since",
        {"updated_since": "last week"},
        422,
        "invalid_request",
        ("updated_since",),
    ),
]


@pytest.mark.parametrize(
    ("query", "status", "error", "mentions"),
    [case[1:] for case in QUERY_CASES],
    ids=[case[0] for case in QUERY_CASES],
)
async def test_bad_queries_are_refused(
    relay: httpx.AsyncClient,
    seeded: tuple[Any, ...],
    query: Any,
    status: int,
    error: str,
    mentions: tuple[str, ...],
) -> None:
    refused(await relay.post("/relay/query", json=query), status, error, *mentions)


async def test_huge_numbers_in_filters_do_not_break_queries(relay: httpx.AsyncClient) -> None:
    query = {"where": [{"field": "v", "op": "gt", "value": 10**30}]}
    answer = await relay.post("/relay/query", json=query)
    assert answer.status_code == 200
    assert answer.json()["records"] == []


async def test_bad_change_feed_parameters(relay: httpx.AsyncClient) -> None:
    refused(
        await relay.get("/relay/changes", params={"limit": "many"}), 422, "invalid_request", "limit"
    )
    refused(
        await relay.get("/relay/changes", params={"wait": 3600}), 422, "invalid_request", "wait"
    )
    refused(
        await relay.get("/relay/changes", params={"agent_id": "A/B"}),
        422,
        "invalid_request",
        "agent_id",
    )
    refused(await relay.get("/relay/changes", params={"after": "zzz"}), 400, "invalid_cursor")


async def test_unknown_paths_and_methods(relay: httpx.AsyncClient) -> None:
    refused(await relay.get("/relay/nothing"), 404, "not_found")
    refused(await relay.get("/relay/batch"), 405, "method_not_allowed")


async def test_store_down_is_503_not_a_crash(
    relay: httpx.AsyncClient, relay_store: CentralStore
) -> None:
    await relay_store.close()
    answer = await relay.post("/relay/immediate", json=record())
    refused(answer, 503, "store_unavailable")
    assert answer.headers["retry-after"] == "1"
    refused(await relay.post("/relay/query", json={}), 503, "store_unavailable")
    refused(await relay.get("/relay/agents"), 503, "store_unavailable")
