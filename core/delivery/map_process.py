"""Mapping on another core: the router's ``map_event`` calls in a helper process.

``map_event`` hooks are pure (no I/O, see the hookspec), so a child process built from the
same config and plugins maps inbox rows exactly as the worker would. The child reads the rows
itself (one more reader of the SQLite file: it never writes), calls
:func:`~hookyard.delivery.router.map_rows` and sends the outbox rows back; the worker's writer
stores them with the router's cursor in one transaction, as before. The child holds no state
of its own: when it is not running yet, cannot start, or dies, the router maps in its own
process again, from the same cursor, and nothing is lost or routed twice.

Why: decoding, mapping and encoding an event costs the worker 15-20 us of its one core (the
GIL), about as much as delivering it. With the child, routing and delivering run side by side
on a machine with two or more cores (``bench/README.md``). Used for the SQLite backend only
(PostgreSQL nodes scale out instead), when ``[server] map_process`` is on (the default) and
the machine has more than one core (container CPU quotas counted), on POSIX systems and not in
the single-file binary; plugins given as objects rather than installed (as tests do) keep
mapping in-process, since a child could not load them, and so do configs with a third-party
plugin that has a ``startup`` hook (:func:`startup_plugins`).

Protocol (pickled messages: requests on the child's stdin, answers on a pipe of their own;
its stdout and stderr are the worker's):
``init`` -> ``("ready",)`` or ``("error", text)``; then ``(after, limit)`` ->
``("ok", cursor, rows_read, last_id, outbox_rows)`` or ``("error", text)``; EOF or ``None``
ends the child. The child gives up with its parent: its stdin closes when the parent dies.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import sqlite3
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from .helper_processes import (
    HelperProcess,
    cores,
    exit_status,
    helper_modules,
    plugin_modules,
    reap,
    spawn,
)

__all__ = ["MapProcess", "cores", "plugin_modules", "startup_plugins"]

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("hookyard.router")
START_TIMEOUT = 60.0  # seconds the child may take to load the plugins and answer "ready"
RESTART_AFTER = 30.0  # seconds before a child that died is started again
ANSWER_TIMEOUT = 15.0
"""Seconds a batch may take in the child (1,000 rows take 20-50 ms): a child that is stuck
(a stopped process, a plugin in an endless loop, swapping) is killed instead of holding up
routing for every destination, and the worker maps itself."""
ANSWER_FD = "HOOKYARD_MAP_ANSWER_FD"  # environment: the child's descriptor for its answers

Batch = tuple[int, int, int, list[tuple[Any, ...]]]
"""(stored cursor, inbox rows read, the last row's id, their outbox rows)."""


def startup_plugins(rt: Runtime) -> list[str]:
    """The plugins, other than hookyard's own, with a ``startup`` hook: it may put into
    ``destination.state`` what their ``map_event`` reads, and the child runs no ``startup``
    (it is no host: a second run of a plugin's start-up I/O is not ours to start). Mapping
    stays in the worker with them, so it gives the same answer wherever it runs."""
    own = {id(p) for p, dist in rt.pm.list_plugin_distinfo() if dist.project_name == "hookyard"}
    return sorted({
        rt.pm.get_name(impl.plugin) or "?" for impl in rt.pm.hook.startup.get_hookimpls()
        if id(impl.plugin) not in own
    })


class MapProcess(HelperProcess):
    """The worker's side: starts the child and asks it for the outbox rows of inbox batches.

    :attr:`ready` says whether :meth:`map` may be called; it answers None whenever the child
    failed, and the caller maps in-process then (the child is started again later)."""

    def __init__(self, rt: Runtime, modules: list[str]) -> None:
        super().__init__(RESTART_AFTER)
        self.rt = rt
        self.modules = modules
        self._send: Connection | None = None
        self._recv: Connection | None = None
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="hookyard-map")
        self.answer_timeout = ANSWER_TIMEOUT
        self.lost = False  # the last map() ended with the child dead or stopped

    @classmethod
    def wanted(cls, rt: Runtime) -> MapProcess | None:
        """A map process for ``rt``, or None when mapping stays in-process (see the module)."""
        if not rt.config.server.map_process or not rt.destinations or rt.db.dialect != "sqlite":
            return None
        modules = helper_modules(rt)
        if modules is None:
            return None
        prepared = startup_plugins(rt)
        if prepared:
            log.info("mapping in the worker process: plugin %s implements startup, which may"
                     " prepare destination.state for map_event (the map process runs no"
                     " startup hooks)", ", ".join(repr(p) for p in prepared))
            return None
        return cls(rt, modules)

    def start(self) -> None:
        """Start the child; :attr:`ready` turns true once it has loaded the plugins."""
        from ..logs import config_secrets

        if not self.may_start():
            return
        answers, child_end = os.pipe()  # the child's stdout stays the worker's (prints)
        try:
            self.proc = spawn("hookyard.delivery.map_process", child_end, ANSWER_FD,
                              stdin=subprocess.PIPE)
        except OSError as exc:  # no processes left, a frozen binary without -m...
            os.close(answers)
            self._gone(f"could not start: {exc}")
            return
        finally:
            os.close(child_end)
        assert self.proc.stdin is not None
        self._send = Connection(os.dup(self.proc.stdin.fileno()), readable=False)
        self._recv = Connection(answers, writable=False)
        self.proc.stdin.close()
        init = (self.rt.config, str(self.rt.db.path), self.modules,  # type: ignore[attr-defined]
                logging.getLogger().level, config_secrets(self.rt))
        loop = asyncio.get_running_loop()
        self._starting = loop.run_in_executor(self._thread, self._handshake, init)
        self._starting.add_done_callback(self._started)

    def _handshake(self, init: tuple[Any, ...]) -> None:
        assert self._send is not None and self._recv is not None
        self._send.send(init)
        if not self._recv.poll(START_TIMEOUT):
            raise RuntimeError(f"no answer within {START_TIMEOUT:g} s")
        answer = self._recv.recv()
        if answer[0] != "ready":
            raise RuntimeError(answer[1])

    def _started(self, fut: asyncio.Future[None]) -> None:
        if fut.cancelled():
            return
        exc = fut.exception()
        if self._closing:  # stopped while it started: nothing to report
            return
        if exc is None:
            self.ready = True
            log.info("map process %s ready: events are mapped on another core",
                     self.proc.pid if self.proc else "?")
        else:
            self._gone(f"could not start: {exc}")

    async def map(self, after: int | None, limit: int,
                  only: tuple[str, ...] | None = None) -> Batch | None:
        """The outbox rows of the next ``limit`` inbox rows after ``after`` (None: the stored
        cursor), for the destinations ``only`` names (None: all); None when the child failed
        (the caller maps in-process). When the child died or was stopped while mapping
        (:attr:`lost` true), the rows it had are suspects."""
        self.lost = False
        if not self.ready:
            return None
        if self.proc is not None and self.proc.poll() is not None:  # gone before this batch:
            self._gone(f"stopped ({exit_status(self.proc)})")  # no row of it is a suspect
            return None
        loop = asyncio.get_running_loop()
        try:
            answer = await loop.run_in_executor(self._thread, self._roundtrip, after, limit, only)
        except TimeoutError:
            self.lost = True
            self._gone(f"did not answer within {self.answer_timeout:g} s, killed")
            return None
        except (EOFError, OSError) as exc:
            self.lost = True
            self._gone(f"stopped ({exit_status(self.proc) or type(exc).__name__})")
            return None
        if answer[0] != "ok":
            log.warning("map process: %s; mapping this batch in the worker", answer[1])
            return None
        _, cursor, count, last_id, rows = answer
        return cursor, count, last_id, rows

    def _roundtrip(self, after: int | None, limit: int, only: tuple[str, ...] | None) -> Any:
        assert self._send is not None and self._recv is not None
        self._send.send((after, limit, only))
        if not self._recv.poll(self.answer_timeout):
            raise TimeoutError
        return self._recv.recv()

    def _gone(self, why: str) -> None:
        if self.lost:  # hookyard.delivery.suspects takes over
            log.warning("map process %s while mapping", why)
        else:
            log.warning("map process %s; mapping in the worker process (trying again in %g s)",
                        why, self.restart_after)
        self.failed()
        self._stop_child()

    def _stop_child(self) -> None:
        for conn in (self._send, self._recv):
            if conn is not None:
                try:
                    conn.close()
                except OSError:
                    pass
        self._send = self._recv = None
        reap(self.proc)
        self.proc = None

    async def close(self) -> None:
        """Stop the child (at shutdown); a batch it is mapping is not needed any more."""
        self.ready = False
        self._closing = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                proc.kill()
        # the child is gone, so a recv in progress ends (EOF): let the thread finish while the
        # loop still runs to take its answer
        await asyncio.to_thread(self._thread.shutdown, True)
        self._stop_child()


# -- the child ---------------------------------------------------------------------------------
def _child(recv: Connection, send: Connection) -> int:
    from ..logs import setup_logging
    from ..runtime import Runtime
    from .scrub import Scrubber

    try:
        config, db_path, modules, level, secrets = recv.recv()
    except EOFError:
        return 0
    try:
        # the worker's level, and its secrets redacted as in its own logs and stored texts
        setup_logging(logging.getLevelName(level).lower(), secrets)
        plugins: list[object] = [importlib.import_module(name) for name in modules]
        rt = Runtime.build(config, plugins, prepare=False)
        rt.scrubber = Scrubber(secrets)  # the worker's: its admin token, its env: values
        conn = sqlite3.connect(db_path, isolation_level=None, timeout=10)
        conn.execute("PRAGMA query_only = 1")
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which maps itself
        send.send(("error", f"{type(exc).__name__}: {exc}"))
        return 1
    send.send(("ready",))
    ahead: tuple[tuple[int, int], tuple[Any, ...]] | None = None
    while True:
        try:
            request = recv.recv()
        except EOFError:
            return 0
        if request is None:
            return 0
        after, limit, only = request
        if only is None and ahead is not None and ahead[0] == (after, limit):
            answer = ahead[1]
        else:
            answer = _map_batch(rt, conn, after, limit, only)
        send.send(answer)
        ahead = None
        if only is None and answer[0] == "ok" and answer[2] == limit:  # a full batch: more
            ahead = ((answer[3], limit), _map_batch(rt, conn, answer[3], limit))  # are waiting


def _map_batch(rt: Runtime, conn: sqlite3.Connection, after: int | None, limit: int,
               only: tuple[str, ...] | None = None) -> tuple[Any, ...]:
    """The answer to ``(after, limit, only)``: ``("ok", cursor, rows read, last id, outbox
    rows)``."""
    from .router import map_rows, read_batch

    try:
        cursor, rows = read_batch(conn, after, limit)
        mapped = map_rows(rt, rows, set(only) if only is not None else None)
        return "ok", cursor, len(rows), rows[-1][0] if rows else cursor, mapped
    except Exception as exc:  # noqa: BLE001 - e.g. the database is locked for 10 s
        return "error", f"{type(exc).__name__}: {exc}"


def main() -> int:
    """The child's entry point: requests on stdin, answers on the descriptor named by
    :data:`ANSWER_FD`; stdout and stderr are the worker's (a plugin's print lands where it
    would in the worker, line by line)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    recv = Connection(os.dup(0), writable=False)
    send = Connection(int(os.environ.pop(ANSWER_FD)), readable=False)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    if hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    try:
        return _child(recv, send)
    except (BrokenPipeError, EOFError):  # the parent is gone
        return 0


if __name__ == "__main__":
    sys.exit(main())
