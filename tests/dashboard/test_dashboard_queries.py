"""The dashboard's own read queries, on a real SQLite database (no server): the SQL status
filter agrees with the status computed per row, and destination health adds up."""

from __future__ import annotations

import itertools
import sqlite3
import time
from pathlib import Path

import pytest
from hookyard.dashboard.queries import STATUSES, destination_health, events_page, status_of
from hookyard.database import connect
from hookyard.schema import migrate

STATES = ("pending", "inflight", "done", "dead", "filtered", "discarded")


@pytest.fixture
def conn(tmp_path: Path) -> sqlite3.Connection:
    db = connect(tmp_path / "hookyard.db")
    db.row_factory = sqlite3.Row
    migrate(db)
    return db


def add_event(conn: sqlite3.Connection, n: int, filtered: str | None, states: tuple[str, ...]) -> None:
    cur = conn.execute(
        "INSERT INTO inbox (source, message_id, type, user_id, received_at, raw, filtered)"
        " VALUES ('web', ?, 'track', 'u1', '2026-01-01T00:00:00Z', '{}', ?)", (f"m{n}", filtered))
    for i, state in enumerate(states):
        conn.execute(
            "INSERT INTO outbox (destination, inbox_id, message_id, state, created_at)"
            " VALUES (?, ?, ?, ?, 0)", (f"d{i}", cur.lastrowid, f"m{n}", state))


def test_status_filter_matches_status_of(conn: sqlite3.Connection) -> None:
    combos: list[tuple[str | None, tuple[str, ...]]] = [(None, ())]
    combos += [(None, c) for size in (1, 2) for c in itertools.combinations(STATES, size)]
    combos += [("not in the source's list", ()), ("not in the source's list", ("done",))]
    for n, (filtered, states) in enumerate(combos):
        add_event(conn, n, filtered, states)
    everything, _ = events_page(conn, limit=500)
    assert len(everything) == len(combos)
    expected = {r.message_id: r.status for r in everything}
    for r in everything:
        assert r.status == status_of(r.filtered, set(r.destinations.values()))
    seen = set()
    for status in STATUSES:
        rows, _ = events_page(conn, status=status, limit=500)
        assert {r.message_id for r in rows} == {m for m, s in expected.items() if s == status}
        seen |= {r.message_id for r in rows}
    assert seen == set(expected)  # every event has exactly one status


def test_an_event_with_a_discarded_delivery_is_discarded_not_delivered() -> None:
    """One destination delivered, another's dead letter discarded: the event did not reach
    every destination, so it is not "delivered" (an outside audit found it shown so)."""
    assert status_of(None, {"done", "discarded"}) == "discarded"
    assert status_of(None, {"done", "filtered"}) == "delivered"
    assert status_of(None, {"done", "discarded", "pending"}) == "pending"


def test_paging_is_newest_first(conn: sqlite3.Connection) -> None:
    for n in range(5):
        add_event(conn, n, None, ("done",))
    first, cursor = events_page(conn, limit=3)
    assert [r.message_id for r in first] == ["m4", "m3", "m2"] and cursor is not None
    second, end = events_page(conn, limit=3, cursor=cursor)
    assert [r.message_id for r in second] == ["m1", "m0"] and end is None


def test_destination_health(conn: sqlite3.Connection) -> None:
    now = time.time()
    for state, count in (("done", 3), ("pending", 2), ("dead", 1)):
        for _ in range(count):
            conn.execute("INSERT INTO outbox (destination, state, attempts, created_at, last_error,"
                         " last_status) VALUES ('a', ?, ?, 0, ?, ?)",
                         (state, 1 if state == "pending" else 0,
                          "HTTP 400" if state == "dead" else None, 400 if state == "dead" else None))
    for outcome, status in (("ok", 200), ("ok", 200), ("permanent", 400), ("ok", 200)):
        conn.execute("INSERT INTO attempts (destination, outcome, http_status, error, at)"
                     " VALUES ('a', ?, ?, ?, ?)",
                     (outcome, status, None if outcome == "ok" else f"HTTP {status}", now))
    conn.execute("INSERT INTO outbox (destination, state, created_at, last_error, last_status)"
                 " VALUES ('old', 'dead', 0, 'HTTP 404', 404)")
    health = destination_health(conn, ["a", "idle", "old"])
    a = health["a"]
    assert a.queue_depth == 2 and a.retrying == 2 and a.states["done"] == 3
    assert a.attempts == 4 and a.success_rate == 0.75 and a.health() == "degraded"
    assert (a.last_error, a.last_error_status) == ("HTTP 400", 400)
    assert health["idle"].health() == "idle" and health["idle"].health(enabled=False) == "disabled"
    assert health["old"].last_error == "HTTP 404"  # from the dead letter: no recent attempt


def test_each_destination_is_rated_on_its_own_attempts(conn: sqlite3.Connection) -> None:
    """2,000 newer failures of another destination leave the quiet one's 10 successes counted
    as its own: 100 %, not a share of the window (the page once labelled the newest 10,000
    attempts of all destinations "the last 24 hours" and read 0 % for a destination that was
    fine). Its last error and outcome are its own too."""
    now = time.time()
    conn.executemany("INSERT INTO attempts (destination, outcome, http_status, at) VALUES (?, ?, ?, ?)",
                     [("quiet", "ok", 200, now)] * 10)
    conn.executemany("INSERT INTO attempts (destination, outcome, http_status, error, at)"
                     " VALUES (?, ?, ?, ?, ?)", [("busy", "retryable", 500, "HTTP 500", now)] * 2000)
    health = destination_health(conn, ["quiet", "busy"])
    assert (health["quiet"].attempts, health["quiet"].success_rate) == (10, 1.0)
    assert health["quiet"].health() == "healthy" and health["quiet"].last_error is None
    assert (health["busy"].attempts, health["busy"].success_rate) == (2000, 0.0)
    assert (health["busy"].last_error, health["busy"].last_error_status) == ("HTTP 500", 500)
    assert health["busy"].health() == "failing"


def test_the_user_filter_finds_an_anonymous_event_by_the_id_the_page_shows(
    conn: sqlite3.Connection,
) -> None:
    """The events page shows an anonymous event's anonymousId as its user: filtering by it
    finds the event (it found nothing)."""
    conn.execute("INSERT INTO inbox (source, message_id, type, anonymous_id, received_at, raw)"
                 " VALUES ('web', 'anon-1', 'page', 'visitor-7', '2026-12-05T00:00:00.000Z', '{}')")
    rows, _ = events_page(conn, user_id="visitor-7")
    assert [r.message_id for r in rows] == ["anon-1"]
    assert events_page(conn, user_id="visitor-8")[0] == []


def test_a_destination_retrying_outside_the_window_is_failing_not_idle(
    conn: sqlite3.Connection,
) -> None:
    """With no attempt among the newest ones of all destinations, a destination whose
    deliveries wait to be retried is failing, with the error they wait on (newer than its last
    dead letter's); with nothing waiting it is idle."""
    conn.execute("INSERT INTO outbox (destination, state, attempts, created_at, updated_at,"
                 " last_error, last_status) VALUES ('slow', 'dead', 5, 0, 100, 'HTTP 400', 400)")
    conn.execute("INSERT INTO outbox (destination, state, attempts, created_at, updated_at,"
                 " last_error, last_status) VALUES ('slow', 'pending', 2, 0, 200, 'HTTP 503', 503)")
    health = destination_health(conn, ["slow", "quiet"])
    assert health["slow"].attempts == 0 and health["slow"].retrying == 1
    assert health["slow"].health() == "failing"
    assert (health["slow"].last_error, health["slow"].last_error_status) == ("HTTP 503", 503)
    assert health["quiet"].health() == "idle"


def test_a_replayed_delivery_replaces_the_one_before_it_in_the_status_filter(
    conn: sqlite3.Connection,
) -> None:
    """A dead letter replayed and delivered: the badge said delivered (each destination's
    newest row) while the filter listed it under "failed" (any row; operator audit)."""
    for n, states in enumerate((("dead", "done"), ("done", "dead"), ("dead", "pending"))):
        cur = conn.execute(
            "INSERT INTO inbox (source, message_id, type, user_id, received_at, raw)"
            " VALUES ('web', ?, 'track', 'u1', '2026-01-01T00:00:00Z', '{}')", (f"r{n}",))
        for state in states:  # the same destination twice: the replay's row is the newer
            conn.execute("INSERT INTO outbox (destination, inbox_id, message_id, state,"
                         " created_at) VALUES ('fwd', ?, ?, ?, 0)", (cur.lastrowid, f"r{n}", state))
    expected = {"r0": "delivered", "r1": "failed", "r2": "pending"}
    rows, _ = events_page(conn, limit=500)
    assert {r.message_id: r.status for r in rows} == expected
    for status in ("delivered", "failed", "pending"):
        found, _ = events_page(conn, status=status, limit=500)
        assert [r.message_id for r in found] == [m for m, s in expected.items() if s == status]
