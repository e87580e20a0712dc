"""SQLite access: one writer thread doing group commits, and per-thread read connections.

Writes are functions ``fn(conn) -> result`` handed to :meth:`Database.write` (the job queue and
the writer thread's life: :mod:`hookyard.group_commit`). The writer thread takes every job
queued at that moment and commits them together: one fsync for many concurrent requests. A
job runs inside its own SAVEPOINT, so one failing job does not undo the others; consecutive
ingest jobs of one statement each share one multi-row INSERT instead (if it fails, they are run
again one by one, so a bad job still fails alone). The
awaiting coroutine resumes only after COMMIT returned and, with ``synchronous = "full"``, the
WAL was fsynced (on a thread of its own while the writer goes on: :mod:`hookyard.wal_sync`),
which is what lets ingest acknowledge an event only once it is on disk.

A database that cannot commit (disk full, read-only file, locked too long) raises
:class:`hookyard.errors.StorageUnavailable`, answered 503 by the HTTP layer.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from .dedupe import InboxDedupe
from .errors import StorageUnavailable
from .group_commit import GroupCommitWriter, Job
from .grouped_writes import GroupedWrite, SharedInsert, insert_log_rows
from .wal_sync import WalSyncer

T = TypeVar("T")
log = logging.getLogger("hookyard.database")

WRITER_CACHE_KIB = -65536  # negative: KiB, i.e. 64 MiB
WRITER_CHECKPOINT_PAGES = 10_000
WAL_SIZE_LIMIT = 64 * 1024 * 1024
"""Bytes the WAL is cut back to when a checkpoint resets it: a reader holding a snapshot for a
minute under load let it grow to 600 MB, and SQLite keeps a WAL file at its largest size."""
BUSY_TIMEOUT = 10.0
"""Seconds a write waits for a lock another process holds (at most half ``write_timeout``, so
that a held lock is answered as "locked", not as a database that does not answer)."""


class WriterConnection(sqlite3.Connection):
    """The writer thread's connection: carries the inbox dedupe (see :mod:`hookyard.dedupe`),
    which the insert code finds as ``conn.dedupe``."""

    dedupe: InboxDedupe | None = None


def bind_without_lookups() -> None:
    """Register adapters for ``bytes`` and ``None`` that hand the value back unchanged.

    Python 3.11's sqlite3 binds only exact ``int``, ``float``, ``str`` and ``bytearray``
    parameters directly. Every ``bytes`` or ``None`` goes through the adaptation protocol,
    whose two failed attribute lookups (``__adapt__``, ``__conform__``) each build and discard
    an AttributeError. Under callgrind that is ~5,800 instructions for an inbox row with
    three such values (the raw JSON, two NULLs): a third of its INSERT, on the writer thread,
    holding the GIL. With an adapter it is a dict hit and a C call. Both adapters return their
    argument (``bytes(b) is b``, ``{}.get(None) is None``), so what is stored does not change
    (BLOB, NULL). Process-wide and idempotent; adapting ``bytes`` or ``None`` does not turn off
    sqlite3's shortcut for ``int``/``float``/``str``.
    """
    sqlite3.register_adapter(bytes, bytes)
    sqlite3.register_adapter(type(None), {}.get)  # type: ignore[arg-type]  # a C call, no frame


def _create_private(path: str | Path) -> None:
    """Create a new database file readable by its owner only: it holds people's data, and
    SQLite would create it 0644 (less the umask), as it would its WAL and shared-memory files,
    which copy the database file's mode. An existing file keeps its mode."""
    if str(path) == ":memory:":
        return
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except OSError:  # it exists, or SQLite will say why it cannot be opened
        pass


def refuse_lone_wal(path: str | Path) -> None:
    """Refuse to open ``path`` when it is missing but its WAL is there: the database file was
    deleted (or moved), and opening would start an empty database beside the newest writes."""
    path = Path(path)
    # the WAL first: SQLite makes it after the database file, so a WAL seen before the file
    # was looked for means the file is gone (the other order races a connection that is
    # creating both at this moment: no file yet, then a WAL)
    if str(path) != ":memory:" and Path(f"{path}-wal").exists() and not path.exists():
        raise StorageUnavailable(
            f"storage unavailable: {path}-wal exists but {path} does not: the database file was"
            " deleted or moved. Put it (or a backup, with the -wal file moved away) back in"
            " place; to start an empty database, move the -wal and -shm files away")


def connect(
    path: str | Path, synchronous: str = "full", factory: type[sqlite3.Connection] = sqlite3.Connection
) -> sqlite3.Connection:
    """A connection in WAL mode, autocommit (transactions are explicit), 10 s busy timeout."""
    bind_without_lookups()
    refuse_lone_wal(path)
    _create_private(path)
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                           timeout=BUSY_TIMEOUT, factory=factory)
    # Setting the journal mode may answer "database is locked" at once, without the busy
    # timeout, while another connection opens or recovers the WAL: try again for a while.
    deadline = time.monotonic() + 10
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            break
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                conn.close()
                raise
            time.sleep(0.01)
    conn.execute(f"PRAGMA synchronous={'FULL' if synchronous == 'full' else 'NORMAL'}")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def _roll_back(conn: sqlite3.Connection) -> None:
    """Undo the open transaction, if any; an error doing so changes nothing for the caller,
    which is already handling the error that made it roll back."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass


class Database(GroupCommitWriter):
    """The hookyard SQLite database (inbox, outbox, logs)."""

    dialect = "sqlite"

    def __init__(self, path: str | Path, synchronous: str = "full") -> None:
        super().__init__()
        self.path = Path(path)
        self.synchronous = synchronous
        self._readers: list[sqlite3.Connection] = []  # every thread's, to close at stop()
        self._readers_closed = 0  # how many times stop() closed them
        self._opened_file: tuple[int, int] | None = None  # _file_id of the writer's (_watch_files)

    def stop(self) -> None:
        """Finish queued writes, stop the writer thread and close the read connections (a
        thread that reads again afterwards opens a new one)."""
        with self._lock:
            self._stop_writer()
            readers, self._readers = self._readers, []
            self._readers_closed += 1
        for conn in readers:
            conn.close()

    def _writer_loop(self) -> None:
        # Every commit is written with NORMAL; with synchronous = "full" a group that holds a
        # durable job is answered after the WalSyncer's fsync of the WAL, while this thread
        # goes on with the next group (hookyard.wal_sync). A group of bookkeeping only
        # (durable=False) is answered at once.
        try:
            conn = connect(self.path, "normal", factory=WriterConnection)
            self._opened_file = None if str(self.path) == ":memory:" else _file_id(self.path)
        except (sqlite3.Error, OSError, StorageUnavailable) as exc:  # fail every write, now
            # and later, instead of hanging them
            self._stuck = (str(exc) if isinstance(exc, StorageUnavailable)
                           else f"storage unavailable: cannot open {self.path}: {exc}")
            log.error("%s", self._stuck)
            failing: list[Job] = []
            self._take_queued(failing, limit=sys.maxsize)
            error = StorageUnavailable(self._stuck)
            self._deliver([(job, False, error) for job in failing])
            return
        syncer = None
        if self.synchronous == "full":
            if conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                syncer = WalSyncer(f"{self.path}-wal", self._deliver, self.fail_for_good)
            else:  # a file system without WAL support: SQLite's own fsync at every COMMIT
                conn.execute("PRAGMA synchronous=FULL")
        dedupe = conn.dedupe = InboxDedupe()  # type: ignore[attr-defined]
        # A 64 MiB page cache (default 2 MiB) keeps the dedupe table's pages (hookyard.dedupe)
        # in memory instead of re-reading them; a checkpoint every ~40 MB of WAL (default ~4 MB)
        # writes a page rewritten by several commits back to the database file once. Larger
        # intervals gave no more throughput since the dedupe merge, only longer stalls (a
        # checkpoint at 40,000 pages held ingest for ~500 ms). Memory is used as the database grows.
        conn.execute(f"PRAGMA cache_size={WRITER_CACHE_KIB}")
        conn.execute(f"PRAGMA wal_autocheckpoint={WRITER_CHECKPOINT_PAGES}")
        conn.execute("PRAGMA temp_store=MEMORY")  # the dedupe merge's sorted batch, a few MB
        conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT}")
        busy_for = None  # the write_timeout the busy timeout was set for
        try:
            while (group := self._next_group()) is not None:
                jobs, stop = group
                if busy_for != self.write_timeout:  # 0 while migrating: no limit then
                    busy_for = self.write_timeout
                    busy = min(BUSY_TIMEOUT, busy_for / 2) if busy_for > 0 else BUSY_TIMEOUT
                    conn.execute(f"PRAGMA busy_timeout={int(busy * 1000)}")
                try:
                    self._run_group(conn, jobs, dedupe, syncer)
                    for _ in range(dedupe.merge_steps_due()):
                        self._merge_step(conn, dedupe)
                except Exception as exc:  # noqa: BLE001 - the writer must outlive a bug
                    self._group_crashed(conn, jobs, dedupe, exc)
                if stop:
                    return
        finally:
            if syncer is not None:
                syncer.stop()
            conn.close()

    def _group_crashed(self, conn: sqlite3.Connection, jobs: list[Job],
                       dedupe: InboxDedupe, exc: Exception) -> None:
        """A bug outside the jobs (the writer's own code) raised: undo the open transaction,
        answer the group's jobs that are still waiting with a retryable error (503 for ingest;
        a job already answered keeps its answer), rebuild the dedupe tail from the inbox, and
        go on with the next group. Without this the writer thread died and every later write
        waited forever."""
        log.error("the database writer failed on a group of %d jobs; they are answered as"
                  " errors and it goes on", len(jobs), exc_info=exc)
        _roll_back(conn)
        dedupe.reset()
        err = StorageUnavailable(f"storage unavailable: internal error in the writer ({type(exc).__name__})")
        self._deliver([(job, False, err) for job in jobs])

    def _merge_step(self, conn: sqlite3.Connection, dedupe: InboxDedupe) -> None:
        """One step of moving the dedupe tail into ``inbox_ids`` (see :mod:`hookyard.dedupe`),
        in a commit of its own that nobody waits for: after a power cut the tail is rebuilt
        from the inbox and merged again."""
        try:
            started = time.perf_counter()
            conn.execute("BEGIN IMMEDIATE")
            keys = dedupe.merge_step(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            log.warning("could not merge the dedupe tail (%d keys), will retry: %s",
                        len(dedupe.merging), exc)
            _roll_back(conn)
            dedupe.merge_failed()
            return
        dedupe.merge_committed()
        log.debug("dedupe merge step: %d keys in %.1f ms", keys, (time.perf_counter() - started) * 1000)

    def _run_group(
        self, conn: sqlite3.Connection, jobs: list[Job], dedupe: InboxDedupe,
        syncer: WalSyncer | None = None,
    ) -> None:
        if self._fatal:  # queued before the failure that ended writing (fail_for_good)
            error = StorageUnavailable(self._stuck or "storage unavailable")
            self._deliver([(job, False, error) for job in jobs])
            return
        results: list[tuple[Job, bool, Any]] = []
        changes = conn.total_changes
        try:
            conn.execute("BEGIN IMMEDIATE")
            dedupe.start_group(conn, [key for job in jobs if isinstance(job.fn, GroupedWrite)
                                      and job.fn.dedupe_keys for key in job.fn.dedupe_keys])
        except sqlite3.Error as exc:  # BEGIN, or the group's dedupe lookup after it
            _roll_back(conn)  # (the dedupe holds nothing of this group yet)
            self._fail_all(jobs, exc)
            return
        log_rows: list[tuple[Any, ...]] = []
        shared = SharedInsert()
        for job in jobs:
            fn = job.fn
            try:
                if isinstance(fn, GroupedWrite) and fn.one_statement:
                    dedupe.start_job()
                    rows = fn.shared_rows(conn)
                    if rows is not None:
                        shared.add(conn, fn, len(results), rows, results, log_rows, dedupe)
                        results.append((job, True, len(rows)))
                        continue
                # the rows shared so far go in before this job runs (and before its
                # start_job: a failure of this job must not take back their dedupe keys)
                shared.flush(conn, results, log_rows, dedupe)
            except sqlite3.Error as exc:
                return self._roll_back_group(conn, jobs, dedupe, exc)
            dedupe.start_job()
            if isinstance(fn, GroupedWrite) and fn.one_statement:
                try:
                    value = fn.statement(conn)
                except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting caller
                    dedupe.job_failed()
                    results.append((job, False, exc))
                else:
                    if fn.log_row is not None:
                        log_rows.append(fn.log_row)
                    results.append((job, True, value))
            else:
                try:
                    conn.execute("SAVEPOINT job")
                    value = fn(conn)
                except BaseException as exc:  # noqa: BLE001 - delivered to the awaiting caller
                    dedupe.job_failed()
                    try:
                        conn.execute("ROLLBACK TO job")
                        conn.execute("RELEASE job")
                    except sqlite3.Error:
                        pass
                    results.append((job, False, exc))
                else:
                    conn.execute("RELEASE job")
                    results.append((job, True, value))
            if not conn.in_transaction:
                # an error (disk full, I/O) made SQLite roll the whole transaction back: later
                # jobs would run outside it, so the group fails as a whole
                dedupe.rolled_back()
                self._fail_all(jobs, results[-1][2] if not results[-1][1] else
                               sqlite3.OperationalError("transaction rolled back"))
                return
        try:
            shared.flush(conn, results, log_rows, dedupe)
        except sqlite3.Error as exc:
            return self._roll_back_group(conn, jobs, dedupe, exc)
        if log_rows:
            try:
                insert_log_rows(conn, log_rows)
            except sqlite3.Error as exc:  # the API log must not fail the requests it records
                log.warning("could not store %d api_log rows: %s", len(log_rows), exc)
        try:
            dedupe.before_commit(conn)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            return self._roll_back_group(conn, jobs, dedupe, exc)
        dedupe.committed()
        answers = [(job, ok, value if ok else storage_error(value)) for job, ok, value in results]
        wrote = conn.total_changes != changes  # a group that changed no row (a probe, a claim
        # of nothing) commits on a full disk too: it is no sign that writes are taken again
        if syncer is not None and self._must_sync(jobs):
            syncer.submit(answers, wrote)
        else:
            self._deliver(answers, wrote=wrote)

    def _roll_back_group(self, conn: sqlite3.Connection, jobs: list[Job],
                         dedupe: InboxDedupe, exc: BaseException) -> None:
        """A shared INSERT or the COMMIT failed (I/O error, disk full): the transaction is
        undone and every job of the group fails (ingest answers 503, clients send again)."""
        _roll_back(conn)
        dedupe.rolled_back()
        self._fail_all(jobs, exc)

    def _fail_all(self, jobs: list[Job], exc: BaseException) -> None:
        err = storage_error(exc)
        if not isinstance(err, StorageUnavailable):  # that one starts an outage, logged once
            log.error("database commit failed: %s", exc)
        self._deliver([(job, False, err) for job in jobs])

    def _watch_files(self) -> None:
        """The database file deleted or replaced (a backup restored over it) under the open
        connection: every later write would go to the old file, or mix its WAL with the new
        one (a damaged database), so writes are refused until a restart."""
        opened = self._opened_file
        if opened is None or self._fatal:
            return
        try:
            now: tuple[int, int] | None = _file_id(self.path)
        except FileNotFoundError:
            now = None
        except OSError:
            return
        if now != opened:
            what = "deleted" if now is None else "replaced"
            self.fail_for_good(
                f"storage unavailable: the database file {self.path} was {what} while hookyard"
                " ran: writes are refused from now on (they would go to the old file). Restart"
                " hookyard to open the file now at that path; to restore a backup, stop"
                " hookyard first (docs/operations.md#backups)")

    # -- reads -------------------------------------------------------------------------------
    def reader(self) -> sqlite3.Connection:
        """This thread's read connection."""
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.closed != self._readers_closed:  # or closed by stop()
            conn = connect(self.path, self.synchronous)
            conn.row_factory = sqlite3.Row
            self._local.conn, self._local.closed = conn, self._readers_closed
            with self._lock:
                self._readers.append(conn)
        return conn

    def read_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return fn(self.reader())

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run a read-only ``fn(conn)`` in a worker thread."""
        return await asyncio.to_thread(self.read_sync, fn)


def _file_id(path: Path) -> tuple[int, int]:
    """(device, inode) of the file at ``path``."""
    st = os.stat(path)
    return st.st_dev, st.st_ino


def storage_error(exc: BaseException) -> BaseException:
    """sqlite errors that mean "cannot write now" become StorageUnavailable (503), and so does
    a damaged database file (with what to do: it will not mend by itself)."""
    if isinstance(exc, sqlite3.OperationalError):
        msg = str(exc).lower()
        if any(s in msg for s in ("full", "readonly", "read-only", "locked", "disk i/o", "unable to open")):
            return StorageUnavailable(f"storage unavailable: {exc}")
    elif isinstance(exc, sqlite3.DatabaseError) and any(
            s in str(exc).lower() for s in ("malformed", "not a database")):
        return StorageUnavailable(
            f"storage unavailable: the database file is damaged ({exc}): stop hookyard and"
            " restore a backup (docs/operations.md#backups)")
    return exc
