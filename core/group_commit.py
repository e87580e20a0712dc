"""The group-commit writer thread shared by every storage backend (SQLite in
:mod:`hookyard.database`, PostgreSQL in :mod:`hookyard.storage.postgres`).

Writes are functions ``fn(conn) -> result``. Callers queue them (:meth:`GroupCommitWriter.write`
from a coroutine, :meth:`GroupCommitWriter.submit` from a thread); the writer thread takes every
job queued at that moment as one group and commits it in one transaction, then hands each job's
result (or error) to its waiter: one wake-up per event loop and group. The backend's
``_writer_loop`` opens the connection and runs the groups.

A database that stops answering without closing the connection (a hung server, a network
partition behind a proxy) would hold the writer, and every waiter, for as long as it lasts.
A watchdog thread gives up on a group that has not finished in ``write_timeout`` seconds
(``[storage] write_timeout_seconds``): its waiters and every job queued behind it fail with
:class:`~hookyard.errors.StorageUnavailable` (ingest answers 503, the client retries; a job
of the stuck group may still commit later, which messageId dedupe makes harmless), and new
writes fail at once until the writer finishes that group.

A write refused as storage unavailable (a lock another process holds, a full disk, a read-only
file) starts an outage, logged once; the first commit that succeeds ends it (logged once, with
how many writes were refused). When failing took long (a write waited for a lock), new writes
are refused at once for :data:`REFUSE_AFTER_FAILURE` seconds, then one goes through to try
again, instead of each waiting as long (and the writes queued meanwhile fail with it). A
failure only a restart can mend (the database file deleted or replaced, an fsync that failed)
refuses every write from then on (:meth:`GroupCommitWriter.fail_for_good`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from typing import Any, TypeVar

from .errors import StorageUnavailable
from .loops import running_loop

T = TypeVar("T")
log = logging.getLogger("hookyard.database")

MAX_JOBS_PER_COMMIT = 2000
WRITE_TIMEOUT = 10.0
"""Seconds a group may take before its waiters are failed (``[storage] write_timeout_seconds``;
under the 15 s that Segment's libraries wait for an answer, so they get a 503, not a timeout)."""
WATCH_INTERVAL = 0.5
REFUSE_AFTER_FAILURE = 1.0
"""Seconds new writes are refused at once after one failed as storage unavailable (rather
than each waiting for the lock or the disk again); then one write tries again."""


PROBE_QUIET_SECONDS = 10.0
"""A readiness probe's write ends an outage only when no other write failed for this long: on a
full disk its one-row update still fits where ingest's inserts do not, and every probe ended the
outage (``/readyz`` 200 while ingest was refused, two log lines per probe; resources audit).
An idle server still becomes ready by itself, this long after its last failure."""


def _only_probes(results: list[tuple[Any, bool, Any]]) -> bool:
    """Whether a group held nothing but readiness probes (functions marked
    ``readiness_probe``)."""
    return all(getattr(job.fn, "readiness_probe", False) for job, _, _ in results)


class _Job:
    __slots__ = ("fn", "future", "durable")

    def __init__(self, fn: Callable[[Any], Any], durable: bool = True) -> None:
        self.fn = fn
        self.durable = durable
        self.future: Future[Any] = Future()


class _AsyncJob:
    """A job awaited by a coroutine: settled on its event loop, one wake-up per group commit."""

    __slots__ = ("fn", "loop", "future", "durable")

    def __init__(
        self, fn: Callable[[Any], Any], loop: asyncio.AbstractEventLoop, durable: bool = True
    ) -> None:
        self.fn = fn
        self.loop = loop
        self.durable = durable
        self.future: asyncio.Future[Any] = loop.create_future()


_Settled = dict[asyncio.AbstractEventLoop, list[tuple["asyncio.Future[Any]", bool, Any]]]


def _settle_async(outcomes: list[tuple[asyncio.Future[Any], bool, Any]]) -> None:
    """Runs on the awaiting loop; a future whose awaiter was cancelled is skipped."""
    for fut, ok, value in outcomes:
        if fut.done():
            continue
        if ok:
            fut.set_result(value)
            continue
        try:
            fut.set_exception(value)
        except TypeError:  # StopIteration cannot be set on a future
            fut.set_exception(RuntimeError(f"write job raised {value!r}"))


def _settle(job: _Job | _AsyncJob, ok: bool, value: Any, by_loop: _Settled) -> None:
    if isinstance(job, _AsyncJob):
        by_loop.setdefault(job.loop, []).append((job.future, ok, value))
        return
    if job.future.done():  # cancelled by its waiter: nothing to tell
        return
    try:
        if ok:
            job.future.set_result(value)
        else:
            job.future.set_exception(value)
    except InvalidStateError:  # cancelled meanwhile
        pass


Job = _Job | _AsyncJob
"""A queued write job (sync waiter or coroutine), as the backends' writer loops see it."""


def _wake_loops(by_loop: _Settled) -> None:
    for loop, outcomes in by_loop.items():
        try:
            loop.call_soon_threadsafe(_settle_async, outcomes)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


class GroupCommitWriter:
    """The writer-thread half shared by every backend (SQLite here, PostgreSQL in
    :mod:`hookyard.storage.postgres`): the job queue, the thread's lifecycle, taking every job
    queued at that moment as one group, and handing each job's result to its waiter.

    A subclass implements ``_writer_loop`` (open its connection, then run
    :meth:`_next_group` groups in one transaction each) and settles them with :meth:`_deliver`.
    """

    WRITER_NAME = "hookyard-db-writer"

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[_Job | _AsyncJob | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._local = threading.local()
        self._lock = threading.Lock()
        self.write_timeout = WRITE_TIMEOUT  # 0: wait forever (a migration)
        self._group: tuple[float, list[_Job | _AsyncJob]] | None = None  # (started, jobs)
        self._stuck: str | None = None  # why writes fail at once (see the module docstring)
        self._stuck_until = 0.0  # a retry after an outage's failure: when the next one may try
        self._fatal = False  # _stuck stays until a restart
        self._outage: list[float] | None = None  # [since (monotonic), writes refused meanwhile]
        self._given_up: tuple[float, list[_Job | _AsyncJob]] | None = None  # the watchdog's
        self._watch_lock = threading.Lock()
        self.last_unavailable: tuple[float, str] | None = None  # (monotonic, error) of a failure

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the writer thread (idempotent)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._writer_loop, name=self.WRITER_NAME, daemon=True
                )
                self._thread.start()
                threading.Thread(target=self._watch, args=(self._thread,),
                                 name=f"{self.WRITER_NAME}-watchdog", daemon=True).start()

    def _watch(self, writer: threading.Thread) -> None:
        """The watchdog (see the module docstring): runs while ``writer`` does."""
        while writer.is_alive():
            writer.join(WATCH_INTERVAL)
            self._watch_files()
            group, limit = self._group, self.write_timeout
            if group is not None and limit > 0 and time.monotonic() - group[0] > limit:
                self._give_up(group)

    def _give_up(self, group: tuple[float, list[_Job | _AsyncJob]]) -> None:
        """Fail the waiters of a stuck ``group`` (once) and of every job queued meanwhile."""
        with self._watch_lock:
            if self._group is not group:  # it finished meanwhile
                return
            failing: list[_Job | _AsyncJob] = []
            if self._given_up is not group:  # its waiters are failed once
                self._given_up = group
                failing = list(group[1])
                reason = (f"storage unavailable: a write has not finished in"
                          f" {self.write_timeout:g} s (the database does not answer)")
                if not self._fatal:  # (a refusal for good keeps its own reason)
                    self._stuck, self._stuck_until = reason, 0.0
                log.error("%s; failing its %d waiters and new writes until it does",
                          reason, len(group[1]))
                if self._outage is None:
                    self._outage = [time.monotonic(), 0]
            if self._take_queued(failing, limit=sys.maxsize):
                self._queue.put(None)  # the stop request stays for the writer
            error = StorageUnavailable(self._stuck or "storage unavailable")
        self._deliver([(job, False, error) for job in failing])

    def _watch_files(self) -> None:
        """A backend's check of its files, every :data:`WATCH_INTERVAL` (none by default)."""

    def _stop_writer(self) -> None:
        """Let the writer finish the queued jobs and end; call with ``self._lock`` held."""
        if self._thread is not None:
            self._queue.put(None)
            # a writer the watchdog found stuck (a database that does not answer) is not
            # waited for: a SIGTERM took 48 s behind a hung PostgreSQL, past systemd's 30 s
            self._thread.join(timeout=1 if self._stuck is not None else 30)
            self._thread = None

    def _writer_loop(self) -> None:
        raise NotImplementedError

    # -- writes ------------------------------------------------------------------------------
    def submit(self, fn: Callable[[Any], T], *, durable: bool = True) -> Future[T]:
        """Queue a write job; the returned future resolves after its commit (``durable``:
        see :meth:`write`)."""
        if self._thread is None:
            self.start()
        job = _Job(fn, durable)
        if self._stuck is not None and self._refused():
            job.future.set_exception(StorageUnavailable(self._stuck))
            return job.future
        self._queue.put(job)
        return job.future

    async def write(self, fn: Callable[[Any], T], *, durable: bool = True) -> T:
        """Run ``fn(conn)`` in the next group commit and return its result once committed.

        ``durable=False`` is for bookkeeping that may be lost in a power cut (not in a crash
        of the process) because it is redone from what is durable: the router's outbox rows
        (routed again from the inbox), claims and attempt results (delivered again, which
        at-least-once allows). A group made only of such jobs commits without waiting for
        the disk (SQLite: answered without waiting for the WAL's fsync; PostgreSQL:
        ``synchronous_commit = off``); a group with any durable job waits as configured.
        """
        if self._thread is None:
            self.start()
        if self._stuck is not None and self._refused():
            raise StorageUnavailable(self._stuck)
        job = _AsyncJob(fn, running_loop(), durable)
        self._queue.put(job)
        return await job.future  # type: ignore[no-any-return]

    def _refused(self) -> bool:
        """Whether a new write fails at once (``_stuck`` is set): always while the writer is
        stuck or after :meth:`fail_for_good`; during an outage, every write but one each
        :data:`REFUSE_AFTER_FAILURE` seconds, which tries again (the others are refused until
        its group has an answer)."""
        until = self._stuck_until
        if until and not self._fatal and time.monotonic() >= until:
            # the others wait for this one's answer: at most write_timeout (its lock wait is
            # less); with no write_timeout (0), as long as a default one
            self._stuck_until = time.monotonic() + (self.write_timeout or WRITE_TIMEOUT)
            return False
        outage = self._outage
        if outage is not None:
            outage[1] += 1
        return True

    def fail_for_good(self, reason: str) -> None:
        """Refuse every write from now on with ``reason`` (logged once, critical): what only a
        restart can mend, such as a database file replaced under the open connection."""
        with self._watch_lock:
            if self._fatal:
                return
            self._fatal, self._stuck, self._stuck_until = True, reason, 0.0
            if self._outage is None:
                self._outage = [time.monotonic(), 0]
        self.last_unavailable = (time.monotonic(), reason)
        log.critical("%s", reason)

    def _went_down(self, reason: str, failed: int = 1) -> None:
        """A write failed as storage unavailable: start or go on with the outage. A group that
        took long to fail (it waited for a lock another process holds) has new writes refused
        at once for a while; one that failed at once (a full disk, a connection that broke and
        is opened again) changes nothing for the next write."""
        now = time.monotonic()
        self.last_unavailable = (now, reason)
        group = self._group
        slow = group is not None and now - group[0] >= REFUSE_AFTER_FAILURE
        queued: list[_Job | _AsyncJob] = []
        with self._watch_lock:
            if self._outage is not None:
                self._outage[1] += failed
            if self._fatal or (self._stuck is not None and not self._stuck_until):
                return  # refused for good, or the watchdog's stuck group: already reported
            if slow or self._stuck_until:
                self._stuck, self._stuck_until = reason, now + REFUSE_AFTER_FAILURE
                # the writes queued while this one waited would each wait as long again
                if self._take_queued(queued, limit=sys.maxsize):
                    self._queue.put(None)  # the stop request stays for the writer
            if self._outage is None:
                self._outage = [now, failed + len(queued)]
                log.error("%s: writes are refused (503) until it answers again", reason)
            elif queued:
                self._outage[1] += len(queued)
        if queued:
            error = StorageUnavailable(reason)
            by_loop: _Settled = {}
            for job in queued:
                _settle(job, False, error, by_loop)
            _wake_loops(by_loop)

    def _went_up(self) -> None:
        """A group committed: the outage, if any, is over."""
        with self._watch_lock:
            outage = self._outage
            if outage is None or self._fatal:
                return
            self._outage = None
            self.last_unavailable = None  # /readyz: ready at once, not 10 s later
            if self._stuck_until:
                self._stuck, self._stuck_until = None, 0.0
        log.warning("storage answers again after %.1f s: writes are taken again (%d refused"
                    " or failed meanwhile)", time.monotonic() - outage[0], int(outage[1]))

    def recent_failure(self, within: float) -> str | None:
        """The error of a write refused as "storage unavailable" in the last ``within``
        seconds (``/readyz``: the database answers, but does not take writes), or None."""
        if self._stuck is not None:
            return self._stuck
        failed = self.last_unavailable
        if failed is not None and (self._outage is not None  # not over until a write is taken
                                   or time.monotonic() - failed[0] < within):
            return failed[1]
        return None

    def write_sync(self, fn: Callable[[Any], T]) -> T:
        """Blocking :meth:`write`, for the CLI and tests."""
        return self.submit(fn).result()

    # -- the writer thread's side ------------------------------------------------------------
    def _next_group(self) -> tuple[list[_Job | _AsyncJob], bool] | None:
        """Block for the next job, then take every job queued behind it (up to
        ``MAX_JOBS_PER_COMMIT``). Returns the group and whether a stop request ended it, or
        None when the stop request came first."""
        if self._group is not None:  # the previous group is finished
            with self._watch_lock:
                self._group = None
                if self._stuck is not None and not self._stuck_until and not self._fatal:
                    self._stuck = None  # the watchdog's: the group it gave up on is done
        job = self._queue.get()
        if job is None:
            return None
        jobs: list[_Job | _AsyncJob] = [job]
        stop = self._take_queued(jobs, MAX_JOBS_PER_COMMIT)
        self._group = (time.monotonic(), jobs)
        return jobs, stop

    def _take_queued(self, jobs: list[_Job | _AsyncJob], limit: int) -> bool:
        """Move the jobs queued at this moment into ``jobs`` (up to ``limit`` in all); True
        when a stop request came first."""
        while len(jobs) < limit:
            try:
                nxt = self._queue.get_nowait()
            except queue.Empty:
                return False
            if nxt is None:
                return True
            jobs.append(nxt)
        return False

    @staticmethod
    def _must_sync(jobs: list[_Job | _AsyncJob]) -> bool:
        """Whether the group's commit must wait for the disk: any job in it is durable
        (see :meth:`write`)."""
        return any(job.durable for job in jobs)

    def _deliver(self, results: list[tuple[_Job | _AsyncJob, bool, Any]], *,
                 wrote: bool = True) -> None:
        """Give each waiter its result or error (one wake-up per event loop). ``wrote``: the
        group changed the database (only such a commit ends an outage)."""
        by_loop: _Settled = {}
        committed, down, failed = False, None, 0
        for job, ok, value in results:
            if ok:
                committed = True
            elif isinstance(value, StorageUnavailable):
                down = down or str(value)
                failed += 1
            _settle(job, ok, value, by_loop)
        if down is not None and not committed:  # the group failed: an outage
            self._went_down(down, failed)
        elif down is not None:  # one job's own failure (a statement timeout) in a group that
            self.last_unavailable = (time.monotonic(), down)  # committed: no outage
        elif committed and wrote and self._outage is not None and not (
                _only_probes(results) and self._failed_within(PROBE_QUIET_SECONDS)):
            self._went_up()
        _wake_loops(by_loop)

    def _failed_within(self, seconds: float) -> bool:
        failed = self.last_unavailable
        return failed is not None and time.monotonic() - failed[0] < seconds
