"""A destination's plain-function ``deliver`` hook, run off the event loop.

A ``deliver`` written as a plain ``def`` that blocks (``requests.post`` to a vendor that does
not answer, a ``time.sleep`` between retries) would hold the event loop that answers ingest and
every other destination: the isolation of issue 4 would be lost to one plugin. Its calls run
instead, one at a time as before, on a daemon thread of the destination's own
(:class:`HookThread`); the event loop awaits their answers, and the time limit of
:func:`hookyard.delivery.calling.call_deliver` still applies (a call past it is answered
retryable, and the thread's next call waits until the stuck one ends). ``async def`` hooks
(every built-in connector) are awaited on the loop as always.

The thread is a daemon, so a hook that never returns does not keep the process from exiting.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any

_Call = tuple[Callable[[], Any], asyncio.AbstractEventLoop, "asyncio.Future[Any]"]


class HookThread:
    """Runs calls one at a time on a daemon thread named after ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._calls: queue.SimpleQueue[_Call] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, fn: Callable[[], Any]) -> asyncio.Future[Any]:
        """A future of ``fn()``'s result (or exception), run on the thread."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._calls.put((fn, loop, future))
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, daemon=True,
                                                name=f"hookyard-deliver-{self.name}"[:60])
                self._thread.start()
        return future

    def _work(self) -> None:
        while True:
            fn, loop, future = self._calls.get()
            if future.done():  # given up (time limit, shutdown) while it waited: not run late
                continue
            try:
                outcome: tuple[bool, Any] = (True, fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task
                outcome = (False, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, outcome)
            except RuntimeError:  # the loop has closed: nobody awaits the answer
                pass


def _settle(future: asyncio.Future[Any], outcome: tuple[bool, Any]) -> None:
    if future.done():  # the awaiting task gave up (time limit, shutdown)
        return
    ok, value = outcome
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)
