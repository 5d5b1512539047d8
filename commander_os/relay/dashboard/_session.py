"""Dashboard sessions: a login exchanges a token for a signed, HttpOnly, SameSite=Strict cookie.

The cookie holds the token's claims (never the token), signed with a key derived from the relay
secret (``itsdangerous``), so every relay sharing the secret accepts it and the relay keeps no
session table. A session lasts ``SESSION_SECONDS`` or until its token expires, whichever is
first. Logging out revokes the session id on this relay (kept until the session would have
expired) and clears the cookie.

CSRF: every state-changing form carries a token bound to the session (an HMAC of its id); the
login form, before any session exists, a random value also set as a short-lived cookie (double
submit). SameSite=Strict cookies are not sent by other sites' requests in the first place.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from itsdangerous import BadSignature, URLSafeTimedSerializer

from commander_os.relay._auth import TokenClaims

__all__ = [
    "LOGIN_COOKIE",
    "SESSION_COOKIE",
    "SESSION_SECONDS",
    "Session",
    "Sessions",
    "new_login_nonce",
    "same_nonce",
]

SESSION_COOKIE = "cos_session"
LOGIN_COOKIE = "cos_login"
#: Longest a dashboard session lives.
SESSION_SECONDS = 12 * 3600
#: Revoked session ids remembered at most (the oldest are dropped; they expire anyway).
MAX_REVOKED = 10_000
_SALT = "commander-os dashboard session"


@dataclass(frozen=True, slots=True)
class Session:
    """A signed-in operator: the claims of the token they logged in with."""

    sid: str
    claims: TokenClaims
    expires_at: int


def _derive(secret: bytes, purpose: bytes) -> bytes:
    """A key for one purpose: the relay secret itself never signs a cookie."""
    return hmac.new(secret, b"commander-os dashboard: " + purpose, hashlib.sha256).digest()


class Sessions:
    """Issues and checks session cookies and CSRF tokens (``secret`` None: auth is off)."""

    def __init__(self, secret: bytes | None, *, clock: Callable[[], float] = time.time) -> None:
        self.enabled = secret is not None
        secret = secret or secrets.token_bytes(32)
        self._serializer = URLSafeTimedSerializer(_derive(secret, b"session"), salt=_SALT)
        self._csrf_key = _derive(secret, b"csrf")
        self._revoked: dict[str, int] = {}
        self._clock = clock

    def issue(self, claims: TokenClaims) -> tuple[str, int]:
        """A session cookie value for ``claims`` and its lifetime in seconds."""
        now = int(self._clock())
        expires = now + SESSION_SECONDS
        if claims.expires_at is not None:
            expires = min(expires, claims.expires_at)
        payload = {
            "sid": secrets.token_urlsafe(16),
            "sub": claims.agent_id,
            "read": None if claims.read is None else sorted(claims.read),
            "adm": claims.admin,
            "iat": claims.issued_at,
            "exp": expires,
            "jti": claims.token_id,
        }
        return self._serializer.dumps(payload), max(1, expires - now)

    def read(self, value: str | None) -> Session | None:
        """The session a cookie value holds, or None (missing, forged, expired, revoked)."""
        if not value or len(value) > 8192:
            return None
        try:
            payload: Any = self._serializer.loads(value, max_age=SESSION_SECONDS)
        except BadSignature:
            return None
        try:
            session = Session(
                sid=str(payload["sid"]),
                claims=TokenClaims(
                    agent_id=str(payload["sub"]),
                    read=None if payload["read"] is None else frozenset(payload["read"]),
                    admin=bool(payload["adm"]),
                    issued_at=int(payload["iat"]),
                    expires_at=int(payload["exp"]),
                    token_id=str(payload["jti"]),
                ),
                expires_at=int(payload["exp"]),
            )
        except (KeyError, TypeError, ValueError):
            return None
        if session.expires_at <= self._clock() or session.sid in self._revoked:
            return None
        return session

    def revoke(self, session: Session) -> None:
        """Refuse ``session`` from now on (logout)."""
        now = self._clock()
        self._revoked = {sid: exp for sid, exp in self._revoked.items() if exp > now}
        if len(self._revoked) >= MAX_REVOKED:
            self._revoked.pop(next(iter(self._revoked)))
        self._revoked[session.sid] = session.expires_at

    def csrf_token(self, session: Session) -> str:
        """The CSRF token of ``session``'s forms."""
        return hmac.new(self._csrf_key, session.sid.encode(), hashlib.sha256).hexdigest()

    def check_csrf(self, session: Session, given: str | None) -> bool:
        """Whether ``given`` is ``session``'s CSRF token (constant time)."""
        return given is not None and hmac.compare_digest(self.csrf_token(session), given)


def new_login_nonce() -> str:
    """The login form's CSRF value (also set as the ``LOGIN_COOKIE``)."""
    return secrets.token_urlsafe(24)


def same_nonce(cookie: str | None, form: str | None) -> bool:
    """Whether the login form came back with the cookie's value (constant time)."""
    return bool(cookie) and bool(form) and hmac.compare_digest(str(cookie), str(form))
