"""The one exception tree of Commander OS Storage.

Every error the package raises on purpose derives from :class:`CommanderStorageError`, so
callers can catch everything of ours with one ``except``. Where a standard exception says the
same thing (a missing key, a value of the wrong type, a bad argument), ours also derives from it,
so ``except ValueError`` keeps working.

::

    CommanderStorageError
    ├── ConfigError                    bad or unreadable config file / environment (+ ValueError)
    ├── InvalidAgentId                 agent id does not match AGENT_ID_PATTERN   (+ ValueError)
    ├── InvalidKey                     empty, non-string or oversized key          (+ ValueError)
    ├── ValueTooLarge                  encoded value over the size limit           (+ ValueError)
    ├── StorageError                   the local SQLite store
    │   ├── StorageClosed              the store was closed
    │   ├── StorageBusy                the database stayed locked past busy_timeout
    │   ├── SchemaError                migrations failed or are inconsistent
    │   │   └── SchemaTooNew           the database was written by newer code
    │   ├── EncryptionError            wrong or missing encryption key
    │   └── BackupError                a backup file that is damaged, incomplete or not ours
    ├── RelayError                     talking to the relay
    │   ├── RelayUnavailable           connection refused / timed out / 5xx / 429
    │   ├── RelayRejected              the relay refused the request (4xx); carries status
    │   │   └── RelayAuthError         401 / 403
    │   └── RelayProtocolError         the relay answered something we cannot read
    ├── CentralStoreError              the relay's central store (SQLite / PostgreSQL)
    │   ├── CentralStoreUnavailable    cannot be reached or is closed (the relay answers 503)
    │   ├── InvalidCursor              a query cursor this relay did not produce (+ ValueError)
    │   │   └── CursorExpired          a cursor older than the retention horizon: resync
    │   └── QueryTimeout               a query ran past the time budget
    ├── InvalidToken                   relay token malformed, forged, expired       (+ ValueError)
    └── InsecureFileWarning            a key, token or secret file others can read (+ UserWarning)

:class:`InsecureFileWarning` is issued with :func:`warnings.warn`, never raised: filter it like
any warning.

Agents built on the library grow their own branches under the root (the recruiter example's
``RecruiterError`` lives in :mod:`commander_os.agents.recruiter.errors`).

Values that cannot be encoded as JSON raise the standard :class:`TypeError`, naming the key.
"""

from __future__ import annotations

__all__ = [
    "BackupError",
    "CentralStoreError",
    "CentralStoreUnavailable",
    "CommanderStorageError",
    "ConfigError",
    "CursorExpired",
    "EncryptionError",
    "InsecureFileWarning",
    "InvalidAgentId",
    "InvalidCursor",
    "InvalidKey",
    "InvalidToken",
    "QueryTimeout",
    "RelayAuthError",
    "RelayError",
    "RelayProtocolError",
    "RelayRejected",
    "RelayUnavailable",
    "SchemaError",
    "SchemaTooNew",
    "StorageBusy",
    "StorageClosed",
    "StorageError",
    "ValueTooLarge",
]


class CommanderStorageError(Exception):
    """Root of every error raised on purpose by ``commander_os``."""


class ConfigError(CommanderStorageError, ValueError):
    """A config file or environment variable is missing, unreadable or invalid.

    The message names the file, the key and what is wrong with it.
    """


class InvalidAgentId(CommanderStorageError, ValueError):
    """An agent id is not a short lowercase name (see ``AGENT_ID_PATTERN``)."""


class InvalidKey(CommanderStorageError, ValueError):
    """A key is not a non-empty string within the size limit."""


class ValueTooLarge(CommanderStorageError, ValueError):
    """An encoded value is larger than the configured limit."""


class StorageError(CommanderStorageError):
    """Something went wrong in the local SQLite store."""


class StorageClosed(StorageError):
    """The store was used after ``close()``."""


class StorageBusy(StorageError):
    """The database stayed locked by another connection for longer than ``busy_timeout``."""


class SchemaError(StorageError):
    """A migration failed, or the declared migrations are inconsistent."""


class SchemaTooNew(SchemaError):
    """The database's schema version is newer than the code opening it knows."""


class EncryptionError(StorageError):
    """The database could not be opened with the given encryption key (or lack of one)."""


class BackupError(StorageError):
    """A backup file is damaged, incomplete, not a backup, or does not match its manifest."""


class RelayError(CommanderStorageError):
    """Talking to the relay failed."""


class RelayUnavailable(RelayError):
    """The relay could not be reached or asked us to come back later (5xx, 429, timeouts)."""


class RelayRejected(RelayError):
    """The relay refused the request; retrying the same request will not help.

    ``status`` is the HTTP status code and ``detail`` the relay's explanation.
    """

    def __init__(self, message: str, *, status: int, detail: object = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class RelayAuthError(RelayRejected):
    """The relay refused our credentials (401) or the action (403)."""


class RelayProtocolError(RelayError):
    """The relay's answer could not be understood."""


class CentralStoreError(CommanderStorageError):
    """Something went wrong in the relay's central store."""


class CentralStoreUnavailable(CentralStoreError):
    """The central store cannot be reached or is closed; the relay answers 503."""


class InvalidCursor(CentralStoreError, ValueError):
    """A query cursor was not produced by this relay (or was tampered with)."""


class CursorExpired(InvalidCursor):
    """A cursor older than the change log's retention horizon: what it would have missed was
    swept. The reader must start over (without a cursor); the relay answers 410."""


class QueryTimeout(CentralStoreError):
    """A query ran past the store's time budget; narrow it (agent_id, table) and retry."""


class InvalidToken(CommanderStorageError, ValueError):
    """A relay token is malformed, has a bad signature, or has expired.

    The message never contains the token itself.
    """


class InsecureFileWarning(CommanderStorageError, UserWarning):
    """A key, token or secret file is accessible by other users (``chmod 600`` it)."""
