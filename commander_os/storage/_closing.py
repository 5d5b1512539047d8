"""What ``close()`` returns: the outcome, usable from sync code and awaitable from async code.

``storage.close()`` in plain code closes at once (shipping what is queued first, up to
``close_timeout``). Inside a running event loop it closes in a thread, so the loop is never
blocked while it flushes, and returns an awaitable to wait for that. Either way the result is a
real :class:`collections.abc.Coroutine`, so ``await storage.close()``,
``asyncio.run(storage.close())``, ``asyncio.wait_for(storage.close(), 5)`` and
``asyncio.create_task(storage.close())`` all work; and, as it is not a coroutine *function*'s
object, forgetting to await it closes the store anyway, with no "never awaited" warning.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Generator
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

__all__ = ["CloseResult", "Closing"]


@dataclass(frozen=True, slots=True)
class CloseResult:
    """How a close went: changes shipped while closing, and changes left queued."""

    shipped: int = 0
    pending: int = 0

    @property
    def flushed(self) -> bool:
        """True when nothing was left queued."""
        return self.pending == 0


class Closing(Coroutine[Any, Any, CloseResult]):
    """A close in progress (or done); await it for its :class:`CloseResult`."""

    def __init__(self, future: Future[CloseResult]) -> None:
        self._future = future
        self._inner: Generator[Any, None, CloseResult] | None = None

    @property
    def done(self) -> bool:
        """True once the store is closed."""
        return self._future.done()

    def result(self, timeout: float | None = None) -> CloseResult:
        """Block until the store is closed; its :class:`CloseResult`."""
        return self._future.result(timeout)

    @property
    def pending(self) -> int:
        """Changes left queued (blocks until closed)."""
        return self.result().pending

    @property
    def shipped(self) -> int:
        """Changes shipped while closing (blocks until closed)."""
        return self.result().shipped

    async def _wait(self) -> CloseResult:
        return await asyncio.wrap_future(self._future)

    def _coroutine(self) -> Generator[Any, None, CloseResult]:
        if self._inner is None:
            self._inner = self._wait().__await__()
        return self._inner

    def __await__(self) -> Generator[Any, None, CloseResult]:
        return self._coroutine()

    def send(self, value: Any) -> Any:
        return self._coroutine().send(value)

    def throw(self, *args: Any) -> Any:
        return self._coroutine().throw(*args)

    def close(self) -> None:
        if self._inner is not None:
            self._inner.close()
