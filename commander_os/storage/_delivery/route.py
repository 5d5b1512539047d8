"""A route: the one delivery loop of this process towards one target.

Every store of the process that ships to a target has a :class:`~.lane.Lane` on its route. The
loop gathers the lanes that have something to send into one request (a segment per store:
``protocol._delivery``) and settles each answer lane by lane. An idle route sends a lone change
at once. While a request is in flight, new changes gather for the next one: until its answer
arrives, or, when the last request left changes behind (a backlog), for ``sync_linger``
seconds, so that up to ``sync_pipeline`` requests keep the relay busy. Waiting for the answer
is what batches a busy host's writes: a thousand stores writing twice a second send one
request per round trip, not one per write, and the batch grows with the load.

:meth:`Route.step` is the unit of work (tests call it directly); :meth:`Route.start` runs it in
a thread that sleeps until a store commits, an answer arrives, a retry is due, or it is time to
look for changes committed by other processes.

Every ``heartbeat_interval`` the route also reports the outbox state of all its stores to the
relay in one request (``POST /relay/heartbeats``): a host of a thousand idle stores costs each
relay one request a minute.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

import orjson

from commander_os.errors import (
    RelayAuthError,
    RelayError,
    RelayRejected,
    RelayUnavailable,
    StorageClosed,
)
from commander_os.protocol import MAX_HEARTBEATS, SegmentAck, Verdict, segment_json
from commander_os.storage._delivery.client import RelayClient
from commander_os.storage._delivery.lane import Lane, Piece, PieceKind
from commander_os.storage._delivery.link import Draft, StoreLink
from commander_os.storage._delivery.repair import Repair

__all__ = ["Route", "RouteSettings"]

_log = logging.getLogger("commander_os.delivery")
#: Records one request carries at most (the relay's own batch limit is 5,000).
MAX_REQUEST_RECORDS = 5000
#: Seconds between two attempts to take over the shipping of a store another process ships.
TAKEOVER_SECONDS = 2.0


def content_id(incarnation: int, base: int, through: int, records: list[dict[str, Any]]) -> int:
    """A segment's id: a hash of what it says. A store that resends the same changes after
    losing their answer (even from a new process, after a crash) sends the same id, which the
    relay recognises as a resend; a copy of the store that wrote other changes under the same
    seqs cannot."""
    digest = hashlib.blake2b(digest_size=8)
    digest.update(f"{incarnation}:{base}:{through}:".encode())
    digest.update(orjson.dumps(records))
    return int.from_bytes(digest.digest(), "big") >> 2


@dataclass(frozen=True, slots=True)
class RouteSettings:
    """How a route behaves (from the first store's config; see ``StorageConfig``)."""

    pipeline: int = 4
    linger: float = 0.002
    backoff_cap: float = 60.0
    max_retry_count: int = 5
    poll_interval: float = 1.0
    request_records: int = 1000
    #: Seconds between two heartbeat requests of the route's stores (0: none).
    heartbeat_interval: float = 60.0


@dataclass(eq=False)
class _Request:
    items: list[tuple[Lane, list[Piece]]]
    segments: list[dict[str, Any]]
    #: Whether changes were left behind (a lane had more than it sent, or the request was
    #: full): the next request may then leave before this one is answered.
    more: bool = False
    future: Future[list[SegmentAck]] = field(default_factory=Future)


def _failure_kind(exc: Exception) -> str:
    """What kind of failure ``exc`` is: a new kind during an outage is worth a new warning."""
    if isinstance(exc, RelayAuthError):
        return f"refused ({exc.status})"
    if isinstance(exc, RelayUnavailable):
        return "unavailable"
    return type(exc).__name__


class Route:
    """One target's delivery loop for the whole process (see the module docstring)."""

    def __init__(self, name: str, client: RelayClient, settings: RouteSettings) -> None:
        self.name = name
        self.client = client
        self.settings = settings
        self.lanes: list[Lane] = []
        #: Lanes that may have work: marked when they become dirty or must resend, dropped
        #: once idle. Gathering looks at these only, not at every store of the process.
        self.marked: set[Lane] = set()
        self._lanes_lock = threading.Lock()
        self._wake = threading.Event()
        self._in_flight: deque[_Request] = deque()
        self._senders = ThreadPoolExecutor(
            settings.pipeline, thread_name_prefix="commander-os-send"
        )
        self._thread: threading.Thread | None = None
        self._stopping = False
        #: What kind of failure the target is in (None: it works), since when, how many.
        self._down: str | None = None
        self._down_since = 0.0
        self._down_attempts = 0
        self._next_poll = 0.0
        self._last_send = 0.0
        self._backlog = False
        self._rotation = 0
        # The first report soon after start: the relay learns of stores that cannot deliver.
        self._next_heartbeat = time.monotonic() + min(5.0, settings.heartbeat_interval)
        self._heartbeat_out: Future[None] | None = None

    # -- membership -------------------------------------------------------------------------

    def add(self, lane: Lane) -> None:
        """Ship ``lane`` from now on."""
        with self._lanes_lock:
            self.lanes.append(lane)
        lane.mark()
        self.wake()

    def remove(self, lane: Lane) -> None:
        """Stop shipping ``lane`` (what it has in flight is still settled)."""
        with self._lanes_lock:
            if lane in self.lanes:
                self.lanes.remove(lane)
            self.marked.discard(lane)

    def mark(self, lane: Lane) -> None:
        """``lane`` may have work (any thread)."""
        with self._lanes_lock:
            self.marked.add(lane)

    def wake(self) -> None:
        """Something changed (a commit, an answer, a close): run a step soon."""
        if not self._wake.is_set():  # setting takes a lock and notifies: only when needed
            self._wake.set()

    # -- the thread ---------------------------------------------------------------------------

    def start(self) -> None:
        """Run the loop in a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._run, name=f"commander-os-route[{self.name}]", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        """End the loop; requests in flight are waited for, then the client closes."""
        self._stopping = True
        self.wake()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(30)
        self._senders.shutdown(wait=True)
        self.client.close()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()
            try:
                worked = self.step()
            except Exception:  # a bug or a broken disk must not end shipping for good
                _log.exception("delivery to %s: unexpected error; retrying", self.name)
                worked = False
                self._wake.wait(1.0)
            if not worked:
                self._wake.wait(self._idle_seconds())

    def _idle_seconds(self) -> float:
        now = time.monotonic()
        wait = max(0.0, self._next_poll - now)
        for lane in self._marked():
            if lane.retry_at > now and (lane.dirty or lane.resend or lane.window):
                wait = min(wait, lane.retry_at - now)
        if self._in_flight and self._backlog:
            wait = min(wait, max(0.0, self._last_send + self.settings.linger - now))
        if self.settings.heartbeat_interval:
            wait = min(wait, max(0.0, self._next_heartbeat - now))
        return max(wait, 0.001)

    def _snapshot(self) -> list[Lane]:
        with self._lanes_lock:
            return list(self.lanes)

    def _marked(self) -> list[Lane]:
        """The marked lanes, forgetting the idle ones (a store's thread may mark one at any
        time: copied under the lock, so the set never changes size while it is read)."""
        with self._lanes_lock:
            idle = [lane for lane in self.marked if lane.idle()]
            self.marked.difference_update(idle)
            return list(self.marked)

    # -- one step ------------------------------------------------------------------------------

    def step(self, *, wait: bool = False) -> bool:
        """Settle answered requests, look for other processes' commits when due, and send the
        next request if there is room and something to send. ``wait`` makes it synchronous:
        the request sent is also settled. True if anything happened."""
        worked = self._settle_done()
        worked |= self._poll_if_due()
        worked |= self._heartbeat_if_due()
        if len(self._in_flight) >= self.settings.pipeline or not self._lingered():
            return worked
        request = self._gather()
        if request is None:
            return worked
        self._send(request)
        if wait:
            request.future.exception()
            self._settle_done()
        return True

    def _lingered(self) -> bool:
        if not self._in_flight:
            return True
        if not self._backlog:
            return False  # small changes wait for the answer and travel together after it
        return time.monotonic() - self._last_send >= self.settings.linger

    def _poll_if_due(self) -> bool:
        now = time.monotonic()
        if now < self._next_poll:
            return False
        self._next_poll = now + self.settings.poll_interval
        changed = False
        for link in {lane.link for lane in self._snapshot()}:
            with suppress(StorageClosed):  # closed since the snapshot
                changed |= self._poll(link, now)
        return changed

    def _poll(self, link: StoreLink, now: float) -> bool:
        if link.closed:
            return False
        if not link.active and now >= link.takeover_at:
            link.takeover_at = now + TAKEOVER_SECONDS
            link.try_takeover()
        try:
            changed = link.active and link.poll()
        except StorageClosed:  # closing meanwhile: it detaches next
            return False
        if changed:
            for lane in link.lanes.values():
                lane.dirty = True
        return changed

    # -- heartbeats ----------------------------------------------------------------------------

    def _heartbeat_if_due(self) -> bool:
        interval = self.settings.heartbeat_interval
        now = time.monotonic()
        if not interval or now < self._next_heartbeat:
            return False
        self._next_heartbeat = now + interval
        if self._heartbeat_out is not None and not self._heartbeat_out.done():
            return False  # the last report is still out: skip a turn rather than pile up
        beats = []
        for lane in self._snapshot():
            if lane.link.active and not lane.link.closed:
                with suppress(StorageClosed):
                    beats.append(lane.link.heartbeat(lane))
        if not beats:
            return False
        self._heartbeat_out = self._senders.submit(self._send_heartbeats, beats)
        return True

    def _send_heartbeats(self, beats: list[dict[str, Any]]) -> None:
        # Best effort: a relay that is away, or too old to know heartbeats, changes nothing.
        for start in range(0, len(beats), MAX_HEARTBEATS):
            try:
                self.client.heartbeats(beats[start : start + MAX_HEARTBEATS])
            except Exception as exc:
                _log.debug("heartbeats to %s not delivered: %s", self.name, exc)
                return

    # -- gathering a request ------------------------------------------------------------------

    def _gather(self) -> _Request | None:
        lanes = self._marked()
        if not lanes:
            return None
        now = time.monotonic()
        start = self._rotation % len(lanes)
        self._rotation += 1
        items: list[tuple[Lane, list[Piece]]] = []
        room = self.settings.request_records
        more = False
        for lane in lanes[start:] + lanes[:start]:
            if room <= 0:
                more = more or lane.ready(now)
                continue
            if not lane.ready(now) or (lane.solo and items):
                continue
            try:
                pieces, left = self._lane_pieces(lane, room)
            except StorageClosed:
                continue  # closed since the snapshot: its close removes the lane
            more = more or left
            if not pieces:
                continue
            items.append((lane, pieces))
            room -= sum(len(piece.segment["records"]) for piece in pieces)
            if lane.solo:
                break
        if not items:
            return None
        segments = [piece.segment for _, pieces in items for piece in pieces]
        return _Request(items, segments, more)

    def _lane_pieces(self, lane: Lane, room: int) -> tuple[list[Piece], bool]:
        """``lane``'s pieces for the next request, and whether it has more waiting.

        A lane with a backlog sends several pieces of ``sync_batch_size`` changes in one
        request (up to ``room`` changes), so a small batch size costs no more round trips than
        a large one; each piece keeps its own identity, and the lane's order, at the relay.
        """
        pieces = self._pieces(lane, room)
        if lane.resend:
            return pieces, False
        while pieces and pieces[-1].draft is not None and pieces[-1].draft.full:
            room -= len(pieces[-1].segment["records"])
            if room <= 0 or lane.solo:
                lane.dirty = True  # the rest goes in the next request
                return pieces, True
            following = self._draft_piece(lane, pieces[-1].through, room)
            if following is None:
                return pieces, False
            pieces.append(following)
        return pieces, False

    def _pieces(self, lane: Lane, room: int) -> list[Piece]:
        if lane.resend:
            return list(lane.window)
        link = lane.link
        # Cleared before reading, so a commit made meanwhile marks the lane again.
        lane.dirty = False
        incarnation, claim, draft = link.outlook(lane.sent, max(1, min(lane.limit, room)))
        if claim or incarnation == 0:
            return self._grant(lane, incarnation, claim, draft is not None)
        if lane.needs_repair or lane.repair is not None:
            piece = self._repair_piece(lane, incarnation)
            if piece is not None:
                return [piece]
        return [] if draft is None else [self._changes_piece(lane, draft)]

    def _draft_piece(self, lane: Lane, after: int, room: int) -> Piece | None:
        """A piece of the changes after seq ``after`` (at most the lane's limit and ``room``)."""
        draft = lane.link.draft(after, max(1, min(lane.limit, room)))
        return None if draft is None else self._changes_piece(lane, draft)

    @staticmethod
    def _changes_piece(lane: Lane, draft: Draft) -> Piece:
        segment = segment_json(
            lane.link.agent_id,
            incarnation=draft.incarnation,
            acked=lane.acked,
            base=draft.base,
            segment_id=content_id(draft.incarnation, draft.base, draft.through, draft.records),
            records=draft.records,
        )
        return Piece(PieceKind.CHANGES, segment, draft.through, draft)

    def _grant(self, lane: Lane, incarnation: int, claim: bool, changes: bool) -> list[Piece]:
        """A piece asking for an incarnation (only when there is something to ship)."""
        if not claim and not lane.needs_repair and not changes:
            return []
        segment = segment_json(
            lane.link.agent_id,
            incarnation=incarnation,
            acked=lane.acked,
            base=lane.sent,
            segment_id=secrets.randbits(62),
            records=[],
            claim=claim,
        )
        return [Piece(PieceKind.GRANT, segment, lane.sent)]

    def _repair_piece(self, lane: Lane, incarnation: int) -> Piece | None:
        if lane.repair is None:
            _log.warning(
                "agent %s: re-shipping its whole state to %s (a new target, or it lost data)",
                lane.link.agent_id,
                self.name,
            )
            lane.repair = Repair(lane.link, self.client, lane.acked, lane.limit, time.time())
        records = lane.repair.next_records()
        if records is None:
            _log.info(
                "agent %s: %s holds its whole state again (%d rows re-shipped)",
                lane.link.agent_id,
                self.name,
                lane.repair.shipped,
            )
            lane.repair = None
            lane.link.set_repair(lane, False)
            return None
        segment = segment_json(
            lane.link.agent_id,
            incarnation=incarnation,
            acked=lane.acked,
            base=lane.acked,
            segment_id=content_id(incarnation, lane.acked, lane.acked, records),
            records=records,
            repair=True,
        )
        return Piece(PieceKind.REPAIR, segment, lane.acked)

    def _send(self, request: _Request) -> None:
        for lane, pieces in request.items:
            lane.sending(pieces)
        self._in_flight.append(request)
        self._last_send = time.monotonic()
        self._backlog = request.more
        future = self._senders.submit(self.client.deliver, request.segments)
        future.add_done_callback(lambda _: self.wake())
        request.future = future

    # -- settling answers ----------------------------------------------------------------------

    def _settle_done(self) -> bool:
        worked = False
        while self._in_flight and self._in_flight[0].future.done():
            self._settle(self._in_flight.popleft())
            worked = True
        return worked

    def _settle(self, request: _Request) -> None:
        for lane, pieces in request.items:
            lane.answered(len(pieces))
            lane.link.notify_changed()
        request.items = [(lane, pieces) for lane, pieces in request.items if not lane.link.closed]
        if not request.items:
            return  # every store of the request closed meanwhile
        try:
            acks = request.future.result()
        except RelayRejected as exc:
            if isinstance(exc, RelayAuthError):
                self._lost(request, exc)
            else:
                self._isolate(request, exc)
            return
        except Exception as exc:
            self._lost(request, exc)
            return
        self._reached()
        answers = dict(zip(map(id, request.segments), acks, strict=True))
        for lane, pieces in request.items:
            with suppress(StorageClosed):  # closed meanwhile: its next open resends
                for piece in pieces:
                    self._verdict(lane, piece, answers[id(piece.segment)])

    def _verdict(self, lane: Lane, piece: Piece, ack: SegmentAck) -> None:
        link = lane.link
        if ack.verdict is Verdict.APPLIED:
            if piece.kind is PieceKind.CHANGES:
                previous = (lane.acked_incarnation, lane.acked)
                link.advance(lane, ack.through, ack.incarnation)
                self._check_regression(lane, ack, previous)
                # New changes follow the window, so only a lane that holds back changes (one
                # isolating a refused record) needs another look after an ack.
                lane.dirty |= lane.solo
            else:
                lane.settled(piece)
                lane.dirty = True
        elif ack.verdict is Verdict.REINCARNATE:
            claimed = bool(piece.segment.get("claim"))
            value = link.take_incarnation(lane, ack.incarnation, claimed=claimed)
            _log.info(
                "agent %s: %s granted incarnation %d%s",
                link.agent_id,
                self.name,
                value,
                " (claimed)" if claimed else "",
            )
        elif ack.verdict is Verdict.SUPERSEDED:
            self._superseded(lane, piece, ack)
        elif ack.verdict is Verdict.REGRESSED:
            self._regressed(lane, ack)
        else:  # out of order: an earlier piece did not land; resend the window as it was
            lane.resend = bool(lane.window)
            lane.mark()

    def _check_regression(self, lane: Lane, ack: SegmentAck, previous: tuple[int, int]) -> None:
        """The relay held less of this store than it had acknowledged (restored from an older
        copy, or it never kept the incarnation it acknowledged): re-ship the whole state."""
        if previous[1] and (ack.relay_incarnation, ack.relay_seq_hi) < previous:
            self._regressed(lane, ack)

    def _regressed(self, lane: Lane, ack: SegmentAck) -> None:
        _log.warning(
            "agent %s: %s lost acknowledged changes (it holds seq %d, had acknowledged %d): "
            "re-shipping the store's state",
            lane.link.agent_id,
            self.name,
            ack.relay_seq_hi,
            lane.acked,
        )
        lane.restart()
        lane.link.set_repair(lane, True)

    def _superseded(self, lane: Lane, piece: Piece, ack: SegmentAck) -> None:
        lane.restart()
        link = lane.link
        if piece.segment["incarnation"] != link.standing()[0]:
            return  # sent before the store took a new incarnation: void, not a conflict
        link.fence(lane, ack.incarnation)
        _log.warning(
            "agent %s: %s says another store took this agent over (its incarnation %d, ours "
            "%d): this store's changes stay queued until an operator claims the agent for it "
            "(storage.claim() / commander-os claim) or retires it",
            link.agent_id,
            self.name,
            ack.incarnation,
            piece.segment["incarnation"],
        )

    def _lost(self, request: _Request, exc: Exception) -> None:
        # Reachable: it answered, and the answer is the problem (credentials, not a relay).
        reachable = not isinstance(exc, RelayUnavailable) if isinstance(exc, RelayError) else None
        error = str(exc) if isinstance(exc, RelayError) else f"{type(exc).__name__}: {exc}"
        for lane, _ in request.items:
            lane.lost(self.settings.backoff_cap)
            lane.last_exception = exc
            lane.link.report(lane, error, reachable)
        self._down_attempts += 1
        kind = _failure_kind(exc)
        if self._down == kind:
            # One warning per outage: the retries of the same failure are for debugging only.
            _log.debug("delivery to %s failed again: %s", self.name, error)
            return
        if self._down is None:
            self._down_since = time.monotonic()
        level = logging.ERROR if isinstance(exc, RelayAuthError) else logging.WARNING
        _log.log(
            level,
            "delivery to %s failed: %s; changes wait in the stores' outboxes and are retried%s",
            self.name,
            error,
            "" if isinstance(exc, RelayUnavailable) else " (check the relay URL and token)",
        )
        self._down = kind

    def _reached(self) -> None:
        if self._down is not None:
            _log.info(
                "delivery to %s recovered: it works again, after %.1f s and %d failed attempt(s)",
                self.name,
                time.monotonic() - self._down_since,
                self._down_attempts,
            )
            self._down = None
            self._down_attempts = 0

    def _isolate(self, request: _Request, exc: RelayRejected) -> None:
        """The relay refused the request (4xx): narrow down to the records it refuses.

        Several stores: each goes alone. One store: halve its pieces. One record: count the
        attempt, and dead-letter it after ``max_retry_count`` refusals.
        """
        reason = f"{exc} ({exc.detail})" if exc.detail else str(exc)
        if len(request.segments) > 1:
            for lane, _ in request.items:
                lane.solo = True
                lane.restart()
            return
        ((lane, (piece,)),) = request.items
        lane.solo = True
        lane.restart()
        records = piece.segment["records"]
        if piece.kind is not PieceKind.CHANGES or piece.draft is None:
            _log.warning(
                "agent %s: %s refused a %s piece: %s",
                lane.link.agent_id,
                self.name,
                piece.kind.value,
                reason,
            )
            lane.lost(self.settings.backoff_cap)
        elif len(records) > 1:
            lane.limit = max(1, len(records) // 2)
        elif lane.link.refused(piece.draft, 0, reason, self.settings.max_retry_count):
            _log.warning(
                "agent %s: the relay refused %s/%s %d times; moved to dead letters: %s",
                lane.link.agent_id,
                records[0]["table"],
                records[0]["key"][:80],
                self.settings.max_retry_count,
                reason,
            )
        else:
            lane.lost(self.settings.backoff_cap)
