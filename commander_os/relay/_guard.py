"""Who may do what on the relay: token checks, the read ACL, and the request-rate limit.

:class:`Guard` turns a request's ``Authorization`` header into a :class:`Caller` (or a 401 /
429 :class:`~commander_os.relay._body.RequestProblem`); the endpoints then ask the caller
``check_write``, ``restrict_query``, ``may_read`` and ``require_admin`` (403 when refused).
With ``relay.auth`` off every request is an unrestricted caller, rate-limited per client address.

Nothing here puts a token into a message: errors say what was wrong, never what was sent.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import orjson

from commander_os.errors import InvalidToken
from commander_os.protocol import QueryRequest
from commander_os.relay._auth import TokenClaims, verify_token
from commander_os.relay._body import RequestProblem

__all__ = ["Caller", "Guard", "RateLimiter", "claimed_agents"]

#: Distinct callers the rate limiter remembers; the least recently seen are forgotten first.
MAX_TRACKED_CALLERS = 10_000
_CHALLENGE = {"www-authenticate": 'Bearer realm="commander-os-relay"'}


def _forbidden(detail: str) -> RequestProblem:
    return RequestProblem(403, "forbidden", detail)


@dataclass(frozen=True, slots=True)
class Caller:
    """The verified identity behind one request; ``claims`` is ``None`` when auth is off."""

    claims: TokenClaims | None

    def check_write(self, agent_ids: Iterable[str]) -> None:
        """403 unless every record written belongs to the token's own agent."""
        if self.claims is None:
            return
        own = self.claims.agent_id
        for agent_id in agent_ids:
            if agent_id != own:
                raise _forbidden(
                    f"this token writes as {own!r} only; the request carries records of another "
                    "agent, so none of it was applied"
                )

    def may_read(self, agent_id: str) -> bool:
        """True if the caller may read ``agent_id``'s records."""
        return self.claims is None or self.claims.can_read(agent_id)

    def restrict_query(self, request: QueryRequest) -> QueryRequest:
        """``request`` limited to what the caller may read; 403 if it names another agent."""
        readable = None if self.claims is None else self.claims.readable()
        if readable is None:
            return request
        asked = request.agent_ids()
        if asked is None:
            # No agent filter: "every agent I may read", never everyone.
            return request.model_copy(update={"agent_id": sorted(readable)})
        refused = [agent for agent in asked if agent not in readable]
        if refused:
            raise _forbidden(f"this token may not read agent {refused[0]!r}")
        return request

    def require_admin(self) -> None:
        """403 unless the caller holds an admin token (or auth is off)."""
        if self.claims is not None and not self.claims.admin:
            raise _forbidden(
                "this endpoint needs an admin token (commander-os token create --admin)"
            )


class RateLimiter:
    """A token bucket per caller: ``rate`` requests per second, bursts up to ``burst``.

    >>> limiter = RateLimiter(rate=1.0, burst=1, clock=lambda: 0.0)
    >>> limiter.wait_time("a"), limiter.wait_time("a") > 0
    (0.0, True)
    """

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = MAX_TRACKED_CALLERS,
    ) -> None:
        self.rate = rate
        self.burst = max(1.0, rate if burst is None else burst)
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def wait_time(self, key: str) -> float:
        """0.0 and one request taken from ``key``'s bucket, or the seconds until one is due."""
        now = self._clock()
        tokens, last = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens >= 1.0:
            self._remember(key, (tokens - 1.0, now))
            return 0.0
        self._remember(key, (tokens, now))
        return (1.0 - tokens) / self.rate

    def _remember(self, key: str, bucket: tuple[float, float]) -> None:
        self._buckets[key] = bucket
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)


class Guard:
    """Authenticates requests for one relay app.

    ``secret`` is ``None`` when auth is off. ``rate`` (requests per second per token, or per
    client address without auth) switches the rate limit on.
    """

    def __init__(
        self,
        secret: bytes | None,
        *,
        rate: float | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.secret = secret
        self.limiter = RateLimiter(rate) if rate else None
        self._clock = clock

    @property
    def enabled(self) -> bool:
        """True when requests need a token."""
        return self.secret is not None

    def admit(self, token: str | None, client: str | None) -> Caller:
        """The caller behind ``token``; 401 without a valid one (auth on), 429 past the rate."""
        return self.admit_claims(self._claims(token) if self.secret is not None else None, client)

    def admit_claims(self, claims: TokenClaims | None, client: str | None) -> Caller:
        """The caller holding ``claims`` (already verified, e.g. a dashboard session's); 429
        past the rate."""
        caller = Caller(claims)
        if self.limiter is not None:
            key = f"token:{caller.claims.token_id}" if caller.claims else f"addr:{client}"
            wait = self.limiter.wait_time(key)
            if wait > 0:
                raise RequestProblem(
                    429,
                    "rate_limited",
                    f"more than {self.limiter.rate:g} requests per second; retry later",
                    headers={"retry-after": str(max(1, math.ceil(wait)))},
                )
        return caller

    def _claims(self, token: str | None) -> TokenClaims:
        assert self.secret is not None
        if not token:
            raise RequestProblem(
                401,
                "unauthorized",
                "this relay needs 'Authorization: Bearer <token>' (commander-os token create)",
                headers=_CHALLENGE,
            )
        try:
            return verify_token(self.secret, token, now=self._clock())
        except InvalidToken as exc:
            raise RequestProblem(401, "unauthorized", str(exc), headers=_CHALLENGE) from None


def claimed_agents(body: bytes) -> set[str] | None:
    """Every ``agent_id`` string a write body names (top level and per record), if readable.

    Lets the relay answer 403 to a mixed batch before the models call it malformed; ``None``
    when the body is not plain JSON (the models then decide, and the relay checks again).
    """
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    found: set[str] = set()
    items = [document]
    if isinstance(document, dict) and isinstance(document.get("records"), list):
        items += document["records"]
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("agent_id"), str):
            found.add(item["agent_id"])
    return found
