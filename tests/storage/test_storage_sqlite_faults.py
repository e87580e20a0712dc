"""SQLite under faults an operator or the machine causes (an outside audit of storage faults):
a write lock another process holds, the database file deleted or replaced under hookyard, its
WAL left without it, and start-up on a disk that cannot take writes for now."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hookyard import database
from hookyard.config import default_config
from hookyard.database import Database
from hookyard.errors import StorageUnavailable
from hookyard.runtime import Runtime
from hookyard.schema import migrate


@pytest.fixture
def db(tmp_path: Path) -> Iterator[Database]:
    d = Database(tmp_path / "hookyard.db")
    d.write_timeout = 0
    d.write_sync(migrate)
    d.write_timeout = 2.0  # a lock held elsewhere is waited for 1 s (half of it)
    yield d
    d.stop()


@pytest.fixture
def outage_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.WARNING, logger="hookyard.database")
    return caplog


def hold_write_lock(path: Path, seconds: float) -> threading.Thread:
    """Another process's writer (``sqlite3 db 'BEGIN IMMEDIATE; ...'``), for ``seconds``."""
    held = threading.Event()

    def hold() -> None:
        conn = sqlite3.connect(path, isolation_level=None)
        conn.execute("BEGIN IMMEDIATE")
        held.set()
        time.sleep(seconds)
        conn.execute("ROLLBACK")
        conn.close()

    thread = threading.Thread(target=hold, daemon=True)
    thread.start()
    held.wait(5)
    return thread


def timed_write(db: Database) -> tuple[bool, float]:
    started = time.monotonic()
    try:
        db.write_sync(lambda conn: conn.execute("CREATE TABLE IF NOT EXISTS t (x)")
                      .execute("INSERT INTO t VALUES (1)"))  # (a write that changes no row
        # is no sign that writes are taken again)
        return True, time.monotonic() - started
    except StorageUnavailable:
        return False, time.monotonic() - started


def test_a_held_lock_is_waited_for_once_then_refused_at_once(
        db: Database, tmp_path: Path, outage_log: pytest.LogCaptureFixture) -> None:
    """Each write waited for the lock in turn (10 s busy timeout, equal to the watchdog's, which
    never fired): requests were answered 503 after 10-20 s. Now the first waits the busy
    timeout (half of write_timeout), the next ones are refused at once, one tries again each
    second, and the first commit after the lock is gone ends the outage: logged once each."""
    holder = hold_write_lock(tmp_path / "hookyard.db", 3.0)
    outcomes = [timed_write(db)]
    while holder.is_alive():
        outcomes.append(timed_write(db))
        time.sleep(0.05)
    assert outcomes[0] == (False, pytest.approx(1.0, abs=0.5))
    refused = [took for ok, took in outcomes[1:] if not ok]
    assert refused and max(refused) < 1.5  # never a second wait in a row
    assert sum(took < 0.1 for took in refused) >= len(refused) - 2  # most at once
    deadline = time.monotonic() + 5
    while not timed_write(db)[0]:  # taken again within about a second of the lock's end
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lines = [r.getMessage() for r in outage_log.records]
    assert sum("writes are refused (503) until it answers again" in m for m in lines) == 1, lines
    assert sum("storage answers again after" in m for m in lines) == 1, lines
    assert not [m for m in lines if "database commit failed" in m]


@pytest.mark.parametrize("what", ["deleted", "replaced"])
def test_a_database_file_deleted_or_replaced_refuses_writes_until_a_restart(
        db: Database, tmp_path: Path, what: str) -> None:
    """It went on taking writes into the deleted file (all lost at the restart), or into the
    old file beside a restored backup's (a damaged database), with no word in the log."""
    path = tmp_path / "hookyard.db"
    assert timed_write(db)[0]
    if what == "deleted":
        path.unlink()
    else:
        copy = tmp_path / "backup.db"
        with sqlite3.connect(path) as src, sqlite3.connect(copy) as dst:
            src.backup(dst)
        copy.replace(path)
    deadline = time.monotonic() + 3
    while True:
        try:
            db.write_sync(lambda conn: 1)
        except StorageUnavailable as exc:
            assert f"the database file {path} was {what} while hookyard ran" in str(exc)
            assert "Restart hookyard" in str(exc)
            break
        assert time.monotonic() < deadline, "writes still taken"
        time.sleep(0.1)
    assert db.recent_failure(0) is not None  # /readyz says so


def test_a_wal_without_its_database_is_refused(tmp_path: Path) -> None:
    """After the database file was deleted, a restart made an empty database beside the WAL
    that held the newest writes, without a word."""
    (tmp_path / "hookyard.db-wal").write_bytes(b"\0" * 32)
    with pytest.raises(StorageUnavailable, match="hookyard.db-wal exists but .* does not"):
        database.connect(tmp_path / "hookyard.db")
    assert not (tmp_path / "hookyard.db").exists()


def test_start_up_with_a_held_lock_serves_and_answers_503(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        outage_log: pytest.LogCaptureFixture) -> None:
    """A lock held elsewhere (or a full disk) at start-up mends by itself: on a current schema
    the server starts and answers 503 until it does. It exited with status 1, and a service
    manager's restarts ran out within seconds."""
    rt = Runtime.build(default_config(tmp_path))
    rt.open()
    rt.close()
    monkeypatch.setattr(database, "BUSY_TIMEOUT", 0.5)
    holder = hold_write_lock(tmp_path / "hookyard.db", 3.0)
    rt = Runtime.build(default_config(tmp_path))
    try:
        rt.open()  # no exception: started
        assert any("at start-up: starting anyway" in r.getMessage() for r in outage_log.records)

        async def start_and_stop_delivery() -> None:  # its start-up write is refused too
            from hookyard.delivery.engine import Engine

            engine = Engine(rt)
            await engine.start()
            await engine.stop()

        asyncio.run(start_and_stop_delivery())
        holder.join()
        deadline = time.monotonic() + 5
        while True:
            try:
                rt.db.write_sync(lambda conn: 1)
                break
            except StorageUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.1)
    finally:
        rt.close()


def test_nothing_committed_around_a_failed_fsync_is_acknowledged(
        db: Database, monkeypatch: pytest.MonkeyPatch) -> None:
    """Groups committed while the failing fsync ran were answered by the next fsync, which
    succeeded: their WAL frames lie behind the ones the kernel dropped, so a crash loses them
    after all (a review)."""
    import os

    from hookyard import wal_sync

    calls: list[int] = []

    def failing_once(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            time.sleep(0.3)  # the writer commits more groups meanwhile
            raise OSError(5, "Input/output error")
        os.fsync(fd)

    monkeypatch.setattr(wal_sync, "_fsync_fd", failing_once)
    first = db.submit(lambda conn: conn.execute("CREATE TABLE IF NOT EXISTS f (x)"))
    time.sleep(0.05)
    later = [db.submit(lambda conn, n=n: conn.execute("INSERT INTO f VALUES (?)", (n,)))
             for n in range(4)]
    for fut in (first, *later):
        with pytest.raises(StorageUnavailable):
            fut.result(timeout=10)


def test_the_watchdog_still_answers_a_stuck_write_after_writes_stopped_for_good(
        db: Database) -> None:
    """Once writes were refused for good, a write stuck in the writer kept its waiter until it
    ended: the watchdog failed its waiters only when it set the reason itself (a review)."""
    db.write_timeout = 0.5
    release = threading.Event()
    stuck = db.submit(lambda conn: release.wait(5))
    time.sleep(0.05)
    db.fail_for_good("storage unavailable: test: refused for good")
    started = time.monotonic()
    with pytest.raises(StorageUnavailable):
        stuck.result(timeout=5)
    assert time.monotonic() - started < 2
    release.set()
    with pytest.raises(StorageUnavailable, match="refused for good"):
        db.write_sync(lambda conn: 1)


def test_a_write_that_changes_nothing_does_not_end_an_outage(
        db: Database, outage_log: pytest.LogCaptureFixture) -> None:
    """On a full disk a probe (``SELECT 1``) or a claim of no row still commits: that ended the
    outage ("answers again after 0.0 s") and the next write started another (a review)."""
    db.write_sync(lambda conn: conn.execute("PRAGMA max_page_count = 1"))  # no room to grow:
    # every write that needs a new page fails as "database or disk is full"
    for _ in range(3):
        with pytest.raises(StorageUnavailable, match="full"):
            db.write_sync(lambda conn: conn.execute(
                "CREATE TABLE IF NOT EXISTS big (x)").execute("INSERT INTO big VALUES (zeroblob(9000))"))
        assert db.write_sync(lambda conn: conn.execute("SELECT 1").fetchone()[0]) == 1
    lines = [r.getMessage() for r in outage_log.records]
    assert sum("until it answers again" in m for m in lines) == 1, lines
    assert not [m for m in lines if "answers again after" in m], lines


def test_one_jobs_own_storage_error_in_a_group_that_commits_is_no_outage(
        db: Database, outage_log: pytest.LogCaptureFixture) -> None:
    """A job that fails on its own (PostgreSQL's statement timeout on a long purge, say) while
    the rest of its group commits: storage works, so nothing else is refused (a review)."""
    def own_failure(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("database or disk is full")

    db.write_timeout = 0  # one group for both: the writer is held until both are queued
    release = threading.Event()
    holder = db.submit(lambda conn: release.wait(5))
    time.sleep(0.05)
    failing = db.submit(own_failure)
    fine = db.submit(lambda conn: conn.execute("CREATE TABLE IF NOT EXISTS g (x)")
                     .execute("INSERT INTO g VALUES (1)"))
    release.set()
    holder.result(timeout=5)
    with pytest.raises(StorageUnavailable):
        failing.result(timeout=5)
    fine.result(timeout=5)
    assert db.write_sync(lambda conn: 2) == 2  # not refused
    assert not [r for r in outage_log.records if "until it answers again" in r.getMessage()]


def test_writes_queued_behind_one_waiting_for_a_lock_wait_no_longer_than_it(
        db: Database, tmp_path: Path) -> None:
    """The writes queued while the first waited for the lock formed the next group and waited
    as long again: answers after twice the busy timeout under load (a re-check)."""
    hold_write_lock(tmp_path / "hookyard.db", 4.0)
    started = time.monotonic()
    first = db.submit(lambda conn: conn.execute("CREATE TABLE IF NOT EXISTS q (x)"))
    time.sleep(0.3)
    queued = [db.submit(lambda conn: conn.execute("CREATE TABLE IF NOT EXISTS q (x)"))
              for _ in range(3)]
    for fut in (first, *queued):
        with pytest.raises(StorageUnavailable, match="locked"):
            fut.result(timeout=10)
    assert time.monotonic() - started < 1.6  # one busy timeout (1 s), not two
