"""What the worker's helper processes (:mod:`.map_process`, :mod:`.deliver_process`) share:
whether one can run here and which plugin modules it must import, how it is launched, and how
a child that ended is described and reaped."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..runtime import Runtime

START_WAIT = 10.0
"""Seconds ``hookyard worker`` waits at start-up for its helper processes to be ready."""


class HelperProcess:
    """The worker's side of a helper process, as both kinds keep it: :attr:`ready` once the
    child answered, the start in progress, and when it last failed (it is started again
    ``restart_after`` seconds later). A subclass implements :meth:`start` (which returns at
    once unless :meth:`may_start`) and calls :meth:`failed` when the child is gone."""

    def __init__(self, restart_after: float) -> None:
        self.restart_after = restart_after
        self.ready = False
        self.proc: subprocess.Popen[bytes] | None = None
        self._starting: asyncio.Future[None] | None = None
        self._failed_at = 0.0
        self._closing = False

    def start(self) -> None:
        raise NotImplementedError

    def may_start(self) -> bool:
        """Not stopping, not running or starting, and not failed within ``restart_after``."""
        return not (self._closing or self._starting is not None or self.ready
                    or time.monotonic() - self._failed_at < self.restart_after)

    async def start_and_wait(self, timeout: float = START_WAIT) -> None:
        """Start the child and wait until it is ready (at most ``timeout`` seconds; the worker
        does its work in-process until then)."""
        self.start()
        if self._starting is not None:
            await asyncio.wait({self._starting}, timeout=timeout)

    def restart_now(self) -> None:
        """Let the next :meth:`start` start the child without waiting ``restart_after`` (to
        tell which event or delivery stopped it)."""
        self._failed_at = float("-inf")

    def failed(self) -> None:
        """The child is gone: not ready, started again ``restart_after`` seconds from now."""
        self.ready = False
        self._failed_at = time.monotonic()
        self._starting = None


def cores(cgroup: str = "/sys/fs/cgroup/cpu.max") -> int:
    """The cores this process may use: those it may run on, fewer under a container's CPU
    quota (cgroup v2 ``cpu.max``, as ``docker run --cpus 1`` sets it)."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        count = os.cpu_count() or 1
    try:
        quota, period = Path(cgroup).read_text().split()[:2]
        if quota != "max":
            count = min(count, max(1, -(-int(quota) // int(period))))  # rounded up
    except (OSError, ValueError):
        pass
    return count


def plugin_modules(rt: Runtime) -> list[str] | None:
    """The modules a child must import to have ``rt``'s plugins besides the installed ones
    (entry points, which it loads itself); None when one of them is not a module."""
    installed = {id(plugin) for plugin, _ in rt.pm.list_plugin_distinfo()}
    names = []
    for _, plugin in rt.pm.list_name_plugin():
        if id(plugin) in installed or plugin is None:
            continue
        if not isinstance(plugin, types.ModuleType):
            return None
        names.append(plugin.__name__)
    return names


def helper_modules(rt: Runtime) -> list[str] | None:
    """The plugin modules a helper process must import (see :func:`plugin_modules`), or None
    when no helper can run here: not a POSIX system, the single-file binary (no ``python -m``),
    one core (a container's CPU quota counts), or a plugin handed over as an object."""
    if os.name != "posix" or getattr(sys, "frozen", False) or cores() < 2:
        return None
    return plugin_modules(rt)


def spawn(module: str, fd: int, fd_env: str, stdin: int = subprocess.DEVNULL,
          ) -> subprocess.Popen[bytes]:
    """``python -P -m <module>`` with this process's import path, the descriptor ``fd``
    passed on and named by the environment variable ``fd_env``, in a session of its own (a
    Ctrl-C in the terminal is the parent's to handle). Raises OSError when it cannot be
    started. ``-P``: not the working directory first on the path, as ``-m`` puts it, where a
    directory named ``hookyard`` (a checkout) shadowed the installed package."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p),
               **{fd_env: str(fd)})
    return subprocess.Popen([sys.executable, "-P", "-m", module], stdin=stdin, pass_fds=(fd,),
                            env=env, start_new_session=True)


def exit_status(proc: subprocess.Popen[bytes] | None) -> str:
    """How ``proc`` ended ("exit status 1", "killed by signal 9"); "" while it runs on (it is
    given a second to end)."""
    if proc is None:
        return ""
    try:
        code = proc.wait(timeout=1)
    except subprocess.TimeoutExpired:
        return ""
    return f"exit status {code}" if code >= 0 else f"killed by signal {-code}"


def reap(proc: subprocess.Popen[bytes] | None) -> None:
    """Kill ``proc`` if it still runs and wait for it (no zombie left behind)."""
    if proc is None:
        return
    if proc.poll() is None:
        proc.kill()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:  # pragma: no cover - SIGKILL did not work
        pass
