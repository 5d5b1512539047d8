"""Who may do what on the relay: token checks, the read ACL, and the limits per caller.

:class:`Guard` turns a request's ``Authorization`` header into a :class:`Caller` (or a 401 /
429 :class:`~commander_os.relay._body.RequestProblem`); the endpoints then ask the caller
``check_write``, ``restrict_query``, ``may_read`` and ``require_admin`` (403 when refused), and
run queries in ``caller.query_slot()``.

Three limits, each answering 429 with ``Retry-After``:

* **Requests per second** (``limits.requests_per_second``) per *agent*: every token of one
  agent shares its bucket. Without auth there is no agent to go by: per client address.
* **Failed authentications** (``limits.auth_failures_per_minute``) per client address, in a
  bucket of their own: a presented token that does not verify takes one; an address whose
  bucket is empty gets 429 for every token it presents until it refills, so guessing costs time.
* **Concurrent queries** (``limits.max_concurrent_queries``) per token (per client address
  without auth): a query past it is refused at once rather than queued behind the others.

Client addresses are the socket's, or what a trusted proxy forwarded (:mod:`._http_guard`).
Nothing here puts a token into a message: errors say what was wrong, never what was sent.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import orjson

from commander_os.config import LimitsConfig
from commander_os.errors import InvalidToken
from commander_os.protocol import QueryRequest
from commander_os.relay._auth import TokenClaims, verify_token
from commander_os.relay._body import RequestProblem

__all__ = ["Caller", "Guard", "QuerySlots", "RateLimiter", "bearer_token", "claimed_agents"]

#: Distinct callers the rate limiter remembers; the least recently seen are forgotten first.
MAX_TRACKED_CALLERS = 10_000
_CHALLENGE = {"www-authenticate": 'Bearer realm="commander-os-relay"'}


def _forbidden(detail: str) -> RequestProblem:
    return RequestProblem(403, "forbidden", detail)


def _too_many(error: str, detail: str, wait: float) -> RequestProblem:
    return RequestProblem(429, error, detail, headers={"retry-after": str(max(1, math.ceil(wait)))})


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, if it is one."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


class QuerySlots:
    """At most ``limit`` queries at once per caller key; one more is refused (429), not queued.

    Queries of one token cannot take every reader of the store and starve everyone else.
    Used from the event loop only.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._running: dict[str, int] = {}

    @contextmanager
    def hold(self, key: str) -> Iterator[None]:
        """One query slot of ``key`` for the block; 429 if all are taken."""
        running = self._running.get(key, 0)
        if running >= self.limit:
            raise _too_many(
                "too_many_queries",
                f"{self.limit} queries of this caller are running already; wait for one to "
                "finish (limits.max_concurrent_queries)",
                1.0,
            )
        self._running[key] = running + 1
        try:
            yield
        finally:
            left = self._running[key] - 1
            if left:
                self._running[key] = left
            else:
                del self._running[key]


@dataclass(frozen=True, slots=True)
class Caller:
    """The verified identity behind one request; ``claims`` is ``None`` when auth is off.

    ``client`` is the client's address; ``slots`` the app's concurrent-query limit.
    """

    claims: TokenClaims | None
    client: str | None = None
    slots: QuerySlots | None = None

    @property
    def quota_key(self) -> str:
        """Whose concurrent queries this request counts against: its token, or its address."""
        return f"token:{self.claims.token_id}" if self.claims else f"addr:{self.client}"

    @contextmanager
    def query_slot(self) -> Iterator[None]:
        """Hold one of this caller's concurrent-query slots (429 when none is free)."""
        if self.slots is None:
            yield
            return
        with self.slots.hold(self.quota_key):
            yield

    def check_write(self, agent_ids: Iterable[str]) -> None:
        """403 unless the token may write every agent named (its own; a host token also the
        agents under its prefix). The check is per record: one foreign record refuses the
        whole request, and none of it is applied."""
        claims = self.claims
        if claims is None:
            return
        for agent_id in agent_ids:
            if not claims.can_write(agent_id):
                mine = repr(claims.agent_id)
                if claims.write_prefix is not None:
                    mine += f" and agents whose ids start with {claims.write_prefix!r}"
                raise _forbidden(
                    f"this token writes as {mine} only; the request carries records of agent "
                    f"{agent_id!r}, so none of it was applied"
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

    def peek(self, key: str) -> float:
        """The seconds until ``key``'s bucket holds one request again (0.0: it does now);
        takes nothing."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens, last = bucket
        tokens = min(self.burst, tokens + (self._clock() - last) * self.rate)
        return 0.0 if tokens >= 1.0 else (1.0 - tokens) / self.rate

    def _remember(self, key: str, bucket: tuple[float, float]) -> None:
        self._buckets[key] = bucket
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)


class Guard:
    """Authenticates requests for one relay app and applies the limits of the module docstring.

    ``secret`` is ``None`` when auth is off. ``limits`` gives the request rate per agent (off
    when ``requests_per_second`` is None), the failed authentications per client address and
    the concurrent queries per token.
    """

    def __init__(
        self,
        secret: bytes | None,
        *,
        limits: LimitsConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        limits = limits or LimitsConfig()
        self.secret = secret
        rate = limits.requests_per_second
        self.limiter = RateLimiter(rate) if rate else None
        per_minute = limits.auth_failures_per_minute
        self.failures = RateLimiter(per_minute / 60, per_minute) if per_minute else None
        self.query_slots = QuerySlots(limits.max_concurrent_queries)
        self._clock = clock

    @property
    def enabled(self) -> bool:
        """True when requests need a token."""
        return self.secret is not None

    def admit(self, token: str | None, client: str | None) -> Caller:
        """The caller behind ``token``; 401 without a valid one (auth on), 429 past a limit."""
        claims = self._claims(token, client) if self.secret is not None else None
        return self.admit_claims(claims, client)

    def admit_claims(self, claims: TokenClaims | None, client: str | None) -> Caller:
        """The caller holding ``claims`` (already verified, e.g. a dashboard session's); 429
        past the rate."""
        if self.limiter is not None:
            key = f"agent:{claims.agent_id}" if claims else f"addr:{client}"
            wait = self.limiter.wait_time(key)
            if wait > 0:
                raise _too_many(
                    "rate_limited",
                    f"more than {self.limiter.rate:g} requests per second; retry later",
                    wait,
                )
        return Caller(claims, client, self.query_slots)

    def is_admin(self, token: str | None) -> bool:
        """True when auth is off, or ``token`` is a valid admin token (never raises, counts
        nothing: for answers that only show more to an admin, such as ``/health``)."""
        if self.secret is None:
            return True
        try:
            return bool(token) and verify_token(self.secret, str(token), now=self._clock()).admin
        except InvalidToken:
            return False

    def _claims(self, token: str | None, client: str | None) -> TokenClaims:
        assert self.secret is not None
        if not token:
            raise RequestProblem(
                401,
                "unauthorized",
                "this relay needs 'Authorization: Bearer <token>' (commander-os token create)",
                headers=_CHALLENGE,
            )
        address = f"addr:{client}"
        if self.failures is not None and (wait := self.failures.peek(address)) > 0:
            raise _too_many(
                "too_many_failed_authentications",
                "too many invalid tokens from this address; retry later",
                wait,
            )
        try:
            return verify_token(self.secret, token, now=self._clock())
        except InvalidToken as exc:
            if self.failures is not None:
                self.failures.wait_time(address)  # takes one from the address's bucket
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
    for name in ("records", "heartbeats"):
        if isinstance(document, dict) and isinstance(document.get(name), list):
            items += document[name]
    for item in items:
        if isinstance(item, dict) and isinstance(item.get("agent_id"), str):
            found.add(item["agent_id"])
    return found
