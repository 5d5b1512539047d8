"""The recruiter agent's storage, end to end, with a relay and a second agent.

Run it::

    python -m commander_os.agents.recruiter.storage_example [--relay URL] [--data-dir DIR]

Without ``--relay`` it starts a relay of its own on 127.0.0.1 (and stops it at the end); without
``--data-dir`` everything lives in a temporary folder that is removed afterwards. It walks
through a requisition, candidates, skills search, matching, interview scheduling (including a
refused double-booking), pipeline moves (including a refused invalid move) and statistics, then
shows the agent interaction: a hiring-manager agent finds the recruiter's Python candidates on
the relay and answers with a shortlist the recruiter reads back. It checks every step and exits
with status 1 if anything did not happen as described.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from commander_os.agents.recruiter._models import Candidate, CandidateStatus
from commander_os.agents.recruiter.errors import (
    DuplicateEmail,
    InvalidTransition,
    SchedulingConflict,
)
from commander_os.agents.recruiter.storage import RecruiterAgentStorage
from commander_os.errors import CommanderStorageError
from commander_os.relay import RelayProcess
from commander_os.storage.agent_storage import AgentStorage

__all__ = ["ExampleFailed", "main", "run_example"]

RECRUITER_ID = "recruiter"
MANAGER_ID = "hiring-manager"
DEFAULT_SYNC_TIMEOUT = 20.0

CANDIDATES = [
    {
        "name": "Ada Lovelace",
        "email": "ada@example.com",
        "location": "London",
        "skills": ["Python", "SQL", "Docker", "Machine  Learning"],
        "years_experience": 8,
    },
    {
        "name": "Grace Hopper",
        "email": "grace@example.com",
        "location": "New York",
        "skills": ["python", "sql", "kubernetes"],
        "years_experience": 12,
    },
    {
        "name": "Linus Torvalds",
        "email": "linus@example.com",
        "location": "Portland",
        "skills": ["C", "Git", "Linux"],
        "years_experience": 25,
    },
    {
        "name": "Guido van Rossum",
        "email": "guido@example.com",
        "location": "Amsterdam",
        "skills": [" PYTHON ", "C"],
        "years_experience": 30,
    },
    {
        "name": "Margaret Hamilton",
        "email": "margaret@example.com",
        "location": "Boston",
        "skills": ["Go", "SQL", "Docker"],
        "years_experience": 15,
    },
    {
        "name": "Barbara Liskov",
        "email": "barbara@example.com",
        "location": "Boston",
        "skills": ["Rust", "Go"],
        "years_experience": 20,
    },
]


class ExampleFailed(Exception):
    """A step of the walk-through did not turn out as it says it should."""


def _expect(condition: bool, what: str) -> None:
    """Stop the walk-through with :class:`ExampleFailed` unless ``condition`` holds."""
    if not condition:
        raise ExampleFailed(what)


def _say(text: str = "") -> None:
    """Print one line of the walk-through."""
    print(text, flush=True)


def _section(title: str) -> None:
    """Print a section heading."""
    _say()
    _say(f"== {title}")


def _names(candidates: Sequence[Candidate]) -> str:
    """``Ada Lovelace, Grace Hopper``."""
    return ", ".join(candidate.name for candidate in candidates) or "(none)"


# ------------------------------------------------------------------------------ the flow


def run_example(
    relay_url: str, data_dir: Path, *, sync_timeout: float = DEFAULT_SYNC_TIMEOUT
) -> None:
    """Walk through the recruiter's flow against the relay at ``relay_url``.

    Raises :class:`ExampleFailed` (or a :class:`~commander_os.errors.CommanderStorageError`) if
    a step does not behave as described.
    """
    recruiter = RecruiterAgentStorage(RECRUITER_ID, data_dir / RECRUITER_ID, htpc_url=relay_url)
    try:
        _section("1. The recruiter agent opens its store")
        health = recruiter.health_check()
        _say(f"database {recruiter.db_path} (schema version {health['schema_version']})")
        _say(f"every change is shipped to the relay at {relay_url}")
        candidates = _add_people(recruiter)
        requisition_id = _open_requisition(recruiter)
        _search(recruiter)
        ranked = _match(recruiter, requisition_id)
        _schedule(recruiter, requisition_id, ranked)
        _move_through_pipeline(recruiter, requisition_id, ranked, candidates)
        _sync(recruiter, sync_timeout)
        _interact(recruiter, relay_url, data_dir, candidates, sync_timeout)
    finally:
        recruiter.close()


def _open_requisition(store: RecruiterAgentStorage) -> str:
    """Open the requisition the rest of the flow hires for; return its id."""
    _section("3. A job requisition")
    requisition = store.add_requisition(
        "Senior Backend Engineer",
        department="Platform",
        required_skills=["Python", "SQL"],
        nice_to_have_skills=["Docker", "Kubernetes"],
        openings=2,
    )
    _say(
        f"{requisition.id}: {requisition.title} ({requisition.department}), "
        f"{requisition.openings} openings"
    )
    _say(
        f"  required: {', '.join(requisition.required_skills)}; "
        f"nice to have: {', '.join(requisition.nice_to_have_skills)}"
    )
    return requisition.id


def _add_people(store: RecruiterAgentStorage) -> list[Candidate]:
    """Add the candidates (one transaction) and show that a duplicate email is refused."""
    _section("2. Candidates")
    added = store.add_candidates(CANDIDATES)
    for candidate in added:
        _say(
            f"{candidate.id}  {candidate.name:<18} {candidate.location:<10} "
            f"{candidate.years_experience:>4.0f}y  skills: {', '.join(candidate.skills)}"
        )
    _say('skills are normalised: "Machine  Learning" -> "machine learning", " PYTHON " -> "python"')
    try:
        store.add_candidate("Ada Again", "ADA@example.com", skills=["python"])
    except DuplicateEmail as exc:
        _say(f"refused, as it should be: {exc}")
    else:
        raise ExampleFailed("a second candidate with ada@example.com was accepted")
    _expect(len(store.list_candidates()) == len(CANDIDATES), "the refused add changed nothing")
    return added


def _search(store: RecruiterAgentStorage) -> None:
    """Skills search: all of, any of, combined with a location."""
    _section("4. Skills search (indexed)")
    both = store.list_candidates(skills=["python", "sql"])
    _say(f"python AND sql:         {_names(both)}")
    _expect({c.name for c in both} == {"Ada Lovelace", "Grace Hopper"}, "python AND sql")
    either = store.list_candidates(skills=["Rust", "Go"], match="any")
    _say(f"rust OR go:             {_names(either)}")
    _expect(len(either) == 2, "rust OR go finds two candidates")
    boston = store.list_candidates(skills=["go"], location="boston")
    _say(f"go, located in Boston:  {_names(boston)}")
    _expect(len(boston) == 2, "two Go candidates in Boston")


def _match(store: RecruiterAgentStorage, requisition_id: str) -> list[Candidate]:
    """Rank candidates for the requisition; return them best first."""
    _section("5. Matching candidates to the requisition")
    matches = store.match_candidates(requisition_id, limit=5)
    for rank, m in enumerate(matches, start=1):
        skills = ", ".join(m.required_matched + m.nice_matched)
        _say(
            f"{rank}. {m.candidate.name:<18} required {len(m.required_matched)}/"
            f"{m.required_total}, nice {len(m.nice_matched)}/{m.nice_total}, "
            f"{m.candidate.years_experience:.0f}y  ({skills})"
        )
    _expect(
        matches[0].candidate.name == "Grace Hopper", "Grace ranks first (both required, more years)"
    )
    _expect(matches[1].candidate.name == "Ada Lovelace", "Ada ranks second")
    return [m.candidate for m in matches]


def _schedule(store: RecruiterAgentStorage, requisition_id: str, ranked: list[Candidate]) -> None:
    """Book interviews, refuse a double-booking, reschedule, list the interviewer's agenda."""
    _section("6. Interviews")
    day = (datetime.now(UTC) + timedelta(days=1)).replace(hour=9, minute=0, second=0, microsecond=0)
    interviewer = "maria@example.com"
    first = store.schedule_interview(
        ranked[0].id,
        requisition_id,
        day,
        day + timedelta(hours=1),
        interviewer=interviewer,
        stage="technical",
    )
    second = store.schedule_interview(
        ranked[1].id,
        requisition_id,
        day + timedelta(hours=1),
        day + timedelta(hours=2),
        interviewer=interviewer,
        stage="technical",
    )
    _say(
        f"booked {interviewer}: {ranked[0].name} {first.starts_at:%a %H:%M}-{first.ends_at:%H:%M}"
        f", {ranked[1].name} {second.starts_at:%H:%M}-{second.ends_at:%H:%M} UTC (back to back)"
    )
    try:
        store.schedule_interview(
            ranked[2].id,
            requisition_id,
            day + timedelta(minutes=30),
            day + timedelta(minutes=90),
            interviewer="Maria@Example.com",
            stage="technical",
        )
    except SchedulingConflict as exc:
        _say(f"refused, as it should be: {exc}")
    else:
        raise ExampleFailed("a double-booking of the interviewer was accepted")
    moved = store.reschedule_interview(
        second.id, day + timedelta(hours=3), day + timedelta(hours=4)
    )
    _say(f"rescheduled {ranked[1].name} to {moved.starts_at:%H:%M}-{moved.ends_at:%H:%M} UTC")
    agenda = store.upcoming_interviews(interviewer=interviewer)
    _say(
        f"{interviewer}'s upcoming interviews: "
        + ", ".join(f"{i.starts_at:%H:%M} {i.stage}" for i in agenda)
    )
    _expect(len(agenda) == 2, "the refused booking left two interviews")
    store.complete_interview(first.id, score=5, feedback="Excellent system design.")
    _say(f"{ranked[0].name}'s interview completed with score 5")


def _move_through_pipeline(
    store: RecruiterAgentStorage,
    requisition_id: str,
    ranked: list[Candidate],
    everyone: list[Candidate],
) -> None:
    """Move candidates along the pipeline, refuse an invalid move, print the statistics."""
    _section("7. The hiring pipeline")
    best = ranked[0]
    for status in ("screening", "interviewing", "offered", "hired"):
        best = store.move_candidate(best.id, status)
    _say(f"{best.name}: new -> screening -> interviewing -> offered -> {best.status.value}")
    store.move_candidate(ranked[1].id, CandidateStatus.SCREENING)
    try:
        store.move_candidate(ranked[2].id, CandidateStatus.HIRED)
    except InvalidTransition as exc:
        _say(f"refused, as it should be: {exc}")
    else:
        raise ExampleFailed("a move from 'new' straight to 'hired' was accepted")
    outsider = next(c for c in everyone if c.name == "Linus Torvalds")
    store.attach_candidate(outsider.id, requisition_id)
    store.move_candidate(outsider.id, CandidateStatus.REJECTED)
    stats = store.pipeline_stats(requisition_id)
    _say(
        "pipeline of the requisition: "
        + ", ".join(f"{status.value} {count}" for status, count in stats.items() if count)
    )
    _expect(stats[CandidateStatus.HIRED] == 1 and stats[CandidateStatus.REJECTED] == 1, "stats")


def _sync(store: RecruiterAgentStorage, timeout: float) -> None:
    """Wait until every local change is on the relay."""
    _section("8. Sync")
    pending = store.get_sync_queue_size()
    _expect(store.wait_for_sync(timeout), f"the relay took every change within {timeout} s")
    _say(f"wait_for_sync(): {pending} changes were still queued, now {store.get_sync_queue_size()}")
    summary = next(a for a in store.relay.agents() if a["agent_id"] == store.agent_id)
    tables = ", ".join(f"{table} {count}" for table, count in sorted(summary["tables"].items()))
    _say(f"the relay holds {summary['record_count']} records of {store.agent_id!r}: {tables}")


def _interact(
    recruiter: RecruiterAgentStorage,
    relay_url: str,
    data_dir: Path,
    candidates: list[Candidate],
    timeout: float,
) -> None:
    """A hiring manager finds the recruiter's candidates on the relay and answers."""
    _section("9. Agent interaction through the relay")
    manager = AgentStorage(MANAGER_ID, data_dir / MANAGER_ID, htpc_url=relay_url)
    try:
        found = manager.query_network(
            agent_id=RECRUITER_ID, table="candidates", where=[("skills", "contains", "python")]
        )
        ours = {c.id for c in candidates}
        found = [record for record in found if record["key"] in ours]
        for record in found:
            data = record["data"]
            _say(
                f"{MANAGER_ID} sees {record['agent_id']}/{data['name']}: {data['status']}, "
                f"skills {data['skills']}"
            )
        local = recruiter.list_candidates(skills=["python"])
        _expect({r["key"] for r in found} == {c.id for c in local}, "relay matches local search")
        shortlist = sorted(r["data"]["name"] for r in found if r["data"]["status"] != "hired")
        manager.set("shortlist/senior-backend", {"candidates": shortlist, "by": MANAGER_ID})
        _expect(manager.wait_for_sync(timeout), "the shortlist reached the relay")
        answer = recruiter.query_network(agent_id=MANAGER_ID, table="kv", key_prefix="shortlist/")
        _expect(len(answer) == 1, "the recruiter reads the manager's shortlist")
        _say(f"{RECRUITER_ID} reads {MANAGER_ID}'s shortlist: {answer[0]['data']['value']}")
    finally:
        manager.close()


# ---------------------------------------------------------------------------- running it


@contextmanager
def _relay(url: str | None, data_dir: Path) -> Iterator[str]:
    if url:
        yield url.rstrip("/")
        return
    relay = RelayProcess(data_dir=data_dir / "relay")
    started = relay.start()
    _say(f"started a relay for this example: {started} (central store in {data_dir / 'relay'})")
    try:
        yield started
    finally:
        relay.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the walk-through; 0 if every step behaved as described, else 1."""
    parser = argparse.ArgumentParser(
        prog="python -m commander_os.agents.recruiter.storage_example", description=__doc__
    )
    parser.add_argument("--relay", help="relay URL (default: start one on 127.0.0.1)")
    parser.add_argument("--data-dir", type=Path, help="where the stores go (default: a temp dir)")
    parser.add_argument(
        "--sync-timeout",
        type=float,
        default=DEFAULT_SYNC_TIMEOUT,
        help=f"seconds to wait for the relay (default {DEFAULT_SYNC_TIMEOUT:g})",
    )
    args = parser.parse_args(argv)
    with ExitStack() as stack:
        if args.data_dir is None:
            data_dir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="recruiter-")))
        else:
            data_dir = args.data_dir
            if (data_dir / RECRUITER_ID).exists():
                print(
                    f"{data_dir / RECRUITER_ID} holds an earlier run; pass a fresh --data-dir",
                    file=sys.stderr,
                )
                return 2
        try:
            url = stack.enter_context(_relay(args.relay, data_dir))
            run_example(url, data_dir, sync_timeout=args.sync_timeout)
        except (ExampleFailed, CommanderStorageError, RuntimeError) as exc:
            print(f"\nFAILED: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
    _say("\nAll steps behaved as described.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
