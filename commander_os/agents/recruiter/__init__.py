"""The recruiter agent's storage: the worked example of a custom schema on BaseStorage.

>>> from commander_os.agents.recruiter import RecruiterAgentStorage

See :mod:`commander_os.agents.recruiter.storage` for the store, :mod:`.schema` for its tables
and migrations, :mod:`.models` for its records and rules, and ``python -m
commander_os.agents.recruiter.storage_example`` for a walk through all of it with a relay.
"""

from __future__ import annotations

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
    allowed_moves,
    normalize_skill,
)
from commander_os.agents.recruiter.errors import (
    DuplicateEmail,
    InvalidInput,
    InvalidTransition,
    RecordNotFound,
    RecruiterError,
    SchedulingConflict,
)
from commander_os.agents.recruiter.storage import RecruiterAgentStorage

__all__ = [
    "PIPELINE",
    "UNSET",
    "Candidate",
    "CandidateMatch",
    "CandidateStatus",
    "DuplicateEmail",
    "Interview",
    "InterviewStatus",
    "InvalidInput",
    "InvalidTransition",
    "RecordNotFound",
    "RecruiterAgentStorage",
    "RecruiterError",
    "Requisition",
    "RequisitionStatus",
    "SchedulingConflict",
    "allowed_moves",
    "normalize_skill",
]
