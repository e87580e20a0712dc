"""The SQLite writer's savepoint-free path for ingest jobs (``InsertEvents``: one INSERT shared
by the group's jobs).

A failing ingest job in a group commit must not take the other jobs of the group with it,
and its API log line must not be stored; the log lines of the others are.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from hookyard.database import Database
from hookyard.dedupe import InboxDedupe
from hookyard.errors import StorageUnavailable
from hookyard.inbox import INSERT_CHUNK, InsertEvents, LogEntry
from hookyard.schema import migrate
from hookyard.times import now_iso


def _row(mid: str, user: object = "u1") -> tuple[object, ...]:
    return ("web", mid, "track", user, None, "Clicked", now_iso(), b'{"type":"track"}', None)


def _entry(events: int) -> LogEntry:
    return LogEntry(now_iso(), "web", "POST", "/v1/batch", 200, events, None, 1.0)


def test_failing_job_leaves_the_rest_of_its_group(tmp_path: Path) -> None:
    db = Database(tmp_path / "h.db")
    db.write_sync(migrate)
    gate = threading.Event()
    blocker = db.submit(lambda conn: gate.wait(5))  # holds the writer so the next jobs group
    jobs = [
        InsertEvents([_row("a")], _entry(1)),
        InsertEvents([_row("b"), _row("b2", user={})], _entry(7)),  # cannot bind a dict: fails
        InsertEvents([_row("c"), _row("a")], _entry(2)),  # "a" again: ignored, not an error
        InsertEvents([_row(f"m{i}") for i in range(INSERT_CHUNK + 1)], _entry(INSERT_CHUNK + 1)),
    ]
    assert [j.one_statement for j in jobs] == [True, True, True, False]
    futures = [db.submit(j) for j in jobs]
    gate.set()
    try:
        assert blocker.result(10) is True
        assert futures[0].result(10) == 1
        with pytest.raises(sqlite3.Error):
            futures[1].result(10)
        assert futures[2].result(10) == 1
        assert futures[3].result(10) == INSERT_CHUNK + 1
        ids = db.read_sync(lambda c: [r[0] for r in c.execute("SELECT message_id FROM inbox")])
        assert sorted(ids)[:3] == ["a", "c", "m0"] and len(ids) == INSERT_CHUNK + 3
        logged = db.read_sync(lambda c: [r[0] for r in c.execute("SELECT events FROM api_log")])
        assert sorted(logged) == [1, 2, INSERT_CHUNK + 1]
    finally:
        db.stop()


def test_a_group_of_ingest_jobs_stores_its_events_with_one_insert(tmp_path: Path) -> None:
    db = Database(tmp_path / "h.db")
    db.write_sync(migrate)
    statements: list[str] = []
    gate, holding = threading.Event(), threading.Event()

    def trace_and_hold(conn: sqlite3.Connection) -> bool:
        conn.set_trace_callback(statements.append)
        holding.set()
        return gate.wait(5)

    blocker = db.submit(trace_and_hold)
    assert holding.wait(5)  # the writer runs it: the next jobs queue up as one group
    futures = [db.submit(InsertEvents([_row(f"s{i}")], _entry(1))) for i in range(30)]
    futures.append(db.submit(InsertEvents([_row("s0"), _row("t")], _entry(2))))  # s0: a repeat
    gate.set()
    try:
        assert blocker.result(10) is True
        assert [f.result(10) for f in futures] == [1] * 31
        db.write_sync(lambda conn: conn.set_trace_callback(None))
        inserts = [s for s in statements if s.startswith("INSERT OR IGNORE INTO inbox")]
        assert len(inserts) == 1  # 31 requests, 31 new events, one statement
        assert db.read_sync(lambda c: c.execute("SELECT count(*) FROM inbox").fetchone()[0]) == 31
        logged = db.read_sync(lambda c: c.execute("SELECT count(*) FROM api_log").fetchone()[0])
        assert logged == 31
    finally:
        db.stop()


def test_a_bug_in_the_writer_fails_its_group_and_the_writer_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    db = Database(tmp_path / "h.db")
    db.write_sync(migrate)
    assert db.submit(InsertEvents([_row("before")], _entry(1))).result(10) == 1
    real = InboxDedupe.start_group
    calls = []

    def broken_once(self: InboxDedupe, conn: sqlite3.Connection, keys: object) -> None:
        calls.append(1)
        if len(calls) == 1:
            raise IndexError("a bug in the writer's own code")
        real(self, conn, keys)  # type: ignore[arg-type]

    monkeypatch.setattr(InboxDedupe, "start_group", broken_once)
    try:
        with pytest.raises(StorageUnavailable, match="internal error in the writer"):
            db.submit(InsertEvents([_row("lost")], _entry(1))).result(10)
        assert "the database writer failed on a group" in caplog.text
        # the writer lives on, and its dedupe was rebuilt from the inbox
        assert db.submit(InsertEvents([_row("after"), _row("before")], _entry(2))).result(10) == 1
        assert db.submit(InsertEvents([_row("lost")], _entry(1))).result(10) == 1  # sent again
        ids = db.read_sync(lambda c: sorted(r[0] for r in c.execute("SELECT message_id FROM inbox")))
        assert ids == ["after", "before", "lost"]
    finally:
        db.stop()


def test_the_api_log_duration_counts_the_wait_for_the_writer(tmp_path: Path) -> None:
    """The duration was measured before the commit: an ingest request that waited 2 s for the
    database's lock was logged as 1.86 ms (operator audit). Both the grouped path and the
    ordinary one (one job too large for one statement) count up to their write."""
    import time

    db = Database(tmp_path / "h.db")
    db.write_sync(migrate)
    gate = threading.Event()
    blocker = db.submit(lambda conn: gate.wait(5))
    started = time.perf_counter()

    def entry(events: int) -> LogEntry:
        return LogEntry(now_iso(), "web", "POST", "/v1/batch", 200, events, None, 0.5, started)

    futures = [db.submit(InsertEvents([_row("a")], entry(1))),
               db.submit(InsertEvents([_row(f"m{i}") for i in range(INSERT_CHUNK + 1)],
                                      entry(INSERT_CHUNK + 1)))]
    time.sleep(0.3)
    gate.set()
    try:
        assert blocker.result(10) is True
        assert [f.result(10) for f in futures] == [1, INSERT_CHUNK + 1]
        logged = db.read_sync(lambda c: [r[0] for r in c.execute("SELECT duration_ms FROM api_log")])
        assert len(logged) == 2 and all(300 <= d < 5000 for d in logged), logged
    finally:
        db.stop()
