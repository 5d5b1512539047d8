"""Ingest: one call turns a write body into applied records, for every write endpoint.

:func:`decode_writes` checks the caller's right to write every record (in one place), then
takes the fast path (:mod:`._fastpath`) and falls back to the wire models for anything the fast
path declines. :func:`apply_writes` hands the records to the central store and answers the acks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

import orjson

from commander_os.config import LimitsConfig
from commander_os.errors import CentralStoreUnavailable, ValueTooLarge
from commander_os.protocol import (
    Ack,
    BatchRequest,
    ChangeRecord,
    DeliveryRequest,
    EncodedRecord,
    Segment,
    SegmentAck,
    Verdict,
    encode_records,
    make_version,
)
from commander_os.relay._body import RequestProblem, check_records, parse_model
from commander_os.relay._fastpath import fast_batch, fast_delivery, fast_record
from commander_os.relay._guard import Caller, claimed_agents
from commander_os.relay._state import RelayState
from commander_os.relay.central import SegmentHeader, SegmentResult, WriteSegment

__all__ = [
    "apply_writes",
    "decode_delivery",
    "decode_writes",
    "deliver",
    "ingest",
    "is_delivery",
]

# A delivery body as our shipper writes it starts with its only key; other forms are checked
# by parsing (a body of another key order is still a delivery).
_DELIVERY_START = re.compile(rb'\s*\{\s*"segments"\s*:')

WriteShape = type[ChangeRecord] | type[BatchRequest]


def decode_writes(
    body: bytes, shape: WriteShape, limits: LimitsConfig, caller: Caller, *, fast: bool
) -> list[EncodedRecord]:
    """The records of a write body, checked against ``limits`` and the caller's rights.

    Raises :class:`~commander_os.relay._body.RequestProblem` (4xx) for anything refused.
    """
    encoded = _fast(body, shape, limits) if fast else None
    if encoded is None:
        if caller.claims is not None:
            # A body naming another agent is a 403, even where the models would call it
            # malformed (a batch mixing agents).
            caller.check_write(claimed_agents(body) or ())
        encoded = _slow(body, shape, limits)
    caller.check_write(record.agent_id for record in encoded)
    return encoded


def _fast(body: bytes, shape: WriteShape, limits: LimitsConfig) -> list[EncodedRecord] | None:
    return fast_record(body, limits) if shape is ChangeRecord else fast_batch(body, limits)


def _slow(body: bytes, shape: WriteShape, limits: LimitsConfig) -> list[EncodedRecord]:
    model = parse_model(shape, body)
    records: Sequence[ChangeRecord] = model.records if isinstance(model, BatchRequest) else [model]
    return _encoded(records, limits)


def _encoded(records: Sequence[ChangeRecord], limits: LimitsConfig) -> list[EncodedRecord]:
    check_records(list(records), limits)
    try:
        return encode_records(records, max_value_bytes=limits.max_value_bytes)
    except ValueTooLarge as exc:
        raise RequestProblem(413, "value_too_large", str(exc)) from None
    except ValueError as exc:  # data that cannot be stored as JSON (e.g. a lone surrogate)
        raise RequestProblem(422, "invalid_value", str(exc)) from None


def is_delivery(body: bytes) -> bool:
    """Whether a ``/relay/batch`` body is a delivery (``{"segments": [...]}``)."""
    if _DELIVERY_START.match(body):
        return True
    if b'"segments"' not in body:
        return False
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return False
    return isinstance(document, dict) and "segments" in document


def decode_delivery(body: bytes, limits: LimitsConfig, caller: Caller) -> list[WriteSegment]:
    """The segments of a delivery body (``{"segments": [...]}``), checked against ``limits``
    and the caller's right to write every segment's agent."""
    segments = fast_delivery(body, limits)
    if segments is None:
        request = parse_model(DeliveryRequest, body)
        segments = [_slow_segment(segment, limits) for segment in request.segments]
    caller.check_write(segment.agent_id for segment in segments)
    return segments


def _slow_segment(segment: Segment, limits: LimitsConfig) -> WriteSegment:
    records = [
        ChangeRecord(
            agent_id=segment.agent_id,
            table=record.table,
            key=record.key,
            op=record.op,
            data=record.data,
            version=make_version(segment.incarnation, record.seq),
            ts=record.ts,
        )
        for record in segment.records
    ]
    header = SegmentHeader(
        segment.incarnation,
        segment.acked,
        segment.base,
        segment.through,
        segment.segment_id,
        segment.claim,
        segment.repair,
    )
    return WriteSegment(segment.agent_id, header, _encoded(records, limits))


async def apply_writes(state: RelayState, segments: list[WriteSegment]) -> list[SegmentResult]:
    """Apply ``segments`` durably; count them (analytics too) and wake the change feed's
    waiters."""
    if not state.config.enable_storage_sync:
        raise CentralStoreUnavailable("storage sync is disabled on this relay")
    started = time.perf_counter()
    try:
        results = await state.store.apply_segments(segments)
    except ValueTooLarge as exc:
        raise RequestProblem(413, "value_too_large", str(exc)) from None
    except ValueError as exc:  # data the store cannot keep (e.g. U+0000 in PostgreSQL)
        raise RequestProblem(422, "invalid_value", str(exc)) from None
    state.metrics.apply_latency.observe(time.perf_counter() - started)
    for segment, result in zip(segments, results, strict=True):
        state.metrics.count_records(result.applied, result.ignored)
        if state.analytics is not None and (result.outcome is None or result.outcome.apply):
            ack = Ack(
                agent_id=result.agent_id,
                highest_version=result.highest_version,
                applied=result.applied,
                ignored=result.ignored,
            )
            state.analytics.on_write(segment.records, [ack])
    state.changes.notify()
    return results


def _plain_segments(records: list[EncodedRecord]) -> list[WriteSegment]:
    by_agent: dict[str, list[EncodedRecord]] = {}
    for record in records:
        by_agent.setdefault(record.agent_id, []).append(record)
    return [WriteSegment(agent, None, recs) for agent, recs in by_agent.items()]


def _segment_ack(segment: WriteSegment, result: SegmentResult) -> dict[str, object]:
    outcome = result.outcome
    assert outcome is not None
    return SegmentAck(
        agent_id=result.agent_id,
        verdict=outcome.verdict,
        incarnation=outcome.incarnation,
        through=outcome.through,
        count=result.count,
        applied=result.applied,
        ignored=result.ignored,
        relay_incarnation=outcome.relay_incarnation,
        relay_seq_hi=outcome.relay_seq_hi,
        highest_version=result.highest_version,
        detail=_DETAILS.get(outcome.verdict),
    ).model_dump()


_DETAILS = {
    Verdict.REINCARNATE: "use the granted incarnation and resend your pending changes",
    Verdict.SUPERSEDED: (
        "another store took this agent over: changes stay queued until an operator claims "
        "the agent for this store or retires it"
    ),
    Verdict.REGRESSED: "this relay lost acknowledged data: re-ship your current state",
    Verdict.OUT_OF_ORDER: "an earlier segment has not arrived: resend after it",
}


async def deliver(state: RelayState, caller: Caller, body: bytes) -> bytes:
    """Judge and apply a delivery body; the JSON of its per-segment acknowledgements."""
    segments = decode_delivery(body, state.config.limits, caller)
    results = await apply_writes(state, segments)
    acks = [_segment_ack(s, r) for s, r in zip(segments, results, strict=True)]
    return orjson.dumps({"acks": acks})


async def ingest(state: RelayState, caller: Caller, body: bytes, shape: WriteShape) -> bytes:
    """Decode, authorise and apply one plain write body; the JSON of its acknowledgement."""
    records = decode_writes(body, shape, state.config.limits, caller, fast=True)
    (result,) = await apply_writes(state, _plain_segments(records))
    ack = Ack(
        agent_id=result.agent_id,
        highest_version=result.highest_version,
        applied=result.applied,
        ignored=result.ignored,
    )
    return orjson.dumps(ack.model_dump())
