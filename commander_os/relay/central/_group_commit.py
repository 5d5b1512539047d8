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

Backends supply only ``commit(group) -> CommitResult``; acks are built here.
"""

from __future__ import annotations

import asyncio
import operator
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import count, repeat

from commander_os.errors import CentralStoreUnavailable
from commander_os.protocol import Ack, EncodedRecord

__all__ = ["CommitResult", "GroupWriter", "MergedGroup"]

Identity = tuple[str, str, str]  # (agent_id, key, table): the order of the unique indexes

# Field getters of EncodedRecord that run in C (the writer touches every record of a group).
_IDENT = operator.itemgetter(0, 2, 1)
_AGENT = operator.itemgetter(0)
_VERSION = operator.itemgetter(3)
_FIRST = operator.itemgetter(0)
_SECOND = operator.itemgetter(1)


@dataclass
class _Job:
    records: list[EncodedRecord]
    future: asyncio.Future[list[Ack]]


@dataclass
class MergedGroup:
    """What one transaction writes: the newest record of each identity among the group's jobs.

    ``rows`` are sorted by identity (the unique index's order: inserts land in index order and
    concurrent writers lock rows in one order). ``rev_rank[i]`` is the place of ``rows[i]`` in
    the order revisions must follow: per agent, increasing version, so the change feed and
    pagination replay each agent's writes in the order it made them.
    """

    rows: list[EncodedRecord]
    #: For each row, the job it came from.
    jobs: list[int]
    rev_rank: list[int]
    #: Each agent's highest version among every record of the group (winners or not).
    highest: dict[str, int]
    job_records: list[list[EncodedRecord]] = field(repr=False)

    @classmethod
    def of(cls, jobs: Sequence[list[EncodedRecord]]) -> MergedGroup:
        """Merge the record lists of ``jobs`` (in arrival order)."""
        winners: dict[Identity, tuple[int, EncodedRecord]] = {}
        highest: dict[str, int] = {}
        for index, records in enumerate(jobs):
            _merge_winners(winners, index, records)
            _merge_highest(highest, records)
        ordered = list(map(winners.__getitem__, sorted(winners)))
        rows = list(map(_SECOND, ordered))
        # (agent, version, row index) tuples sort in C; their order is the revisions' order.
        by_version = sorted(zip(map(_AGENT, rows), map(_VERSION, rows), count()))
        rank = [0] * len(rows)
        for position, (_, _, row_index) in enumerate(by_version):
            rank[row_index] = position
        return cls(rows, list(map(_FIRST, ordered)), rank, highest, list(jobs))


def _merge_winners(
    winners: dict[Identity, tuple[int, EncodedRecord]], index: int, records: list[EncodedRecord]
) -> None:
    # The common case in C: no identity repeats, within the job or with earlier jobs.
    mine = dict(zip(map(_IDENT, records), zip(repeat(index), records), strict=True))
    if len(mine) == len(records) and winners.keys().isdisjoint(mine):
        winners.update(mine)
        return
    for rec in records:
        ident = _IDENT(rec)
        held = winners.get(ident)
        if held is None or rec.version > held[1].version:
            winners[ident] = (index, rec)


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
class CommitResult:
    """What a backend's commit reports: which rows changed the store, and each agent's
    high-water mark after the commit."""

    #: Indexes into ``MergedGroup.rows`` of the rows that were inserted or replaced.
    applied_rows: Sequence[int]
    high_water: dict[str, int]


def _acks(group: MergedGroup, result: CommitResult) -> list[list[Ack]]:
    """One ack per agent per job, in first-seen order: applied and ignored records."""
    rows = list(map(group.rows.__getitem__, result.applied_rows))
    jobs = map(group.jobs.__getitem__, result.applied_rows)
    applied = Counter(zip(jobs, map(_AGENT, rows), strict=True))
    answers: list[list[Ack]] = []
    for index, records in enumerate(group.job_records):
        totals = Counter(map(_AGENT, records))  # in C; a Counter keeps first-seen order
        answers.append(
            [
                Ack(
                    agent_id=agent,
                    highest_version=result.high_water[agent],
                    applied=applied[(index, agent)],
                    ignored=total - applied[(index, agent)],
                )
                for agent, total in totals.items()
            ]
        )
    return answers


Commit = Callable[[MergedGroup], Awaitable[CommitResult]]
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

    async def submit(self, records: list[EncodedRecord]) -> list[Ack]:
        """Queue ``records`` for the next group; their acks once it is durably committed."""
        if self._task is None:
            raise CentralStoreUnavailable("central store is closed")
        job = _Job(records, asyncio.get_running_loop().create_future())
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
                size += len(item.records)
            if size >= self._max_records or self._queue.empty():
                return group, False
            item = self._queue.get_nowait()

    async def _commit_safely(self, group: list[_Job]) -> None:
        merged = MergedGroup.of([job.records for job in group])
        try:
            result = await self._commit(merged)
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
            for job, acks in zip(group, _acks(merged, result), strict=True):
                if not job.future.done():
                    job.future.set_result(acks)

    def _fail_leftovers(self) -> None:
        while not self._queue.empty():
            job = self._queue.get_nowait()
            if job is not None and not job.future.done():
                job.future.set_exception(CentralStoreUnavailable("central store is closed"))


def _fail(group: list[_Job], error: Exception) -> None:
    for job in group:
        if not job.future.done():
            job.future.set_exception(error)
