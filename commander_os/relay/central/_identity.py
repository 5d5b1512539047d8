"""The identity rule on the relay: judge each delivery segment against what the relay holds.

Pure functions over plain values, shared by every central store: a backend reads the
:class:`AgentState` of the agents in a group commit (locking them where several relays share a
database), calls :func:`judge_segments`, and writes back the states it returns in the same
transaction as the records it applies. The rule itself is stated in
:mod:`commander_os.protocol._delivery`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from commander_os.protocol import SEQ_BITS, EncodedRecord, Verdict

__all__ = ["AgentState", "Outcome", "SegmentHeader", "WriteSegment", "judge_segments"]


@dataclass(frozen=True, slots=True)
class AgentState:
    """What the relay keeps per agent to judge deliveries (a new agent is all zeros)."""

    incarnation: int = 0
    seq_hi: int = 0
    #: The last applied segment, to recognise its resend after a lost answer.
    last_base: int = -1
    last_through: int = -1
    last_segment_id: int = -1
    #: Highest version of the agent the store holds (plain writes included).
    highest_version: int = 0


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    """What a delivery segment says about the store that sent it."""

    incarnation: int
    acked: int
    base: int
    through: int
    segment_id: int
    claim: bool = False
    repair: bool = False


@dataclass(frozen=True, slots=True)
class WriteSegment:
    """Records of one agent in a write job; ``header`` is None for a plain write (the seed's
    ``/relay/immediate`` and single-agent batches), which is applied without identity checks."""

    agent_id: str
    header: SegmentHeader | None
    records: list[EncodedRecord]


@dataclass(frozen=True, slots=True)
class Outcome:
    """The judgement of one segment; ``apply`` says whether its records go to the store."""

    verdict: Verdict
    incarnation: int
    through: int
    relay_incarnation: int
    relay_seq_hi: int

    @property
    def apply(self) -> bool:
        """Whether the segment's records are applied."""
        return self.verdict is Verdict.APPLIED


def _grant(state: AgentState, header: SegmentHeader) -> tuple[Outcome, AgentState]:
    """A new incarnation above every version the relay holds for the agent."""
    granted = max(state.incarnation, state.highest_version >> SEQ_BITS) + 1
    outcome = Outcome(Verdict.REINCARNATE, granted, header.acked, state.incarnation, state.seq_hi)
    fresh = AgentState(granted, header.acked, highest_version=state.highest_version)
    return outcome, fresh


def _same_incarnation(state: AgentState, header: SegmentHeader) -> tuple[Outcome, AgentState]:
    before = (state.incarnation, state.seq_hi)
    if header.repair:
        return Outcome(Verdict.APPLIED, header.incarnation, header.base, *before), state
    if header.base == state.seq_hi:
        applied = replace(
            state,
            seq_hi=header.through,
            last_base=header.base,
            last_through=header.through,
            last_segment_id=header.segment_id,
        )
        return Outcome(Verdict.APPLIED, header.incarnation, header.through, *before), applied
    if header.base < state.seq_hi:
        resend = (header.base, header.through, header.segment_id) == (
            state.last_base,
            state.last_through,
            state.last_segment_id,
        )
        if resend:
            return Outcome(Verdict.APPLIED, header.incarnation, header.through, *before), state
        return _grant(state, header)  # behind the relay within its incarnation
    if header.acked > state.seq_hi:
        return Outcome(Verdict.REGRESSED, state.incarnation, state.seq_hi, *before), replace(
            state, seq_hi=header.acked
        )
    return Outcome(Verdict.OUT_OF_ORDER, state.incarnation, state.seq_hi, *before), state


def judge(state: AgentState, header: SegmentHeader) -> tuple[Outcome, AgentState]:
    """The verdict on one segment and the agent's state after it."""
    if header.claim or header.incarnation == 0:
        return _grant(state, header)
    if header.incarnation < state.incarnation:
        outcome = Outcome(
            Verdict.SUPERSEDED, state.incarnation, state.seq_hi, state.incarnation, state.seq_hi
        )
        return outcome, state
    if header.incarnation > state.incarnation:
        # Granted by another relay, or by this one before it lost it: adopt it, from where the
        # store says it stands. The answer still tells the store what this relay held before.
        adopted = AgentState(
            header.incarnation, header.acked, highest_version=state.highest_version
        )
        outcome, after = _same_incarnation(adopted, header)
        return replace(
            outcome, relay_incarnation=state.incarnation, relay_seq_hi=state.seq_hi
        ), after
    return _same_incarnation(state, header)


def judge_segments(
    jobs: Sequence[Sequence[WriteSegment]], states: dict[str, AgentState]
) -> tuple[list[list[Outcome | None]], dict[str, AgentState]]:
    """Judge every segment of every job in order; ``None`` for plain writes (always applied).

    ``states`` holds what the store has for the agents concerned (missing: never seen); the
    returned states are those to write back (only agents whose state changed).
    """
    current = dict(states)
    changed: dict[str, AgentState] = {}
    verdicts: list[list[Outcome | None]] = []
    for job in jobs:
        row: list[Outcome | None] = []
        for segment in job:
            if segment.header is None:
                row.append(None)
                continue
            before = current.get(segment.agent_id, AgentState())
            outcome, after = judge(before, segment.header)
            if after != before:
                current[segment.agent_id] = changed[segment.agent_id] = after
            row.append(outcome)
        verdicts.append(row)
    return verdicts, changed
