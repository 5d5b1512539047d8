"""Group commit: the one policy for turning concurrent apply requests into few transactions.

Every apply request (a *job*) waits in one queue. The writer takes everything waiting, up to
``max_records``, merges it into a :class:`MergedGroup` (only the newest version of each
``(agent_id, key, table)`` can win, so each is written at most once) and hands it to the
backend's ``commit`` coroutine: one transaction, one fsync, whatever the number of requests.
Each job's future resolves only after that commit returned.

If a group fails, each of its jobs is retried alone, so one bad request never fails the others
it happened to be grouped with; a job that fails alone gets the backend's error. A
:class:`~commander_os.errors.CentralStoreUnavailable` (the database is away) fails the whole
group at once: retrying its jobs one by one would only fail them again, slower.

Jobs are lists of :class:`~._identity.WriteSegment`: delivery segments are first judged by the
identity rule (:mod:`._identity`), inside the same transaction, and only accepted segments are
merged. Backends supply only ``commit(jobs) -> CommitResult`` (read the judged agents' state,
:meth:`GroupPlan.of`, write); each segment's result is built here.
"""

from __future__ import annotations

import asyncio
import operator
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from itertools import count, repeat

from commander_os.errors import CentralStoreUnavailable
from commander_os.protocol import EncodedRecord
from commander_os.relay.central._identity import (
    AgentState,
    Outcome,
    WriteSegment,
    judge_segments,
)

__all__ = [
    "CommitResult",
    "GroupPlan",
    "GroupWriter",
    "MergedGroup",
    "SegmentResult",
    "judged_agents",
]

Identity = tuple[str, str, str]  # (agent_id, key, table): the order of the unique indexes

# Field getters of EncodedRecord that run in C (the writer touches every record of a group).
_IDENT = operator.itemgetter(0, 2, 1)
_AGENT = operator.itemgetter(0)
_VERSION = operator.itemgetter(3)
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)


@dataclass
class _Job:
    segments: list[WriteSegment]
    future: asyncio.Future[list[SegmentResult]]


@dataclass
class MergedGroup:
    """What one transaction writes: the newest record of each identity among the accepted
    segments of the group's jobs.

    ``rows`` are sorted by identity (the unique index's order: inserts land in index order and
    concurrent writers lock rows in one order). ``rev_rank[i]`` is the place of ``rows[i]`` in
    the order revisions must follow: per agent, increasing version, so the change feed and
    pagination replay each agent's writes in the order it made them.
    """

    rows: list[EncodedRecord]
    #: For each row, the (job, segment) it came from.
    origins: list[tuple[int, int]]
    rev_rank: list[int]
    #: Each agent's highest version among every accepted record (winners or not).
    highest: dict[str, int]

    @classmethod
    def of(cls, accepted: Sequence[tuple[tuple[int, int], list[EncodedRecord]]]) -> MergedGroup:
        """Merge the records of accepted segments, each tagged with its (job, segment)."""
        winners: dict[Identity, tuple[tuple[int, int], EncodedRecord]] = {}
        highest: dict[str, int] = {}
        for origin, records in accepted:
            _merge_winners(winners, origin, records)
            _merge_highest(highest, records)
        ordered = list(map(winners.__getitem__, sorted(winners)))
        rows = list(map(_SECOND, ordered))
        # (agent, version, row index) tuples sort in C; their order is the revisions' order.
        by_version = sorted(zip(map(_AGENT, rows), map(_VERSION, rows), count()))
        rank = [0] * len(rows)
        for position, (_, _, row_index) in enumerate(by_version):
            rank[row_index] = position
        return cls(rows, list(map(_FIRST, ordered)), rank, highest)


def _merge_winners(
    winners: dict[Identity, tuple[tuple[int, int], EncodedRecord]],
    origin: tuple[int, int],
    records: list[EncodedRecord],
) -> None:
    # The common case in C: no identity repeats, within the segment or with earlier ones.
    mine = dict(zip(map(_IDENT, records), zip(repeat(origin), records), strict=True))
    if len(mine) == len(records) and winners.keys().isdisjoint(mine):
        winners.update(mine)
        return
    for rec in records:
        ident = _IDENT(rec)
        held = winners.get(ident)
        if held is None or rec.version > held[1].version:
            winners[ident] = (origin, rec)


def _merge_highest(highest: dict[str, int], records: list[EncodedRecord]) -> None:
    agents = set(map(_AGENT, records))
    if len(agents) == 1:
        (agent,) = agents
        top = max(map(_VERSION, records))
        if top > highest.get(agent, 0):
            highest[agent] = top
        return
    for rec in records:
        if rec.version > highest.get(rec.agent_id, 0):
            highest[rec.agent_id] = rec.version


@dataclass(frozen=True, slots=True)
class GroupPlan:
    """A group judged and merged: what to write, and each segment's outcome."""

    merged: MergedGroup
    outcomes: list[list[Outcome | None]]
    #: Agents whose identity state changed, with their new state.
    states: dict[str, AgentState]

    @classmethod
    def of(cls, jobs: Sequence[Sequence[WriteSegment]], states: dict[str, AgentState]) -> GroupPlan:
        """Judge every segment against ``states``, then merge the records of accepted ones."""
        outcomes, changed = judge_segments(jobs, states)
        accepted: list[tuple[tuple[int, int], list[EncodedRecord]]] = []
        for job_index, job in enumerate(jobs):
            for seg_index, segment in enumerate(job):
                outcome = outcomes[job_index][seg_index]
                if segment.records and (outcome is None or outcome.apply):
                    accepted.append(((job_index, seg_index), segment.records))
        return cls(MergedGroup.of(accepted), outcomes, changed)


def judged_agents(jobs: Sequence[Sequence[WriteSegment]]) -> list[str]:
    """The agents whose identity a group must read (those with delivery segments), sorted:
    stores that lock them take the locks in one order."""
    return sorted({seg.agent_id for job in jobs for seg in job if seg.header is not None})


@dataclass(frozen=True, slots=True)
class CommitResult:
    """What a backend's commit reports: the plan it executed, which of its rows changed the
    store, and each agent's high-water mark after the commit."""

    plan: GroupPlan
    #: Indexes into ``plan.merged.rows`` of the rows that were inserted or replaced.
    applied_rows: Sequence[int]
    high_water: dict[str, int]


@dataclass(frozen=True, slots=True)
class SegmentResult:
    """One segment's answer: its outcome (None for a plain write) and its record counts."""

    agent_id: str
    outcome: Outcome | None
    count: int
    applied: int
    ignored: int
    highest_version: int


def _results(jobs: list[_Job], result: CommitResult) -> list[list[SegmentResult]]:
    merged = result.plan.merged
    origins = map(merged.origins.__getitem__, result.applied_rows)
    applied = Counter(origins)
    answers: list[list[SegmentResult]] = []
    for job_index, job in enumerate(jobs):
        row = []
        for seg_index, segment in enumerate(job.segments):
            outcome = result.plan.outcomes[job_index][seg_index]
            count_ = len(segment.records)
            done = applied[(job_index, seg_index)]
            taken = outcome is None or outcome.apply
            row.append(
                SegmentResult(
                    segment.agent_id,
                    outcome,
                    count_,
                    done,
                    count_ - done if taken else 0,
                    result.high_water.get(segment.agent_id, 0),
                )
            )
        answers.append(row)
    return answers


Commit = Callable[[list[list[WriteSegment]]], Awaitable[CommitResult]]
FailureOf = Callable[[Exception], Exception]


class GroupWriter:
    """The writer task of one central store (see the module docstring).

    ``commit`` writes a merged group in one transaction; ``failure_of`` turns what it raised
    for a job committed alone into the error that job's caller gets.
    """

    def __init__(self, commit: Commit, failure_of: FailureOf, *, max_records: int) -> None:
        self._commit = commit
        self._failure_of = failure_of
        self._max_records = max_records
        self._queue: asyncio.Queue[_Job | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self.commits = 0
        #: Why the last commit failed for a reason of the store's own (the database away, its
        #: disk full); None once a commit succeeds again. Refused input does not count.
        self.write_error: str | None = None

    @property
    def running(self) -> bool:
        """True between :meth:`start` and the end of :meth:`stop`."""
        return self._task is not None and not self._task.done()

    @property
    def pending(self) -> int:
        """Jobs waiting for the next group."""
        return self._queue.qsize()

    def start(self) -> None:
        """Start the writer task on the running event loop."""
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name="central-group-writer")

    async def stop(self) -> None:
        """Commit what was queued before the stop, then end; later jobs fail."""
        task, self._task = self._task, None
        if task is None:
            return
        self._queue.put_nowait(None)
        await task

    async def submit(self, segments: list[WriteSegment]) -> list[SegmentResult]:
        """Queue ``segments`` for the next group; their results once it is durably committed."""
        if self._task is None:
            raise CentralStoreUnavailable("central store is closed")
        job = _Job(segments, asyncio.get_running_loop().create_future())
        self._queue.put_nowait(job)
        return await job.future

    async def _run(self) -> None:
        stopping = False
        while not stopping:
            group, stopping = self._take(await self._queue.get())
            if group:
                await self._commit_safely(group)
        self._fail_leftovers()

    def _take(self, first: _Job | None) -> tuple[list[_Job], bool]:
        """Everything waiting after ``first``, up to the size bound; and whether to stop."""
        group: list[_Job] = []
        size = 0
        item = first
        while True:
            if item is None:
                return group, True  # finish what was queued before the stop, then leave
            if not item.future.done():  # a cancelled caller was never acked: drop it
                group.append(item)
                size += sum(len(segment.records) for segment in item.segments)
            if size >= self._max_records or self._queue.empty():
                return group, False
            item = self._queue.get_nowait()

    async def _commit_safely(self, group: list[_Job]) -> None:
        try:
            result = await self._commit([job.segments for job in group])
        except CentralStoreUnavailable as exc:
            self.write_error = str(exc)
            _fail(group, exc)
        except Exception as exc:
            if len(group) > 1:
                for job in group:
                    await self._commit_safely([job])
                return
            error = self._failure_of(exc)
            if isinstance(error, CentralStoreUnavailable):
                self.write_error = str(error)
            _fail(group, error)
        else:
            self.commits += 1
            self.write_error = None
            for job, answer in zip(group, _results(group, result), strict=True):
                if not job.future.done():
                    job.future.set_result(answer)

    def _fail_leftovers(self) -> None:
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not None and not job.future.done():
                job.future.set_exception(CentralStoreUnavailable("central store is closed"))


def _fail(group: list[_Job], error: Exception) -> None:
    for job in group:
        if not job.future.done():
            job.future.set_exception(error)
