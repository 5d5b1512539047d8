"""Time-bucketed series the relay keeps in memory: a ring of fixed-width buckets per series.

An update touches one slot (no allocation, no list growth), so it is cheap on the ingest path;
a bucket older than the window is reset when its slot comes round again. Several series of one
owner share the bucket clock (``epochs``), so an agent's writes, lag and queue cost one ring.
"""

from __future__ import annotations

from array import array

__all__ = ["BUCKETS", "BUCKET_SECONDS", "SeriesSet"]

#: Width of one bucket and how many are kept: the dashboard's last hour in 30-second steps.
BUCKET_SECONDS = 30.0
BUCKETS = 120


class SeriesSet:
    """Named series over one ring of buckets. ``add`` sums, ``peak`` keeps the maximum and
    ``last`` the latest value of a bucket.

    >>> series = SeriesSet(("writes",))
    >>> series.add("writes", 100.0, 3); series.add("writes", 101.0, 2)
    >>> series.points("writes", 101.0)[-1]
    5.0
    """

    __slots__ = ("_epochs", "_values", "width")

    def __init__(self, names: tuple[str, ...], *, width: float = BUCKET_SECONDS) -> None:
        self.width = width
        self._epochs = array("q", [-1]) * BUCKETS
        self._values = {name: array("d", [0.0]) * BUCKETS for name in names}

    def slot(self, now: float) -> int:
        """The index of the bucket holding ``now`` (reset if it held an older window's), for
        several updates at once through :meth:`values`."""
        return self._slot(now)

    def values(self, name: str) -> array[float]:
        """The raw buckets of series ``name`` (index them with :meth:`slot`)."""
        return self._values[name]

    def _slot(self, now: float) -> int:
        epoch = int(now // self.width)
        slot = epoch % BUCKETS
        if self._epochs[slot] != epoch:
            self._epochs[slot] = epoch
            for values in self._values.values():
                values[slot] = 0.0
        return slot

    def add(self, name: str, now: float, amount: float) -> None:
        """Add ``amount`` to the bucket holding ``now``."""
        self._values[name][self._slot(now)] += amount

    def peak(self, name: str, now: float, value: float) -> None:
        """Keep the largest value seen in the bucket holding ``now``."""
        slot = self._slot(now)
        values = self._values[name]
        if value > values[slot]:
            values[slot] = value

    def last(self, name: str, now: float, value: float) -> None:
        """Keep ``value`` as the bucket's latest."""
        self._values[name][self._slot(now)] = value

    def points(self, name: str, now: float) -> list[float | None]:
        """The window's buckets, oldest first, ending with the one holding ``now``; ``None``
        for a bucket that saw no update."""
        current = int(now // self.width)
        values, epochs = self._values[name], self._epochs
        out: list[float | None] = []
        for epoch in range(current - BUCKETS + 1, current + 1):
            slot = epoch % BUCKETS
            out.append(values[slot] if epochs[slot] == epoch else None)
        return out

    def starts(self, now: float) -> list[float]:
        """The start time (Unix seconds) of each bucket :meth:`points` returns."""
        current = int(now // self.width)
        return [epoch * self.width for epoch in range(current - BUCKETS + 1, current + 1)]
