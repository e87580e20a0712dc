"""PostgreSQL going away and coming back: refused writes are 503s, then the node reconnects."""

from __future__ import annotations

import psycopg
import pytest
from hookyard.errors import StorageUnavailable
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

    with pytest.raises(StorageUnavailable):
        count()  # the dead reader is reported once, as "storage unavailable" (503)...
    assert count() == 1  # ...and replaced
    more = event_rows("web", [parsed(sample_track(messageId="b"))], now_iso())
    outcomes = []
    for _ in range(2):  # the first write may find the dead writer connection
        try:
            outcomes.append(runtime.db.write_sync(lambda c: insert_events(c, more, log_entry(1))))
            break
        except StorageUnavailable:
            outcomes.append("503")
    assert outcomes[-1] == 1 and count() == 2
