"""Validation of the names that end up in file paths, SQL identifiers and URLs.

Agent ids name files on disk and appear in every record on the relay, so they follow one
strict pattern everywhere: 1-64 characters of lowercase ASCII letters, digits, ``-``, ``_`` and
``.``, starting and ending with a letter or digit. Lowercase-only ASCII means no two ids can
collide by case or by Unicode look-alikes, and no id can name a path (no ``/``, no ``..`` as a
whole name, no NUL).

Table names are SQL identifiers: an ASCII letter or ``_`` followed by letters, digits or ``_``,
at most 64 characters, and never SQLite's own (``sqlite_*``) nor ours (leading ``_``).
"""

from __future__ import annotations

import re

from commander_os.errors import InvalidAgentId, InvalidKey

__all__ = [
    "AGENT_ID_PATTERN",
    "MAX_KEY_BYTES",
    "TABLE_NAME_PATTERN",
    "prefix_upper_bound",
    "validate_agent_id",
    "validate_key",
    "validate_table_name",
]

AGENT_ID_PATTERN = r"^[a-z0-9](?:[a-z0-9._-]{0,62}[a-z0-9])?$"
TABLE_NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,63}$"
#: Keys are stored and shipped as text; this bound keeps indexes and requests small.
MAX_KEY_BYTES = 1024

_AGENT_ID_RE = re.compile(AGENT_ID_PATTERN)
_TABLE_NAME_RE = re.compile(TABLE_NAME_PATTERN)


def validate_agent_id(agent_id: object) -> str:
    """Return ``agent_id`` if it is a valid agent id, else raise :class:`InvalidAgentId`.

    >>> validate_agent_id("recruiter-1")
    'recruiter-1'
    """
    if not isinstance(agent_id, str):
        raise InvalidAgentId(f"agent_id must be a string, not {type(agent_id).__name__}")
    if not _AGENT_ID_RE.fullmatch(agent_id):
        shown = agent_id if len(agent_id) <= 80 else agent_id[:80] + "..."
        raise InvalidAgentId(
            f"invalid agent_id {shown!r}: use 1-64 lowercase ASCII letters, digits, '-', '_' "
            "or '.', starting and ending with a letter or digit (for example 'my-agent')"
        )
    return agent_id


def validate_table_name(table: object) -> str:
    """Return ``table`` if it is an acceptable synced-table name, else raise ``ValueError``."""
    if not isinstance(table, str) or not _TABLE_NAME_RE.fullmatch(table):
        raise ValueError(
            f"invalid table name {table!r}: use an ASCII letter followed by up to 63 letters, "
            "digits or '_'"
        )
    if table.lower().startswith("sqlite"):
        raise ValueError(f"invalid table name {table!r}: names starting with 'sqlite' are reserved")
    return table


def validate_key(key: object, *, max_bytes: int = MAX_KEY_BYTES) -> str:
    """Return ``key`` if it is a non-empty string of at most ``max_bytes`` UTF-8 bytes.

    Raises :class:`InvalidKey` otherwise (which is also a ``ValueError``).
    """
    if type(key) is not str:
        if isinstance(key, str):
            return validate_key(str(key), max_bytes=max_bytes)
        raise InvalidKey(f"key must be a string, not {type(key).__name__}: {key!r:.80}")
    if not key:
        raise InvalidKey("key must be a non-empty string")
    if key.isascii():
        size = len(key)
    else:
        try:
            size = len(key.encode("utf-8"))
        except UnicodeEncodeError as exc:
            raise InvalidKey(f"key is not valid Unicode text: {key!r:.80}") from exc
    if size > max_bytes:
        raise InvalidKey(f"key is longer than {max_bytes} bytes: {key[:40]!r}...")
    if "\x00" in key:
        raise InvalidKey(f"key must not contain NUL characters: {key!r:.80}")
    return key


def prefix_upper_bound(prefix: str) -> str | None:
    """The smallest string greater than every string starting with ``prefix`` (or None).

    Lets ``key >= prefix AND key < bound`` use an index. Keys compare by code point (SQLite's
    BINARY collation on UTF-8 orders that way, and PostgreSQL's "C" collation), so
    incrementing the last code point below U+10FFFF is exact; None means "no upper bound".

    >>> prefix_upper_bound("a/")
    'a0'
    """
    while prefix:
        last = ord(prefix[-1]) + 1
        if 0xD800 <= last <= 0xDFFF:
            last = 0xE000  # surrogates cannot be stored; skip over them
        if last <= 0x10FFFF:
            return prefix[:-1] + chr(last)
        prefix = prefix[:-1]
    return None
