"""Agent tokens: HMAC-signed bearer tokens that say who an agent is and what it may read.

A token is three dot-separated parts, ``cos1.<claims>.<signature>``: the version tag, the
claims as base64url JSON, and ``HMAC-SHA256(secret, "cos1.<claims>")`` as base64url. The relay
needs no token database: whoever holds the relay secret can issue tokens, and the relay checks
them with the same secret. Claims::

    {"sub": "my-agent",        # the agent this token writes as (and always reads)
     "read": "*",              # "*" (every agent) or a list of further agents it may read
     "adm": false,             # admin: /metrics, the dashboard, reading every agent
     "iat": 1764210000,        # issued at (Unix seconds)
     "exp": null,              # expires at (Unix seconds), or null for never
     "jti": "9f2c...",         # token id: the rate limiter's key, and what logs may name
     "wp": "host-1."}          # optional, a host token: also writes every agent whose id
                               # starts with this prefix (one token for a host's agents)

>>> secret = b"0123456789abcdef0123456789abcdef"
>>> token = issue_token(secret, "my-agent", now=1764210000)
>>> verify_token(secret, token, now=1764210001).agent_id
'my-agent'

Signatures are compared with :func:`hmac.compare_digest` (constant time), and no error message
ever contains the token. The relay secret comes from ``relay.secret`` in ``relay.yaml`` (or the
``COMMANDER_OS_SECRET`` environment variable), else from ``<agent_storage_dir>/relay.secret``,
which :func:`load_secret` creates (mode 0600) the first time the relay or ``commander-os token
create`` needs it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson

from commander_os._files import make_private_dir, warn_if_exposed
from commander_os.config import RelayConfig
from commander_os.errors import ConfigError, InvalidToken
from commander_os.identifiers import AGENT_ID_PATTERN, validate_agent_id

__all__ = [
    "MAX_READ_AGENTS",
    "MIN_SECRET_CHARS",
    "SECRET_FILE_NAME",
    "TOKEN_PREFIX",
    "TokenClaims",
    "describe_expiry",
    "issue_token",
    "load_secret",
    "parse_expiry",
    "read_secret_file",
    "secret_file",
    "verify_token",
]

#: The version tag every token starts with.
TOKEN_PREFIX = "cos1"  # noqa: S105 (a format tag, not a password)
#: Name of the generated secret file inside ``agent_storage_dir``.
SECRET_FILE_NAME = "relay.secret"  # noqa: S105 (a file name)
#: A configured secret shorter than this is refused (a generated one has 43 characters).
MIN_SECRET_CHARS = 32
#: Most agents a read list may name (with the token's own agent, one query's agent filter).
MAX_READ_AGENTS = 999
#: Longest token accepted; anything longer is garbage, refused before any work.
MAX_TOKEN_CHARS = 64 * 1024

_B64URL = re.compile(r"[A-Za-z0-9_-]+")
_AGENT_ID = re.compile(AGENT_ID_PATTERN)
#: A host token's prefix: the start of an agent id (never empty: that would be every agent).
_WRITE_PREFIX = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
_DURATION = re.compile(r"(\d{1,9})([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass(frozen=True, slots=True)
class TokenClaims:
    """What a verified token says: who it is, what else it may read, admin or not."""

    agent_id: str
    #: Further agents it may read; ``None`` means every agent.
    read: frozenset[str] | None
    admin: bool
    issued_at: int
    expires_at: int | None
    token_id: str
    #: A host token's prefix: it also writes every agent whose id starts with it.
    write_prefix: str | None = None

    def can_write(self, agent_id: str) -> bool:
        """True if this token may write (and delete) ``agent_id``'s records."""
        if agent_id == self.agent_id:
            return True
        return self.write_prefix is not None and agent_id.startswith(self.write_prefix)

    def can_read(self, agent_id: str) -> bool:
        """True if this token may read ``agent_id``'s records."""
        return self.admin or self.read is None or agent_id == self.agent_id or agent_id in self.read

    def readable(self) -> frozenset[str] | None:
        """Every agent this token may read, or ``None`` for all of them."""
        if self.admin or self.read is None:
            return None
        return self.read | {self.agent_id}


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    """Strict base64url: the alphabet only, and the canonical encoding of what it decodes to.

    Without the canonical check, two spellings of the last character decode to the same bytes,
    and a token with one character changed would still verify.
    """
    if not _B64URL.fullmatch(text):
        raise InvalidToken("malformed token")
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise InvalidToken("malformed token") from None
    if _b64encode(raw) != text:
        raise InvalidToken("malformed token")
    return raw


def _sign(secret: bytes, signed_part: str) -> bytes:
    return hmac.new(secret, signed_part.encode("ascii"), hashlib.sha256).digest()


def issue_token(
    secret: bytes,
    agent_id: str,
    *,
    read: list[str] | None = None,
    admin: bool = False,
    expires_at: int | None = None,
    now: float | None = None,
    write_prefix: str | None = None,
) -> str:
    """A signed token for ``agent_id``.

    ``read`` lists the further agents it may read (``None``: every agent). ``expires_at`` is
    Unix seconds (``None``: never). ``write_prefix`` makes a host token: it also writes every
    agent whose id starts with the prefix. Raises ``InvalidAgentId`` for a bad id and
    ``ValueError`` for a read list that is too long, an expiry in the past or a bad prefix.
    """
    validate_agent_id(agent_id)
    if write_prefix is not None and not _WRITE_PREFIX.fullmatch(write_prefix):
        raise ValueError(
            f"write prefix {write_prefix!r}: 1 to 63 characters of an agent id (a-z, 0-9, "
            "'.', '_', '-'), starting with a letter or digit"
        )
    issued = int(time.time() if now is None else now)
    read_claim: str | list[str] = "*"
    if read is not None:
        read_claim = sorted({validate_agent_id(agent) for agent in read} - {agent_id})
        if len(read_claim) > MAX_READ_AGENTS:
            raise ValueError(f"a token may name at most {MAX_READ_AGENTS} readable agents")
    if expires_at is not None and expires_at <= issued:
        raise ValueError("the expiry is not in the future")
    claims = {
        "sub": agent_id,
        "read": read_claim,
        "adm": admin,
        "iat": issued,
        "exp": expires_at,
        "jti": secrets.token_hex(8),
    }
    if write_prefix is not None:
        claims["wp"] = write_prefix
    signed_part = f"{TOKEN_PREFIX}.{_b64encode(orjson.dumps(claims))}"
    return f"{signed_part}.{_b64encode(_sign(secret, signed_part))}"


def verify_token(secret: bytes, token: str, *, now: float | None = None) -> TokenClaims:
    """The claims of ``token`` if it was signed with ``secret`` and has not expired.

    Raises :class:`~commander_os.errors.InvalidToken` otherwise; the message never contains
    the token.
    """
    if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or token.count(".") != 2:
        raise InvalidToken("malformed token")
    prefix, payload, signature = token.split(".")
    if prefix != TOKEN_PREFIX:
        raise InvalidToken("malformed token (unknown version)")
    given = _b64decode(signature)
    expected = _sign(secret, f"{prefix}.{payload}")
    if not hmac.compare_digest(expected, given):
        raise InvalidToken("token signature does not match this relay's secret")
    claims = _parse_claims(_b64decode(payload))
    moment = time.time() if now is None else now
    if claims.expires_at is not None and moment >= claims.expires_at:
        raise InvalidToken("token has expired")
    return claims


def _parse_claims(raw: bytes) -> TokenClaims:
    """Claims of a correctly signed token; still checked, as a secret may have been misused."""
    try:
        claims: Any = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidToken("malformed token claims") from None
    if not isinstance(claims, dict):
        raise InvalidToken("malformed token claims")
    sub, read, adm = claims.get("sub"), claims.get("read"), claims.get("adm")
    iat, exp, jti = claims.get("iat"), claims.get("exp"), claims.get("jti")
    prefix = claims.get("wp")
    valid = (
        (prefix is None or (isinstance(prefix, str) and _WRITE_PREFIX.fullmatch(prefix)))
        and isinstance(sub, str)
        and _AGENT_ID.fullmatch(sub) is not None
        and (read == "*" or _is_agent_list(read))
        and isinstance(adm, bool)
        and type(iat) is int
        and (exp is None or type(exp) is int)
        and isinstance(jti, str)
        and 0 < len(jti) <= 64
    )
    if not valid:
        raise InvalidToken("malformed token claims")
    return TokenClaims(
        agent_id=str(sub),
        read=None if read == "*" else frozenset(cast(list[str], read)),
        admin=bool(adm),
        issued_at=int(cast(int, iat)),
        expires_at=exp,
        token_id=str(jti),
        write_prefix=cast(str | None, prefix),
    )


def _is_agent_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) <= MAX_READ_AGENTS
        and all(isinstance(item, str) and _AGENT_ID.fullmatch(item) for item in value)
    )


def parse_expiry(text: str, *, now: float | None = None) -> int:
    """Unix seconds for ``30d``, ``12h``, ``90m``, ``2w``, ``45s`` from now, or an ISO time.

    An ISO time without a zone is taken as UTC. Raises ``ValueError`` for anything else or a
    moment that is not in the future.
    """
    moment = time.time() if now is None else now
    text = text.strip()
    match = _DURATION.fullmatch(text)
    if match:
        seconds = int(match.group(1)) * _UNITS[match.group(2)]
        if seconds <= 0:
            raise ValueError(f"expiry {text!r} is not in the future")
        return int(moment) + seconds
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            f"expiry {text!r}: use a duration such as 30d, 12h, 90m, 2w, or an ISO time "
            "such as 2027-01-31T00:00:00Z"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    expires = int(when.timestamp())
    if expires <= moment:
        raise ValueError(f"expiry {text!r} is not in the future")
    return expires


# ---------------------------------------------------------------------------- the secret


def secret_file(config: RelayConfig) -> Path:
    """Where the generated relay secret lives: ``<agent_storage_dir>/relay.secret``."""
    return config.agent_storage_dir / SECRET_FILE_NAME


def _checked(text: str, source: str) -> bytes:
    text = text.strip()
    if len(text) < MIN_SECRET_CHARS:
        raise ConfigError(
            f"{source}: the relay secret must be at least {MIN_SECRET_CHARS} characters; "
            "generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"
        )
    return text.encode("utf-8")


def read_secret_file(path: Path) -> bytes:
    """The secret stored in ``path``; raises :class:`ConfigError` if missing or unusable.

    Warns (:class:`~commander_os.errors.InsecureFileWarning`) when other users may read it.
    """
    warn_if_exposed(path, "relay secret")
    try:
        return _checked(path.read_text(encoding="utf-8"), str(path))
    except FileNotFoundError:
        raise ConfigError(f"{path}: relay secret file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the relay secret: {exc}") from None


def _create_secret_file(path: Path) -> bytes:
    make_private_dir(path.parent)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return read_secret_file(path)
    text = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text + "\n")
        out.flush()
        os.fsync(out.fileno())
    return text.encode("utf-8")


def load_secret(config: RelayConfig, *, create: bool = False) -> bytes:
    """The relay secret: ``config.secret`` if set, else the secret file (made if ``create``).

    The relay and ``commander-os token create`` both call this, so they agree on the secret.
    Several relays sharing one PostgreSQL store must share one secret: set ``relay.secret``
    (or ``COMMANDER_OS_SECRET``) on each. Raises :class:`ConfigError` when there is none.
    """
    if config.secret:
        return _checked(config.secret, "relay.secret")
    path = secret_file(config)
    if create and not path.exists():
        return _create_secret_file(path)
    return read_secret_file(path)


def describe_expiry(claims: TokenClaims) -> str:
    """``never`` or the expiry as an ISO time, for the CLI."""
    if claims.expires_at is None:
        return "never"
    return datetime.fromtimestamp(claims.expires_at, tz=UTC).isoformat()
