"""Request bodies not complete ``BODY_TIMEOUT_SECONDS`` after they began (stalled, or trickled
in): answered 408. A deadline for the whole body, not for each pause: a client sending a byte a
minute would otherwise hold its buffer for ever.

One timer per event loop checks every request still receiving its body, instead of an
``asyncio.timeout()`` per request: under uvloop that allocates a libuv timer each time, 11 us
and about 30,000 instructions (10 %) of a single-event ingest request. A request past the
deadline has its task cancelled; :func:`hookyard.request_body.receive_body` turns that into a 408.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any

from .loops import running

BODY_TIMEOUT_SECONDS = 60.0


class BodyDeadlines:
    """The tasks of one event loop that are receiving a body, since when (loop time)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.reading: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()
        self.ticking = False

    def begin(self, task: asyncio.Task[Any]) -> None:
        self.reading[task] = self.loop.time()
        if not self.ticking:  # one timer for every request, started by the first one
            self.ticking = True
            self.loop.call_later(self._interval(), self._tick)

    def end(self, task: asyncio.Task[Any]) -> bool:
        """Forget ``task``; True when it was cancelled for passing the deadline."""
        self.reading.pop(task, None)
        if task in self.expired:
            self.expired.discard(task)
            return True
        return False

    def _tick(self) -> None:
        now = self.loop.time()
        for task, started in list(self.reading.items()):
            if now - started > BODY_TIMEOUT_SECONDS:
                del self.reading[task]
                self.expired.add(task)
                task.cancel()
        if self.reading:
            self.loop.call_later(self._interval(), self._tick)
        else:
            self.ticking = False

    @staticmethod
    def _interval() -> float:
        return min(5.0, BODY_TIMEOUT_SECONDS / 4)


_by_loop: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, BodyDeadlines] = (
    weakref.WeakKeyDictionary()
)


def deadlines() -> BodyDeadlines:
    """The running loop's :class:`BodyDeadlines`."""
    return watch_current_task()[1]


def watch_current_task() -> tuple[asyncio.Task[Any] | None, BodyDeadlines]:
    """The running task and its loop's :class:`BodyDeadlines` (without a ``getpid()`` system
    call: see :mod:`hookyard.loops`)."""
    loop, task = running()
    found = _by_loop.get(loop)
    if found is None:
        found = _by_loop[loop] = BodyDeadlines(loop)
    return task, found
