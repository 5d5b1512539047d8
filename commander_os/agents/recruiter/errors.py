"""The recruiter agent's errors: one branch under the package's root error.

::

    CommanderStorageError
    └── RecruiterError                 the recruiter agent's store refused an operation
        ├── RecordNotFound             unknown candidate / requisition / interview id  (+ KeyError)
        ├── InvalidInput               bad email, date, score, skill, status, ...  (+ ValueError)
        │   └── DuplicateEmail         another candidate already has this email
        ├── InvalidTransition          a status change the workflow does not allow
        └── SchedulingConflict         the interviewer or candidate is already booked then
"""

from __future__ import annotations

from commander_os.errors import CommanderStorageError

__all__ = [
    "DuplicateEmail",
    "InvalidInput",
    "InvalidTransition",
    "RecordNotFound",
    "RecruiterError",
    "SchedulingConflict",
]


class RecruiterError(CommanderStorageError):
    """The recruiter agent's store refused an operation; nothing was changed."""


class RecordNotFound(RecruiterError, KeyError):
    """No record of that kind has that id. ``kind`` and ``record_id`` say which."""

    def __init__(self, kind: str, record_id: object) -> None:
        super().__init__(f"no {kind} with id {record_id!r}")
        self.kind = kind
        self.record_id = record_id

    def __str__(self) -> str:
        # KeyError would render the message with quotes around it.
        return str(self.args[0])


class InvalidInput(RecruiterError, ValueError):
    """An argument is not acceptable (bad email, unparsable date, score out of range, ...)."""


class DuplicateEmail(InvalidInput):
    """Another candidate already has this email; ``existing_id`` is that candidate's id."""

    def __init__(self, message: str, *, existing_id: str) -> None:
        super().__init__(message)
        self.existing_id = existing_id


class InvalidTransition(RecruiterError):
    """A status change the workflow does not allow (``current`` -> ``requested``)."""

    def __init__(self, message: str, *, current: str, requested: str) -> None:
        super().__init__(message)
        self.current = current
        self.requested = requested


class SchedulingConflict(RecruiterError):
    """The interviewer or the candidate already has an interview overlapping the slot.

    ``conflicting_id`` is the id of that interview.
    """

    def __init__(self, message: str, *, conflicting_id: str) -> None:
        super().__init__(message)
        self.conflicting_id = conflicting_id
