"""PostgreSQL connections lost (a restart, a pooler's idle timeout): the node reconnects, and a
read or write that found a dead connection runs again on a new one."""

from __future__ import annotations

import psycopg
import pytest
from hookyard.inbox import event_rows, insert_events
from hookyard.runtime import Runtime
from hookyard.testing import sample_track
from hookyard.times import now_iso
from storage_kit import log_entry, parsed


def kill_connections(rt: Runtime) -> int:
    """Terminate this runtime's server sessions (they are named after its schema)."""
    settings = rt.config.storage
    with psycopg.connect(settings.url or "", autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"hookyard {settings.schema}"[:63],),
        ).fetchall()
    return len(rows)


def test_lost_connections_are_replaced(runtime: Runtime) -> None:
    if runtime.db.dialect != "postgresql":
        pytest.skip("PostgreSQL connections only")
    rows = event_rows("web", [parsed(sample_track(messageId="a"))], now_iso())
    runtime.db.write_sync(lambda c: insert_events(c, rows, log_entry(1)))
    runtime.db.read_sync(lambda c: c.execute("SELECT 1").fetchone())
    assert kill_connections(runtime) >= 2  # the writer and this thread's reader

    def count() -> int:
        return int(runtime.db.read_sync(lambda c: c.execute("SELECT count(*) FROM inbox").fetchone()[0]))

    # found by an outside audit: the first read and write after a lost connection were 503s
    # (behind a pooler's idle timeout, the first request after every lull); nothing had run on
    # the dead connection, so both go to a new one
    assert count() == 1
    more = event_rows("web", [parsed(sample_track(messageId="b"))], now_iso())
    assert runtime.db.write_sync(lambda c: insert_events(c, more, log_entry(1))) == 1
    assert count() == 2
    assert kill_connections(runtime) >= 2
    assert runtime.db.write_sync(lambda c: insert_events(
        c, event_rows("web", [parsed(sample_track(messageId="c"))], now_iso()), log_entry(1))) == 1
    assert count() == 3


def test_a_write_that_changes_nothing_does_not_end_an_outage(runtime: Runtime) -> None:
    """Found by an outside audit: on a read-only PostgreSQL every /readyz probe (SELECT 1)
    ended the outage and the next insert began one again: 42 log lines in 20 s, and /readyz
    said ready every 10 s. As on SQLite, only a group that changed a row ends it."""
    db = runtime.db
    db._went_down("storage unavailable: test outage")
    assert db._outage is not None
    db.write_sync(lambda c: c.execute("SELECT 1").fetchone())
    assert db._outage is not None
    db.last_unavailable = (db.last_unavailable or (0.0, ""))[0] - 60, "storage unavailable: old"
    assert db.recent_failure(10) == "storage unavailable: old"  # still out: /readyz says so
    rows = event_rows("web", [parsed(sample_track(messageId="after"))], now_iso())
    db.write_sync(lambda c: insert_events(c, rows, log_entry(1)))
    assert db._outage is None
    assert db.recent_failure(10) is None  # /readyz is ready at once, not 10 s later
