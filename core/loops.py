"""The running event loop and task, without a system call each time.

``asyncio.get_running_loop()`` and ``asyncio.current_task()`` each call ``getpid()`` (CPython
checks that the loop was not inherited through a fork): three system calls per single-event
ingest request, which bare Starlette does not make. Each thread remembers the loop it ran last
instead: ``asyncio.current_task(loop)`` with an explicit loop is a dict lookup, and it finds a
task only while that loop runs a task, so a new loop (or none) in this thread is noticed.
This assumes what asyncio.run() and uvicorn do: a loop runs in the thread that first ran it
(a loop handed to another thread while this one runs a new loop would be mistaken for it).
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any


class _Seen(threading.local):
    loop: asyncio.AbstractEventLoop | None = None


_seen = _Seen()


def running() -> tuple[asyncio.AbstractEventLoop, asyncio.Task[Any] | None]:
    """The running loop and its current task (None outside a task); RuntimeError when no
    loop runs, like ``asyncio.get_running_loop()``."""
    loop = _seen.loop
    if loop is not None:
        task = asyncio.current_task(loop)
        if task is not None:
            return loop, task
    loop = _seen.loop = asyncio.get_running_loop()
    return loop, asyncio.current_task(loop)


def running_loop() -> asyncio.AbstractEventLoop:
    """``asyncio.get_running_loop()``, usually without its system call (see the module)."""
    return running()[0]
