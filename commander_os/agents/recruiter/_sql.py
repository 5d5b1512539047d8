"""The recruiter store's SQL, one named statement each, and the mapping of rows to records.

Every value reaches SQLite as a bound parameter; the only text ever formatted into a statement
is a run of ``?`` placeholders (:func:`marks`) or one of the fixed ``WHERE_*`` fragments below.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson

from commander_os.agents.recruiter._models import (
    Candidate,
    CandidateMatch,
    CandidateStatus,
    Interview,
    InterviewStatus,
    Requisition,
    RequisitionStatus,
    format_time,
    read_time,
)

# ------------------------------------------------------------------------------ candidates

__all__ = [
    "CANDIDATE_COLUMNS",
    "DELETE_APPLICATION",
    "DELETE_CANDIDATE",
    "DELETE_CANDIDATE_SKILL",
    "DELETE_REQUISITION",
    "DELETE_REQUISITION_SKILL",
    "INSERT_APPLICATION",
    "INSERT_CANDIDATE",
    "INSERT_CANDIDATE_SKILL",
    "INSERT_INTERVIEW",
    "INSERT_REQUISITION",
    "INTERVIEW_COLUMNS",
    "INTERVIEW_FILTERS",
    "LIST_CANDIDATES",
    "LIST_INTERVIEWS",
    "LIST_REQUISITIONS",
    "MATCH_CANDIDATES",
    "PIPELINE_COUNTS",
    "REQUISITION_COLUMNS",
    "SELECT_APPLICANTS",
    "SELECT_CANDIDATE",
    "SELECT_CANDIDATE_BY_EMAIL",
    "SELECT_CANDIDATE_EXISTS",
    "SELECT_CANDIDATE_OVERLAP",
    "SELECT_EMAIL_OWNER",
    "SELECT_INTERVIEW",
    "SELECT_INTERVIEWER_OVERLAP",
    "SELECT_REQUISITION",
    "SELECT_REQUISITION_EXISTS",
    "SELECT_REQUISITION_SKILLS",
    "UPDATE_CANDIDATE",
    "UPDATE_INTERVIEW",
    "UPDATE_REQUISITION",
    "UPSERT_REQUISITION_SKILL",
    "WHERE_ALL_SKILLS",
    "WHERE_ANY_SKILL",
    "WHERE_LOCATION",
    "WHERE_SCHEDULED_FROM",
    "WHERE_STATUS_IN",
    "candidate_from_row",
    "candidate_params",
    "candidate_update_params",
    "interview_from_row",
    "interview_params",
    "interview_update_params",
    "json_list",
    "marks",
    "match_from_row",
    "requisition_from_row",
    "requisition_params",
    "requisition_update_params",
    "select_candidates",
    "select_interviews",
    "where",
]

CANDIDATE_COLUMNS = (
    "c.id, c.name, c.email, c.phone, c.location, c.skills, c.years_experience, c.status, "
    "c.notes, c.linkedin_url, c.created_at, c.updated_at"
)
SELECT_CANDIDATE = f"SELECT {CANDIDATE_COLUMNS} FROM candidates AS c WHERE c.id = ?"
SELECT_CANDIDATE_BY_EMAIL = f"SELECT {CANDIDATE_COLUMNS} FROM candidates AS c WHERE c.email = ?"
SELECT_EMAIL_OWNER = "SELECT id FROM candidates WHERE email = ? AND id <> ?"
SELECT_CANDIDATE_EXISTS = "SELECT 1 FROM candidates WHERE id = ?"
INSERT_CANDIDATE = (
    "INSERT INTO candidates (id, name, email, phone, location, skills, years_experience, "
    "status, notes, linkedin_url, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UPDATE_CANDIDATE = (
    "UPDATE candidates SET name = ?, email = ?, phone = ?, location = ?, skills = ?, "
    "years_experience = ?, status = ?, notes = ?, linkedin_url = ?, updated_at = ? WHERE id = ?"
)
DELETE_CANDIDATE = "DELETE FROM candidates WHERE id = ?"
INSERT_CANDIDATE_SKILL = "INSERT INTO candidate_skills (candidate_id, skill) VALUES (?, ?)"
DELETE_CANDIDATE_SKILL = "DELETE FROM candidate_skills WHERE candidate_id = ? AND skill = ?"

# list_candidates() is assembled from these fragments; every value is a bound parameter.
LIST_CANDIDATES = (
    "SELECT {columns} FROM candidates AS c{where} ORDER BY c.name, c.id LIMIT ? OFFSET ?"
)
WHERE_STATUS_IN = "c.status IN ({marks})"
WHERE_LOCATION = "c.location = ?"
# "all of": one index range per skill on candidate_skills(skill, candidate_id), then a count.
WHERE_ALL_SKILLS = (
    "c.id IN (SELECT candidate_id FROM candidate_skills WHERE skill IN ({marks}) "
    "GROUP BY candidate_id HAVING COUNT(*) = ?)"
)
WHERE_ANY_SKILL = "c.id IN (SELECT candidate_id FROM candidate_skills WHERE skill IN ({marks}))"

# Rank by required skills matched, then nice-to-have matched, then experience (ties: id).
MATCH_CANDIDATES = f"""
SELECT {CANDIDATE_COLUMNS},
       json_group_array(rs.skill) FILTER (WHERE rs.required) AS required_matched,
       json_group_array(rs.skill) FILTER (WHERE NOT rs.required) AS nice_matched,
       SUM(rs.required) AS required_count,
       SUM(1 - rs.required) AS nice_count
FROM requisition_skills AS rs
JOIN candidate_skills AS cs ON cs.skill = rs.skill
JOIN candidates AS c ON c.id = cs.candidate_id
WHERE rs.requisition_id = ? AND c.status IN ({{statuses}})
GROUP BY c.id
ORDER BY required_count DESC, nice_count DESC, c.years_experience DESC, c.id
LIMIT ?
"""

# ---------------------------------------------------------------------------- requisitions

REQUISITION_COLUMNS = (
    "id, title, department, required_skills, nice_to_have_skills, openings, status, "
    "created_at, updated_at"
)
SELECT_REQUISITION = f"SELECT {REQUISITION_COLUMNS} FROM requisitions WHERE id = ?"
SELECT_REQUISITION_EXISTS = "SELECT 1 FROM requisitions WHERE id = ?"
INSERT_REQUISITION = (
    f"INSERT INTO requisitions ({REQUISITION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UPDATE_REQUISITION = (
    "UPDATE requisitions SET title = ?, department = ?, required_skills = ?, "
    "nice_to_have_skills = ?, openings = ?, status = ?, updated_at = ? WHERE id = ?"
)
DELETE_REQUISITION = "DELETE FROM requisitions WHERE id = ?"
LIST_REQUISITIONS = (
    "SELECT " + REQUISITION_COLUMNS + " FROM requisitions{where} ORDER BY created_at, id"
)
SELECT_REQUISITION_SKILLS = (
    "SELECT skill, required FROM requisition_skills WHERE requisition_id = ?"
)
# The WHERE keeps an unchanged row untouched, so it is not shipped to the relay again.
UPSERT_REQUISITION_SKILL = (
    "INSERT INTO requisition_skills (requisition_id, skill, required) VALUES (?, ?, ?) "
    "ON CONFLICT (requisition_id, skill) DO UPDATE SET required = excluded.required "
    "WHERE required <> excluded.required"
)
DELETE_REQUISITION_SKILL = "DELETE FROM requisition_skills WHERE requisition_id = ? AND skill = ?"

# ---------------------------------------------------------------------------- applications

INSERT_APPLICATION = (
    "INSERT INTO applications (candidate_id, requisition_id, created_at) VALUES (?, ?, ?) "
    "ON CONFLICT DO NOTHING"
)
DELETE_APPLICATION = "DELETE FROM applications WHERE candidate_id = ? AND requisition_id = ?"
SELECT_APPLICANTS = (
    f"SELECT {CANDIDATE_COLUMNS} FROM applications AS a "
    "JOIN candidates AS c ON c.id = a.candidate_id WHERE a.requisition_id = ? "
    "ORDER BY c.name, c.id"
)
PIPELINE_COUNTS = (
    "SELECT c.status, COUNT(*) FROM applications AS a "
    "JOIN candidates AS c ON c.id = a.candidate_id "
    "WHERE a.requisition_id = ? GROUP BY c.status"
)

# ------------------------------------------------------------------------------ interviews

INTERVIEW_COLUMNS = (
    "i.id, i.candidate_id, i.requisition_id, i.starts_at, i.ends_at, i.interviewer, i.stage, "
    "i.status, i.feedback, i.score, i.created_at, i.updated_at"
)
SELECT_INTERVIEW = f"SELECT {INTERVIEW_COLUMNS} FROM interviews AS i WHERE i.id = ?"
INSERT_INTERVIEW = (
    "INSERT INTO interviews (id, candidate_id, requisition_id, starts_at, ends_at, interviewer, "
    "stage, status, feedback, score, created_at, updated_at) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
UPDATE_INTERVIEW = (
    "UPDATE interviews SET starts_at = ?, ends_at = ?, interviewer = ?, status = ?, "
    "feedback = ?, score = ?, updated_at = ? WHERE id = ?"
)
# Two slots overlap when each starts before the other ends. The lower bound on starts_at
# (new start minus the longest slot) keeps the partial index range short.
SELECT_INTERVIEWER_OVERLAP = (
    "SELECT id FROM interviews WHERE status = 'scheduled' AND interviewer = ? "
    "AND starts_at > ? AND starts_at < ? AND ends_at > ? AND id <> ? LIMIT 1"
)
SELECT_CANDIDATE_OVERLAP = (
    "SELECT id FROM interviews WHERE status = 'scheduled' AND candidate_id = ? "
    "AND starts_at > ? AND starts_at < ? AND ends_at > ? AND id <> ? LIMIT 1"
)
LIST_INTERVIEWS = "SELECT {columns} FROM interviews AS i{where} ORDER BY i.starts_at, i.id LIMIT ?"
WHERE_SCHEDULED_FROM = "i.status = 'scheduled' AND i.starts_at >= ?"


def marks(count: int) -> str:
    return ", ".join("?" * count)


def where(clauses: Sequence[str]) -> str:
    return " WHERE " + " AND ".join(clauses) if clauses else ""


def json_list(values: Sequence[str]) -> str:
    return orjson.dumps(list(values)).decode()


def candidate_from_row(row: Sequence[Any]) -> Candidate:
    return Candidate(
        id=row[0],
        name=row[1],
        email=row[2],
        phone=row[3],
        location=row[4],
        skills=tuple(orjson.loads(row[5])),
        years_experience=float(row[6]),
        status=CandidateStatus(row[7]),
        notes=row[8],
        linkedin_url=row[9],
        created_at=read_time(row[10]),
        updated_at=read_time(row[11]),
    )


def candidate_params(c: Candidate) -> tuple[Any, ...]:
    return (
        c.id,
        c.name,
        c.email,
        c.phone,
        c.location,
        json_list(c.skills),
        c.years_experience,
        c.status.value,
        c.notes,
        c.linkedin_url,
        format_time(c.created_at),
        format_time(c.updated_at),
    )


def requisition_from_row(row: Sequence[Any]) -> Requisition:
    return Requisition(
        id=row[0],
        title=row[1],
        department=row[2],
        required_skills=tuple(orjson.loads(row[3])),
        nice_to_have_skills=tuple(orjson.loads(row[4])),
        openings=int(row[5]),
        status=RequisitionStatus(row[6]),
        created_at=read_time(row[7]),
        updated_at=read_time(row[8]),
    )


def interview_from_row(row: Sequence[Any]) -> Interview:
    return Interview(
        id=row[0],
        candidate_id=row[1],
        requisition_id=row[2],
        starts_at=read_time(row[3]),
        ends_at=read_time(row[4]),
        interviewer=row[5],
        stage=row[6],
        status=InterviewStatus(row[7]),
        feedback=row[8],
        score=row[9],
        created_at=read_time(row[10]),
        updated_at=read_time(row[11]),
    )


def requisition_params(r: Requisition) -> tuple[Any, ...]:
    return (
        r.id,
        r.title,
        r.department,
        json_list(r.required_skills),
        json_list(r.nice_to_have_skills),
        r.openings,
        r.status.value,
        format_time(r.created_at),
        format_time(r.updated_at),
    )


def interview_params(i: Interview) -> tuple[Any, ...]:
    return (
        i.id,
        i.candidate_id,
        i.requisition_id,
        format_time(i.starts_at),
        format_time(i.ends_at),
        i.interviewer,
        i.stage,
        i.status.value,
        i.feedback,
        i.score,
        format_time(i.created_at),
        format_time(i.updated_at),
    )


def match_from_row(row: Sequence[Any], requisition: Requisition) -> CandidateMatch:
    required = set(orjson.loads(row[12]))
    nice = set(orjson.loads(row[13]))
    return CandidateMatch(
        candidate=candidate_from_row(row[:12]),
        # In the requisition's order, which is the order its author listed them in.
        required_matched=tuple(s for s in requisition.required_skills if s in required),
        nice_matched=tuple(s for s in requisition.nice_to_have_skills if s in nice),
        required_total=len(requisition.required_skills),
        nice_total=len(requisition.nice_to_have_skills),
    )


def candidate_update_params(c: Candidate) -> tuple[Any, ...]:
    """The parameters of :data:`UPDATE_CANDIDATE`: every column but ``created_at``, then id."""
    params = candidate_params(c)
    return (*params[1:10], params[11], c.id)


def requisition_update_params(r: Requisition) -> tuple[Any, ...]:
    """The parameters of :data:`UPDATE_REQUISITION`."""
    return (*requisition_params(r)[1:7], format_time(r.updated_at), r.id)


def interview_update_params(i: Interview) -> tuple[Any, ...]:
    """The parameters of :data:`UPDATE_INTERVIEW`."""
    return (
        format_time(i.starts_at),
        format_time(i.ends_at),
        i.interviewer,
        i.status.value,
        i.feedback,
        i.score,
        format_time(i.updated_at),
        i.id,
    )


def select_candidates(
    *,
    statuses: Sequence[str],
    location: str | None,
    skills: Sequence[str],
    match_all: bool,
) -> tuple[str, list[Any]]:
    """The statement and parameters of a candidate listing (LIMIT and OFFSET bound last)."""
    clauses: list[str] = []
    params: list[Any] = []
    if statuses:
        clauses.append(WHERE_STATUS_IN.format(marks=marks(len(statuses))))
        params += statuses
    if location is not None:
        clauses.append(WHERE_LOCATION)
        params.append(location)
    if skills and match_all:
        clauses.append(WHERE_ALL_SKILLS.format(marks=marks(len(skills))))
        params += [*skills, len(skills)]
    elif skills:
        clauses.append(WHERE_ANY_SKILL.format(marks=marks(len(skills))))
        params += skills
    return LIST_CANDIDATES.format(columns=CANDIDATE_COLUMNS, where=where(clauses)), params


#: Interview columns a listing may filter on by equality.
INTERVIEW_FILTERS = ("candidate_id", "requisition_id", "interviewer", "status")


def select_interviews(
    equal: dict[str, Any], *, starts_from: str | None = None, starts_before: str | None = None
) -> tuple[str, list[Any]]:
    """The statement and parameters of an interview listing (LIMIT bound last).

    ``equal`` maps columns of :data:`INTERVIEW_FILTERS` to values (None: no filter);
    ``starts_from`` selects scheduled interviews from that time on.
    """
    clauses: list[str] = []
    params: list[Any] = []
    if starts_from is not None:
        clauses.append(WHERE_SCHEDULED_FROM)
        params.append(starts_from)
    if starts_before is not None:
        clauses.append("i.starts_at < ?")
        params.append(starts_before)
    for column in INTERVIEW_FILTERS:
        if equal.get(column) is not None:
            clauses.append(f"i.{column} = ?")
            params.append(equal[column])
    return LIST_INTERVIEWS.format(columns=INTERVIEW_COLUMNS, where=where(clauses)), params
