"""Write jobs the SQLite writer may batch: :class:`GroupedWrite` (a job of one statement, whose
rows can share a multi-row INSERT with the same jobs next to it in a group commit) and
:class:`SharedInsert`, which the writer (:meth:`hookyard.database.Database._run_group`) uses to
collect and store them; the API log rows of a group go in by :func:`insert_log_rows`.
"""

from __future__ import annotations

import sqlite3
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .dedupe import InboxDedupe


class GroupedWrite:
    """A write job that the SQLite writer may run without its own SAVEPOINT.

    ``statement(conn)`` must run exactly one SQL statement (SQLite undoes a failed statement
    on its own, so no savepoint is needed to keep it from the other jobs of the group), and
    ``log_row`` is an ``api_log`` row that the writer stores for the whole group with one
    multi-row INSERT, in the same transaction. ``__call__`` does both the ordinary way (other
    backends, or when ``one_statement`` is false). Saves three statements per ingest request
    on the writer thread, each one a GIL round trip against the busy event loop.
    """

    one_statement: bool = False
    log_row: tuple[Any, ...] | None = None
    dedupe_keys: list[tuple[str, str]] | None = None
    """The inbox keys ``(source, message_id)`` the job will store: looked up for the whole
    group at once before its jobs run."""

    def statement(self, conn: sqlite3.Connection) -> Any:
        raise NotImplementedError

    def shared_rows(self, conn: sqlite3.Connection) -> list[tuple[Any, ...]] | None:
        """The rows this job stores, for one multi-row INSERT (``shared_insert``) with the
        same rows of the other jobs of its class that run next to it in the group; None to run
        :meth:`statement` instead. The job's result is then the number of rows returned."""
        return None

    @staticmethod
    def shared_insert(n: int) -> str:
        """The INSERT of ``n`` rows from :meth:`shared_rows` (at most ``SHARED_CHUNK``)."""
        raise NotImplementedError

    SHARED_CHUNK = 100

    def __call__(self, conn: sqlite3.Connection) -> Any:
        raise NotImplementedError


API_LOG_INSERT = (
    "INSERT INTO api_log (at, source, method, path, status, events, error, duration_ms) VALUES "
)
"""The API log's INSERT up to its VALUES (one row: :data:`hookyard.inbox.INSERT_LOG`)."""
_LOG_CHUNK = 100  # x 8 parameters: under SQLite's oldest variable limit (999)


def insert_log_rows(conn: sqlite3.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Store a group's API log rows (:meth:`hookyard.inbox.LogEntry.deferred_row`: the last
    value, the request's start, becomes its duration up to now, inside the transaction)."""
    now = time.perf_counter()
    for start in range(0, len(rows), _LOG_CHUNK):
        chunk = rows[start:start + _LOG_CHUNK]
        params: list[Any] = []
        for row in chunk:
            params.extend(row[:7])
            params.append(row[7] if row[8] is None else (now - row[8]) * 1000)
        conn.execute(API_LOG_INSERT + ",".join(["(?,?,?,?,?,?,?,?)"] * len(chunk)), params)


class SharedInsert:
    """Rows of consecutive :class:`GroupedWrite` jobs of one class, stored by one multi-row
    INSERT (per ``SHARED_CHUNK`` rows) when a job of another kind comes or the group ends: a
    group of 30 single-event ingest requests runs one statement instead of 30, each of which
    released the GIL and had to win it back from the busy event loop.

    If the shared INSERT fails, SQLite has undone that statement alone (the transaction goes
    on) and each job's rows are inserted again on their own, so one bad job fails alone, as
    with a statement of its own."""

    __slots__ = ("kind", "entries")

    def __init__(self) -> None:
        self.kind: type[GroupedWrite] | None = None
        # (index of the job's result, the job, the rows it stores)
        self.entries: list[tuple[int, GroupedWrite, list[tuple[Any, ...]]]] = []

    def add(self, conn: sqlite3.Connection, fn: GroupedWrite, at: int, rows: list[tuple[Any, ...]],
            results: list[Any], log_rows: list[tuple[Any, ...]], dedupe: InboxDedupe) -> None:
        if type(fn) is not self.kind:
            self.flush(conn, results, log_rows, dedupe)
            self.kind = type(fn)
        self.entries.append((at, fn, rows))

    def flush(self, conn: sqlite3.Connection, results: list[Any],
              log_rows: list[tuple[Any, ...]], dedupe: InboxDedupe) -> None:
        """Run the pending INSERTs and settle the jobs' results and log rows."""
        kind, entries = self.kind, self.entries
        if kind is None or not entries:
            return
        self.entries = []
        try:
            _insert_chunks(conn, kind, [row for _, _, rows in entries for row in rows])
        except sqlite3.Error:
            if not conn.in_transaction:
                raise  # the whole transaction is gone (I/O, disk full): the group fails
            self._one_by_one(conn, entries, results, log_rows, dedupe)
            return
        log_rows.extend(fn.log_row for _, fn, _ in entries if fn.log_row is not None)

    @staticmethod
    def _one_by_one(conn: sqlite3.Connection, entries: list[tuple[int, GroupedWrite, Any]],
                    results: list[Any], log_rows: list[tuple[Any, ...]],
                    dedupe: InboxDedupe) -> None:
        """The shared INSERT failed (and SQLite undid it alone): admit and insert each job's
        rows again on their own, in order, as if each job had run its own statement."""
        kind = type(entries[0][1])
        dedupe.unadmit([(row[0], row[1]) for _, _, rows in entries for row in rows])
        for at, fn, _ in entries:
            rows = fn.shared_rows(conn) or []
            try:
                _insert_chunks(conn, kind, rows)
            except sqlite3.Error as exc:
                if not conn.in_transaction:
                    raise
                dedupe.unadmit([(row[0], row[1]) for row in rows])
                results[at] = (results[at][0], False, exc)
                continue
            results[at] = (results[at][0], True, len(rows))
            if fn.log_row is not None:
                log_rows.append(fn.log_row)


def _insert_chunks(conn: sqlite3.Connection, kind: type[GroupedWrite],
                   rows: list[tuple[Any, ...]]) -> None:
    chunk = kind.SHARED_CHUNK
    for start in range(0, len(rows), chunk):
        part = rows[start:start + chunk]
        conn.execute(kind.shared_insert(len(part)), [v for row in part for v in row])
