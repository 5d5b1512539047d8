"""What the recruiter store holds: statuses, records, and how input is checked and normalised.

Everything here is pure Python (no SQL), so the rules can be read, and tested, on their own:

* the candidate pipeline ``new -> screening -> interviewing -> offered -> hired``, with
  ``rejected`` reachable from every stage that is not final (see :data:`PIPELINE`);
* skills are compared after :func:`normalize_skill` (trimmed, lowercased, inner whitespace
  collapsed): ``"  Machine   Learning "`` and ``"machine learning"`` are the same skill;
* times are stored as fixed-width UTC text (``2026-01-06T14:30:00.000000Z``) so that SQLite
  compares them correctly as strings; naive datetimes are taken to be UTC.

Bad input raises :class:`~.errors.InvalidInput` (a ``ValueError``) naming the field.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import Enum, StrEnum
from typing import Final, Literal, TypeVar
from urllib.parse import urlsplit

from commander_os.agents.recruiter.errors import InvalidInput

__all__ = [
    "MAX_INTERVIEW_LENGTH",
    "PIPELINE",
    "UNSET",
    "Candidate",
    "CandidateMatch",
    "CandidateStatus",
    "Interview",
    "InterviewStatus",
    "Requisition",
    "RequisitionStatus",
    "SkillMatch",
    "Unset",
    "allowed_moves",
    "format_time",
    "normalize_email",
    "normalize_skill",
    "normalize_skills",
    "parse_time",
]

MAX_TEXT = 200  # names, titles, locations, interviewers, stages
MAX_NOTES = 20_000  # notes and feedback
MAX_SKILL = 64
MAX_SKILLS = 100
MAX_EMAIL = 254  # RFC 5321's limit on a forward path
MAX_YEARS = 80
MAX_ID = 100
#: Largest ``limit`` a listing accepts.
MAX_LIMIT = 10_000
#: Longest interview slot accepted; also bounds the index range of the double-booking check.
MAX_INTERVIEW_LENGTH = timedelta(hours=12)

_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")
_PHONE = re.compile(r"^\+?[0-9 ().x-]{5,32}$")
_WHITESPACE = re.compile(r"\s+")

_E = TypeVar("_E", bound=Enum)


class Unset(Enum):
    """The type of :data:`UNSET`: "leave this field as it is" in an update."""

    UNSET = "unset"


#: Default of every field of an ``update_*`` call; ``None`` means "clear the field".
UNSET: Final = Unset.UNSET


# ------------------------------------------------------------------------------ statuses


class CandidateStatus(StrEnum):
    """Where a candidate is in the hiring pipeline."""

    NEW = "new"
    SCREENING = "screening"
    INTERVIEWING = "interviewing"
    OFFERED = "offered"
    HIRED = "hired"
    REJECTED = "rejected"

    @property
    def is_final(self) -> bool:
        """True for ``hired`` and ``rejected``: nothing follows them."""
        return not PIPELINE[self]


#: The moves :meth:`~commander_os.agents.recruiter.storage.RecruiterAgentStorage.move_candidate`
#: accepts: one step forward, or out to ``rejected`` from any stage that is not final.
PIPELINE: Final[Mapping[CandidateStatus, frozenset[CandidateStatus]]] = {
    CandidateStatus.NEW: frozenset({CandidateStatus.SCREENING, CandidateStatus.REJECTED}),
    CandidateStatus.SCREENING: frozenset({CandidateStatus.INTERVIEWING, CandidateStatus.REJECTED}),
    CandidateStatus.INTERVIEWING: frozenset({CandidateStatus.OFFERED, CandidateStatus.REJECTED}),
    CandidateStatus.OFFERED: frozenset({CandidateStatus.HIRED, CandidateStatus.REJECTED}),
    CandidateStatus.HIRED: frozenset(),
    CandidateStatus.REJECTED: frozenset(),
}


def allowed_moves(status: CandidateStatus | str) -> list[CandidateStatus]:
    """The statuses a candidate in ``status`` may move to, in pipeline order."""
    current = coerce_enum(CandidateStatus, status, "status")
    return [candidate for candidate in CandidateStatus if candidate in PIPELINE[current]]


class RequisitionStatus(StrEnum):
    """The state of a job requisition. Interviews can be scheduled only while it is open."""

    OPEN = "open"
    ON_HOLD = "on_hold"
    FILLED = "filled"
    CLOSED = "closed"


class InterviewStatus(StrEnum):
    """An interview is scheduled, then either completed or cancelled (both final)."""

    SCHEDULED = "scheduled"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


def coerce_enum(enum: type[_E], value: object, field: str) -> _E:
    """``value`` as a member of ``enum`` (given as a member or its string value)."""
    try:
        return enum(value)
    except ValueError:
        choices = ", ".join(repr(member.value) for member in enum)
        raise InvalidInput(f"invalid {field} {value!r}: expected one of {choices}") from None


# ------------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class Candidate:
    """A person in the pipeline. ``skills`` are normalised, in the order they were given."""

    id: str
    name: str
    email: str
    phone: str | None
    location: str | None
    skills: tuple[str, ...]
    years_experience: float
    status: CandidateStatus
    notes: str | None
    linkedin_url: str | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Requisition:
    """An open position: what it needs (``required_skills``) and what helps (``nice_to_have``)."""

    id: str
    title: str
    department: str | None
    required_skills: tuple[str, ...]
    nice_to_have_skills: tuple[str, ...]
    openings: int
    status: RequisitionStatus
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class Interview:
    """One interview slot ``[starts_at, ends_at)`` of a candidate for a requisition."""

    id: str
    candidate_id: str
    requisition_id: str
    starts_at: datetime
    ends_at: datetime
    interviewer: str
    stage: str
    status: InterviewStatus
    feedback: str | None
    score: int | None
    created_at: datetime
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class CandidateMatch:
    """A candidate ranked for a requisition, with the skills that matched."""

    candidate: Candidate
    required_matched: tuple[str, ...]
    nice_matched: tuple[str, ...]
    required_total: int
    nice_total: int

    @property
    def required_coverage(self) -> float:
        """Share of the requisition's required skills the candidate has (1.0 if none needed)."""
        if not self.required_total:
            return 1.0
        return len(self.required_matched) / self.required_total


# ------------------------------------------------------------------------ normalisation


def normalize_skill(skill: object) -> str:
    """``"  Machine   Learning "`` -> ``"machine learning"``; raises InvalidInput if empty."""
    if not isinstance(skill, str):
        raise InvalidInput(f"a skill must be a string, not {type(skill).__name__}")
    normalized = _WHITESPACE.sub(" ", skill).strip().lower()
    if not normalized:
        raise InvalidInput("a skill must not be empty")
    if len(normalized) > MAX_SKILL:
        raise InvalidInput(f"skill {normalized[:40]!r}... is longer than {MAX_SKILL} characters")
    return normalized


def normalize_skills(skills: Iterable[str], field: str = "skills") -> tuple[str, ...]:
    """Normalise each skill and drop repeats, keeping the first occurrence's position."""
    if isinstance(skills, str):
        # A bare string would otherwise be read as a list of one-letter skills.
        raise InvalidInput(f"{field} must be a list of strings, not a single string")
    unique = tuple(dict.fromkeys(normalize_skill(skill) for skill in skills))
    if len(unique) > MAX_SKILLS:
        raise InvalidInput(f"{field} has {len(unique)} skills; at most {MAX_SKILLS} are allowed")
    return unique


def normalize_email(email: object) -> str:
    """A trimmed, lowercased email address; raises InvalidInput if it does not look like one."""
    if not isinstance(email, str):
        raise InvalidInput(f"email must be a string, not {type(email).__name__}")
    normalized = email.strip().lower()
    if len(normalized) > MAX_EMAIL or not _EMAIL.fullmatch(normalized):
        raise InvalidInput(f"invalid email {email!r}: expected something like name@example.com")
    return normalized


def optional_text(value: object, field: str, *, limit: int = MAX_TEXT) -> str | None:
    """A trimmed string, or None for None or a blank string; raises InvalidInput."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInput(f"{field} must be a string, not {type(value).__name__}")
    text = value.strip()
    if len(text) > limit:
        raise InvalidInput(f"{field} is {len(text)} characters long; the limit is {limit}")
    return text or None


def required_text(value: object, field: str, *, limit: int = MAX_TEXT) -> str:
    """A trimmed, non-empty string; raises InvalidInput."""
    text = optional_text(value, field, limit=limit)
    if text is None:
        raise InvalidInput(f"{field} must be a non-empty string")
    return text


def new_id(prefix: str) -> str:
    """A fresh record id such as ``cand-3f2a9c41d0b7``."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def check_id(value: object, kind: str) -> str:
    """A caller-chosen record id: a non-empty string of at most 100 characters."""
    return required_text(value, f"{kind} id", limit=MAX_ID)


def check_limit(limit: int | None) -> int:
    """A listing's ``limit`` as SQLite takes it (-1: no limit)."""
    if limit is None:
        return -1
    return check_count(limit, "limit", low=1, high=MAX_LIMIT)


def split_skills(
    required: Iterable[str], nice: Iterable[str]
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A requisition's normalised required and nice-to-have skills (a skill is one or the other)."""
    must = normalize_skills(required, "required_skills")
    could = normalize_skills(nice, "nice_to_have_skills")
    both = sorted(set(must) & set(could))
    if both:
        raise InvalidInput(f"skills {both} are listed as both required and nice-to-have")
    return must, could


def check_phone(phone: object) -> str | None:
    """A phone number of digits, spaces and ``+ ( ) . - x``, or None."""
    text = optional_text(phone, "phone")
    if text is not None and (not _PHONE.fullmatch(text) or sum(c.isdigit() for c in text) < 5):
        raise InvalidInput(f"invalid phone {phone!r}: expected something like +1 555 0100")
    return text


def check_linkedin_url(url: object) -> str | None:
    """An ``http(s)://...linkedin.com/...`` profile URL, or None."""
    text = optional_text(url, "linkedin_url", limit=500)
    if text is None:
        return None
    parts = urlsplit(text)
    host = (parts.hostname or "").lower()
    if parts.scheme not in ("http", "https") or not (
        host == "linkedin.com" or host.endswith(".linkedin.com")
    ):
        raise InvalidInput(
            f"invalid linkedin_url {url!r}: expected https://www.linkedin.com/in/<profile>"
        )
    return text


def check_years(years: object) -> float:
    """Years of experience: a number from 0 to 80."""
    if isinstance(years, bool) or not isinstance(years, (int, float)):
        raise InvalidInput(f"years_experience must be a number, not {type(years).__name__}")
    if not 0 <= years <= MAX_YEARS:
        raise InvalidInput(f"years_experience must be between 0 and {MAX_YEARS}, not {years}")
    return float(years)


def check_count(value: object, field: str, *, low: int, high: int) -> int:
    """An integer in ``[low, high]`` (booleans refused)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidInput(f"{field} must be an integer, not {type(value).__name__}")
    if not low <= value <= high:
        raise InvalidInput(f"{field} must be between {low} and {high}, not {value}")
    return value


# --------------------------------------------------------------------------------- times


def parse_time(value: object, field: str) -> datetime:
    """An aware UTC datetime from a datetime or an ISO-8601 string (naive means UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            raise InvalidInput(
                f"invalid {field} {value!r}: expected an ISO-8601 time like 2026-01-06T14:30:00Z"
            ) from None
    if not isinstance(value, datetime):
        raise InvalidInput(f"{field} must be a datetime or an ISO-8601 string")
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def check_slot(starts_at: object, ends_at: object) -> tuple[datetime, datetime]:
    """A valid interview slot: both times parse, the end is after the start, not too long."""
    start = parse_time(starts_at, "starts_at")
    end = parse_time(ends_at, "ends_at")
    if end <= start:
        raise InvalidInput(
            f"ends_at ({end.isoformat()}) must be after starts_at ({start.isoformat()})"
        )
    if end - start > MAX_INTERVIEW_LENGTH:
        raise InvalidInput(
            f"an interview may last at most {MAX_INTERVIEW_LENGTH}, not {end - start}"
        )
    return start, end


def format_time(moment: datetime) -> str:
    """Fixed-width UTC text that sorts like the times it stands for."""
    return moment.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="microseconds") + "Z"


def read_time(text: str) -> datetime:
    """Inverse of :func:`format_time`."""
    return datetime.fromisoformat(text)


def now_text() -> str:
    """The current time as stored in ``created_at`` / ``updated_at``."""
    return format_time(datetime.now(UTC))


SkillMatch = Literal["all", "any"]
