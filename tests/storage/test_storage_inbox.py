"""The inbox and API log on both backends: insert, messageId dedupe, rows by name."""

from __future__ import annotations

from typing import Any

from hookyard.inbox import decode_row, event_rows, insert_events
from hookyard.runtime import Runtime
from hookyard.testing import sample_identify, sample_track
from hookyard.times import now_iso
from storage_kit import log_entry, parsed


def store(rt: Runtime, *raws: dict[str, Any]) -> int:
    rows = event_rows("web", [parsed(r) for r in raws], now_iso())
    return int(rt.db.write_sync(lambda c: insert_events(c, rows, log_entry(len(rows)))))


def test_events_are_stored_and_read_back_by_name(runtime: Runtime) -> None:
    ident = sample_identify(messageId="m-1")
    track = sample_track(messageId="m-2", userId=None, anonymousId="anon-1")
    assert store(runtime, ident, track) == 2
    rows = runtime.db.read_sync(lambda c: c.execute("SELECT * FROM inbox ORDER BY id").fetchall())
    assert [r["message_id"] for r in rows] == ["m-1", "m-2"]
    assert rows[1]["anonymous_id"] == "anon-1" and rows[1]["user_id"] is None
    assert rows[1]["event"] == "User Registered"
    event = decode_row(rows[0])
    assert event["type"] == "identify" and event["traits"]["email"] == "peter@example.com"
    assert dict(rows[0])["source"] == "web" and "raw" in rows[0].keys()


def test_repeated_message_id_is_stored_once(runtime: Runtime) -> None:
    assert store(runtime, sample_track(messageId="dup"), sample_track(messageId="dup")) == 1
    assert store(runtime, sample_track(messageId="dup")) == 0
    assert store(runtime, sample_track(messageId="other")) == 1
    count = runtime.db.read_sync(lambda c: c.execute("SELECT count(*) FROM inbox").fetchone()[0])
    assert count == 2


def test_same_message_id_from_two_nodes_is_stored_once(runtime_factory: Any) -> None:
    a, b = runtime_factory(), runtime_factory()
    fa = a.db.submit(lambda c: insert_events(
        c, event_rows("web", [parsed(sample_track(messageId="x"))], now_iso()), log_entry(1)))
    fb = b.db.submit(lambda c: insert_events(
        c, event_rows("web", [parsed(sample_track(messageId="x"))], now_iso()), log_entry(1)))
    assert sorted([fa.result(), fb.result()]) == [0, 1]
    count = a.db.read_sync(lambda c: c.execute("SELECT count(*) FROM inbox").fetchone()[0])
    assert count == 1


def test_every_request_is_logged(runtime: Runtime) -> None:
    store(runtime, sample_track(), sample_track())
    rows = runtime.db.read_sync(lambda c: c.execute("SELECT * FROM api_log").fetchall())
    assert [(r["status"], r["events"], r["duration_ms"]) for r in rows] == [(200, 2, 1.5)]


def test_a_failing_job_does_not_undo_the_others_in_its_group(runtime: Runtime) -> None:
    def bad(conn: Any) -> None:
        conn.execute("INSERT INTO api_log (at, status) VALUES (?, ?)", (now_iso(), 1))
        conn.execute("SELECT * FROM no_such_table")

    futures = [runtime.db.submit(lambda c: store_rows(c, "g1")), runtime.db.submit(bad),
               runtime.db.submit(lambda c: store_rows(c, "g2"))]
    assert futures[0].result() == 1 and futures[2].result() == 1
    assert futures[1].exception() is not None
    ids = runtime.db.read_sync(lambda c: [r[0] for r in c.execute(
        "SELECT message_id FROM inbox ORDER BY id")])
    assert ids == ["g1", "g2"]
    statuses = runtime.db.read_sync(lambda c: [r[0] for r in c.execute("SELECT status FROM api_log")])
    assert 1 not in statuses


def store_rows(conn: Any, message_id: str) -> int:
    rows = event_rows("web", [parsed(sample_track(messageId=message_id))], now_iso())
    return int(insert_events(conn, rows, log_entry(1)))
