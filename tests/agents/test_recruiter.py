"""RecruiterAgentStorage: every operation, every refusal (which must change nothing), skills
queries on thousands of candidates against a brute-force oracle, query plans, the linkedin_url
migration, the runnable example, and a cross-agent query through a real relay."""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from commander_os.agents.recruiter import (
    PIPELINE,
    Candidate,
    CandidateStatus,
    DuplicateEmail,
    InterviewStatus,
    InvalidInput,
    InvalidTransition,
    RecordNotFound,
    RecruiterAgentStorage,
    RequisitionStatus,
    SchedulingConflict,
)
from commander_os.agents.recruiter import _sql as recruiter_sql
from commander_os.agents.recruiter._schema import MIGRATIONS
from commander_os.agents.recruiter.errors import RecruiterError
from commander_os.relay._process import RelayProcess
from commander_os.storage.agent_storage import AgentStorage

REPO_ROOT = Path(__file__).resolve().parents[2]
TABLES = (
    "candidates",
    "candidate_skills",
    "requisitions",
    "requisition_skills",
    "applications",
    "interviews",
    "_sync_queue",
)
DAY = datetime(2031, 3, 3, 9, 0, tzinfo=UTC)


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


def snapshot(store: RecruiterAgentStorage) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the store, including its sync queue."""
    return {
        table: sorted(store.conn.execute(f"SELECT * FROM {table}").fetchall(), key=repr)
        for table in TABLES
    }


@pytest.fixture
def store(tmp_path: Path, dead_relay_url: str) -> Iterator[RecruiterAgentStorage]:
    """A store with sync on (towards nobody), so the outbox is part of every snapshot."""
    with RecruiterAgentStorage(
        "recruiter",
        tmp_path / "recruiter",
        htpc_url=dead_relay_url,
        durability="normal",
        close_timeout=0,
        compact_outbox=False,  # the outbox keeps every change: part of each snapshot
    ) as opened:
        yield opened


@pytest.fixture
def unchanged(store: RecruiterAgentStorage) -> Iterator[Callable[[], None]]:
    """Call it after the setup of a test; at the end the store must look exactly as then."""
    taken: list[dict[str, list[tuple[Any, ...]]]] = []
    yield lambda: taken.append(snapshot(store))
    assert taken, "the test never took its snapshot"
    assert snapshot(store) == taken[0]


@pytest.fixture
def people(store: RecruiterAgentStorage) -> dict[str, Candidate]:
    ada = store.add_candidate(
        "Ada Lovelace",
        " ADA@Example.com ",
        phone="+44 20 7946 0000",
        location="London",
        skills=["Python", " SQL ", "Machine   Learning", "python"],
        years_experience=8,
        notes="met at PyCon",
    )
    grace = store.add_candidate(
        "Grace Hopper", "grace@example.com", location="New York", skills=["python", "cobol"]
    )
    linus = store.add_candidate(
        "Linus", "linus@example.com", location="london", skills=["c"], years_experience=25
    )
    return {"ada": ada, "grace": grace, "linus": linus}


@pytest.fixture
def req_id(store: RecruiterAgentStorage) -> str:
    return store.add_requisition(
        "Backend Engineer",
        department="Platform",
        required_skills=["Python", "SQL"],
        nice_to_have_skills=["Docker"],
    ).id


# ------------------------------------------------------------------------------- schema


def test_schema_is_version_2_and_every_table_is_synced(store: RecruiterAgentStorage) -> None:
    versions = store.conn.execute("SELECT version, description FROM schema_version").fetchall()
    assert versions == [(m.version, m.description) for m in MIGRATIONS]
    synced = dict(store.conn.execute("SELECT tbl, json_columns FROM _synced_tables").fetchall())
    assert set(synced) == set(TABLES) - {"_sync_queue"}
    assert synced["candidates"] == '["skills"]'
    assert store.conn.execute("PRAGMA foreign_keys").fetchone() == (1,)


def test_every_write_lands_in_the_outbox(
    store: RecruiterAgentStorage, people: dict[str, Candidate], req_id: str
) -> None:
    store.schedule_interview(people["ada"].id, req_id, at(0), at(1), interviewer="maria")
    queued = {row[0] for row in store.conn.execute("SELECT DISTINCT tbl FROM _sync_queue")}
    assert queued == set(TABLES) - {"_sync_queue"}


# --------------------------------------------------------------------------- candidates


def test_add_candidate_normalises_and_round_trips(
    store: RecruiterAgentStorage, people: dict[str, Candidate]
) -> None:
    ada = people["ada"]
    assert ada.email == "ada@example.com"
    assert ada.skills == ("python", "sql", "machine learning")
    assert ada.status is CandidateStatus.NEW
    assert ada.years_experience == 8.0
    assert ada.linkedin_url is None
    assert store.get_candidate(ada.id) == ada
    assert store.find_candidate_by_email("Ada@EXAMPLE.com") == ada
    assert store.find_candidate_by_email("nobody@example.com") is None
    rows = store.conn.execute(
        "SELECT skill FROM candidate_skills WHERE candidate_id = ? ORDER BY skill", (ada.id,)
    ).fetchall()
    assert rows == [("machine learning",), ("python",), ("sql",)]


def test_caller_chosen_ids(store: RecruiterAgentStorage, unchanged: Callable[[], None]) -> None:
    store.add_candidate("Ada", "ada@example.com", candidate_id="ats-17")
    assert store.get_candidate("ats-17").name == "Ada"
    unchanged()
    with pytest.raises(InvalidInput, match="already exists"):
        store.add_candidate("Other", "other@example.com", candidate_id="ats-17")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"email": "not-an-email"}, "invalid email"),
        ({"email": "a@b"}, "invalid email"),
        ({"email": 42}, "email must be a string"),
        ({"name": "   "}, "name must be a non-empty string"),
        ({"phone": "call me"}, "invalid phone"),
        ({"years_experience": -1}, "between 0 and 80"),
        ({"years_experience": "5"}, "must be a number"),
        ({"years_experience": True}, "must be a number"),
        ({"skills": "python"}, "not a single string"),
        ({"skills": ["python", "  "]}, "must not be empty"),
        ({"skills": [3]}, "must be a string"),
        ({"skills": ["x" * 65]}, "longer than 64"),
        ({"skills": [f"s{i}" for i in range(101)]}, "at most 100"),
        ({"linkedin_url": "https://example.com/ada"}, "invalid linkedin_url"),
        ({"linkedin_url": "ftp://linkedin.com/in/ada"}, "invalid linkedin_url"),
        ({"notes": "x" * 20_001}, "limit is 20000"),
    ],
)
def test_add_candidate_refuses_bad_input(
    store: RecruiterAgentStorage,
    people: dict[str, Candidate],
    unchanged: Callable[[], None],
    fields: dict[str, Any],
    message: str,
) -> None:
    unchanged()
    arguments: dict[str, Any] = {"name": "New Person", "email": "new@example.com", **fields}
    with pytest.raises(InvalidInput, match=message) as caught:
        store.add_candidate(**arguments)
    assert isinstance(caught.value, ValueError)
    assert isinstance(caught.value, RecruiterError)


def test_duplicate_email_is_refused_in_any_case(
    store: RecruiterAgentStorage, people: dict[str, Candidate], unchanged: Callable[[], None]
) -> None:
    unchanged()
    with pytest.raises(DuplicateEmail, match="already belongs") as caught:
        store.add_candidate("Impostor", "Ada@Example.COM")
    assert caught.value.existing_id == people["ada"].id
    with pytest.raises(DuplicateEmail):
        store.update_candidate(people["grace"].id, email="ada@example.com")


def test_add_candidates_is_all_or_nothing(
    store: RecruiterAgentStorage, people: dict[str, Candidate], unchanged: Callable[[], None]
) -> None:
    unchanged()
    with pytest.raises(InvalidInput, match="invalid email"):
        store.add_candidates([{"name": "A", "email": "a@example.com"}, {"name": "B", "email": "b"}])
    with pytest.raises(DuplicateEmail):
        store.add_candidates(
            [{"name": "A", "email": "a@example.com"}, {"name": "B", "email": "A@example.com"}]
        )
    with pytest.raises(InvalidInput, match="unknown fields"):
        store.add_candidates([{"name": "A", "email": "a@example.com", "status": "hired"}])


def test_update_candidate(store: RecruiterAgentStorage, people: dict[str, Candidate]) -> None:
    ada = people["ada"]
    updated = store.update_candidate(
        ada.id,
        name="Augusta Ada King",
        skills=["SQL", "Go", "python"],
        phone=None,
        linkedin_url="https://www.linkedin.com/in/ada",
        years_experience=9.5,
    )
    assert updated.name == "Augusta Ada King"
    assert updated.skills == ("sql", "go", "python")
    assert updated.phone is None
    assert updated.location == "London"  # untouched
    assert updated.updated_at > ada.updated_at
    assert updated.created_at == ada.created_at
    assert store.get_candidate(ada.id) == updated
    assert [c.id for c in store.list_candidates(skills=["go"])] == [ada.id]
    assert store.list_candidates(skills=["machine learning"]) == []
    assert store.update_candidate(ada.id) == updated  # nothing to change: nothing written


def test_update_candidate_refusals_change_nothing(
    store: RecruiterAgentStorage, people: dict[str, Candidate], unchanged: Callable[[], None]
) -> None:
    unchanged()
    with pytest.raises(RecordNotFound, match="no candidate with id 'nope'") as caught:
        store.update_candidate("nope", name="X")
    assert isinstance(caught.value, KeyError)
    assert str(caught.value) == "no candidate with id 'nope'"
    with pytest.raises(InvalidInput):
        store.update_candidate(people["ada"].id, name="Fine", email="broken")
    with pytest.raises(InvalidInput):
        store.update_candidate(people["ada"].id, skills=["ok", ""])


def test_delete_candidate_cascades(
    store: RecruiterAgentStorage, people: dict[str, Candidate], req_id: str
) -> None:
    ada = people["ada"]
    interview = store.schedule_interview(ada.id, req_id, at(0), at(1), interviewer="maria")
    store.delete_candidate(ada.id)
    with pytest.raises(RecordNotFound):
        store.get_candidate(ada.id)
    with pytest.raises(RecordNotFound):
        store.get_interview(interview.id)
    for table in ("candidate_skills", "applications", "interviews"):
        count = store.conn.execute(
            f"SELECT COUNT(*) FROM {table} WHERE candidate_id = ?", (ada.id,)
        ).fetchone()[0]
        assert count == 0, table
    deletes = store.conn.execute(
        "SELECT tbl FROM _sync_queue WHERE op = 'delete' ORDER BY seq"
    ).fetchall()
    assert {row[0] for row in deletes} == {
        "candidates",
        "candidate_skills",
        "applications",
        "interviews",
    }
    with pytest.raises(RecordNotFound):
        store.delete_candidate(ada.id)


def test_list_candidates_filters(
    store: RecruiterAgentStorage, people: dict[str, Candidate]
) -> None:
    ada, grace, linus = people["ada"], people["grace"], people["linus"]
    store.move_candidate(grace.id, "screening")
    assert [c.id for c in store.list_candidates()] == [ada.id, grace.id, linus.id]
    assert [c.id for c in store.list_candidates(status="screening")] == [grace.id]
    assert [c.id for c in store.list_candidates(status=["new", CandidateStatus.SCREENING])] == [
        ada.id,
        grace.id,
        linus.id,
    ]
    assert [c.id for c in store.list_candidates(location="LONDON")] == [ada.id, linus.id]
    assert [c.id for c in store.list_candidates(skills=["PYTHON", "sql"])] == [ada.id]
    assert [c.id for c in store.list_candidates(skills=["sql", "cobol"], match="any")] == [
        ada.id,
        grace.id,
    ]
    assert [c.id for c in store.list_candidates(skills=["python"], status="new")] == [ada.id]
    assert [c.id for c in store.list_candidates(limit=1, offset=1)] == [grace.id]
    with pytest.raises(InvalidInput, match="invalid status"):
        store.list_candidates(status="sleeping")
    with pytest.raises(InvalidInput, match="match must be"):
        store.list_candidates(skills=["python"], match="most")  # type: ignore[arg-type]
    with pytest.raises(InvalidInput, match="limit"):
        store.list_candidates(limit=0)


# ----------------------------------------------------------------------------- pipeline


def test_move_candidate_along_the_whole_pipeline(
    store: RecruiterAgentStorage, people: dict[str, Candidate]
) -> None:
    ada = people["ada"]
    for status in ("screening", "interviewing", "offered", "hired"):
        ada = store.move_candidate(ada.id, status)
        assert ada.status == status
        assert store.get_candidate(ada.id).status == status
    assert ada.status.is_final


INVALID_MOVES = [
    (current, target)
    for current, target in itertools.product(CandidateStatus, CandidateStatus)
    if target not in PIPELINE[current]
]


@pytest.mark.parametrize(("current", "target"), INVALID_MOVES)
def test_invalid_moves_are_refused(
    store: RecruiterAgentStorage,
    people: dict[str, Candidate],
    unchanged: Callable[[], None],
    current: CandidateStatus,
    target: CandidateStatus,
) -> None:
    candidate = people["ada"]
    path = {
        CandidateStatus.NEW: [],
        CandidateStatus.SCREENING: ["screening"],
        CandidateStatus.INTERVIEWING: ["screening", "interviewing"],
        CandidateStatus.OFFERED: ["screening", "interviewing", "offered"],
        CandidateStatus.HIRED: ["screening", "interviewing", "offered", "hired"],
        CandidateStatus.REJECTED: ["rejected"],
    }[current]
    for status in path:
        store.move_candidate(candidate.id, status)
    unchanged()
    with pytest.raises(InvalidTransition) as caught:
        store.move_candidate(candidate.id, target)
    assert (caught.value.current, caught.value.requested) == (current.value, target.value)
    assert "final" in str(caught.value) if current.is_final else "next step" in str(caught.value)


def test_move_candidate_bad_arguments(
    store: RecruiterAgentStorage, people: dict[str, Candidate], unchanged: Callable[[], None]
) -> None:
    unchanged()
    with pytest.raises(InvalidInput, match="invalid status 'promoted'"):
        store.move_candidate(people["ada"].id, "promoted")
    with pytest.raises(RecordNotFound):
        store.move_candidate("nope", "screening")


# ------------------------------------------------------------------------- requisitions


def test_requisition_crud(store: RecruiterAgentStorage, people: dict[str, Candidate]) -> None:
    req = store.add_requisition(
        " Data Engineer ",
        department="Data",
        required_skills=["Python", "Spark"],
        nice_to_have_skills=["SQL"],
        openings=3,
    )
    assert req.title == "Data Engineer"
    assert req.required_skills == ("python", "spark")
    assert req.status is RequisitionStatus.OPEN
    assert store.get_requisition(req.id) == req
    other = store.add_requisition("Designer", department="Design", status="on_hold")
    assert store.list_requisitions() == [req, other]
    assert store.list_requisitions(status="on_hold") == [other]
    assert store.list_requisitions(department="DATA") == [req]

    before = store.get_sync_queue_size()
    updated = store.update_requisition(
        req.id, required_skills=["python", "sql"], nice_to_have_skills=["spark"], openings=2
    )
    assert (updated.required_skills, updated.nice_to_have_skills) == (("python", "sql"), ("spark",))
    flags = dict(
        store.conn.execute(
            "SELECT skill, required FROM requisition_skills WHERE requisition_id = ?", (req.id,)
        ).fetchall()
    )
    assert flags == {"python": 1, "sql": 1, "spark": 0}
    # The requisition row plus the two skills whose flag flipped; "python" was not rewritten.
    assert store.get_sync_queue_size() - before == 3
    assert store.update_requisition(req.id, status="filled").status is RequisitionStatus.FILLED

    store.attach_candidate(people["ada"].id, req.id)
    store.delete_requisition(req.id)
    with pytest.raises(RecordNotFound):
        store.get_requisition(req.id)
    assert store.conn.execute("SELECT COUNT(*) FROM applications").fetchone() == (0,)
    assert store.conn.execute(
        "SELECT COUNT(*) FROM requisition_skills WHERE requisition_id = ?", (req.id,)
    ).fetchone() == (0,)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: s.add_requisition(""), InvalidInput),
        (lambda s: s.add_requisition("T", required_skills=["go"], nice_to_have_skills=["Go"]),
         InvalidInput),
        (lambda s: s.add_requisition("T", openings=-1), InvalidInput),
        (lambda s: s.add_requisition("T", status="paused"), InvalidInput),
        (lambda s: s.add_requisition("T", requisition_id="req-fixed"), InvalidInput),
        (lambda s: s.update_requisition("req-fixed", nice_to_have_skills=["python"]),
         InvalidInput),
        (lambda s: s.update_requisition("req-fixed", title=" "), InvalidInput),
        (lambda s: s.update_requisition("nope", title="T"), RecordNotFound),
        (lambda s: s.delete_requisition("nope"), RecordNotFound),
        (lambda s: s.pipeline_stats("nope"), RecordNotFound),
        (lambda s: s.match_candidates("nope"), RecordNotFound),
        (lambda s: s.attach_candidate("nope", "req-fixed"), RecordNotFound),
        (lambda s: s.list_requisitions(status="paused"), InvalidInput),
    ],
)  # fmt: skip
def test_requisition_refusals_change_nothing(
    store: RecruiterAgentStorage,
    unchanged: Callable[[], None],
    call: Callable[[RecruiterAgentStorage], object],
    error: type[Exception],
) -> None:
    store.add_requisition("Fixed", required_skills=["python"], requisition_id="req-fixed")
    unchanged()
    with pytest.raises(error):
        call(store)


# --------------------------------------------------------------------------- interviews


def test_schedule_and_list_interviews(
    store: RecruiterAgentStorage, people: dict[str, Candidate], req_id: str
) -> None:
    ada, grace = people["ada"], people["grace"]
    first = store.schedule_interview(
        ada.id,
        req_id,
        "2031-03-03T09:00:00Z",
        "2031-03-03T10:00:00+00:00",
        interviewer="Maria",
        interview_id="i1",
    )
    assert (first.starts_at, first.ends_at) == (at(0), at(1))
    assert first.status is InterviewStatus.SCHEDULED
    # Back to back with the same interviewer, and naive times taken as UTC.
    second = store.schedule_interview(
        grace.id,
        req_id,
        datetime(2031, 3, 3, 10),
        datetime(2031, 3, 3, 11),
        interviewer="maria",
        interview_id="i2",
    )
    # Another interviewer at the same time as the first, for another candidate (ties on the
    # start time are listed by id).
    third = store.schedule_interview(
        people["linus"].id,
        req_id,
        at(0),
        at(1),
        interviewer="Omar",
        stage="phone screen",
        interview_id="i3",
    )
    assert store.get_interview(first.id) == first
    assert [c.id for c in store.requisition_candidates(req_id)] == [
        ada.id,
        grace.id,
        people["linus"].id,
    ]
    assert store.upcoming_interviews(after=DAY - timedelta(days=1)) == [first, third, second]
    assert store.upcoming_interviews(interviewer="MARIA", after=DAY) == [first, second]
    assert store.upcoming_interviews(after=at(0.5), until=at(2)) == [second]
    assert store.upcoming_interviews(candidate_id=ada.id, after=DAY) == [first]
    assert store.upcoming_interviews(after=DAY, limit=1) == [first]
    assert store.upcoming_interviews(after=at(5)) == []
    store.cancel_interview(third.id, reason="candidate withdrew")
    store.complete_interview(first.id, score=4, feedback="solid")
    assert store.upcoming_interviews(after=DAY) == [second]
    assert [i.id for i in store.list_interviews(requisition_id=req_id)] == [
        first.id,
        third.id,
        second.id,
    ]
    assert [i.id for i in store.list_interviews(status="cancelled")] == [third.id]
    assert [i.id for i in store.list_interviews(candidate_id=ada.id)] == [first.id]


def test_double_booking_is_refused(
    store: RecruiterAgentStorage,
    people: dict[str, Candidate],
    req_id: str,
    unchanged: Callable[[], None],
) -> None:
    booked = store.schedule_interview(people["ada"].id, req_id, at(1), at(2), interviewer="Maria")
    unchanged()
    for start, end in [(0.5, 1.5), (1.5, 2.5), (1.25, 1.75), (0, 3), (1, 2)]:
        with pytest.raises(SchedulingConflict, match="interviewer 'MARIA'") as caught:
            store.schedule_interview(
                people["grace"].id, req_id, at(start), at(end), interviewer="MARIA"
            )
        assert caught.value.conflicting_id == booked.id
    # The candidate cannot be in two interviews at once either.
    with pytest.raises(SchedulingConflict, match="candidate"):
        store.schedule_interview(people["ada"].id, req_id, at(1.5), at(2.5), interviewer="Omar")


def test_cancelled_slots_are_free_again(
    store: RecruiterAgentStorage, people: dict[str, Candidate], req_id: str
) -> None:
    booked = store.schedule_interview(people["ada"].id, req_id, at(1), at(2), interviewer="Maria")
    store.cancel_interview(booked.id)
    store.schedule_interview(people["grace"].id, req_id, at(1), at(2), interviewer="Maria")


@pytest.mark.parametrize(
    ("starts", "ends", "message"),
    [
        (at(2), at(1), "must be after"),
        (at(1), at(1), "must be after"),
        ("tomorrow at ten", at(1), "invalid starts_at"),
        (at(1), "2031-13-45T10:00", "invalid ends_at"),
        (at(0), at(13), "at most 12:00:00"),
        (at(0), 12345, "ends_at must be a datetime"),
    ],
)
def test_bad_dates_are_refused(
    store: RecruiterAgentStorage,
    people: dict[str, Candidate],
    req_id: str,
    unchanged: Callable[[], None],
    starts: Any,
    ends: Any,
    message: str,
) -> None:
    booked = store.schedule_interview(people["ada"].id, req_id, at(3), at(4), interviewer="Maria")
    unchanged()
    with pytest.raises(InvalidInput, match=message):
        store.schedule_interview(people["grace"].id, req_id, starts, ends, interviewer="Omar")
    with pytest.raises(InvalidInput, match=message):
        store.reschedule_interview(booked.id, starts, ends)


def test_scheduling_needs_known_live_records(
    store: RecruiterAgentStorage,
    people: dict[str, Candidate],
    req_id: str,
    unchanged: Callable[[], None],
) -> None:
    store.move_candidate(people["linus"].id, "rejected")
    closed = store.add_requisition("Old job", status="closed")
    unchanged()
    ada = people["ada"].id
    with pytest.raises(RecordNotFound, match="candidate"):
        store.schedule_interview("nope", req_id, at(0), at(1), interviewer="Maria")
    with pytest.raises(RecordNotFound, match="requisition"):
        store.schedule_interview(ada, "nope", at(0), at(1), interviewer="Maria")
    with pytest.raises(InvalidTransition, match="rejected"):
        store.schedule_interview(people["linus"].id, req_id, at(0), at(1), interviewer="Maria")
    with pytest.raises(InvalidTransition, match="closed, not open"):
        store.schedule_interview(ada, closed.id, at(0), at(1), interviewer="Maria")
    with pytest.raises(InvalidInput, match="interviewer"):
        store.schedule_interview(ada, req_id, at(0), at(1), interviewer=" ")


def test_reschedule(
    store: RecruiterAgentStorage, people: dict[str, Candidate], req_id: str
) -> None:
    ada = store.schedule_interview(people["ada"].id, req_id, at(0), at(1), interviewer="Maria")
    grace = store.schedule_interview(people["grace"].id, req_id, at(2), at(3), interviewer="Maria")
    # Overlapping its own old slot is fine.
    moved = store.reschedule_interview(ada.id, at(0.5), at(1.5))
    assert (moved.starts_at, moved.ends_at, moved.interviewer) == (at(0.5), at(1.5), "Maria")
    assert store.get_interview(ada.id) == moved
    before = snapshot(store)
    with pytest.raises(SchedulingConflict) as caught:
        store.reschedule_interview(ada.id, at(2.5), at(3.5))
    assert caught.value.conflicting_id == grace.id
    assert snapshot(store) == before
    # ...unless someone else takes it.
    other = store.reschedule_interview(ada.id, at(2.5), at(3.5), interviewer="Omar")
    assert other.interviewer == "Omar"
    store.complete_interview(grace.id, score=3)
    before = snapshot(store)
    with pytest.raises(InvalidTransition, match="it is completed"):
        store.reschedule_interview(grace.id, at(5), at(6))
    with pytest.raises(RecordNotFound):
        store.reschedule_interview("nope", at(5), at(6))
    assert snapshot(store) == before


def test_complete_and_cancel(
    store: RecruiterAgentStorage, people: dict[str, Candidate], req_id: str
) -> None:
    one = store.schedule_interview(people["ada"].id, req_id, at(0), at(1), interviewer="Maria")
    two = store.schedule_interview(people["grace"].id, req_id, at(0), at(1), interviewer="Omar")
    before = snapshot(store)
    for score in (0, 6, -1, True, 2.5, "5"):
        with pytest.raises(InvalidInput, match="score"):
            store.complete_interview(one.id, score=score)  # type: ignore[arg-type]
    with pytest.raises(RecordNotFound):
        store.complete_interview("nope", score=3)
    assert snapshot(store) == before
    done = store.complete_interview(one.id, score=5, feedback=" great ")
    assert (done.status, done.score, done.feedback) == (InterviewStatus.COMPLETED, 5, "great")
    assert store.get_interview(one.id) == done
    cancelled = store.cancel_interview(two.id, reason="no-show")
    assert (cancelled.status, cancelled.feedback) == (InterviewStatus.CANCELLED, "no-show")
    before = snapshot(store)
    with pytest.raises(InvalidTransition):
        store.complete_interview(one.id, score=4)
    with pytest.raises(InvalidTransition):
        store.cancel_interview(one.id)
    with pytest.raises(InvalidTransition):
        store.complete_interview(two.id, score=4)
    assert snapshot(store) == before


def test_concurrent_bookings_of_one_slot_admit_exactly_one(tmp_path: Path) -> None:
    """Two stores on one database race for the same slot; BEGIN IMMEDIATE lets one win."""
    path = tmp_path / "shared"
    stores = [
        RecruiterAgentStorage("recruiter", path, enable_htpc=False, durability="normal")
        for _ in range(2)
    ]
    try:
        req = stores[0].add_requisition("Job")
        people = stores[0].add_candidates(
            [{"name": f"P{i}", "email": f"p{i}@example.com"} for i in range(40)]
        )
        barrier = threading.Barrier(2)
        wins: list[int] = []

        def book(index: int) -> None:
            for round_, person in enumerate(people[index::2]):
                barrier.wait()
                try:
                    stores[index].schedule_interview(
                        person.id, req.id, at(round_), at(round_ + 1), interviewer="Maria"
                    )
                    wins.append(round_)
                except SchedulingConflict:
                    pass

        threads = [threading.Thread(target=book, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(wins) == list(range(20))
    finally:
        for opened in stores:
            opened.close()


# ---------------------------------------------------------------- matching and statistics


def test_match_candidates_ranks_by_required_then_nice_then_years(
    store: RecruiterAgentStorage, req_id: str
) -> None:
    add = store.add_candidate
    both_old = add("Both Old", "a@example.com", skills=["python", "sql"], years_experience=10)
    both_nice = add("Both Nice", "b@example.com", skills=["python", "sql", "docker"])
    both_young = add("Both Young", "c@example.com", skills=["sql", "python"], years_experience=2)
    one = add("One", "d@example.com", skills=["python", "docker"], years_experience=30)
    nice_only = add("Nice Only", "e@example.com", skills=["docker"], years_experience=40)
    add("Unrelated", "f@example.com", skills=["cobol"])
    hired = add("Hired", "g@example.com", skills=["python", "sql", "docker"], years_experience=50)
    for status in ("screening", "interviewing", "offered", "hired"):
        store.move_candidate(hired.id, status)

    matches = store.match_candidates(req_id)
    assert [m.candidate.id for m in matches] == [
        both_nice.id,
        both_old.id,
        both_young.id,
        one.id,
        nice_only.id,
    ]
    top = matches[0]
    assert (top.required_matched, top.nice_matched) == (("python", "sql"), ("docker",))
    assert (top.required_total, top.nice_total, top.required_coverage) == (2, 1, 1.0)
    assert matches[3].required_coverage == 0.5
    assert [m.candidate.id for m in store.match_candidates(req_id, limit=2)] == [
        both_nice.id,
        both_old.id,
    ]
    assert store.match_candidates(req_id, include_final=True)[0].candidate.id == hired.id


def test_pipeline_stats(
    store: RecruiterAgentStorage, people: dict[str, Candidate], req_id: str
) -> None:
    assert set(store.pipeline_stats(req_id).values()) == {0}
    store.schedule_interview(people["ada"].id, req_id, at(0), at(1), interviewer="Maria")
    assert store.attach_candidate(people["grace"].id, req_id) is True
    assert store.attach_candidate(people["grace"].id, req_id) is False
    store.attach_candidate(people["linus"].id, req_id)
    store.move_candidate(people["grace"].id, "screening")
    store.move_candidate(people["linus"].id, "rejected")
    store.add_candidate("Not attached", "na@example.com")
    stats = store.pipeline_stats(req_id)
    assert list(stats) == list(CandidateStatus)
    assert stats == {"new": 1, "screening": 1, "interviewing": 0, "offered": 0, "hired": 0,
                     "rejected": 1}  # fmt: skip
    assert store.detach_candidate(people["linus"].id, req_id) is True
    assert store.detach_candidate(people["linus"].id, req_id) is False
    assert store.pipeline_stats(req_id)["rejected"] == 0


# ------------------------------------------------------------ thousands of candidates

SKILL_POOL = [
    "python", "sql", "javascript", "typescript", "java", "go", "rust", "c++", "c#", "kotlin",
    "docker", "kubernetes", "aws", "gcp", "azure", "terraform", "react", "node.js", "django",
    "flask", "fastapi", "postgresql", "mysql", "redis", "kafka", "spark", "machine learning",
    "data engineering", "graphql", "linux", "git", "ci/cd", "scala", "swift", "pandas",
]  # fmt: skip
CITIES = ["Berlin", "London", "Paris", "New York", "Remote", "Lisbon", "Toronto"]


def _messy(skill: str, rng: random.Random) -> str:
    """The same skill as a human might type it."""
    variant = rng.choice([skill, skill.upper(), skill.title(), f"  {skill} "])
    return variant.replace(" ", "   ") if rng.random() < 0.1 else variant


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RecruiterAgentStorage]:
    """3,000 candidates with Zipf-like skill popularity, some moved along the pipeline."""
    rng = random.Random(20260106)
    weights = [1 / (rank + 1) ** 0.8 for rank in range(len(SKILL_POOL))]
    rows = []
    for index in range(3000):
        skills = {rng.choices(SKILL_POOL, weights)[0] for _ in range(rng.randint(1, 9))}
        rows.append(
            {
                "name": f"Candidate {rng.randint(0, 999):03d}",  # repeated names: ties by id
                "email": f"person{index}@example.com",
                "location": rng.choice(CITIES),
                "skills": [_messy(skill, rng) for skill in sorted(skills)],
                "years_experience": rng.randint(0, 25),
            }
        )
    path = tmp_path_factory.mktemp("big")
    with RecruiterAgentStorage("big", path, enable_htpc=False, durability="normal") as store:
        candidates = store.add_candidates(rows)
        for candidate in rng.sample(candidates, 300):
            store.move_candidate(candidate.id, rng.choice(["screening", "rejected"]))
        yield store


def _all_candidates(store: RecruiterAgentStorage) -> list[Candidate]:
    return store.list_candidates()


QUERIES = [
    ["python"],
    ["python", "sql"],
    ["python", "sql", "docker"],
    ["Go", " KUBERNETES "],
    ["rust", "scala"],
    ["machine learning", "pandas", "python"],
    ["swift"],
    ["not-a-skill"],
]


@pytest.mark.parametrize("skills", QUERIES)
def test_skills_all_and_any_match_brute_force(
    big: RecruiterAgentStorage, skills: list[str]
) -> None:
    everyone = _all_candidates(big)
    assert len(everyone) == 3000
    wanted = {" ".join(skill.split()).lower() for skill in skills}
    expect_all = [c.id for c in everyone if wanted <= set(c.skills)]
    expect_any = [c.id for c in everyone if wanted & set(c.skills)]
    assert [c.id for c in big.list_candidates(skills=skills)] == expect_all
    assert [c.id for c in big.list_candidates(skills=skills, match="any")] == expect_any
    for city, status in [("london", None), ("Remote", "screening"), ("Paris", "new")]:
        got = big.list_candidates(skills=skills, location=city, status=status, match="any")
        assert [c.id for c in got] == [
            c.id
            for c in everyone
            if wanted & set(c.skills)
            and c.location.lower() == city.lower()  # type: ignore[union-attr]
            and (status is None or c.status == status)
        ]
    if len(wanted) > 1 and "not-a-skill" not in wanted:
        assert expect_all, f"the data set should have candidates with all of {skills}"


@pytest.mark.parametrize(
    ("required", "nice"),
    [(["python", "sql"], ["docker", "aws"]), (["rust"], ["go", "c++", "linux"]), ([], ["java"])],
)
def test_match_candidates_matches_brute_force(
    big: RecruiterAgentStorage, required: list[str], nice: list[str]
) -> None:
    req = big.add_requisition("Probe", required_skills=required, nice_to_have_skills=nice)
    ranked = []
    for c in _all_candidates(big):
        have_required = [s for s in required if s in c.skills]
        have_nice = [s for s in nice if s in c.skills]
        if (have_required or have_nice) and not c.status.is_final:
            key = (-len(have_required), -len(have_nice), -c.years_experience, c.id)
            ranked.append((key, c.id, tuple(have_required), tuple(have_nice)))
    ranked.sort()
    got = big.match_candidates(req.id, limit=50)
    assert [(m.candidate.id, m.required_matched, m.nice_matched) for m in got] == [
        (cid, have_required, have_nice) for _, cid, have_required, have_nice in ranked[:50]
    ]


def _plan(store: RecruiterAgentStorage, statement: str, params: list[Any]) -> str:
    rows = store.conn.execute("EXPLAIN QUERY PLAN " + statement, params).fetchall()
    return "\n".join(row[-1] for row in rows)


@pytest.mark.parametrize("match_all", [True, False])
def test_skills_queries_use_the_skill_index(big: RecruiterAgentStorage, match_all: bool) -> None:
    statement, params = recruiter_sql.select_candidates(
        statuses=[], location=None, skills=["python", "sql"], match_all=match_all
    )
    plan = _plan(big, statement, [*params, -1, 0])
    assert "SEARCH candidate_skills USING COVERING INDEX idx_candidate_skills_skill (skill=?)" in (
        plan
    )
    assert "SEARCH c USING INDEX sqlite_autoindex_candidates_1 (id=?)" in plan
    assert "SCAN" not in plan, plan


def test_matching_and_scheduling_queries_use_indexes(big: RecruiterAgentStorage) -> None:
    match = recruiter_sql.MATCH_CANDIDATES.format(statuses="?, ?")
    plan = _plan(big, match, ["req-x", "new", "screening", 10])
    assert "SEARCH rs USING PRIMARY KEY (requisition_id=?)" in plan
    assert "SEARCH cs USING COVERING INDEX idx_candidate_skills_skill (skill=?)" in plan
    assert "SCAN" not in plan, plan
    overlap = _plan(big, recruiter_sql.SELECT_INTERVIEWER_OVERLAP, ["m", "a", "b", "c", "d"])
    assert "USING INDEX idx_interviews_interviewer_slot" in overlap
    upcoming, params = recruiter_sql.select_interviews({}, starts_from="2031")
    assert "USING INDEX idx_interviews_upcoming" in _plan(big, upcoming, [*params, 10])
    stats = _plan(big, recruiter_sql.PIPELINE_COUNTS, ["req-x"])
    assert "SCAN" not in stats, stats


# ----------------------------------------------------------------------------- migration


class RecruiterStorageV1(RecruiterAgentStorage):
    """The store as it shipped before the linkedin_url migration."""

    migrations = MIGRATIONS[:1]


def test_migration_adds_linkedin_url_to_a_v1_database(tmp_path: Path, dead_relay_url: str) -> None:
    path = tmp_path / "recruiter"
    with RecruiterStorageV1("recruiter", path, enable_htpc=False) as old:
        columns = {row[1] for row in old.conn.execute("PRAGMA table_info(candidates)")}
        assert "linkedin_url" not in columns
        with old.transaction() as conn:
            conn.execute(
                "INSERT INTO candidates (id, name, email, skills, created_at, updated_at) "
                "VALUES ('c1', 'Ada', 'ada@example.com', '[\"python\"]', "
                "'2025-01-01T00:00:00.000000Z', '2025-01-01T00:00:00.000000Z')"
            )
            conn.execute("INSERT INTO candidate_skills VALUES ('c1', 'python')")

    with RecruiterAgentStorage("recruiter", path, htpc_url=dead_relay_url, close_timeout=0) as new:
        versions = new.conn.execute("SELECT version, description FROM schema_version").fetchall()
        assert versions[-1] == (2, "Added LinkedIn URL field")
        ada = new.get_candidate("c1")
        assert (ada.name, ada.skills, ada.linkedin_url) == ("Ada", ("python",), None)
        assert new.list_candidates(skills=["python"]) == [ada]
        updated = new.update_candidate("c1", linkedin_url="https://linkedin.com/in/ada")
        assert new.get_candidate("c1").linkedin_url == updated.linkedin_url
        # The migrated table is still captured for sync.
        assert new.conn.execute(
            "SELECT tbl, pk, op FROM _sync_queue WHERE tbl = 'candidates'"
        ).fetchall() == [("candidates", '["c1"]', "upsert")]


# ------------------------------------------------------------------- example and relay


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONUNBUFFERED": "1"}


def test_the_example_runs_end_to_end(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "commander_os.agents.recruiter.storage_example",
         "--data-dir", str(tmp_path / "example")],
        capture_output=True, text=True, timeout=60, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for line in [
        "started a relay for this example: http://127.0.0.1:",
        "python AND sql:         Ada Lovelace, Grace Hopper",
        "1. Grace Hopper",
        "refused, as it should be: email 'ada@example.com' already belongs",
        "refused, as it should be: interviewer 'Maria@Example.com' is already booked",
        "refused, as it should be: cannot move candidate",
        "pipeline of the requisition: screening 1, hired 1, rejected 1",
        "hiring-manager sees recruiter/Ada Lovelace: screening",
        "recruiter reads hiring-manager's shortlist",
        "All steps behaved as described.",
    ]:
        assert line in out, f"{line!r} missing from:\n{out}"
    assert (tmp_path / "example" / "recruiter" / "recruiter.db").exists()
    # A second run into the same folder is refused instead of tripping over its own data.
    again = subprocess.run(
        [sys.executable, "-m", "commander_os.agents.recruiter.storage_example",
         "--data-dir", str(tmp_path / "example"), "--relay", "http://127.0.0.1:9"],
        capture_output=True, text=True, timeout=60, env=_env(), cwd=tmp_path,
    )  # fmt: skip
    assert again.returncode == 2
    assert "earlier run" in again.stderr


def test_the_example_fails_loudly_without_a_relay(tmp_path: Path, dead_relay_url: str) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "commander_os.agents.recruiter.storage_example",
         "--data-dir", str(tmp_path / "x"), "--relay", dead_relay_url, "--sync-timeout", "1"],
        capture_output=True, text=True, timeout=90, env=_env(), cwd=tmp_path,
        input="",
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert "FAILED" in result.stderr


@pytest.fixture(scope="module")
def relay_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with RelayProcess(data_dir=tmp_path_factory.mktemp("relay")) as relay:
        assert relay.url.startswith("http://127.0.0.1:")
        yield relay.url


def test_other_agents_find_candidates_of_every_recruiter_on_the_relay(
    tmp_path: Path, relay_url: str
) -> None:
    recruiters = [
        RecruiterAgentStorage(name, tmp_path / name, htpc_url=relay_url, durability="normal")
        for name in ("recruiter-east", "recruiter-west")
    ]
    manager = AgentStorage("hiring-manager", tmp_path / "manager", htpc_url=relay_url)
    try:
        east, west = recruiters
        ada = east.add_candidate("Ada", "ada@example.com", skills=["Python", "SQL"])
        east.add_candidate("Linus", "linus@example.com", skills=["C"])
        grace = west.add_candidate("Grace", "grace@example.com", skills=[" python "])
        gone = west.add_candidate("Gone", "gone@example.com", skills=["python"])
        west.delete_candidate(gone.id)
        east.move_candidate(ada.id, "screening")
        for recruiter in recruiters:
            assert recruiter.wait_for_sync(timeout=20)

        found = manager.query_network(table="candidates", where=[("skills", "contains", "python")])
        assert sorted((r["agent_id"], r["key"]) for r in found) == sorted(
            [("recruiter-east", ada.id), ("recruiter-west", grace.id)]
        )
        by_key = {r["key"]: r["data"] for r in found}
        assert by_key[ada.id]["status"] == "screening"
        assert by_key[ada.id]["skills"] == ["python", "sql"]
        assert by_key[grace.id]["email"] == "grace@example.com"
        # The skill rows travel too, so a relay-side reader can join them if it likes.
        skill_rows = manager.query_network(
            agent_id="recruiter-east", table="candidate_skills", where=[("skill", "eq", "sql")]
        )
        assert [r["data"]["candidate_id"] for r in skill_rows] == [ada.id]
    finally:
        for recruiter in recruiters:
            recruiter.close()
        manager.close()
