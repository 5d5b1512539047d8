"""What ``health_check()`` reports of delivery: each target's lag, queue, successes and errors."""

from __future__ import annotations

import sqlite3
import time
from datetime import UTC, datetime
from typing import Any

from commander_os.storage import _outbox as outbox
from commander_os.storage._delivery.lane import Lane
from commander_os.storage._delivery.link import StoreLink
from commander_os.storage._delivery.targets import Cursor

__all__ = ["Backlog", "backlogs", "delivery_status", "iso"]

#: A target's waiting changes: how many, and the Unix time the oldest was written.
Backlog = tuple[int, float | None]
#: A target counts as lagging when its oldest waiting change is older than this (seconds).
LAGGING_SECONDS = 30.0


def iso(moment: float | None) -> str | None:
    """A Unix time as ISO 8601 (UTC, milliseconds), or None."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="milliseconds")


def backlogs(
    conn: sqlite3.Connection, link: StoreLink | None, cursors: dict[str, Cursor]
) -> dict[str, Backlog]:
    """Each target's waiting changes, counted from its cursor (the in-memory one while this
    process ships the store: it is ahead of the stored one by the writes in flight)."""
    result = {}
    for name, cursor in cursors.items():
        lane = None if link is None or not link.active else link.lanes.get(name)
        acked = cursor.acked if lane is None else lane.acked
        if cursor.repair or (lane is not None and (lane.needs_repair or lane.repair is not None)):
            acked = min(acked, outbox.floor(conn))
        result[name] = (
            outbox.queue_size(conn, acked),
            outbox.oldest_pending_time(conn, acked),
        )
    return result


def _lane(lane: Lane, cursor: Cursor | None, backlog: Backlog | None) -> dict[str, Any]:
    shipping = lane.link.active
    queued, oldest = backlog or (None, None)
    return {
        "target": lane.target,
        "url": lane.route.client.url,
        "urls": list(lane.route.client.urls),
        "acked_seq": lane.acked if shipping or cursor is None else cursor.acked,
        "reachable": lane.reachable if shipping or cursor is None else cursor.reachable,
        "last_sync": iso(lane.last_success if shipping or cursor is None else cursor.last_success),
        "last_error": lane.last_error if shipping or cursor is None else cursor.last_error,
        "consecutive_failures": lane.failures,
        "in_flight": lane.in_flight,
        "shipped_total": lane.shipped_total,
        "repairing": lane.repair is not None or lane.needs_repair,
        "queue_size": queued,
        "oldest_pending_age": None if oldest is None else max(0.0, time.time() - oldest),
        "shipping": shipping,
        "worker": "running" if shipping else "another process ships this store",
    }


def _lagging(target: dict[str, Any]) -> bool:
    age = target["oldest_pending_age"]
    return bool(
        target["repairing"]
        or target["consecutive_failures"]
        or (age is not None and age > LAGGING_SECONDS)
    )


def delivery_status(
    link: StoreLink, cursors: dict[str, Cursor], waiting: dict[str, Backlog]
) -> dict[str, Any]:
    """``relay`` (the first target, as the seed's health shows one relay), ``targets`` (every
    target's cursor, queue, lag and errors), ``lagging_targets`` (the names of those failing,
    repairing, or with a change waiting over :data:`LAGGING_SECONDS`) and ``sync_quorum``."""
    lanes = [_lane(lane, cursors.get(name), waiting.get(name)) for name, lane in link.lanes.items()]
    return {
        "relay": lanes[0] if lanes else None,
        "targets": lanes,
        "lagging_targets": [lane["target"] for lane in lanes if _lagging(lane)],
        "sync_quorum": link.config.quorum_size(),
    }
