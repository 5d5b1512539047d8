"""A lane: one store's delivery to one target, and what it does with each answer.

The lane keeps its target's acknowledged seq (``acked``) and a *window* of pieces sent but not
yet acknowledged, in order. A piece is a segment exactly as it went out: when a request fails
or an answer is lost, the window is resent as it was (same ``segment_id``), which the relay
recognises, so a lost answer never looks like a rollback. New changes follow the window
(``base`` = the last piece's ``through``), so several pieces can be in flight at once.
"""

from __future__ import annotations

import random
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from commander_os.storage._delivery.link import Draft, StoreLink
    from commander_os.storage._delivery.repair import Repair
    from commander_os.storage._delivery.route import Route

__all__ = ["Lane", "Piece", "PieceKind"]

#: First retry delay after a failure; doubles up to ``sync_interval``.
BACKOFF_START_SECONDS = 0.05
#: Retry delay while the store is closing (``close()`` keeps trying until ``close_timeout``).
URGENT_RETRY_SECONDS = 0.1


class PieceKind(Enum):
    """What a piece carries."""

    CHANGES = "changes"  # outbox rows after the window
    GRANT = "grant"  # no records: asks for an incarnation (a new store, or a claim)
    REPAIR = "repair"  # the store's current state, after the relay lost data


@dataclass(eq=False)
class Piece:
    """One segment as sent (resent verbatim when its answer is lost)."""

    kind: PieceKind
    segment: dict[str, Any]
    through: int
    draft: Draft | None = None


def backoff(failures: int, cap: float) -> float:
    """Exponential backoff with jitter: about 50 ms, 100 ms, 200 ms, ... capped at ``cap``."""
    ceiling = min(cap, BACKOFF_START_SECONDS * 2 ** min(max(failures - 1, 0), 30))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not cryptography


@dataclass(eq=False)
class Lane:
    """See the module docstring. Touched by the route's thread only, but for ``dirty`` and
    ``urgent``, which stores set from theirs."""

    link: StoreLink
    target: str
    acked: int
    acked_incarnation: int
    needs_repair: bool
    batch_size: int
    window: deque[Piece] = field(default_factory=deque)
    in_flight: int = 0
    #: The window must go out again, as it was, once nothing of the lane is in flight.
    resend: bool = False
    #: New changes may wait (see :attr:`dirty`).
    _dirty: bool = field(default=True, repr=False)
    urgent: bool = False
    failures: int = 0
    retry_at: float = 0.0
    #: Records per piece: the batch size, halved to isolate a record the relay refuses.
    limit: int = 0
    solo: bool = False
    repair: Repair | None = None
    reported: tuple[str | None, bool | None] = (None, None)
    last_error: str | None = None
    reachable: bool | None = None
    last_success: float | None = None
    last_exception: Exception | None = None
    #: Queued changes this process's deliveries took out of the outbox.
    shipped_total: int = 0
    route: Route = field(init=False)

    def __post_init__(self) -> None:
        self.limit = self.batch_size

    @property
    def dirty(self) -> bool:
        """Whether new changes may wait in the outbox. Marking a lane also puts it on its
        route's short list, so a route of a thousand stores looks only at those with work."""
        return self._dirty

    @dirty.setter
    def dirty(self, value: bool) -> None:
        self._dirty = value
        if value:
            self.mark()

    def mark(self) -> None:
        """Put the lane on its route's list of lanes to look at."""
        route = self.__dict__.get("route")
        if route is not None:
            route.mark(self)

    def idle(self) -> bool:
        """Nothing to send: the route may forget the lane until it is marked again (what is
        in flight marks it when it must go out again: :meth:`lost`, a repair or grant
        answered, a restart)."""
        return not (self._dirty or self.resend or self.needs_repair or self.repair is not None)

    @property
    def sent(self) -> int:
        """The seq the next new piece continues from."""
        return self.window[-1].through if self.window else self.acked

    def ready(self, now: float) -> bool:
        """Whether this lane has something for the next request."""
        link = self.link
        if link.fenced or link.retired or not link.active or link.closed:
            return False
        if self.retry_at > now and not self.urgent:
            return False
        if self.resend:
            return self.in_flight == 0
        if self.window and self.window[-1].kind is not PieceKind.CHANGES:
            return False  # a grant or repair piece is out: wait for its answer
        return self.dirty or self.needs_repair or self.repair is not None

    def sending(self, pieces: list[Piece]) -> None:
        """``pieces`` go out in the next request (new ones join the window)."""
        if self.resend:
            self.resend = False
        else:
            self.window.extend(pieces)
        self.in_flight += len(pieces)

    def answered(self, count: int) -> None:
        """``count`` pieces of this lane came back (answered or failed)."""
        self.in_flight -= count

    def acknowledged(self, through: int, incarnation: int) -> None:
        """The target holds everything up to ``through``: drop those pieces, reset backoff."""
        self.acked = max(self.acked, through)
        self.acked_incarnation = incarnation
        while self.window and self.window[0].through <= self.acked:
            self.window.popleft()
        if not self.window:
            self.resend = False
        self.failures = 0
        self.last_error, self.reachable, self.last_success = None, True, time.time()
        if self.solo and self.limit < self.batch_size:
            self.limit = min(self.batch_size, self.limit * 2)
        else:
            self.solo = False

    def settled(self, piece: Piece) -> None:
        """``piece`` (a repair piece: it moves no cursor) was applied."""
        if piece in self.window:
            self.window.remove(piece)
        if not self.window:
            self.resend = False
        self.failures = 0

    def lost(self, cap: float) -> None:
        """A request failed: back off, then resend the window as it was."""
        self.failures += 1
        delay = URGENT_RETRY_SECONDS if self.urgent else backoff(self.failures, cap)
        self.retry_at = time.monotonic() + delay
        self.resend = bool(self.window)
        self.mark()

    def restart(self) -> None:
        """The window is void (a new incarnation, a fence, a regression): forget it, draft
        again from ``acked``."""
        self.window.clear()
        self.resend = False
        self.dirty = True
