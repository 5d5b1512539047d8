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

import orjson

from commander_os.protocol import SEQ_BITS, EncodedRecord, Verdict

__all__ = [
    "RECENT_SEGMENTS",
    "AgentState",
    "Outcome",
    "SegmentHeader",
    "WriteSegment",
    "judge_segments",
    "recent_text",
    "state_of",
]

#: Applied segments remembered per agent: at least a shipper's pipeline depth, so that every
#: segment it may resend after losing answers is recognised.
RECENT_SEGMENTS = 32
#: Superseded incarnations remembered per agent (with where each stood).
FINALS_KEPT = 16


@dataclass(frozen=True, slots=True)
class AgentState:
    """What the relay keeps per agent to judge deliveries (a new agent is all zeros)."""

    incarnation: int = 0
    seq_hi: int = 0
    #: The last applied segments, newest last, as ``(base, through, segment_id)``: a store
    #: that lost their answers resends them as they were, and must be recognised.
    recent: tuple[tuple[int, int, int], ...] = ()
    #: Highest version of the agent the store holds (plain writes included).
    highest_version: int = 0
    #: Where superseded incarnations stood when a new one was granted, as
    #: ``(incarnation, seq_hi)``: a store behind that is a restore of an older state (it gets a
    #: new incarnation); one at or past it is the store that was taken over (it is fenced).
    finals: tuple[tuple[int, int], ...] = ()
    #: The ``segment_id`` the current incarnation was granted in answer to (0: none): when
    #: that answer was lost, the store resends the segment as it was, and gets the same grant
    #: again rather than being taken for a store that was taken over.
    granted_for: int = 0


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
    finals = state.finals
    if state.incarnation:
        finals = (
            *(f for f in finals if f[0] != state.incarnation),
            (state.incarnation, state.seq_hi),
        )
    fresh = AgentState(
        granted,
        header.acked,
        highest_version=state.highest_version,
        finals=finals[-FINALS_KEPT:],
        granted_for=header.segment_id,
    )
    return outcome, fresh


def _same_incarnation(state: AgentState, header: SegmentHeader) -> tuple[Outcome, AgentState]:
    before = (state.incarnation, state.seq_hi)
    if header.repair:
        return Outcome(Verdict.APPLIED, header.incarnation, header.base, *before), state
    landed = (header.base, header.through, header.segment_id)
    if header.base == state.seq_hi:
        recent = (*state.recent, landed)[-RECENT_SEGMENTS:]
        applied = replace(state, seq_hi=header.through, recent=recent)
        return Outcome(Verdict.APPLIED, header.incarnation, header.through, *before), applied
    if header.base < state.seq_hi:
        if landed in state.recent:  # a resend after a lost answer: already applied
            return Outcome(Verdict.APPLIED, header.incarnation, header.through, *before), state
        return _grant(state, header)  # behind the relay within its incarnation
    if header.acked > state.seq_hi:
        return Outcome(Verdict.REGRESSED, state.incarnation, state.seq_hi, *before), replace(
            state, seq_hi=header.acked
        )
    return Outcome(Verdict.OUT_OF_ORDER, state.incarnation, state.seq_hi, *before), state


def judge(state: AgentState, header: SegmentHeader) -> tuple[Outcome, AgentState]:
    """The verdict on one segment and the agent's state after it."""
    granted_again = state.granted_for and header.segment_id == state.granted_for
    if granted_again and header.incarnation < state.incarnation:
        # The segment this incarnation was granted for, again: its answer was lost.
        again = Outcome(
            Verdict.REINCARNATE, state.incarnation, header.acked, state.incarnation, state.seq_hi
        )
        return again, state
    if header.claim or header.incarnation == 0:
        return _grant(state, header)
    if header.incarnation < state.incarnation:
        final = dict(state.finals).get(header.incarnation)
        if final is None or header.base < final:
            # Never seen here, or behind where its incarnation stood: a restored or rebuilt
            # store, not the one that was taken over. Its writes are the newest: they win.
            return _grant(state, header)
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


def state_of(incarnation: int, seq_hi: int, recent: str, highest_version: int) -> AgentState:
    """An agent's state from its stored columns (``recent``: JSON text of
    ``{"landed": [[base, through, id], ...], "finals": [[incarnation, seq_hi], ...],
    "granted_for": segment_id}``)."""
    memory = orjson.loads(recent)
    if isinstance(memory, list):  # the column's default, before anything was remembered
        memory = {"landed": memory, "finals": []}
    landed = tuple((int(b), int(t), int(i)) for b, t, i in memory["landed"])
    finals = tuple((int(n), int(s)) for n, s in memory["finals"])
    granted_for = int(memory.get("granted_for", 0))
    return AgentState(
        int(incarnation), int(seq_hi), landed, int(highest_version), finals, granted_for
    )


def recent_text(state: AgentState) -> str:
    """What ``state`` remembers of segments and incarnations, as the JSON text kept."""
    memory = {"landed": state.recent, "finals": state.finals, "granted_for": state.granted_for}
    return orjson.dumps(memory).decode()
