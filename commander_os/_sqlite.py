"""SQLite for both sides: opening connections, every pragma, and the one write transaction.

Used by agent stores and by the relay's embedded central store alike, so it imports neither.

Connections run in autocommit mode (``isolation_level=None``) so that transactions are exactly
the ones we begin. Every write goes through :class:`write_transaction` (``BEGIN IMMEDIATE``),
because a deferred transaction that reads and then writes fails with "database is locked" when
another process wrote in between, whatever the busy timeout; it also translates the driver's
errors into ours (a lock held past ``busy_timeout`` is :class:`~commander_os.errors.StorageBusy`).

**Encryption at rest.** With an ``encryption_key`` the file is opened through SQLCipher
(``sqlcipher3``, a build of SQLite that encrypts every page of the database and of its WAL),
keyed before anything else reads it. Without one, the standard ``sqlite3`` module opens it, as
fast as ever. The two drivers raise their own exception classes, so code that catches database
errors catches the tuples :data:`Error`, :data:`DatabaseError`, :data:`OperationalError` and
:data:`IntegrityError` defined here, which hold both.

A wrong key must not change the file either. A connection that finds a ``-wal`` file opens it
before it reads (and fails to decrypt) the first page, and on close the last connection
checkpoints the WAL into the database and deletes it. So when a WAL is present, the key is first
tried on a read-only connection, which never checkpoints; a key that opened a file once is not
tried twice by the same process.

A file is never opened by the wrong driver: the first 16 bytes of a plain database are
``SQLite format 3\\0`` and those of an encrypted one are a random salt, so :func:`open_file`
tells the two apart before opening. That matters beyond the error message: two SQLite libraries
in one process do not see each other's POSIX locks, so a plain ``sqlite3`` connection that
opened (and closed) a live encrypted store could checkpoint and delete its WAL under it.

**Private at rest.** A database file is created with mode 0600 before SQLite opens it, and SQLite
gives the ``-wal``, ``-shm`` and ``-journal`` files it creates beside it the database's mode, so
none of them is readable by other users whatever the umask. A symbolic link at the database path
(or at its WAL, shared-memory or journal path) is refused unless ``follow_symlinks`` is set: a
link planted there would send every write to wherever it points. See :mod:`commander_os._files`.
"""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from commander_os._files import create_private_file, refuse_symlink
from commander_os.errors import EncryptionError, SchemaError, StorageBusy, StorageError

try:
    import sqlcipher3.dbapi2 as sqlcipher
except ImportError:  # the optional 'encryption' extra: only stores with a key need it
    sqlcipher = None

__all__ = [
    "DatabaseError",
    "Durability",
    "Error",
    "IntegrityError",
    "OperationalError",
    "Tuning",
    "connect",
    "is_busy_error",
    "is_encrypted",
    "open_file",
    "split_statements",
    "translate_error",
    "write_transaction",
]

Durability = Literal["full", "normal"]

_DRIVERS: tuple[Any, ...] = (sqlite3,) if sqlcipher is None else (sqlite3, sqlcipher)
#: Catch these, not ``sqlite3.Error``: an encrypted store's connection raises SQLCipher's.
Error: tuple[type[Exception], ...] = tuple(driver.Error for driver in _DRIVERS)
DatabaseError: tuple[type[Exception], ...] = tuple(driver.DatabaseError for driver in _DRIVERS)
OperationalError: tuple[type[Exception], ...] = tuple(
    driver.OperationalError for driver in _DRIVERS
)
IntegrityError: tuple[type[Exception], ...] = tuple(driver.IntegrityError for driver in _DRIVERS)

_SYNCHRONOUS = {"full": "FULL", "normal": "NORMAL"}
# Opening can race another process that is switching the file to WAL or recovering it; those
# return SQLITE_BUSY without calling the busy handler, so we retry them ourselves.
_OPEN_RETRY_SECONDS = 0.005
#: The first bytes of every unencrypted SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"
#: 64 hex digits are taken as a raw 256-bit key (no key derivation on open); anything else is
#: a passphrase, which SQLCipher stretches with PBKDF2 (about 0.1-0.2 s per connection).
_RAW_KEY = re.compile(r"[0-9A-Fa-f]{64}")
VERIFY_KEY = "SELECT count(*) FROM sqlite_master"
#: The files SQLite keeps beside a database (WAL mode, and rollback journal mode).
COMPANION_SUFFIXES = ("-wal", "-shm", "-journal")
# (path, sha256 of the key) pairs that opened in this process: see _check_key_read_only().
_good_keys: set[tuple[str, str]] = set()
_good_keys_lock = threading.Lock()


def is_busy_error(exc: BaseException) -> bool:
    """True for SQLite's "database is locked" / "database is busy" errors."""
    if not isinstance(exc, OperationalError):
        return False
    text = str(exc)
    return "database is locked" in text or "database is busy" in text


def translate_error(exc: BaseException, what: str) -> StorageError:
    """Map a foreign sqlite3 / SQLCipher error to ours, once, at the boundary."""
    if is_busy_error(exc):
        return StorageBusy(f"{what}: the database stayed locked by another connection ({exc})")
    return StorageError(f"{what}: {exc}")


@dataclass(frozen=True, slots=True)
class Tuning:
    """Optional pragmas for large databases (the relay's central store); None leaves SQLite's."""

    #: Page size of a new, unencrypted file (ignored once the file has pages).
    page_size: int | None = None
    #: Page cache per connection, in KiB.
    cache_kib: int | None = None
    #: Bytes of the file read through a memory map.
    mmap_bytes: int | None = None
    #: Temporary tables and indexes in memory rather than in files.
    temp_in_memory: bool = False


def connect(
    path: Path,
    *,
    durability: Durability = "full",
    busy_timeout: float = 30.0,
    read_only: bool = False,
    query_only: bool = False,
    encryption_key: str | None = None,
    tuning: Tuning | None = None,
    follow_symlinks: bool = False,
) -> sqlite3.Connection:
    """Open ``path`` with our pragmas: WAL, ``synchronous``, ``busy_timeout``, foreign keys.

    ``read_only`` opens the file read-only (it must exist); ``query_only`` keeps a read-write
    connection from writing (a reader of a database someone else writes). With
    ``encryption_key`` the database is opened (or created) encrypted through SQLCipher; see
    :func:`open_file`, which also says how a new file is made private and why a symbolic link
    at ``path`` is refused unless ``follow_symlinks``. Raises
    :class:`~commander_os.errors.EncryptionError` for a wrong or missing key, or a key given
    for a plain file; :class:`~commander_os.errors.StorageError` if the file cannot be opened
    as a database (or is a refused link), :class:`~commander_os.errors.StorageBusy` if it
    stays locked.
    """
    deadline = time.monotonic() + busy_timeout
    while True:
        try:
            conn = open_file(
                path,
                encryption_key=encryption_key,
                read_only=read_only,
                timeout=busy_timeout,
                follow_symlinks=follow_symlinks,
            )
            try:
                # Tuning first: a page size must be set before WAL mode writes the header.
                _apply_tuning(conn, tuning or Tuning(), encrypted=encryption_key is not None)
                _apply_pragmas(conn, durability, busy_timeout, read_only or query_only)
                if query_only:
                    conn.execute("PRAGMA query_only = ON")
            except BaseException:
                conn.close()
                raise
            return conn
        except Error as exc:
            if is_busy_error(exc) and time.monotonic() < deadline:
                time.sleep(_OPEN_RETRY_SECONDS)
                continue
            raise translate_error(exc, f"cannot open database {path}") from exc


def open_file(
    path: Path,
    *,
    encryption_key: str | None = None,
    read_only: bool = False,
    timeout: float = 30.0,
    cached_statements: int = 256,
    follow_symlinks: bool = False,
) -> sqlite3.Connection:
    """Open ``path`` in autocommit mode, usable from any thread, without our pragmas.

    With ``encryption_key`` (a passphrase, or 64 hex digits for a raw 256-bit key) the
    connection is SQLCipher's, keyed before its first read and checked with a read of
    ``sqlite_master``; a new file is created encrypted. The key never appears in a message.

    A missing file is created with mode 0600 first (unless ``read_only``), so the database and
    the files SQLite makes beside it are private. Unless ``follow_symlinks``, a symbolic link
    at ``path`` or at one of its companion files (``-wal``, ``-shm``, ``-journal``), dangling
    or not, raises :class:`~commander_os.errors.StorageError` before anything is opened.

    Raises :class:`~commander_os.errors.EncryptionError` ("wrong encryption key for ...",
    "... is encrypted: give encryption_key", "... is not encrypted") without writing to the
    file, and lets busy errors through (see :func:`is_busy_error`) for the caller to retry.
    """
    driver: Any = sqlite3
    if encryption_key is not None:  # before creating anything: a bad key or no SQLCipher
        literal = key_literal(encryption_key)
        driver = _sqlcipher()
    _prepare_path(path, read_only=read_only, follow_symlinks=follow_symlinks)
    encrypted = is_encrypted(path)
    target = _read_only_uri(path) if read_only else str(path)
    if encryption_key is None:
        if encrypted:
            raise EncryptionError(
                f"{path} is encrypted (or is not an SQLite database): give encryption_key"
            )
    elif encrypted is False:
        raise EncryptionError(f"{path} is not encrypted: open it without encryption_key")
    else:
        if not read_only:
            _check_key_read_only(path, encryption_key, literal, timeout)
    conn: sqlite3.Connection = driver.connect(
        target,
        timeout=timeout,
        isolation_level=None,
        check_same_thread=False,
        cached_statements=cached_statements,
        uri=read_only,
    )
    if encryption_key is None:
        return conn
    try:
        _unlock(conn, path, literal)
    except BaseException:
        conn.close()
        raise
    return conn


def _prepare_path(path: Path, *, read_only: bool, follow_symlinks: bool) -> None:
    """Refuse links at the database's paths (see :func:`open_file`); create it private."""
    if not follow_symlinks:
        for candidate in (str(path), *(f"{path}{suffix}" for suffix in COMPANION_SUFFIXES)):
            refuse_symlink(Path(candidate))
    if read_only:
        return
    try:
        create_private_file(Path(path))
    except OSError as exc:
        # A link (when followed) or a missing folder: SQLite's own open reports it next.
        if not os.path.lexists(path):
            raise StorageError(f"cannot create database {path}: {exc.strerror or exc}") from None


def _read_only_uri(path: Path) -> str:
    return f"file:{quote(str(path))}?mode=ro"


def _check_key_read_only(path: Path, key: str, literal: str, timeout: float) -> None:
    """Try ``key`` on a read-only connection first when ``path`` has a WAL (see the module)."""
    if not Path(f"{path}-wal").exists():
        return
    known = (str(Path(path).resolve()), hashlib.sha256(key.encode("utf-8")).hexdigest())
    with _good_keys_lock:
        if known in _good_keys:
            return
    probe: sqlite3.Connection = _sqlcipher().connect(
        _read_only_uri(path), timeout=timeout, check_same_thread=False, uri=True
    )
    try:
        _unlock(probe, path, literal)
    finally:
        probe.close()
    with _good_keys_lock:
        _good_keys.add(known)


def is_encrypted(path: Path) -> bool | None:
    """True if ``path`` does not start like a plain SQLite file, None if it is new or empty."""
    try:
        with open(path, "rb") as file:
            header = file.read(len(SQLITE_HEADER))
    except (FileNotFoundError, IsADirectoryError):
        return None
    if len(header) < len(SQLITE_HEADER):
        return None
    return header != SQLITE_HEADER


def key_literal(key: str) -> str:
    """``key`` as the SQL value of ``PRAGMA key``: a quoted passphrase or ``"x'<hex>'"``.

    Raises :class:`~commander_os.errors.EncryptionError` for an empty key or one holding a NUL
    (SQLite would cut it short there).
    """
    if not isinstance(key, str) or not key:
        raise EncryptionError("encryption_key must be a non-empty string")
    if "\x00" in key:
        raise EncryptionError("encryption_key must not contain NUL characters")
    if _RAW_KEY.fullmatch(key):
        return f"\"x'{key}'\""
    return "'" + key.replace("'", "''") + "'"


def _sqlcipher() -> Any:
    if sqlcipher is None:
        raise EncryptionError(
            "encryption_key needs SQLCipher, and the 'encryption' extra is not installed: "
            "pip install 'commander-os-storage[encryption]' (its sqlcipher3-binary wheels are "
            "for Linux x86_64; elsewhere install sqlcipher3, built against a system SQLCipher)"
        )
    return sqlcipher


def _unlock(conn: sqlite3.Connection, path: Path, literal: str) -> None:
    # A failed check is reported by our exception; SQLCipher would also print it to stderr.
    conn.execute("PRAGMA cipher_log_level = NONE")
    conn.execute(f"PRAGMA key = {literal}")
    try:
        conn.execute(VERIFY_KEY).fetchone()
    except DatabaseError as exc:
        if is_busy_error(exc):
            raise
        raise EncryptionError(f"wrong encryption key for {path}") from exc


def _apply_pragmas(
    conn: sqlite3.Connection, durability: Durability, busy_timeout: float, reader: bool
) -> None:
    conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
    if not reader:
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError(f"could not switch the database to WAL mode (got {mode!r})")
    conn.execute(f"PRAGMA synchronous = {_SYNCHRONOUS[durability]}")
    conn.execute("PRAGMA foreign_keys = ON")
    # Without it, a row that INSERT OR REPLACE evicts (through any UNIQUE constraint) fires no
    # DELETE trigger, so its removal would never reach the relay.
    conn.execute("PRAGMA recursive_triggers = ON")
    # Keeps the WAL from growing without bound between checkpoints under steady writes.
    conn.execute("PRAGMA journal_size_limit = 67108864")


def _apply_tuning(conn: sqlite3.Connection, tuning: Tuning, *, encrypted: bool) -> None:
    if tuning.page_size is not None and not encrypted:
        # Takes effect only on a new, empty file; SQLCipher files keep theirs (cipher_page_size
        # would then have to match on every open). Set before the first write of the header.
        conn.execute(f"PRAGMA page_size = {int(tuning.page_size)}")
    if tuning.cache_kib is not None:
        conn.execute(f"PRAGMA cache_size = -{int(tuning.cache_kib)}")
    if tuning.mmap_bytes is not None:
        conn.execute(f"PRAGMA mmap_size = {int(tuning.mmap_bytes)}")
    if tuning.temp_in_memory:
        conn.execute("PRAGMA temp_store = MEMORY")


class write_transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT``, or ``ROLLBACK`` when the block raises.

    The one place that opens a write transaction: it holds the write lock from its first
    statement. Failing to begin or to commit raises :class:`~commander_os.errors.StorageBusy`
    (locked past ``busy_timeout``) or :class:`~commander_os.errors.StorageError`; so do driver
    errors raised inside the block when ``translate`` is true (library code), while a caller's
    own block (``translate=False``) sees its exceptions unchanged. A block that committed by
    itself (a seed-style migration calling ``conn.commit()``) is left as it is.

    A class rather than a generator-based context manager: it runs on every ``set()``.
    """

    __slots__ = ("conn", "translate", "what")

    def __init__(
        self, conn: sqlite3.Connection, what: str = "write", *, translate: bool = True
    ) -> None:
        self.conn = conn
        self.what = what
        self.translate = translate

    def __enter__(self) -> sqlite3.Connection:
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except Error as exc:
            raise translate_error(exc, f"cannot start {self.what}") from exc
        return self.conn

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, _: Any
    ) -> None:
        conn = self.conn
        if exc is None:
            if conn.in_transaction:
                try:
                    conn.execute("COMMIT")
                except Error as error:
                    _rollback(conn)
                    raise translate_error(error, f"cannot commit {self.what}") from error
            return
        _rollback(conn)
        if self.translate and isinstance(exc, Error):
            raise translate_error(exc, f"{self.what} failed") from exc


def _rollback(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


def split_statements(script: str) -> list[str]:
    """Split a SQL script into complete statements (trigger bodies stay whole).

    Statements may share a line; the last one may omit its ``;``.
    """
    statements: list[str] = []
    start = 0
    for end, char in enumerate(script):
        # A ';' ends a statement unless it sits in a string, a comment or a trigger body.
        if char == ";" and sqlite3.complete_statement(script[start : end + 1]):
            _keep_statement(statements, script[start : end + 1])
            start = end + 1
    rest = script[start:]
    if rest.strip():
        # A newline first, so that a trailing "-- comment" cannot swallow the ';'.
        if not sqlite3.complete_statement(rest + "\n;"):
            raise SchemaError(
                f"incomplete SQL statement at the end of the script: {rest.strip()!r}"
            )
        _keep_statement(statements, rest)
    return statements


def _keep_statement(statements: list[str], statement: str) -> None:
    if statement.strip().strip(";").strip():
        statements.append(statement.strip())
