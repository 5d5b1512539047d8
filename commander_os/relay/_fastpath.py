"""The relay's ingest fast path: well-formed write bodies straight to storable records.

Validating a 5,000-record batch through the pydantic models, checking it and re-encoding it
costs ~25 µs per record, which caps a relay near 25k records/s. Nearly every body a relay sees
comes from our own ``RelayClient`` and is well formed, so this module checks such bodies with
plain Python over ``orjson.loads`` output and builds :class:`EncodedRecord` tuples directly.

It accepts a strict *subset* of what the wire models accept: anything unusual (a non-ASCII
key, an uncommon timestamp form, a number orjson would parse differently from pydantic, a
value near a limit, any error at all) makes it return ``None`` and the relay takes the slow
path, which validates with the models and produces the precise error message. So the models
stay the single definition of what is valid, and this path can only be faster, never different.
"""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import datetime
from typing import Any

import orjson

from commander_os.config import LimitsConfig
from commander_os.identifiers import AGENT_ID_PATTERN, MAX_KEY_BYTES, TABLE_NAME_PATTERN
from commander_os.protocol import (
    MAX_BATCH_RECORDS,
    MAX_INCARNATION,
    MAX_SEGMENTS,
    MAX_SEQ,
    MAX_TS_MICROS,
    MAX_VERSION,
    MIN_TS_MICROS,
    RECORD_FIELDS,
    REQUIRED_RECORD_FIELDS,
    SEQ_BITS,
    BatchRequest,
    EncodedRecord,
    Segment,
    SegmentRecord,
    split_version,
    ts_to_micros,
)
from commander_os.relay._body import exceeds_depth
from commander_os.relay.central import SegmentHeader, WriteSegment

__all__ = ["fast_batch", "fast_delivery", "fast_record"]

_AGENT_ID = re.compile(AGENT_ID_PATTERN)
_TABLE = re.compile(TABLE_NAME_PATTERN)
# RFC 3339 as format_ts writes it (any offset); pydantic accepts all of these.
_TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d{1,6})?(?:Z|[+-]\d\d:\d\d)")
# orjson reads integers of 20+ digits as floats where pydantic keeps exact ints; leave them
# (even inside strings, harmlessly) to the slow path. Found by mapping digits to "9" and
# everything else to " " (bytes.translate) then a substring search: ~15x faster than a regex.
_DIGITS_ONLY = bytes(57 if 48 <= i <= 57 else 32 for i in range(256))
_LONG_NUMBER = b"9" * 20
_BATCH_FIELDS = frozenset(BatchRequest.model_fields)
_SEGMENT_FIELDS = frozenset(Segment.model_fields)
_SEGMENT_REQUIRED = frozenset(n for n, f in Segment.model_fields.items() if f.is_required())
_ITEM_FIELDS = frozenset(SegmentRecord.model_fields)
_ITEM_REQUIRED = frozenset(n for n, f in SegmentRecord.model_fields.items() if f.is_required())
_NEW = tuple.__new__  # EncodedRecord(...) goes through a Python-level __new__


class _Slow(Exception):
    """Internal: this body needs the slow path."""


def _loads(body: bytes) -> Any:
    if _LONG_NUMBER in body.translate(_DIGITS_ONLY):
        raise _Slow
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _Slow from None


class _Encoder:
    """Checks and encodes the items of one body; remembers what it has already checked.

    Records of one batch usually share their agent, tables and timestamps (a burst of writes,
    one clock tick), so each distinct one is checked once. This runs once per record, tens of
    thousands of times a second: every lookup it avoids shows in the profile.
    """

    __slots__ = ("agent_id", "agents", "max_depth", "max_value_bytes", "micros", "tables")

    def __init__(self, agent_id: str | None, limits: LimitsConfig) -> None:
        self.agent_id = agent_id  # a batch's: every item must name it
        self.max_value_bytes = limits.max_value_bytes
        self.max_depth = limits.max_json_depth
        self.agents: set[str] = set()
        self.tables: set[str] = set()
        self.micros: dict[str, int] = {}

    def encode(self, items: list[Any]) -> list[EncodedRecord]:
        out: list[EncodedRecord] = []
        append = out.append
        for item in items:
            if type(item) is not dict or not REQUIRED_RECORD_FIELDS <= item.keys() <= RECORD_FIELDS:
                raise _Slow
            self._check_names(item["agent_id"], item["table"], item["key"])
            append(self._record(item))
        return out

    def _check_names(self, agent: Any, table: Any, key: Any) -> None:
        if self.agent_id is not None:
            if agent != self.agent_id:  # a mismatch is the slow path's to explain
                raise _Slow
        elif type(agent) is not str or agent not in self.agents:
            if type(agent) is not str or not _AGENT_ID.fullmatch(agent):
                raise _Slow
            self.agents.add(agent)
        if type(table) is not str:  # before the set lookup: a list or dict is unhashable
            raise _Slow
        if table not in self.tables:
            if not _TABLE.fullmatch(table):
                raise _Slow
            self.tables.add(table)
        if (
            type(key) is not str
            or not 0 < len(key) <= MAX_KEY_BYTES
            or not key.isascii()
            or "\x00" in key
        ):
            raise _Slow

    def _record(self, item: dict[str, Any]) -> EncodedRecord:
        version = item["version"]
        if type(version) is not int or not 0 < version <= MAX_VERSION:
            raise _Slow
        ts_us = self._ts_micros(item["ts"])
        op, data = item["op"], item.get("data")
        fields: tuple[Any, ...]
        if op == "upsert" and type(data) is dict:
            text = self._data_text(data)
            fields = (item["agent_id"], item["table"], item["key"], version, ts_us, False, text)
        elif op == "delete" and data is None:
            fields = (item["agent_id"], item["table"], item["key"], version, ts_us, True, None)
        else:
            raise _Slow
        record: EncodedRecord = _NEW(EncodedRecord, fields)
        return record

    def _ts_micros(self, ts: Any) -> int:
        if type(ts) is not str:
            raise _Slow
        micros = self.micros.get(ts)
        if micros is None:
            if not _TS.fullmatch(ts):
                raise _Slow
            try:
                micros = ts_to_micros(datetime.fromisoformat(ts))
            except ValueError:
                raise _Slow from None
            # An offset can carry year 1 or 9999 outside the range in UTC: the models refuse it.
            if not MIN_TS_MICROS <= micros <= MAX_TS_MICROS:
                raise _Slow
            self.micros[ts] = micros
        return micros

    def _data_text(self, data: dict[str, Any]) -> str:
        raw = orjson.dumps(data)
        if len(raw) > self.max_value_bytes:
            raise _Slow
        # Depth cannot exceed the number of opening brackets; walk only when that bound is
        # too high.
        depth_bound = raw.count(b"{") + raw.count(b"[")
        if depth_bound > self.max_depth and exceeds_depth(data, self.max_depth):
            raise _Slow
        return raw.decode()

    def segment_records(self, header: SegmentHeader, items: Any) -> list[EncodedRecord]:
        """The records of one delivery segment: seqs past ``base`` in increasing order (or,
        for a repair, not past it), versions from the segment's incarnation."""
        if type(items) is not list:
            raise _Slow
        high = header.incarnation << SEQ_BITS
        previous = header.base
        out: list[EncodedRecord] = []
        for item in items:
            if type(item) is not dict or not _ITEM_REQUIRED <= item.keys() <= _ITEM_FIELDS:
                raise _Slow
            seq = item["seq"]
            if type(seq) is not int or not 0 < seq <= MAX_SEQ:
                raise _Slow
            if (seq > header.base) if header.repair else (seq <= previous):
                raise _Slow
            previous = seq
            item["agent_id"], item["version"] = self.agent_id, high | seq
            self._check_names(self.agent_id, item["table"], item["key"])
            out.append(self._record(item))
        return out


def _header(document: dict[str, Any]) -> SegmentHeader:
    """The segment's identity fields, checked; ``through`` is filled in once its records are."""
    incarnation, acked, base = document["incarnation"], document["acked"], document["base"]
    segment_id = document["segment_id"]
    claim, repair = document.get("claim", False), document.get("repair", False)
    for number, top in (
        (incarnation, MAX_INCARNATION),
        (acked, MAX_SEQ),
        (base, MAX_SEQ),
        (segment_id, MAX_VERSION),
    ):
        if type(number) is not int or not 0 <= number <= top:
            raise _Slow
    if type(claim) is not bool or type(repair) is not bool or acked > base:
        raise _Slow
    return SegmentHeader(incarnation, acked, base, base, segment_id, claim, repair)


def _segment(document: Any, limits: LimitsConfig) -> WriteSegment:
    if type(document) is not dict or not _SEGMENT_REQUIRED <= document.keys() <= _SEGMENT_FIELDS:
        raise _Slow
    agent_id = document["agent_id"]
    if type(agent_id) is not str or not _AGENT_ID.fullmatch(agent_id):
        raise _Slow
    header = _header(document)
    records = _Encoder(agent_id, limits).segment_records(header, document.get("records", []))
    if records and not header.repair:
        header = replace(header, through=split_version(records[-1].version)[1])
    return WriteSegment(agent_id, header, records)


def fast_delivery(body: bytes, limits: LimitsConfig) -> list[WriteSegment] | None:
    """The segments of a delivery body, or ``None`` when the slow path must decide."""
    try:
        document = _loads(body)
        if type(document) is not dict or document.keys() != {"segments"}:
            return None
        segments = document["segments"]
        if type(segments) is not list or not 0 < len(segments) <= MAX_SEGMENTS:
            return None
        decoded = [_segment(segment, limits) for segment in segments]
        total = sum(len(segment.records) for segment in decoded)
        if total > min(limits.max_batch_records, MAX_BATCH_RECORDS):
            return None
        return decoded
    except _Slow:
        return None


def fast_record(body: bytes, limits: LimitsConfig) -> list[EncodedRecord] | None:
    """One ``/relay/immediate`` record, or ``None`` when the slow path must decide."""
    try:
        return _Encoder(None, limits).encode([_loads(body)])
    except _Slow:
        return None


def fast_batch(body: bytes, limits: LimitsConfig) -> list[EncodedRecord] | None:
    """The records of a ``/relay/batch`` body, or ``None`` when the slow path must decide."""
    try:
        document = _loads(body)
        if type(document) is not dict or document.keys() != _BATCH_FIELDS:
            return None
        agent_id, items = document["agent_id"], document["records"]
        if type(agent_id) is not str or not _AGENT_ID.fullmatch(agent_id):
            return None
        limit = min(limits.max_batch_records, MAX_BATCH_RECORDS)
        if type(items) is not list or not 0 < len(items) <= limit:
            return None
        return _Encoder(agent_id, limits).encode(items)
    except _Slow:
        return None
