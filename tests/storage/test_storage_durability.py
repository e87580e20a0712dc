"""Which commits wait for the disk: every ingest does; bookkeeping that is redone from what is
durable (routing, claims, attempt results) does not, unless it shares a group with one that
must (both backends)."""

from __future__ import annotations

import threading
from typing import Any

from hookyard.runtime import Runtime
from hookyard.storage.base import is_postgres


def sync_setting(conn: Any) -> str:
    """How the running transaction commits: "full"/"normal" (SQLite), "on"/"off" (PostgreSQL)."""
    if is_postgres(conn):
        return str(conn.execute("SHOW synchronous_commit").fetchone()[0])
    level = conn.execute("PRAGMA synchronous").fetchone()[0]
    return {0: "off", 1: "normal", 2: "full", 3: "extra"}[level]


WAITS = {"full", "on"}


def test_durable_writes_wait_for_the_disk(runtime: Runtime) -> None:
    assert runtime.db.submit(sync_setting).result(timeout=10) in WAITS


def test_bookkeeping_alone_commits_without_waiting_for_the_disk(runtime: Runtime) -> None:
    assert runtime.db.submit(sync_setting, durable=False).result(timeout=10) in {"normal", "off"}
    assert runtime.db.submit(sync_setting).result(timeout=10) in WAITS  # and back again


def test_a_group_with_one_durable_job_waits_for_the_disk(runtime: Runtime) -> None:
    started, gate = threading.Event(), threading.Event()

    def hold(conn: Any) -> None:  # keeps the writer busy while the next group queues up
        started.set()
        gate.wait(10)

    first = runtime.db.submit(hold, durable=False)
    assert started.wait(10)
    bookkeeping = runtime.db.submit(sync_setting, durable=False)
    ingest = runtime.db.submit(sync_setting)
    gate.set()
    first.result(timeout=10)
    assert bookkeeping.result(timeout=10) in WAITS
    assert ingest.result(timeout=10) in WAITS
