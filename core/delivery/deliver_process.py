"""Delivering on another core: the ``deliver`` hooks' HTTP requests in a helper process.

A worker's event loop runs every delivery's HTTP request (aiohttp) beside the engine's own
bookkeeping (claims, results, routing), and the two together cost more than each alone: every
answer from the destination and every hand-off to the database threads is a trip for the GIL.
For a connector that says its ``deliver`` hook needs only its settings and the HTTP client
(``Connector.deliver_anywhere``), a child process built from the same config and plugins sends
the requests instead: the worker hands it the claimed rows' stored requests and gets one
``(messageId, DeliveryResult)`` per row back; claiming, deciding and storing the outcome stay
in the worker, exactly as before.

The child holds no state the worker needs. When it is not running yet, cannot start, or has
died, the worker delivers in its own process; deliveries the child had in hand when it died
are retryable results (``"deliver process stopped"``): they may have been sent, and at least
once allows sending them again. Used when ``[server] deliver_process`` is on (the default) and
the machine has more than one core, on POSIX systems, not in the single-file binary, and only
with plugins the child can load (installed, or given as modules).

The child is ``python -m hookyard.delivery.deliver_child`` (:mod:`.deliver_child`); the two
talk over a Unix socket pair (:mod:`.frames`). The socket's end (EOF) ends the child, which so
gives up with its parent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import pickle
import signal
import socket
import subprocess
import time
from typing import TYPE_CHECKING

import msgspec

from ..deliveries import DeliveryResult
from .deliver_child import SOCKET_FD, stuck_file
from .frames import HOLD, Framed, answer_decoder, encoder
from .helper_processes import HelperProcess, exit_status, helper_modules, reap, spawn

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("hookyard.delivery")
START_TIMEOUT = 60.0  # seconds the child may take to load the plugins and answer "ready"
RESTART_AFTER = 30.0  # seconds before a child that died is started again
ANSWER_GRACE = 5.0
"""Seconds past a request's own time limit before the child counts as stuck (a plugin blocking
its event loop): it is killed, and the worker delivers in its own process meanwhile."""
STOPPED = "deliver process stopped before answering (the request may have been sent)"
CRASH_LOOP_SECONDS = 2.0
"""A child that ended within this many seconds of being ready makes the next start wait
(kill -9s 8 s apart from outside, each restart waited longer: chaos re-check)."""
CRASHED = ("the deliver process ended twice while sending this delivery, the second time alone:"
           " its plugin's deliver hook ends its process on it")

Sent = list[tuple[str, DeliveryResult]]
"""(messageId, result) for each stored request of a batch, in order."""
Answer = tuple[float, Sent]
"""The hook's latency (ms) and what it sent."""
NOT_STARTED: Answer = (0.0, [])
"""The answer for a batch the child did not start (it waited there past its ``start_by``, or
the worker is stopping): the caller gives its rows back, no attempt was made."""
LOST: Answer = (0.0, [])
"""The answer for a batch whose answer is lost: the child stopped (killed, crashed, or stuck
and killed) while it had the batch, which may have been sent. The caller counts an attempt of
each delivery (:data:`STOPPED`) but not a failure of the destination: a helper's death is not
the destination's, and the batches it held made a healthy destination pause (reviewer)."""


def prepared_wrappers(rt: Runtime) -> list[str]:
    """The plugins that wrap ``deliver`` and have a ``startup`` hook: their wrapper may use
    what their start-up made, and the child runs no ``startup`` (a connector's own ``deliver``
    declares it needs nothing else, ``Connector.deliver_anywhere``; a wrapper cannot). With
    one, every delivery stays in the worker, where the wrapper works as it was written."""
    started = {id(i.plugin) for i in rt.pm.hook.startup.get_hookimpls()}
    return sorted({rt.pm.get_name(i.plugin) or "?" for i in rt.pm.hook.deliver.get_hookimpls()
                   if (i.wrapper or i.hookwrapper) and id(i.plugin) in started})


class DeliverProcess(HelperProcess):
    """The worker's side: starts the child and has it deliver claimed rows.

    :meth:`deliver` answers None whenever the child is not ready (the caller delivers
    in-process then; the child is started again later)."""

    def __init__(self, rt: Runtime, modules: list[str], destinations: list[str]) -> None:
        super().__init__(RESTART_AFTER)
        self.rt = rt
        self.modules = modules
        self.destinations = destinations
        self.proto: Framed | None = None
        self.waiting: dict[int, asyncio.Future[Answer]] = {}
        self.next_id = 0
        self.answer_grace = ANSWER_GRACE
        # destinations whose deliver hook ran past its time limit here, and had the child
        # killed: most likely it blocks its event loop, so while the child is down their
        # workers wait for it instead of delivering in the worker's process, where the same
        # hook would hold ingest and every other destination (re-check)
        self.blamed: set[str] = set()
        self._judging = False  # asking a stuck child which hook holds it
        # the destination whose hook had the last child killed (it held its event loop): the
        # others' batches it had are its victims, not suspects (worker._lost); None when the
        # child ended by itself or could not say
        self.lost_to: str | None = None
        self.lost_alone = False  # the last child that ended had one batch (worker._lost)
        # it was killed (kill -9, the kernel's OOM killer): no delivery is found guilty of it
        self.lost_to_sigkill = False
        self.failed_starts = 0  # starts in a row that failed: the next waits 1, 2, 4... s
        self.cannot_start = False  # the last start failed: workers deliver in-process meanwhile
        self.ready_at = 0.0  # (monotonic) when the child last answered "ready"
        self.quick_ends = 0  # children in a row that ended soon after being ready
        # destinations with deliveries sent again one at a time after a child ended with them
        # (worker.suspects): meanwhile the child runs one batch at a time, whoever's, so that
        # one that ends it again is known to have done so alone
        self.probation: set[str] = set()
        self._one_at_a_time = asyncio.Lock()

    @classmethod
    def wanted(cls, rt: Runtime) -> DeliverProcess | None:
        """A deliver process for ``rt``'s destinations whose connector allows it, or None."""
        names = [n for n, d in rt.destinations.items()
                 if d.connector.deliver_anywhere and d.config.enabled]
        if not names or not rt.config.server.deliver_process:
            return None
        modules = helper_modules(rt)
        if modules is None:
            return None
        prepared = prepared_wrappers(rt)
        if prepared:
            log.info("delivering in the worker process: plugin %s wraps deliver and implements"
                     " startup, which the deliver process does not run", ", ".join(
                         repr(p) for p in prepared))
            return None
        return cls(rt, modules, names)

    # -- the worker's side ------------------------------------------------------------------
    def start(self) -> None:
        """Start the child in the background; :meth:`deliver` uses it once it is ready."""
        if not self.may_start():
            return
        self._starting = asyncio.get_running_loop().create_task(self._start())

    async def _start(self) -> None:
        from ..logs import config_secrets

        ours, theirs = socket.socketpair()
        try:
            self.proc = spawn("hookyard.delivery.deliver_child", theirs.fileno(), SOCKET_FD)
        except OSError as exc:
            ours.close()
            self._could_not_start(f"could not start: {exc}")
            return
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        first: asyncio.Future[bytes] = loop.create_future()

        def on_frame(frame: bytes) -> None:
            if not first.done():
                first.set_result(frame)
            else:
                self._answered(frame)

        def on_lost() -> None:
            if not first.done():  # it ended before it answered
                first.set_exception(ConnectionError("it exited"))
            self._lost()

        proto = self.proto = Framed(on_frame, on_lost)
        await loop.connect_accepted_socket(lambda: proto, ours)
        init = (self.rt.config, self.modules, logging.getLogger().level, config_secrets(self.rt))
        proto.send(pickle.dumps(init))
        try:
            async with asyncio.timeout(START_TIMEOUT):
                answer = await first
        except TimeoutError:
            self._could_not_start(f"could not start: no answer within {START_TIMEOUT:g} s")
            return
        except ConnectionError:
            status = exit_status(self.proc)
            if status.startswith("killed by signal"):  # killed from outside while it started:
                # not a child that cannot start, after which the workers deliver in-process
                # (a poison event stored then ended the server: chaos re-check)
                self._could_not_start(f"ended while it started ({status})", in_worker=False)
                return
            self._could_not_start(f"could not start ({status or 'connection closed'})")
            return
        if answer != b"ready":
            self._could_not_start(
                f"could not start: {answer.decode(errors='replace').removeprefix('error: ')}")
            return
        self.ready = True
        self.cannot_start = False
        self.failed_starts = 0
        self.ready_at = time.monotonic()
        self._starting = None
        log.info("deliver process %s ready: %s deliver on another core",
                 self.proc.pid, ", ".join(self.destinations))

    def _answered(self, frame: bytes) -> None:
        try:
            req_id, started, latency, results = answer_decoder.decode(frame)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            log.error("deliver process sent an unreadable answer (%s)", exc)
            return
        fut = self.waiting.pop(req_id, None)
        if fut is not None and not fut.done():
            fut.set_result((latency, results) if started else NOT_STARTED)

    def _lost(self) -> None:
        if self.ready and not self._closing:
            self.lost_to = None
            status = exit_status(self.proc)
            self.lost_to_sigkill = status == "killed by signal 9"
            self._gone(f"stopped ({status or 'connection closed'})", self._restart_delay(),
                       in_worker=False)
            self.start()
        else:
            self.ready = False
            self._fail_waiting()

    async def deliver(
        self, destination: str, requests: list[bytes], start_by: float, deadline: float
    ) -> Answer | None:
        """The latency and the (messageId, result) of each stored request, delivered by the
        child, which runs at most the destination's ``concurrency`` batches at once, in the
        order they came, and gives the hook until ``deadline`` (``time.monotonic()``: one clock
        for every process of the machine). :data:`NOT_STARTED` when the batch waited in the
        child past ``start_by``; None when the child is not ready (the caller delivers
        in-process)."""
        if not self.ready or self.proto is None:
            self.start()
            return None
        if self.probation:
            async with self._one_at_a_time:
                if not self.ready or self.proto is None:  # it ended meanwhile
                    return None
                # the wait for the lock is not the child's queue: a batch behind a slow one
                # came back not started, claimed again, and never went (chaos re-check)
                start_by = max(start_by, time.monotonic() + 1.0)
                return await self._send(destination, requests, start_by, deadline)
        return await self._send(destination, requests, start_by, deadline)

    async def _send(
        self, destination: str, requests: list[bytes], start_by: float, deadline: float
    ) -> Answer:
        assert self.proto is not None
        self.next_id += 1
        req_id = self.next_id
        fut: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.waiting[req_id] = fut
        self.proto.send(encoder.encode((req_id, destination, start_by, deadline, requests)))
        try:
            async with asyncio.timeout(max(0.0, deadline - time.monotonic()) + self.answer_grace):
                return await fut
        except TimeoutError:
            if self.ready and not self._judging:  # the first of its batches to time out
                await self._kill_stuck()  # (it still counts among the batches the child had)
            self.waiting.pop(req_id, None)
        except ConnectionError:
            pass
        return LOST

    async def _kill_stuck(self) -> None:
        """The child has answered nothing past a hook's time limit: ask it which destination's
        hook holds its event loop (:func:`.deliver_child.report_stuck`), blame that one, and
        kill it. The blamed destination waits for the next child instead of running the same
        hook on the worker's loop, where it would hold ingest; the others deliver in the worker
        meanwhile. A child that cannot say (stopped, or stuck outside a hook) blames none."""
        self._judging = True
        try:
            culprit = await self._stuck_destination()
        finally:
            self._judging = False
        if not self.ready:  # gone meanwhile
            return
        if culprit is None:
            self.lost_to = None
            self._gone(f"did not answer within {self.answer_grace:g} s of a deliver hook's"
                       " time limit, killed", self._restart_delay(), in_worker=False)
            self.start()
            return
        self.blamed.add(culprit)
        self.lost_to = culprit
        plugin = self.rt.destinations[culprit].config.plugin
        self._gone(f"did not answer within {self.answer_grace:g} s of a deliver hook's time"
                   f" limit: destination {culprit}'s (plugin {plugin!r}) holds its event loop,"
                   f" killed; {culprit} waits for it to start again rather than hold the"
                   " worker's")

    async def _stuck_destination(self) -> str | None:
        proc = self.proc
        if proc is None:
            return None
        path = stuck_file(proc.pid)
        path.unlink(missing_ok=True)
        try:
            os.kill(proc.pid, signal.SIGUSR1)
        except OSError:
            return None
        for _ in range(10):
            await asyncio.sleep(0.05)
            try:
                name = path.read_text()
            except OSError:
                continue
            path.unlink(missing_ok=True)
            return name if name in self.rt.destinations else None
        return None

    def hold(self, destination: str, until: float) -> None:
        """``destination`` rate-limits until ``until`` (``time.monotonic()``): the batches of
        it waiting in the child are answered :data:`NOT_STARTED` (given back, not left to time
        out: a hold longer than a lease killed the child as stuck; re-check), and none starts
        before then."""
        if self.ready and self.proto is not None:
            self.proto.send(encoder.encode((HOLD, destination, until, 0.0, [])))

    def stop_starting(self, destination: str) -> None:
        """The worker of ``destination`` stops: batches the child has not started yet are
        answered :data:`NOT_STARTED` (their rows are given back, as the worker does with the
        batches it claimed ahead), those in flight finish."""
        if self.ready and self.proto is not None:
            self.proto.send(encoder.encode((0, destination, 0.0, 0.0, [])))

    def _fail_waiting(self) -> None:
        waiting, self.waiting = self.waiting, {}
        self.lost_alone = len(waiting) == 1
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(ConnectionError(STOPPED))

    def _gone(self, why: str, restart_in: float | None = None, in_worker: bool = True) -> None:
        """The child is gone: the next one may start ``restart_in`` seconds from now (None:
        ``restart_after``); ``in_worker``: the workers deliver in their own process meanwhile
        (else they wait for the next child: :meth:`DestinationWorker._held`)."""
        self.failed()
        if restart_in is not None:
            self._failed_at = time.monotonic() - self.restart_after + restart_in
        wait = restart_in if restart_in is not None else self.restart_after
        meanwhile = ("delivering in the worker process" if in_worker else "its destinations wait"
                     " for a new one, which takes the deliveries it had one batch at a time")
        log.warning("deliver process %s; %s (%s)", why, meanwhile,
                    "started again at once" if wait <= 0 else f"trying again in {wait:g} s")
        self._stop_child()
        self._fail_waiting()

    def _could_not_start(self, why: str, in_worker: bool = True) -> None:
        """A start failed: tried again after 1, 2, 4... s, at most ``restart_after`` (a child
        killed while it started held the deliveries it was to take for 30 s: chaos audit);
        ``in_worker``: the workers deliver in-process until one succeeds (else they wait)."""
        if in_worker:
            self.cannot_start = True
        self.failed_starts += 1
        self._gone(why, min(self.restart_after, 2.0 ** (self.failed_starts - 1)), in_worker)

    def _restart_delay(self) -> float:
        """When a child that ended by itself is replaced: at once (its destinations wait for
        it, rather than deliver in-process, where what ended it could end the server), after
        1, 3, 7... s (at most ``restart_after``) when the ones before each ended within
        :data:`CRASH_LOOP_SECONDS` of being ready."""
        if not self.probation:  # (finding a poison delivery ends children quickly: no loop)
            quick = time.monotonic() - self.ready_at < CRASH_LOOP_SECONDS
            self.quick_ends = self.quick_ends + 1 if quick else 0
        return min(self.restart_after, 2.0 ** self.quick_ends - 1)

    def _stop_child(self) -> None:
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()
        self.proto = None
        reap(self.proc)
        self.proc = None

    async def close(self) -> None:
        """Stop the child (at shutdown, after the workers: nothing is in flight)."""
        self._closing = True
        self.ready = False
        if self._starting is not None:
            self._starting.cancel()
        proc = self.proc
        if self.proto is not None and self.proto.transport is not None:
            self.proto.transport.close()  # EOF: the child closes its clients and ends
        if proc is not None:
            try:
                await asyncio.to_thread(proc.wait, 5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._stop_child()
        self._fail_waiting()
