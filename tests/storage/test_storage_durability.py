"""Which commits wait for the disk: every ingest does; bookkeeping that is redone from what is
durable (routing, claims, attempt results) does not, unless it shares a group with one that
must (both backends).

PostgreSQL: the transaction's ``synchronous_commit``. SQLite commits with ``synchronous =
NORMAL`` and answers a durable group only after the WAL's fsync on a thread of its own
(hookyard.wal_sync): the tests hold that fsync back and see who waits for it.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from hookyard import wal_sync
from hookyard.runtime import Runtime
from hookyard.storage.base import is_postgres


class FsyncGate:
    """Holds every WAL fsync of the SQLite writer until :meth:`open` (no-op on PostgreSQL)."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.calls = 0

    def fsync(self, fd: int) -> None:
        self.calls += 1
        self.released.wait(10)

    def open(self) -> None:
        self.released.set()


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[FsyncGate]:
    held = FsyncGate()
    monkeypatch.setattr(wal_sync, "_fsync_fd", held.fsync)
    yield held
    held.open()


def sync_setting(conn: Any) -> str:
    """PostgreSQL: how the running transaction commits ("on"/"off"); SQLite: "sqlite"."""
    if is_postgres(conn):
        return str(conn.execute("SHOW synchronous_commit").fetchone()[0])
    return "sqlite"


def waits_for_disk(runtime: Runtime, gate: FsyncGate, durable: bool) -> bool:
    future = runtime.db.submit(sync_setting, durable=durable)
    try:
        setting = future.result(timeout=0.5)
    except TimeoutError:  # held back by the fsync gate: SQLite, durable
        gate.open()
        assert future.result(timeout=10) == "sqlite"
        return True
    return setting == "on"


def test_durable_writes_wait_for_the_disk(runtime: Runtime, gate: FsyncGate) -> None:
    assert waits_for_disk(runtime, gate, durable=True)


def test_bookkeeping_alone_commits_without_waiting_for_the_disk(runtime: Runtime, gate: FsyncGate) -> None:
    assert not waits_for_disk(runtime, gate, durable=False)
    assert waits_for_disk(runtime, gate, durable=True)  # and back again


def test_a_group_with_one_durable_job_waits_for_the_disk(runtime: Runtime, gate: FsyncGate) -> None:
    started, hold_gate = threading.Event(), threading.Event()

    def hold(conn: Any) -> None:  # keeps the writer busy while the next group queues up
        started.set()
        hold_gate.wait(10)

    first = runtime.db.submit(hold, durable=False)
    assert started.wait(10)
    bookkeeping = runtime.db.submit(sync_setting, durable=False)
    ingest = runtime.db.submit(sync_setting)
    hold_gate.set()
    first.result(timeout=10)
    if is_postgres_runtime(runtime):
        assert bookkeeping.result(timeout=10) == "on" and ingest.result(timeout=10) == "on"
        return
    with pytest.raises(TimeoutError):  # both wait for the group's fsync
        bookkeeping.result(timeout=0.5)
    gate.open()
    assert bookkeeping.result(timeout=10) == ingest.result(timeout=10) == "sqlite"


def test_a_failed_fsync_answers_503(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    if is_postgres_runtime(runtime):
        pytest.skip("SQLite's WAL fsync")

    def broken(fd: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(wal_sync, "_fsync_fd", broken)
    from hookyard.errors import StorageUnavailable

    with pytest.raises(StorageUnavailable, match="fsync of the WAL failed"):
        runtime.db.submit(sync_setting).result(timeout=10)
    # Linux may have dropped the pages it could not write and marked them clean: a later
    # fsync that succeeds proves nothing about them, so nothing is acknowledged any more
    # (an audit's "fsyncgate"), until a restart reopens the database
    monkeypatch.setattr(wal_sync, "_fsync_fd", os.fsync)
    for durable in (True, False):
        with pytest.raises(StorageUnavailable, match="refused from now on.*restart hookyard"):
            runtime.db.submit(sync_setting, durable=durable).result(timeout=10)


def is_postgres_runtime(runtime: Runtime) -> bool:
    return bool(runtime.db.dialect != "sqlite")
