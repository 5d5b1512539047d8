"""RecruiterAgentStorage: candidates, requisitions, interviews and skills search on BaseStorage.

This is the worked example of a custom agent store. The recipe it follows:

1. **Declare the schema** as ordered migrations (:mod:`._schema`) and list the tables to sync;
   :class:`~commander_os.storage.base_storage.BaseStorage` applies the migrations and installs
   the outbox triggers, so every change reaches the relay without any code here.
2. **Validate before writing** (:mod:`.models`): bad input raises a clear error from
   :mod:`.errors` before the database is touched.
3. **One transaction per operation** (``with self._writing() as conn``, i.e.
   :meth:`~BaseStorage.transaction`, ``BEGIN IMMEDIATE``): checks that read the database (does
   the candidate exist? is the interviewer free?) run inside the same transaction as the write,
   so no other writer can slip in between, and an error rolls everything back: data rows and
   their outbox rows alike.
4. **Return typed records** (frozen dataclasses), never raw rows.

>>> store = RecruiterAgentStorage("recruiter", Path("./data/agents/recruiter"), enable_htpc=False)
>>> req = store.add_requisition("Backend Engineer", required_skills=["Python", "SQL"])
>>> ada = store.add_candidate("Ada", "ada@example.com", skills=["python", "sql"])
>>> [c.name for c in store.list_candidates(skills=["PYTHON", "sql"])]
['Ada']
>>> store.match_candidates(req.id)[0].required_coverage
1.0
"""

from __future__ import annotations

import dataclasses
import inspect
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from commander_os import _sqlite as db
from commander_os.agents.recruiter import _models as models
from commander_os.agents.recruiter import _sql as sql
from commander_os.agents.recruiter._models import (
    PIPELINE,
    UNSET,
    Candidate,
    CandidateMatch,
    CandidateStatus,
    Interview,
    InterviewStatus,
    Requisition,
    RequisitionStatus,
    SkillMatch,
    Unset,
    coerce_enum,
    format_time,
    normalize_email,
    normalize_skills,
    now_text,
    optional_text,
    read_time,
    required_text,
)
from commander_os.agents.recruiter._schema import MIGRATIONS, SYNCED_TABLES
from commander_os.agents.recruiter.errors import (
    DuplicateEmail,
    InvalidInput,
    InvalidTransition,
    RecordNotFound,
    SchedulingConflict,
)
from commander_os.storage.base_storage import BaseStorage

__all__ = ["RecruiterAgentStorage"]


class RecruiterAgentStorage(BaseStorage):
    """Storage of a recruiter agent: candidates, job requisitions, interviews, skills search.

    Opens (and migrates) ``data_dir / f"{agent_id}.db"`` like any
    :class:`~commander_os.storage.base_storage.BaseStorage`; every table is synced, so other
    agents can query the candidates on the relay, e.g.
    ``query_network(table="candidates", where=[("skills", "contains", "python")])``.

    Every method either does all of its work in one transaction or raises and changes nothing:
    :class:`~.errors.RecordNotFound` for unknown ids,
    :class:`~.errors.InvalidInput` (a ``ValueError``) for bad arguments,
    :class:`~.errors.DuplicateEmail`, :class:`~.errors.InvalidTransition`
    and :class:`~.errors.SchedulingConflict`.
    """

    migrations = MIGRATIONS
    synced_tables = SYNCED_TABLES

    # ----------------------------------------------------------------------- plumbing

    @contextmanager
    def _writing(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; a constraint the checks missed still becomes InvalidInput."""
        try:
            with self.transaction() as conn:
                yield conn
        except db.IntegrityError as exc:  # sqlite3's or, encrypted, SQLCipher's
            raise InvalidInput(f"the database refused the change: {exc}") from exc

    def _load_candidate(self, conn: sqlite3.Connection, candidate_id: str) -> Candidate:
        row = conn.execute(sql.SELECT_CANDIDATE, (candidate_id,)).fetchone()
        if row is None:
            raise RecordNotFound("candidate", candidate_id)
        return sql.candidate_from_row(row)

    def _load_requisition(self, conn: sqlite3.Connection, requisition_id: str) -> Requisition:
        row = conn.execute(sql.SELECT_REQUISITION, (requisition_id,)).fetchone()
        if row is None:
            raise RecordNotFound("requisition", requisition_id)
        return sql.requisition_from_row(row)

    def _load_interview(self, conn: sqlite3.Connection, interview_id: str) -> Interview:
        row = conn.execute(sql.SELECT_INTERVIEW, (interview_id,)).fetchone()
        if row is None:
            raise RecordNotFound("interview", interview_id)
        return sql.interview_from_row(row)

    # ---------------------------------------------------------------------- candidates

    def add_candidate(
        self,
        name: str,
        email: str,
        *,
        phone: str | None = None,
        location: str | None = None,
        skills: Iterable[str] = (),
        years_experience: float = 0,
        notes: str | None = None,
        linkedin_url: str | None = None,
        candidate_id: str | None = None,
    ) -> Candidate:
        """Add a candidate (status ``new``); return it with its id.

        Skills are normalised (``" Machine  Learning"`` -> ``"machine learning"``) and
        de-duplicated; the email is lowercased and must be unique. Raises
        :class:`~.errors.InvalidInput` or
        :class:`~.errors.DuplicateEmail`.
        """
        candidate = self._new_candidate(
            name=name,
            email=email,
            phone=phone,
            location=location,
            skills=skills,
            years_experience=years_experience,
            notes=notes,
            linkedin_url=linkedin_url,
            candidate_id=candidate_id,
        )
        with self._writing() as conn:
            self._insert_candidate(conn, candidate)
        return candidate

    def add_candidates(self, candidates: Iterable[Mapping[str, Any]]) -> list[Candidate]:
        """Add many candidates in one transaction: all of them, or none if any is invalid.

        Each mapping holds :meth:`add_candidate`'s arguments (``name``, ``email``, ...).
        """
        built = []
        for index, fields in enumerate(candidates):
            unknown = sorted(set(fields) - _CANDIDATE_FIELDS)
            if unknown:
                raise InvalidInput(f"candidates[{index}] has unknown fields {unknown}")
            built.append(self._new_candidate(**fields))
        with self._writing() as conn:
            for candidate in built:
                self._insert_candidate(conn, candidate)
        return built

    def _new_candidate(
        self,
        *,
        name: object,
        email: object,
        phone: object = None,
        location: object = None,
        skills: Iterable[str] = (),
        years_experience: object = 0,
        notes: object = None,
        linkedin_url: object = None,
        candidate_id: object = None,
    ) -> Candidate:
        now = read_time(now_text())
        return Candidate(
            id=models.new_id("cand")
            if candidate_id is None
            else models.check_id(candidate_id, "candidate"),
            name=required_text(name, "name"),
            email=normalize_email(email),
            phone=models.check_phone(phone),
            location=optional_text(location, "location"),
            skills=normalize_skills(skills),
            years_experience=models.check_years(years_experience),
            status=CandidateStatus.NEW,
            notes=optional_text(notes, "notes", limit=models.MAX_NOTES),
            linkedin_url=models.check_linkedin_url(linkedin_url),
            created_at=now,
            updated_at=now,
        )

    def _insert_candidate(self, conn: sqlite3.Connection, candidate: Candidate) -> None:
        if conn.execute(sql.SELECT_CANDIDATE_EXISTS, (candidate.id,)).fetchone() is not None:
            raise InvalidInput(f"a candidate with id {candidate.id!r} already exists")
        self._check_email_free(conn, candidate)
        conn.execute(sql.INSERT_CANDIDATE, sql.candidate_params(candidate))
        conn.executemany(sql.INSERT_CANDIDATE_SKILL, ((candidate.id, s) for s in candidate.skills))

    def _check_email_free(self, conn: sqlite3.Connection, candidate: Candidate) -> None:
        # Inside the write transaction, so no other writer can take the email in between.
        owner = conn.execute(sql.SELECT_EMAIL_OWNER, (candidate.email, candidate.id)).fetchone()
        if owner is not None:
            raise DuplicateEmail(
                f"email {candidate.email!r} already belongs to candidate {owner[0]!r}",
                existing_id=owner[0],
            )

    def get_candidate(self, candidate_id: str) -> Candidate:
        """The candidate with this id; raises :class:`~.errors.RecordNotFound`."""
        with self.reading() as conn:
            return self._load_candidate(conn, candidate_id)

    def find_candidate_by_email(self, email: str) -> Candidate | None:
        """The candidate with this email (any case), or None."""
        with self.reading() as conn:
            row = conn.execute(sql.SELECT_CANDIDATE_BY_EMAIL, (normalize_email(email),)).fetchone()
        return None if row is None else sql.candidate_from_row(row)

    def update_candidate(
        self,
        candidate_id: str,
        *,
        name: str | Unset = UNSET,
        email: str | Unset = UNSET,
        phone: str | Unset | None = UNSET,
        location: str | Unset | None = UNSET,
        skills: Iterable[str] | Unset = UNSET,
        years_experience: float | Unset = UNSET,
        notes: str | Unset | None = UNSET,
        linkedin_url: str | Unset | None = UNSET,
    ) -> Candidate:
        """Change the given fields (``None`` clears an optional one); return the candidate.

        The status changes only through :meth:`move_candidate`. Raises
        :class:`~.errors.RecordNotFound`, :class:`~.errors.InvalidInput`
        or :class:`~.errors.DuplicateEmail`.
        """
        checks: dict[str, tuple[object, Any]] = {
            "name": (name, lambda v: required_text(v, "name")),
            "email": (email, normalize_email),
            "phone": (phone, models.check_phone),
            "location": (location, lambda v: optional_text(v, "location")),
            "skills": (skills, normalize_skills),
            "years_experience": (years_experience, models.check_years),
            "notes": (notes, lambda v: optional_text(v, "notes", limit=models.MAX_NOTES)),
            "linkedin_url": (linkedin_url, models.check_linkedin_url),
        }
        changes = {
            field: check(value) for field, (value, check) in checks.items() if value is not UNSET
        }
        with self._writing() as conn:
            current = self._load_candidate(conn, candidate_id)
            if not changes:
                return current
            updated = dataclasses.replace(current, **changes, updated_at=read_time(now_text()))
            if updated.email != current.email:
                self._check_email_free(conn, updated)
            self._save_candidate(conn, updated)
            self._replace_candidate_skills(conn, current, updated.skills)
        return updated

    def _save_candidate(self, conn: sqlite3.Connection, c: Candidate) -> None:
        conn.execute(sql.UPDATE_CANDIDATE, sql.candidate_update_params(c))

    def _replace_candidate_skills(
        self, conn: sqlite3.Connection, current: Candidate, skills: Sequence[str]
    ) -> None:
        # Only the difference is written, so unchanged skills are not shipped again.
        old, new = set(current.skills), set(skills)
        conn.executemany(sql.DELETE_CANDIDATE_SKILL, ((current.id, s) for s in sorted(old - new)))
        conn.executemany(sql.INSERT_CANDIDATE_SKILL, ((current.id, s) for s in sorted(new - old)))

    def delete_candidate(self, candidate_id: str) -> None:
        """Delete a candidate with their skills, applications and interviews.

        Raises :class:`~.errors.RecordNotFound` for an unknown id.
        """
        with self._writing() as conn:
            if conn.execute(sql.DELETE_CANDIDATE, (candidate_id,)).rowcount == 0:
                raise RecordNotFound("candidate", candidate_id)

    def list_candidates(
        self,
        *,
        status: CandidateStatus | str | Iterable[CandidateStatus | str] | None = None,
        location: str | None = None,
        skills: Iterable[str] = (),
        match: SkillMatch = "all",
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Candidate]:
        """Candidates sorted by name, filtered by status(es), location and skills.

        ``skills`` with ``match="all"`` keeps candidates who have every listed skill; with
        ``match="any"`` those who have at least one. Skills are normalised first, so
        ``["Python", " SQL "]`` finds ``python`` and ``sql``. Location compares without case.
        Each filter is one indexed lookup (see ``candidate_skills``).
        """
        wanted_skills = normalize_skills(skills)
        if match not in ("all", "any"):
            raise InvalidInput(f"match must be 'all' or 'any', not {match!r}")
        statement, params = sql.select_candidates(
            statuses=[] if status is None else self._statuses(status),
            location=None if location is None else required_text(location, "location"),
            skills=wanted_skills,
            match_all=match == "all",
        )
        offset = models.check_count(offset, "offset", low=0, high=2**62)
        with self.reading() as conn:
            rows = conn.execute(statement, (*params, models.check_limit(limit), offset)).fetchall()
        return [sql.candidate_from_row(row) for row in rows]

    @staticmethod
    def _statuses(status: CandidateStatus | str | Iterable[CandidateStatus | str]) -> list[str]:
        given = [status] if isinstance(status, str) else list(status)
        if not given:
            raise InvalidInput("status must name at least one status")
        return [coerce_enum(CandidateStatus, item, "status").value for item in given]

    def move_candidate(self, candidate_id: str, status: CandidateStatus | str) -> Candidate:
        """Move a candidate one step along the pipeline (or to ``rejected``); return them.

        Allowed moves are in :data:`~commander_os.agents.recruiter._models.PIPELINE`:
        new -> screening -> interviewing -> offered -> hired, and any stage that is not final
        -> rejected. Raises :class:`~.errors.InvalidTransition` for any other move,
        :class:`~.errors.RecordNotFound`, or
        :class:`~.errors.InvalidInput` for an unknown status.
        """
        target = coerce_enum(CandidateStatus, status, "status")
        with self._writing() as conn:
            current = self._load_candidate(conn, candidate_id)
            if target not in PIPELINE[current.status]:
                raise InvalidTransition(
                    _transition_message(current, target),
                    current=current.status.value,
                    requested=target.value,
                )
            moved = dataclasses.replace(current, status=target, updated_at=read_time(now_text()))
            self._save_candidate(conn, moved)
        return moved

    # -------------------------------------------------------------------- requisitions

    def add_requisition(
        self,
        title: str,
        *,
        department: str | None = None,
        required_skills: Iterable[str] = (),
        nice_to_have_skills: Iterable[str] = (),
        openings: int = 1,
        status: RequisitionStatus | str = RequisitionStatus.OPEN,
        requisition_id: str | None = None,
    ) -> Requisition:
        """Open a job requisition; return it with its id.

        A skill may be required or nice-to-have, not both. Raises
        :class:`~.errors.InvalidInput`.
        """
        required, nice = models.split_skills(required_skills, nice_to_have_skills)
        now = read_time(now_text())
        requisition = Requisition(
            id=models.new_id("req")
            if requisition_id is None
            else models.check_id(requisition_id, "requisition"),
            title=required_text(title, "title"),
            department=optional_text(department, "department"),
            required_skills=required,
            nice_to_have_skills=nice,
            openings=models.check_count(openings, "openings", low=0, high=10_000),
            status=coerce_enum(RequisitionStatus, status, "status"),
            created_at=now,
            updated_at=now,
        )
        with self._writing() as conn:
            if conn.execute(sql.SELECT_REQUISITION_EXISTS, (requisition.id,)).fetchone():
                raise InvalidInput(f"a requisition with id {requisition.id!r} already exists")
            conn.execute(sql.INSERT_REQUISITION, sql.requisition_params(requisition))
            self._save_requisition_skills(conn, requisition)
        return requisition

    def get_requisition(self, requisition_id: str) -> Requisition:
        """The requisition with this id; raises :class:`~.errors.RecordNotFound`."""
        with self.reading() as conn:
            return self._load_requisition(conn, requisition_id)

    def update_requisition(
        self,
        requisition_id: str,
        *,
        title: str | Unset = UNSET,
        department: str | Unset | None = UNSET,
        required_skills: Iterable[str] | Unset = UNSET,
        nice_to_have_skills: Iterable[str] | Unset = UNSET,
        openings: int | Unset = UNSET,
        status: RequisitionStatus | str | Unset = UNSET,
    ) -> Requisition:
        """Change the given fields of a requisition; return it.

        Raises :class:`~.errors.RecordNotFound` or
        :class:`~.errors.InvalidInput`.
        """
        changes: dict[str, Any] = {}
        if not isinstance(title, Unset):
            changes["title"] = required_text(title, "title")
        if not isinstance(department, Unset):
            changes["department"] = optional_text(department, "department")
        if not isinstance(openings, Unset):
            changes["openings"] = models.check_count(openings, "openings", low=0, high=10_000)
        if not isinstance(status, Unset):
            changes["status"] = coerce_enum(RequisitionStatus, status, "status")
        with self._writing() as conn:
            current = self._load_requisition(conn, requisition_id)
            required, nice = models.split_skills(
                current.required_skills if isinstance(required_skills, Unset) else required_skills,
                current.nice_to_have_skills
                if isinstance(nice_to_have_skills, Unset)
                else nice_to_have_skills,
            )
            changes.update(required_skills=required, nice_to_have_skills=nice)
            updated = dataclasses.replace(current, **changes, updated_at=read_time(now_text()))
            if dataclasses.replace(updated, updated_at=current.updated_at) == current:
                return current
            conn.execute(sql.UPDATE_REQUISITION, sql.requisition_update_params(updated))
            self._save_requisition_skills(conn, updated)
        return updated

    def _save_requisition_skills(self, conn: sqlite3.Connection, req: Requisition) -> None:
        wanted = dict.fromkeys(req.required_skills, 1)
        wanted.update(dict.fromkeys(req.nice_to_have_skills, 0))
        stored = dict(conn.execute(sql.SELECT_REQUISITION_SKILLS, (req.id,)).fetchall())
        gone = sorted(set(stored) - set(wanted))
        conn.executemany(sql.DELETE_REQUISITION_SKILL, ((req.id, skill) for skill in gone))
        conn.executemany(
            sql.UPSERT_REQUISITION_SKILL,
            ((req.id, skill, flag) for skill, flag in wanted.items() if stored.get(skill) != flag),
        )

    def delete_requisition(self, requisition_id: str) -> None:
        """Delete a requisition with its skills, applications and interviews.

        To keep the history, set its status to ``closed`` instead. Raises
        :class:`~.errors.RecordNotFound` for an unknown id.
        """
        with self._writing() as conn:
            if conn.execute(sql.DELETE_REQUISITION, (requisition_id,)).rowcount == 0:
                raise RecordNotFound("requisition", requisition_id)

    def list_requisitions(
        self,
        *,
        status: RequisitionStatus | str | None = None,
        department: str | None = None,
    ) -> list[Requisition]:
        """Requisitions, oldest first, optionally of one status and/or department."""
        clauses: list[str] = []
        params: list[Any] = []
        if status is not None:
            clauses.append("status = ?")
            params.append(coerce_enum(RequisitionStatus, status, "status").value)
        if department is not None:
            clauses.append("department = ?")
            params.append(required_text(department, "department"))
        statement = sql.LIST_REQUISITIONS.format(where=sql.where(clauses))
        with self.reading() as conn:
            return [sql.requisition_from_row(row) for row in conn.execute(statement, params)]

    # ----------------------------------------------------------- applications, matching

    def attach_candidate(self, candidate_id: str, requisition_id: str) -> bool:
        """Record that a candidate is considered for a requisition; False if already so.

        Scheduling an interview does this by itself. Raises
        :class:`~.errors.RecordNotFound` for an unknown id.
        """
        with self._writing() as conn:
            self._load_candidate(conn, candidate_id)
            self._load_requisition(conn, requisition_id)
            cursor = conn.execute(
                sql.INSERT_APPLICATION, (candidate_id, requisition_id, now_text())
            )
            return cursor.rowcount > 0

    def detach_candidate(self, candidate_id: str, requisition_id: str) -> bool:
        """Undo :meth:`attach_candidate` (interviews stay); False if they were not attached."""
        with self._writing() as conn:
            self._load_candidate(conn, candidate_id)
            self._load_requisition(conn, requisition_id)
            return conn.execute(sql.DELETE_APPLICATION, (candidate_id, requisition_id)).rowcount > 0

    def requisition_candidates(self, requisition_id: str) -> list[Candidate]:
        """The candidates attached to a requisition, sorted by name."""
        with self.reading() as conn:
            self._load_requisition(conn, requisition_id)
            return [
                sql.candidate_from_row(row)
                for row in conn.execute(sql.SELECT_APPLICANTS, (requisition_id,))
            ]

    def pipeline_stats(self, requisition_id: str) -> dict[CandidateStatus, int]:
        """How many of a requisition's candidates are at each pipeline status.

        Counts the candidates attached to it (every candidate interviewed for it is), by their
        current status; every status is present, in pipeline order. Keys are
        :class:`CandidateStatus` members, which compare equal to their strings
        (``stats["hired"]`` works).
        """
        with self.reading() as conn:
            self._load_requisition(conn, requisition_id)
            counts = dict(conn.execute(sql.PIPELINE_COUNTS, (requisition_id,)).fetchall())
        return {status: int(counts.get(status.value, 0)) for status in CandidateStatus}

    def match_candidates(
        self, requisition_id: str, limit: int = 10, *, include_final: bool = False
    ) -> list[CandidateMatch]:
        """The best candidates for a requisition, best first.

        Ranked by how many required skills they have, then how many nice-to-have skills, then
        years of experience (ties by id). Candidates sharing no skill with the requisition are
        left out, and so are hired and rejected ones unless ``include_final``. One indexed
        query: requisition_skills -> candidate_skills(skill) -> candidates(id).
        """
        statuses = [s.value for s in CandidateStatus if include_final or not s.is_final]
        statement = sql.MATCH_CANDIDATES.format(statuses=sql.marks(len(statuses)))
        with self.reading() as conn:
            requisition = self._load_requisition(conn, requisition_id)
            rows = conn.execute(
                statement, (requisition_id, *statuses, models.check_limit(limit))
            ).fetchall()
        return [sql.match_from_row(row, requisition) for row in rows]

    # -------------------------------------------------------------------- interviews

    def schedule_interview(
        self,
        candidate_id: str,
        requisition_id: str,
        starts_at: datetime | str,
        ends_at: datetime | str,
        *,
        interviewer: str,
        stage: str = "interview",
        interview_id: str | None = None,
    ) -> Interview:
        """Book an interview slot ``[starts_at, ends_at)``; return it.

        Times are datetimes or ISO-8601 strings (naive means UTC). The candidate must not be
        hired or rejected, the requisition must be open, and neither the interviewer (compared
        without case) nor the candidate may have another scheduled interview overlapping the
        slot (back-to-back is fine). Attaches the candidate to the requisition. Raises
        :class:`~.errors.SchedulingConflict`,
        :class:`~.errors.InvalidTransition`,
        :class:`~.errors.RecordNotFound`, :class:`~.errors.InvalidInput`.
        """
        start, end = models.check_slot(starts_at, ends_at)
        now = read_time(now_text())
        interview = Interview(
            id=models.new_id("intv")
            if interview_id is None
            else models.check_id(interview_id, "interview"),
            candidate_id=candidate_id,
            requisition_id=requisition_id,
            starts_at=start,
            ends_at=end,
            interviewer=required_text(interviewer, "interviewer"),
            stage=required_text(stage, "stage"),
            status=InterviewStatus.SCHEDULED,
            feedback=None,
            score=None,
            created_at=now,
            updated_at=now,
        )
        with self._writing() as conn:
            self._check_can_schedule(conn, interview)
            self._check_free(conn, interview)
            conn.execute(sql.INSERT_INTERVIEW, sql.interview_params(interview))
            conn.execute(sql.INSERT_APPLICATION, (candidate_id, requisition_id, format_time(now)))
        return interview

    def _check_can_schedule(self, conn: sqlite3.Connection, interview: Interview) -> None:
        if conn.execute(sql.SELECT_INTERVIEW, (interview.id,)).fetchone() is not None:
            raise InvalidInput(f"an interview with id {interview.id!r} already exists")
        candidate = self._load_candidate(conn, interview.candidate_id)
        if candidate.status.is_final:
            raise InvalidTransition(
                f"cannot schedule an interview for candidate {candidate.id!r} "
                f"({candidate.name}): they are already {candidate.status.value}",
                current=candidate.status.value,
                requested="interview",
            )
        requisition = self._load_requisition(conn, interview.requisition_id)
        if requisition.status is not RequisitionStatus.OPEN:
            raise InvalidTransition(
                f"cannot schedule an interview for requisition {requisition.id!r} "
                f"({requisition.title}): it is {requisition.status.value}, not open",
                current=requisition.status.value,
                requested="interview",
            )

    def _check_free(self, conn: sqlite3.Connection, interview: Interview) -> None:
        start, end = format_time(interview.starts_at), format_time(interview.ends_at)
        earliest = format_time(interview.starts_at - models.MAX_INTERVIEW_LENGTH)
        checks = (
            ("interviewer", interview.interviewer, sql.SELECT_INTERVIEWER_OVERLAP),
            ("candidate", interview.candidate_id, sql.SELECT_CANDIDATE_OVERLAP),
        )
        for who, value, statement in checks:
            row = conn.execute(statement, (value, earliest, end, start, interview.id)).fetchone()
            if row is not None:
                other = self._load_interview(conn, row[0])
                raise SchedulingConflict(
                    f"{who} {value!r} is already booked from {other.starts_at:%Y-%m-%d %H:%M} "
                    f"to {other.ends_at:%H:%M} UTC (interview {other.id!r}), which overlaps "
                    f"{interview.starts_at:%Y-%m-%d %H:%M}-{interview.ends_at:%H:%M} UTC",
                    conflicting_id=other.id,
                )

    def reschedule_interview(
        self,
        interview_id: str,
        starts_at: datetime | str,
        ends_at: datetime | str,
        *,
        interviewer: str | None = None,
    ) -> Interview:
        """Move a scheduled interview to a new slot (and optionally a new interviewer).

        The same checks as :meth:`schedule_interview` apply to the new slot; only a
        ``scheduled`` interview can move (else :class:`~.errors.InvalidTransition`).
        """
        start, end = models.check_slot(starts_at, ends_at)
        new_interviewer = None if interviewer is None else required_text(interviewer, "interviewer")
        with self._writing() as conn:
            current = self._scheduled(conn, interview_id, "reschedule")
            moved = dataclasses.replace(
                current,
                starts_at=start,
                ends_at=end,
                interviewer=new_interviewer or current.interviewer,
                updated_at=read_time(now_text()),
            )
            self._check_free(conn, moved)
            self._save_interview(conn, moved)
        return moved

    def complete_interview(
        self, interview_id: str, *, score: int | None = None, feedback: str | None = None
    ) -> Interview:
        """Mark a scheduled interview completed, with a score from 1 to 5 and feedback."""
        checked_score = None if score is None else models.check_count(score, "score", low=1, high=5)
        text = optional_text(feedback, "feedback", limit=models.MAX_NOTES)
        return self._finish(
            interview_id, InterviewStatus.COMPLETED, feedback=text, score=checked_score
        )

    def cancel_interview(self, interview_id: str, *, reason: str | None = None) -> Interview:
        """Cancel a scheduled interview (its slot becomes free); ``reason`` goes to feedback."""
        text = optional_text(reason, "reason", limit=models.MAX_NOTES)
        return self._finish(interview_id, InterviewStatus.CANCELLED, feedback=text, score=None)

    def _finish(
        self, interview_id: str, status: InterviewStatus, *, feedback: str | None, score: int | None
    ) -> Interview:
        verb = "complete" if status is InterviewStatus.COMPLETED else "cancel"
        with self._writing() as conn:
            current = self._scheduled(conn, interview_id, verb)
            done = dataclasses.replace(
                current,
                status=status,
                feedback=feedback,
                score=score,
                updated_at=read_time(now_text()),
            )
            self._save_interview(conn, done)
        return done

    def _scheduled(self, conn: sqlite3.Connection, interview_id: str, verb: str) -> Interview:
        interview = self._load_interview(conn, interview_id)
        if interview.status is not InterviewStatus.SCHEDULED:
            raise InvalidTransition(
                f"cannot {verb} interview {interview_id!r}: it is {interview.status.value}",
                current=interview.status.value,
                requested=verb,
            )
        return interview

    def _save_interview(self, conn: sqlite3.Connection, i: Interview) -> None:
        conn.execute(sql.UPDATE_INTERVIEW, sql.interview_update_params(i))

    def get_interview(self, interview_id: str) -> Interview:
        """The interview with this id; raises :class:`~.errors.RecordNotFound`."""
        with self.reading() as conn:
            return self._load_interview(conn, interview_id)

    def list_interviews(
        self,
        *,
        candidate_id: str | None = None,
        requisition_id: str | None = None,
        status: InterviewStatus | str | None = None,
        limit: int | None = None,
    ) -> list[Interview]:
        """Interviews of a candidate and/or requisition (any status unless given), by time."""
        wanted = None if status is None else coerce_enum(InterviewStatus, status, "status").value
        statement, params = sql.select_interviews(
            {"candidate_id": candidate_id, "requisition_id": requisition_id, "status": wanted}
        )
        return self._interviews(statement, params, limit)

    def upcoming_interviews(
        self,
        *,
        interviewer: str | None = None,
        candidate_id: str | None = None,
        requisition_id: str | None = None,
        after: datetime | str | None = None,
        until: datetime | str | None = None,
        limit: int | None = 100,
    ) -> list[Interview]:
        """Scheduled interviews starting at or after ``after`` (default: now), soonest first.

        ``until`` bounds the window (exclusive); the other arguments narrow it to one
        interviewer, candidate or requisition.
        """
        start = datetime.now(UTC) if after is None else models.parse_time(after, "after")
        end = None if until is None else format_time(models.parse_time(until, "until"))
        statement, params = sql.select_interviews(
            {
                "interviewer": interviewer,
                "candidate_id": candidate_id,
                "requisition_id": requisition_id,
            },
            starts_from=format_time(start),
            starts_before=end,
        )
        return self._interviews(statement, params, limit)

    def _interviews(
        self, statement: str, params: Sequence[Any], limit: int | None
    ) -> list[Interview]:
        with self.reading() as conn:
            rows = conn.execute(statement, (*params, models.check_limit(limit))).fetchall()
        return [sql.interview_from_row(row) for row in rows]


def _transition_message(candidate: Candidate, target: CandidateStatus) -> str:
    current = candidate.status
    what = f"cannot move candidate {candidate.id!r} ({candidate.name}) from {current.value!r}"
    if current.is_final:
        return f"{what} to {target.value!r}: {current.value!r} is final"
    allowed = " or ".join(repr(s.value) for s in models.allowed_moves(current))
    return f"{what} to {target.value!r}: the next step can only be {allowed}"


#: The arguments of add_candidate(), which add_candidates() takes as mapping keys.
_CANDIDATE_FIELDS = frozenset(inspect.signature(RecruiterAgentStorage.add_candidate).parameters) - {
    "self"
}

_ = Path  # the doctest above uses Path
