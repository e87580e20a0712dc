"""PostgreSQL storage: the group-commit writer shared with SQLite (:class:`hookyard.group_commit.GroupCommitWriter`), per-thread readers.

Several hookyard nodes share one PostgreSQL database. Each node has one writer connection
(a thread that runs every queued ``fn(conn)`` job in its own SAVEPOINT and commits them
together, so an ingest is acknowledged only after COMMIT returned) and one autocommit read
connection per thread. What keeps the nodes from stepping on each other is in the SQL
(:mod:`hookyard.storage.pg_queue`): unique constraints, row locks, ``SKIP LOCKED`` and leases,
never an in-memory state.

Errors: a lost or refused connection, a full disk, a read-only server become
:class:`hookyard.errors.StorageUnavailable` (503, retry); bad data in a query parameter (a
text where a number is expected) becomes :class:`hookyard.errors.BadRequest` (400).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import psycopg
from psycopg import sql as pgsql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from ..errors import BadRequest, StorageUnavailable
from ..group_commit import GroupCommitWriter, Job
from .base import POSTGRESQL
from .pg_conn import PgConnection

T = TypeVar("T")
log = logging.getLogger("hookyard.database")

CHANNEL = "hookyard"  # NOTIFY channel; the payload is the schema, so schemas do not mix
CONNECT_TIMEOUT = 10
NETWORK_DEFAULTS = {
    "connect_timeout": str(CONNECT_TIMEOUT),
    "keepalives": "1", "keepalives_idle": "10", "keepalives_interval": "5",
    "keepalives_count": "3", "tcp_user_timeout": "30000",
}
"""libpq settings that find a dead server or network within about 30 s (TCP keepalives, and
data the server never acknowledges), instead of the kernel's two hours; a query to a server
that accepts but never answers is cut by the writer's ``write_timeout`` instead. Each one
given in ``[storage] url`` (``?keepalives_idle=60``) wins."""


def connect(url: str, schema: str) -> PgConnection:
    """An autocommit connection whose ``search_path`` is ``schema`` (which may not exist yet)."""
    try:
        given = conninfo_to_dict(url)
        defaults = {k: v for k, v in NETWORK_DEFAULTS.items() if k not in given}
        raw = psycopg.connect(make_conninfo(url, **defaults), autocommit=True,
                              application_name=f"hookyard {schema}"[:63])
    except psycopg.Error as exc:
        raise StorageUnavailable(f"storage unavailable: cannot connect to PostgreSQL: {exc}") from None
    raw.execute(pgsql.SQL("SET search_path TO {}").format(pgsql.Identifier(schema)))
    return PgConnection(raw, schema)


PASSING_REFUSALS = ("starting up", "shutting down", "in recovery", "too many clients",
                    "connection slots are reserved", "not yet accepting connections")
"""What a server that answered but refused a connection says when it will take one soon (the
texts of SQLSTATE 57P03 and 53300, which libpq does not give as codes at connect time)."""


def refused_for_good(exc: StorageUnavailable) -> bool:
    """True when ``exc`` (from :func:`connect`) is a server's own refusal that waiting will not
    mend: a wrong password, role or database name. A refused or timed-out connection, and a
    server that is starting up or full, will mend."""
    text = str(exc)
    return "FATAL:" in text and not any(passing in text for passing in PASSING_REFUSALS)


def wait_for_server(url: str, schema: str, seconds: float) -> None:
    """Return once PostgreSQL takes a connection; wait up to ``seconds`` for a server that is not
    up yet (a database container started beside hookyard's), logging while it waits. A refusal
    for good (:func:`refused_for_good`) or the end of the wait raises StorageUnavailable."""
    deadline = time.monotonic() + seconds
    next_word = 0.0
    waited_since = time.monotonic()
    while True:
        try:
            connect(url, schema).close()
        except StorageUnavailable as exc:
            now = time.monotonic()
            if refused_for_good(exc) or now >= deadline:
                if now - waited_since >= 1:
                    raise StorageUnavailable(f"{exc} (waited {now - waited_since:.0f} s;"
                                             " [storage] connect_wait_seconds)") from None
                raise
            if now >= next_word:
                log.warning("%s; waiting for it up to %.0f s more ([storage] connect_wait_seconds)",
                            str(exc).splitlines()[0], deadline - now)
                next_word = now + 10
            time.sleep(min(1.0, max(0.0, deadline - now)))
            continue
        if next_word:
            log.info("PostgreSQL answered after %.0f s", time.monotonic() - waited_since)
        return


def storage_error(exc: BaseException) -> BaseException:
    """psycopg errors as hookyard errors (see the module docstring); others unchanged."""
    if isinstance(exc, psycopg.errors.LockNotAvailable | psycopg.errors.DeadlockDetected):
        return exc  # a lost race, handled by the caller
    if isinstance(exc, psycopg.errors.ProgramLimitExceeded):  # a value too large for an index:
        # this request's, and it would fail again (not an outage, nor a 503 to retry forever)
        return BadRequest(f"a value is too large to store: {str(exc).splitlines()[0]}")
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | psycopg.InternalError):
        return StorageUnavailable(f"storage unavailable: {type(exc).__name__}: {exc}")
    if isinstance(exc, psycopg.errors.ReadOnlySqlTransaction | psycopg.errors.InsufficientPrivilege):
        return StorageUnavailable(f"storage unavailable: {type(exc).__name__}: {exc}")
    if isinstance(exc, psycopg.DataError):
        return BadRequest(f"invalid value: {str(exc).splitlines()[0]}")
    return exc


LOST_RACE_RETRIES = 3
"""How often a job that lost a race with another node's transaction runs again (in the same
transaction, from a savepoint) before it fails. Two nodes storing the same messageIds in
different orders wait on each other's unique-index entries; PostgreSQL ends one transaction's
statement with a deadlock error, and the other goes on."""
LOST_RACES = (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure)


class PgDatabase(GroupCommitWriter):
    """hookyard's tables in a PostgreSQL database (``[storage] url = "postgresql://..."``)."""

    dialect = POSTGRESQL
    WRITER_NAME = "hookyard-pg-writer"

    def __init__(self, url: str, schema: str = "public") -> None:
        super().__init__()
        self.url = url
        self.schema = schema
        self._readers: list[PgConnection] = []
        self._listener: threading.Thread | None = None
        self._listener_stop = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    def stop(self) -> None:
        """Finish queued writes, stop the writer and close every connection."""
        self._listener_stop.set()
        if self._listener is not None:
            self._listener.join(timeout=5)
            self._listener = None
        with self._lock:
            self._stop_writer()
            for conn in self._readers:
                try:
                    conn.close()
                except psycopg.Error:
                    pass
            self._readers.clear()
            self._local = threading.local()

    # -- writes ------------------------------------------------------------------------------
    def _writer_loop(self) -> None:
        conn: PgConnection | None = None
        try:
            while (group := self._next_group()) is not None:
                jobs, stop = group
                conn = self._begun(conn, jobs)
                if conn is not None and not self._run_group(conn, jobs):
                    conn.close()
                    conn = None
                if stop:
                    return
        finally:
            if conn is not None:
                conn.close()

    def _begun(self, conn: PgConnection | None, jobs: list[Job]) -> PgConnection | None:
        """A connection with the transaction of ``jobs`` begun: ``conn`` while it works, else
        a new one. A connection the server or a pooler closed while it was idle
        (``idle_session_timeout``, a restart, ``pg_terminate_backend``) fails at ``BEGIN``,
        before anything ran, so the group goes to a new one instead of 503 to its clients.
        None when no connection can be had: the jobs are failed."""
        if conn is not None and not conn.closed:
            try:
                self._begin(conn, jobs)
                return conn
            except psycopg.Error as exc:
                log.debug("PostgreSQL connection lost while idle: %s; reconnecting", exc)
                conn.close()
        try:
            conn = connect(self.url, self.schema)
        except StorageUnavailable as exc:
            self._fail_all(jobs, exc)
            time.sleep(0.2)  # do not spin while the server is away
            return None
        try:
            self._begin(conn, jobs)
        except psycopg.Error as exc:
            self._fail_all(jobs, exc)
            conn.close()
            return None
        return conn

    def _run_group(self, conn: PgConnection, jobs: list[Job]) -> bool:
        """Run ``jobs`` in the transaction just begun (:meth:`_begin`); False when the
        connection must be replaced."""
        results: list[tuple[Job, bool, Any]] = []
        single = len(jobs) == 1  # one job: its transaction is its savepoint
        changes = conn.total_changes
        try:  # begun by the caller
            for job in jobs:
                for tries_left in range(LOST_RACE_RETRIES, -1, -1):
                    if not single:
                        conn.execute("SAVEPOINT job")
                    try:
                        value = job.fn(conn)
                    except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting caller
                        if isinstance(exc, psycopg.OperationalError) and conn.closed:
                            raise
                        again = tries_left > 0 and isinstance(exc, LOST_RACES)
                        if single:
                            conn.execute("ROLLBACK")
                            if again:  # the other transaction goes on; this job runs again
                                self._begin(conn, jobs)
                                continue
                            self._settle([(job, False, exc)])
                            return True
                        conn.execute("ROLLBACK TO SAVEPOINT job")
                        conn.execute("RELEASE SAVEPOINT job")
                        if again:
                            continue
                        results.append((job, False, exc))
                    else:
                        if not single:
                            conn.execute("RELEASE SAVEPOINT job")
                        results.append((job, True, value))
                    break
            conn.execute("COMMIT")
        except psycopg.Error as exc:
            try:
                conn.execute("ROLLBACK")
            except psycopg.Error:
                pass
            self._fail_all(jobs, exc)
            return not conn.closed
        # a group that changed no row (a /readyz probe, an empty claim) does not end an outage:
        # on a read-only server it did, and the log and /readyz flapped (as on SQLite)
        self._settle(results, wrote=conn.total_changes != changes)
        return True

    def _begin(self, conn: PgConnection, jobs: list[Job]) -> None:
        conn.execute("BEGIN")
        if not self._must_sync(jobs):  # bookkeeping only: see GroupCommitWriter.write
            conn.execute("SET LOCAL synchronous_commit = off")

    def _settle(self, results: list[tuple[Job, bool, Any]], wrote: bool = False) -> None:
        self._deliver([(job, ok, value if ok else storage_error(value))
                       for job, ok, value in results], wrote=wrote)

    def _fail_all(self, jobs: list[Job], exc: BaseException) -> None:
        err = storage_error(exc)
        if not isinstance(err, StorageUnavailable):
            log.error("database commit failed: %s", exc)
            err = StorageUnavailable(f"storage unavailable: {type(exc).__name__}: {exc}")
        self._deliver([(job, False, err) for job in jobs])

    # -- wake-ups from other nodes ---------------------------------------------------------
    def listen(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        """Call ``callback`` on ``loop`` whenever any node NOTIFYs this schema (new deliveries
        routed, events waiting: :func:`hookyard.storage.pg_queue.wake_nodes`), at most every
        20 ms. A dedicated connection in a thread, reconnected if lost."""
        self._listener_stop.clear()
        thread = threading.Thread(target=self._listen_loop, args=(loop, callback),
                                  name="hookyard-pg-listen", daemon=True)
        self._listener = thread
        thread.start()

    def _listen_loop(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        while not self._listener_stop.is_set():
            try:
                conn = connect(self.url, self.schema)
            except StorageUnavailable:
                self._listener_stop.wait(1.0)
                continue
            try:
                conn.raw.execute(f"LISTEN {CHANNEL}")
                while not self._listener_stop.is_set():
                    # call back as soon as a note arrives: ``notifies(timeout=)`` is a deadline
                    # for the whole generator, so waiting for it to end would wake this node up
                    # to 0.5 s after the others (which then take every delivery first)
                    woken = False
                    for note in conn.raw.notifies(timeout=0.5):
                        if note.payload == self.schema:
                            woken = True
                            break
                    if woken:
                        loop.call_soon_threadsafe(callback)
                        for _ in conn.raw.notifies(timeout=0):  # a burst is one wake-up
                            pass
                        self._listener_stop.wait(0.02)
            except (psycopg.Error, RuntimeError):  # lost connection, or the loop is closed
                self._listener_stop.wait(0.5)
            finally:
                conn.close()

    # -- reads -------------------------------------------------------------------------------
    def reader(self) -> PgConnection:
        """This thread's read connection (autocommit: every statement sees the latest commit)."""
        conn: PgConnection | None = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = connect(self.url, self.schema)
            self._local.conn = conn
            with self._lock:
                self._readers.append(conn)
        return conn

    def read_sync(self, fn: Callable[[Any], T]) -> T:
        """Run a read-only ``fn(conn)`` on this thread's connection; once more on a new one
        when that connection turns out lost (a server restart, a pooler's idle timeout):
        a read may run twice."""
        for last in (False, True):
            conn = self.reader()
            try:
                return fn(conn)
            except psycopg.Error as exc:
                lost = conn.closed or isinstance(exc, psycopg.OperationalError)
                if lost:
                    self._local.conn = None
                    try:
                        conn.close()
                    except psycopg.Error:
                        pass
                if last or not lost:
                    raise storage_error(exc) from exc
        raise AssertionError("unreachable")

    async def read(self, fn: Callable[[Any], T]) -> T:
        """Run a read-only ``fn(conn)`` in a worker thread."""
        return await asyncio.to_thread(self.read_sync, fn)
