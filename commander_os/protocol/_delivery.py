"""Delivery: how an agent's shipper hands its changes to a relay, and how the relay answers.

One request carries the changes of many agents (``POST /relay/batch`` with ``segments``). Each
**segment** is the next stretch of one store's outbox, with what the relay needs to tell a
continuation from a copy, a rollback or a twin::

    {"segments": [
        {"agent_id": "my-agent",
         "incarnation": 7,       # granted by a relay; 0 = "none yet, give me one"
         "acked": 118,           # the store's durable acked position for this relay
         "base": 120,            # this segment continues the outbox after this seq
         "segment_id": 40312,    # random per segment built; a resend of it reuses the id
         "claim": false,         # true: hand the agent to this store on purpose
         "repair": false,        # true: a full re-ship after the relay went backwards
         "records": [{"table": "kv", "key": "k", "op": "upsert", "data": {...},
                      "seq": 121, "ts": "2026-11-27T02:33:27.123456Z"}, ...]}]}

A record's version is ``incarnation << 32 | seq``. The relay keeps, per agent, its current
incarnation and the highest seq it received in it (``seq_hi``), and judges each segment (see
:class:`Verdict`); it answers ``{"acks": [SegmentAck, ...]}``, one per segment, in order, after
its durable commit. The shipper accepts an ack only if it names the agent, covers exactly the
records sent (``through`` = the last seq sent, ``count`` = how many) and accounts for every one
(``applied + ignored == count``): anything else is a protocol error and nothing is deleted.

**The identity rule** (ARCHITECTURE invariant 9), as the relay applies it:

* ``claim``, or incarnation 0 → **reincarnate**: a new incarnation above every version the
  relay holds for the agent is granted; the store re-stamps its pending changes and resends.
* incarnation below the relay's → **superseded**: another store took the agent over. Nothing
  is applied; the store keeps its changes queued and reports the conflict until an operator
  claims the agent for it or retires it.
* incarnation above the relay's → the relay adopts it (another relay granted it, or this one
  lost it), with ``seq_hi = acked``, and goes on as below.
* same incarnation: ``base == seq_hi`` → **applied** (the store continues where the relay is);
  ``base < seq_hi`` → a resend of the last segment (same ``segment_id``) is **applied** again
  (all ignored), anything else means the store is behind the relay within its incarnation (a
  restored backup, a copied file, a rollback, a twin that lost the race) → **reincarnate**;
  ``base > seq_hi`` → **regressed** if ``acked > seq_hi`` (the relay lost acknowledged data: the
  store re-ships its current state with ``repair`` segments), else **out_of_order** (an earlier
  pipelined segment has not arrived: resend later).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from commander_os.identifiers import MAX_KEY_BYTES
from commander_os.protocol._records import (
    MAX_BATCH_RECORDS,
    SEQ_BITS,
    AgentId,
    TableName,
    TimeStamp,
    format_ts,
)

__all__ = [
    "MAX_INCARNATION",
    "MAX_SEGMENTS",
    "MAX_SEQ",
    "RELAY_KEEPALIVE_SECONDS",
    "DeliveryRequest",
    "DeliveryResponse",
    "Segment",
    "SegmentAck",
    "SegmentRecord",
    "Verdict",
    "segment_json",
    "segment_record_json",
]

#: Sequence numbers fill the low 32 bits of a version; incarnations the 31 above them.
MAX_SEQ = 2**SEQ_BITS - 1
MAX_INCARNATION = 2 ** (63 - SEQ_BITS) - 1
#: Segments (agents) in one request at most.
MAX_SEGMENTS = 1000
#: How long the relay keeps an idle connection open. Clients keep theirs for less (two
#: thirds), so a client never sends on a connection the relay is closing at that moment.
RELAY_KEEPALIVE_SECONDS = 30.0

Seq = Annotated[int, Field(ge=0, le=MAX_SEQ)]
Incarnation = Annotated[int, Field(ge=0, le=MAX_INCARNATION)]
SegmentId = Annotated[int, Field(ge=0, le=2**63 - 1)]


def segment_record_json(
    table: str, key: str, data: Any, seq: int, written_at: float
) -> dict[str, Any]:
    """A segment's record as the agent sends it; ``data`` None makes it a delete.

    ``data`` may hold ``orjson.Fragment`` values (JSON columns embedded without re-parsing).
    """
    record: dict[str, Any] = {
        "table": table,
        "key": key,
        "op": "upsert" if data is not None else "delete",
        "seq": seq,
        "ts": format_ts(written_at),
    }
    if data is not None:
        record["data"] = data
    return record


def segment_json(
    agent_id: str,
    *,
    incarnation: int,
    acked: int,
    base: int,
    segment_id: int,
    records: list[dict[str, Any]],
    claim: bool = False,
    repair: bool = False,
) -> dict[str, Any]:
    """A segment as the agent sends it (flags only when set)."""
    segment: dict[str, Any] = {
        "agent_id": agent_id,
        "incarnation": incarnation,
        "acked": acked,
        "base": base,
        "segment_id": segment_id,
        "records": records,
    }
    if claim:
        segment["claim"] = True
    if repair:
        segment["repair"] = True
    return segment


class Verdict(StrEnum):
    """The relay's judgement of one segment (see the module docstring)."""

    APPLIED = "applied"
    REINCARNATE = "reincarnate"
    SUPERSEDED = "superseded"
    REGRESSED = "regressed"
    OUT_OF_ORDER = "out_of_order"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SegmentRecord(_Strict):
    """One change of a segment: its agent and incarnation are the segment's."""

    table: TableName
    key: Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEY_BYTES)]
    op: Literal["upsert", "delete"]
    data: dict[str, Any] | None = None
    seq: Annotated[int, Field(ge=1, le=MAX_SEQ)]
    ts: TimeStamp

    @model_validator(mode="after")
    def _data_matches_op(self) -> SegmentRecord:
        if self.op == "upsert" and self.data is None:
            raise ValueError("an upsert record needs 'data' (the row as a JSON object)")
        if self.op == "delete" and self.data is not None:
            raise ValueError("a delete record must not carry 'data'")
        return self


class Segment(_Strict):
    """The next stretch of one store's outbox (see the module docstring)."""

    agent_id: AgentId
    incarnation: Incarnation
    acked: Seq
    base: Seq
    segment_id: SegmentId
    claim: bool = False
    repair: bool = False
    records: list[SegmentRecord] = Field(default_factory=list, max_length=MAX_BATCH_RECORDS)

    @model_validator(mode="after")
    def _ordered(self) -> Segment:
        if self.acked > self.base:
            raise ValueError("'acked' cannot be past 'base': a store ships after what was acked")
        if self.repair:
            if any(record.seq > self.base for record in self.records):
                raise ValueError("a repair segment re-ships state: no seq past 'base'")
            return self
        previous = self.base
        for index, record in enumerate(self.records):
            if record.seq <= previous:
                raise ValueError(
                    f"records.{index}.seq is {record.seq}: seqs must increase, past 'base'"
                )
            previous = record.seq
        return self

    @property
    def through(self) -> int:
        """The last seq this segment covers (``base`` when it carries none)."""
        return self.records[-1].seq if self.records and not self.repair else self.base


class DeliveryRequest(_Strict):
    """Segments of many agents, judged one by one and committed together."""

    segments: list[Segment] = Field(min_length=1, max_length=MAX_SEGMENTS)

    @model_validator(mode="after")
    def _bounded(self) -> DeliveryRequest:
        total = sum(len(segment.records) for segment in self.segments)
        if total > MAX_BATCH_RECORDS:
            raise ValueError(f"{total} records in one request; at most {MAX_BATCH_RECORDS}")
        return self


class SegmentAck(_Strict):
    """The relay's answer for one segment, sent only after its durable commit."""

    agent_id: str
    verdict: Verdict
    #: applied: the segment's; reincarnate: the one granted; otherwise the relay's current.
    incarnation: int
    #: The last seq covered: ``through`` of the segment when applied, else the relay's seq_hi.
    through: int
    #: Records of the segment, and how many changed the store or were stale repeats.
    count: int
    applied: int
    ignored: int
    #: What the relay held for the agent before this segment: lets the store notice that the
    #: relay lost data it had acknowledged (restored from an older copy).
    relay_incarnation: int
    relay_seq_hi: int
    highest_version: int
    detail: str | None = None


class DeliveryResponse(_Strict):
    """``{"acks": [...]}``: one :class:`SegmentAck` per segment, in request order."""

    acks: list[SegmentAck]
