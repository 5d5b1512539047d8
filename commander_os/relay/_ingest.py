"""Ingest: one call turns a write body into applied records, for every write endpoint.

:func:`decode_writes` checks the caller's right to write every record (in one place), then
takes the fast path (:mod:`._fastpath`) and falls back to the wire models for anything the fast
path declines. :func:`apply_writes` hands the records to the central store and answers the acks.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import orjson

from commander_os.config import LimitsConfig
from commander_os.errors import CentralStoreUnavailable, ValueTooLarge
from commander_os.protocol import Ack, BatchRequest, ChangeRecord, EncodedRecord, encode_records
from commander_os.relay._body import RequestProblem, check_records, parse_model
from commander_os.relay._fastpath import fast_batch, fast_record
from commander_os.relay._guard import Caller, claimed_agents
from commander_os.relay._state import RelayState

__all__ = ["apply_writes", "decode_writes", "ingest"]

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
    check_records(list(records), limits)
    try:
        return encode_records(records, max_value_bytes=limits.max_value_bytes)
    except ValueTooLarge as exc:
        raise RequestProblem(413, "value_too_large", str(exc)) from None
    except ValueError as exc:  # data that cannot be stored as JSON (e.g. a lone surrogate)
        raise RequestProblem(422, "invalid_value", str(exc)) from None


async def apply_writes(state: RelayState, records: list[EncodedRecord]) -> list[Ack]:
    """Apply ``records`` durably; count them (analytics too) and wake the change feed's
    waiters."""
    if not state.config.enable_storage_sync:
        raise CentralStoreUnavailable("storage sync is disabled on this relay")
    started = time.perf_counter()
    try:
        acks = await state.store.apply_encoded(records)
    except ValueTooLarge as exc:
        raise RequestProblem(413, "value_too_large", str(exc)) from None
    except ValueError as exc:  # data the store cannot keep (e.g. U+0000 in PostgreSQL)
        raise RequestProblem(422, "invalid_value", str(exc)) from None
    state.metrics.apply_latency.observe(time.perf_counter() - started)
    for ack in acks:
        state.metrics.count_records(ack.applied, ack.ignored)
    if state.analytics is not None:
        state.analytics.on_write(records, acks)
    state.changes.notify()
    return acks


async def ingest(state: RelayState, caller: Caller, body: bytes, shape: WriteShape) -> bytes:
    """Decode, authorise and apply one write body; the JSON of its acknowledgement."""
    records = decode_writes(body, shape, state.config.limits, caller, fast=True)
    (ack,) = await apply_writes(state, records)
    return orjson.dumps(ack.model_dump())
