"""Two nodes on one PostgreSQL database storing the same messageIds in opposite orders: each
waits on the other's unique-index entry, PostgreSQL ends one statement with a deadlock error,
and the losing job runs again instead of answering 503 (found by an outside audit: a client
sending the same batch to two nodes at once)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from hookyard.inbox import event_rows, insert_events
from hookyard.runtime import Runtime
from hookyard.testing import sample_track
from hookyard.times import now_iso
from storage_kit import log_entry, parsed


def test_a_deadlock_between_two_nodes_is_retried_not_answered_503(
    runtime_factory: Callable[[], Runtime],
) -> None:
    one, two = runtime_factory(), runtime_factory()
    if one.db.dialect != "postgresql":
        pytest.skip("PostgreSQL only: SQLite has one writer at a time")
    rows = {key: event_rows("web", [parsed(sample_track(messageId=key))], now_iso())
            for key in ("k1", "k2")}
    stored = {"one": threading.Event(), "two": threading.Event()}

    def job(first: str, second: str, mine: str, theirs: str) -> Callable[[Any], int]:
        def fn(conn: Any) -> int:
            new = insert_events(conn, rows[first], log_entry(1))
            stored[mine].set()
            stored[theirs].wait(10)  # both hold one key: the second INSERT waits on the other
            return new + insert_events(conn, rows[second], log_entry(1))
        return fn

    a = one.db.submit(job("k1", "k2", "one", "two"))
    b = two.db.submit(job("k2", "k1", "two", "one"))
    assert sorted([a.result(timeout=30), b.result(timeout=30)]) == [0, 2]  # nothing refused
    count = one.db.read_sync(lambda c: c.execute("SELECT count(*) FROM inbox").fetchone()[0])
    assert count == 2


def test_the_users_under_lease_are_found_without_reading_the_backlog(runtime: Runtime) -> None:
    """Every dispatch round asks which users have a delivery under lease; without an index of
    the inflight rows that read every pending row (~0.2 s per round at 170,000 rows, delivery
    under 200 events/s: an outside audit)."""
    if runtime.db.dialect != "postgresql":
        pytest.skip("PostgreSQL's query planner")
    plan = runtime.db.read_sync(lambda c: [r[0] for r in c.execute(
        "EXPLAIN SELECT DISTINCT user_key FROM outbox WHERE destination = 'seg'"
        " AND state = 'inflight' AND lease_until >= 0")])
    assert any("outbox_inflight" in line for line in plan), plan
