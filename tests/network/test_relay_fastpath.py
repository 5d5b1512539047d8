"""The ingest fast path accepts only what the wire models accept, and encodes it identically."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from commander_os.config import LimitsConfig
from commander_os.protocol import BatchRequest, ChangeRecord, encode_records
from commander_os.relay._body import RequestProblem, check_records
from commander_os.relay._fastpath import fast_batch, fast_record

LIMITS = LimitsConfig(max_value_bytes=2048, max_json_depth=4, max_batch_records=20)

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=12,
)
valid_fields: dict[str, Any] = {
    "agent_id": st.just("agent-a"),
    "table": st.sampled_from(["kv", "notes"]),
    "key": st.text(st.characters(min_codepoint=32, max_codepoint=126), min_size=1, max_size=6),
    "op": st.just("upsert"),
    "data": st.dictionaries(st.text(max_size=4), json_values, max_size=4),
    "version": st.integers(1, 2**63 - 1),
    "ts": st.sampled_from(
        ["2026-11-27T02:33:27.123456Z", "2026-11-27T02:33:27Z", "2026-11-27T02:33:27.5+02:00"]
    ),
}
# Odd values that exercise every refusal (and some oddities the models do accept).
odd_fields: dict[str, Any] = {
    "agent_id": st.sampled_from(["agent-b", "Agent", "", 7, None]),
    "table": st.sampled_from(["1bad", "sqlite_x", "x" * 65, None]),
    "key": st.one_of(st.sampled_from(["é", "a\x00b", "", 5, "k" * 1025]), st.text(max_size=6)),
    "op": st.sampled_from(["delete", "merge", None]),
    "data": st.one_of(st.none(), json_values),
    "version": st.sampled_from([0, -1, 2**63, True, "5", 1.5, 2**64 + 1]),
    "ts": st.sampled_from(
        [
            "2026-11-27 02:33:27",
            "2026-13-27T02:33:27Z",
            "2026-11-27T02:33:27.1234567Z",
            "2026-11-27T02:33:27",
            "yesterday",
            1764210000,
        ]
    ),
}


@st.composite
def wire_records(draw: st.DrawFn) -> dict[str, Any]:
    record = {name: draw(strategy) for name, strategy in valid_fields.items()}
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from([*odd_fields, "missing", "extra"]))
        if name == "extra":
            record["colour"] = "red"
        elif name == "missing":
            record.pop(draw(st.sampled_from(sorted(record))), None)
        else:
            record[name] = draw(odd_fields[name])
    return record


def dumps(value: Any) -> bytes:
    # The stdlib encoder: it writes integers of any size, as a hostile client could.
    return json.dumps(value, ensure_ascii=False).encode()


def slow_path(model: type[Any], body: bytes) -> list[Any] | None:
    """What the models (plus the relay's extra checks) make of ``body``; None if refused."""
    try:
        parsed = model.model_validate_json(body)
        records = parsed.records if isinstance(parsed, BatchRequest) else [parsed]
        check_records(records, LIMITS)
        return encode_records(records, max_value_bytes=LIMITS.max_value_bytes)
    except (ValidationError, RequestProblem, ValueError):
        return None


@settings(max_examples=150, deadline=None)
@given(
    records=st.lists(wire_records(), min_size=1, max_size=4),
    agent=st.sampled_from(["agent-a", "agent-a", "agent-b", "Bad"]),
)
def test_fast_batch_is_a_subset_of_the_models(records: list[dict[str, Any]], agent: Any) -> None:
    body = dumps({"agent_id": agent, "records": records})
    fast = fast_batch(body, LIMITS)
    if fast is not None:
        assert fast == slow_path(BatchRequest, body)


@settings(max_examples=150, deadline=None)
@given(record=wire_records())
def test_fast_record_is_a_subset_of_the_models(record: dict[str, Any]) -> None:
    body = dumps(record)
    fast = fast_record(body, LIMITS)
    if fast is not None:
        assert fast == slow_path(ChangeRecord, body)


VALID = {
    "agent_id": "agent-a",
    "table": "kv",
    "key": "k",
    "op": "upsert",
    "data": {"v": [1, {"x": "y"}]},
    "version": 7,
    "ts": "2026-11-27T02:33:27.123456Z",
}


def test_well_formed_bodies_take_the_fast_path() -> None:
    one = orjson.dumps(VALID)
    assert fast_record(one, LIMITS) == slow_path(ChangeRecord, one)
    deletion = orjson.dumps({**VALID, "op": "delete", "data": None})
    assert fast_record(deletion, LIMITS) is not None
    batch = orjson.dumps({"agent_id": "agent-a", "records": [VALID, {**VALID, "key": "j"}]})
    assert fast_batch(batch, LIMITS) == slow_path(BatchRequest, batch)


@pytest.mark.parametrize(
    "body",
    [
        b'{"agent_id":"agent-a","table":"kv","key":"k","op":"upsert","version":7,'
        b'"ts":"2026-11-27T02:33:27Z","data":{"n":123456789012345678901234}}',
        orjson.dumps({**VALID, "key": "clé"}),
        orjson.dumps({**VALID, "data": {"blob": "x" * 3000}}),
        orjson.dumps({**VALID, "data": {"a": {"b": {"c": {"d": {}}}}}}),
        orjson.dumps({**VALID, "ts": "2026-11-27T02:33:27"}),
        orjson.dumps({**VALID, "agent_id": None}),
        b"{not json",
    ],
    ids=[
        "long integer",
        "non-ASCII key",
        "large value",
        "deep value",
        "naive ts",
        "null agent",
        "bad JSON",
    ],
)
def test_unusual_bodies_go_to_the_slow_path(body: bytes) -> None:
    assert fast_record(body, LIMITS) is None


def test_batches_over_the_limit_or_mixing_agents_go_to_the_slow_path() -> None:
    too_many = orjson.dumps({"agent_id": "agent-a", "records": [VALID] * 21})
    assert fast_batch(too_many, LIMITS) is None
    mixed = orjson.dumps({"agent_id": "agent-a", "records": [{**VALID, "agent_id": "agent-b"}]})
    assert fast_batch(mixed, LIMITS) is None


def test_timestamps_shared_by_records_are_checked_for_each_record() -> None:
    # The fast path remembers converted timestamps within a batch; a bad one is never cached.
    same = [VALID, {**VALID, "key": "j"}, {**VALID, "key": "i"}]
    batch = orjson.dumps({"agent_id": "agent-a", "records": same})
    assert fast_batch(batch, LIMITS) == slow_path(BatchRequest, batch)
    bad = [VALID, {**VALID, "key": "j", "ts": "2026-11-27T02:33:27"}]
    assert fast_batch(orjson.dumps({"agent_id": "agent-a", "records": bad}), LIMITS) is None
    late = [VALID, {**VALID, "key": "j", "version": 0}]
    assert fast_batch(orjson.dumps({"agent_id": "agent-a", "records": late}), LIMITS) is None


# -- deliveries (``{"segments": [...]}``) ---------------------------------------------------


@st.composite
def segment_items(draw: st.DrawFn, base: int) -> list[dict[str, Any]]:
    items = []
    seq = base
    for record in draw(st.lists(wire_records(), max_size=4)):
        record.pop("agent_id", None)
        record.pop("version", None)
        seq += draw(st.integers(-1, 3))
        record["seq"] = draw(st.sampled_from([seq, seq, 0, 2**32, "7"]))
        items.append(record)
    return items


@st.composite
def segments(draw: st.DrawFn) -> dict[str, Any]:
    base = draw(st.integers(0, 5))
    document: dict[str, Any] = {
        "agent_id": draw(st.sampled_from(["agent-a", "agent-b", "Bad", 3])),
        "incarnation": draw(st.sampled_from([0, 1, 7, -1, 2**31, True])),
        "acked": draw(st.sampled_from([0, base, base + 1])),
        "base": base,
        "segment_id": draw(st.sampled_from([1, 2**62, -5])),
        "records": draw(segment_items(base)),
    }
    for flag in ("claim", "repair"):
        if draw(st.booleans()):
            document[flag] = draw(st.sampled_from([True, False, 1]))
    return document


def slow_delivery(body: bytes) -> list[Any] | None:
    """What the models (plus the relay's extra checks) make of a delivery; None if refused."""
    from commander_os.protocol import DeliveryRequest
    from commander_os.relay._ingest import _slow_segment

    try:
        request = DeliveryRequest.model_validate_json(body)
        return [_slow_segment(segment, LIMITS) for segment in request.segments]
    except (ValidationError, RequestProblem, ValueError):
        return None


@settings(max_examples=200, deadline=None)
@given(documents=st.lists(segments(), min_size=1, max_size=3))
def test_fast_delivery_is_a_subset_of_the_models(documents: list[dict[str, Any]]) -> None:
    from commander_os.relay._fastpath import fast_delivery

    body = dumps({"segments": documents})
    fast = fast_delivery(body, LIMITS)
    if fast is not None:
        assert fast == slow_delivery(body)


def test_well_formed_deliveries_take_the_fast_path() -> None:
    from commander_os.relay._fastpath import fast_delivery

    record = {k: v for k, v in VALID.items() if k not in ("agent_id", "version")}
    body = orjson.dumps(
        {
            "segments": [
                {
                    "agent_id": "agent-a",
                    "incarnation": 3,
                    "acked": 1,
                    "base": 4,
                    "segment_id": 99,
                    "records": [{**record, "seq": 5}, {**record, "key": "j", "seq": 9}],
                }
            ]
        }
    )
    fast = fast_delivery(body, LIMITS)
    assert fast is not None
    assert fast == slow_delivery(body)
    assert fast[0].header is not None
    assert fast[0].header.through == 9
