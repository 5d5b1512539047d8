"""Readable numbers, times, ages and versions for the dashboard's HTML (every text escaped)."""

from __future__ import annotations

import html
from datetime import UTC, datetime
from typing import Any

from commander_os.relay._analytics import describe_age

__all__ = ["UNKNOWN", "age", "e", "iso", "moment", "ms", "number", "seconds", "version"]

#: What a cell shows for an unknown value (an en dash).
UNKNOWN = "\u2013"


def e(value: Any) -> str:
    """``value`` as escaped HTML text."""
    return html.escape(str(value), quote=True)


def number(value: float | None, digits: int = 0) -> str:
    """``12,345`` (or :data:`UNKNOWN`)."""
    if value is None:
        return UNKNOWN
    return f"{value:,.{digits}f}"


def ms(value: float | None) -> str:
    """Milliseconds, with the precision that matters at their size."""
    if value is None:
        return UNKNOWN
    if value < 10:
        return f"{value:.2f} ms"
    if value < 1000:
        return f"{value:.0f} ms"
    return f"{value / 1000:.2f} s"


def iso(unix: float) -> str:
    """``2026-12-02 07:31:05 UTC``."""
    return datetime.fromtimestamp(unix, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def age(unix: float | None, now: float) -> str:
    """``<time>`` saying how long ago ``unix`` was, the exact time in its title."""
    if unix is None:
        return '<span class="muted">never</span>'
    ago = max(0.0, now - unix)
    text = "just now" if ago < 1 else f"{describe_age(ago)} ago"
    stamp = datetime.fromtimestamp(unix, tz=UTC).isoformat()
    return f'<time datetime="{e(stamp)}" title="{e(iso(unix))}">{e(text)}</time>'


def moment(unix: float) -> str:
    """``<time>`` showing the exact UTC time."""
    stamp = datetime.fromtimestamp(unix, tz=UTC)
    return f'<time datetime="{e(stamp.isoformat())}">{e(iso(unix))}</time>'


def version(raw: int, incarnation: int, seq: int) -> str:
    """``inc 3 · seq 1,204``, the raw 64-bit number in the title."""
    if not raw:
        return '<span class="muted">none</span>'
    return (
        f'<span class="version" title="version {raw} = incarnation {incarnation} &lt;&lt; 32 '
        f'| seq {seq}">inc {incarnation} · seq {seq:,}</span>'
    )


def seconds(value: float | None) -> str:
    """A duration in readable units (or :data:`UNKNOWN`)."""
    return UNKNOWN if value is None else describe_age(value)
