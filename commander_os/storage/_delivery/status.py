"""What ``health_check()`` reports of delivery: each target's lag, queue, successes and errors."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from commander_os.storage._delivery.lane import Lane
from commander_os.storage._delivery.link import StoreLink
from commander_os.storage._delivery.targets import Cursor

__all__ = ["delivery_status", "iso"]


def iso(moment: float | None) -> str | None:
    """A Unix time as ISO 8601 (UTC, milliseconds), or None."""
    if moment is None:
        return None
    return datetime.fromtimestamp(moment, tz=UTC).isoformat(timespec="milliseconds")


def _lane(lane: Lane, cursor: Cursor | None) -> dict[str, Any]:
    shipping = lane.link.active
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
        "shipping": shipping,
        "worker": "running" if shipping else "another process ships this store",
    }


def delivery_status(link: StoreLink, cursors: dict[str, Cursor]) -> dict[str, Any]:
    """``relay`` (the first target, as the seed's health shows one relay) and ``targets``."""
    lanes = [_lane(lane, cursors.get(name)) for name, lane in link.lanes.items()]
    return {"relay": lanes[0] if lanes else None, "targets": lanes}
