"""Retention on both backends: API log lines and inbox events past their retention go, in
bounded steps; an inbox event stays while it is unrouted, recent, or referred to by the outbox,
and the newest event always stays (SQLite would give its id to the next event)."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path
from typing import Any

import pytest
from hookyard import dedupe, retention
from hookyard.config import parse_config
from hookyard.delivery import outbox, router
from hookyard.delivery.engine import Engine
from hookyard.errors import ConfigError
from hookyard.inbox import LogEntry, event_rows, insert_events, insert_log
from hookyard.runtime import Runtime
from hookyard.testing import sample_track
from storage_kit import log_entry, make_runtime, parsed

OLD = "2020-01-01T00:00:00.000Z"


@pytest.fixture(autouse=True)
def merge_every_event(monkeypatch: pytest.MonkeyPatch) -> None:
    """SQLite deletes only events whose dedupe key is merged (hookyard.dedupe): merge them all."""
    monkeypatch.setattr(dedupe, "MERGE_ROWS", 1)


def ingest(rt: Runtime, ids: list[str], received_at: str) -> None:
    rows = event_rows("web", [parsed(sample_track(messageId=m, userId="u1")) for m in ids], received_at)
    rt.db.write_sync(lambda c: insert_events(c, rows, log_entry(len(rows))))
    for _ in range(2):  # the writer runs a merge step (copy, then move) after each commit
        rt.db.write_sync(lambda c: None)


def inbox_ids(rt: Runtime) -> list[str]:
    return rt.db.read_sync(lambda c: [r[0] for r in c.execute(
        "SELECT message_id FROM inbox ORDER BY id").fetchall()])


def route_all(rt: Runtime) -> None:
    while asyncio.run(router.route_batch(rt))[0]:
        pass


def finish_and_purge(rt: Runtime, message_ids: list[str]) -> None:
    """As if these events' deliveries finished long ago and retention_days purged them."""
    marks = ",".join("?" * len(message_ids))
    rt.db.write_sync(lambda c: c.execute(
        f"UPDATE outbox SET state = 'done', updated_at = 0 WHERE message_id IN ({marks})", message_ids))
    rt.db.write_sync(lambda c: retention.purge_outbox(c, time.time(), ["seg"]))


def purge_inbox(rt: Runtime, days: float = 30, limit: int = retention.PURGE_LIMIT) -> int:
    before = retention.cutoff_iso(days)
    return int(rt.db.write_sync(lambda c: retention.purge_inbox(c, before, 0, limit))[0])


def test_purge_api_log_deletes_old_lines_only(runtime: Runtime) -> None:
    for at in (OLD, OLD, retention.cutoff_iso(0)):
        runtime.db.write_sync(lambda c, at=at: insert_log(c, LogEntry(at, "web", "POST", "/v1/track", 200, 1, None, 1.0)))
    before = retention.cutoff_iso(7)
    assert runtime.db.write_sync(lambda c: retention.purge_api_log(c, before, limit=1)) == 1
    assert runtime.db.write_sync(lambda c: retention.purge_api_log(c, before)) == 1
    assert runtime.db.write_sync(lambda c: retention.purge_api_log(c, before)) == 0
    ats = runtime.db.read_sync(lambda c: [r[0] for r in c.execute("SELECT at FROM api_log")])
    assert OLD not in ats and len(ats) == 1


def test_purge_inbox_keeps_unrouted_referenced_recent_and_newest_events(runtime: Runtime) -> None:
    ingest(runtime, ["o1", "o2", "o3", "o4"], OLD)
    assert purge_inbox(runtime) == 0  # not routed yet
    route_all(runtime)
    assert purge_inbox(runtime) == 0  # every event still has a pending delivery
    finish_and_purge(runtime, ["o1", "o2"])
    assert purge_inbox(runtime) == 2
    assert inbox_ids(runtime) == ["o3", "o4"]
    finish_and_purge(runtime, ["o3", "o4"])
    assert purge_inbox(runtime) == 1  # o4 is the newest event: it stays
    ingest(runtime, ["n1"], retention.cutoff_iso(0))
    route_all(runtime)
    finish_and_purge(runtime, ["n1"])
    assert purge_inbox(runtime) == 1  # o4 now; n1 is recent (and the newest)
    assert inbox_ids(runtime) == ["n1"]


def test_purge_inbox_is_bounded_and_resumes_after_kept_events(runtime: Runtime) -> None:
    ingest(runtime, [f"o{i}" for i in range(6)] + ["last"], OLD)
    route_all(runtime)
    finish_and_purge(runtime, [f"o{i}" for i in range(1, 6)])  # o0 keeps a (dead) delivery
    before = retention.cutoff_iso(30)
    gone, last, frontier = runtime.db.write_sync(lambda c: retention.purge_inbox(c, before, 0, 3))
    assert (gone, frontier) == (2, False)
    gone, last, frontier = runtime.db.write_sync(lambda c: retention.purge_inbox(c, before, last, 3))
    assert (gone, frontier) == (3, False)
    gone, last, frontier = runtime.db.write_sync(lambda c: retention.purge_inbox(c, before, last, 3))
    assert (gone, frontier) == (0, True)  # "last" is the newest event
    assert inbox_ids(runtime) == ["o0", "last"]


def test_a_purged_event_can_be_stored_again(runtime: Runtime) -> None:
    ingest(runtime, ["m1", "m2"], OLD)
    route_all(runtime)
    finish_and_purge(runtime, ["m1", "m2"])
    assert purge_inbox(runtime) == 1
    ingest(runtime, ["m1"], retention.cutoff_iso(0))  # its dedupe window ended with it
    assert inbox_ids(runtime) == ["m2", "m1"]


def test_engine_maintenance_applies_both_retentions(storage_settings: dict[str, Any], tmp_path: Path) -> None:
    storage = {**storage_settings, "retention_days": 1, "inbox_retention_days": 2,
               "api_log_retention_days": 3}
    rt = make_runtime(storage, tmp_path)
    try:
        ingest(rt, ["a", "b", "c"], OLD)
        rt.db.write_sync(lambda c: c.execute("UPDATE api_log SET at = ?", (OLD,)))
        ingest(rt, ["new"], retention.cutoff_iso(0))
        route_all(rt)
        rt.db.write_sync(lambda c: c.execute("UPDATE outbox SET state = 'done', updated_at = 0"
                                             " WHERE message_id != 'new'"))

        async def run() -> tuple[int, bool]:
            from hookyard.delivery import engine as engine_module

            engine = Engine(rt)
            try:
                purged = await engine.maintain()
                capped = engine.purge_capped
                with pytest.MonkeyPatch.context() as mp:  # scale audit: a run that stops at
                    mp.setattr(engine_module, "MAX_PURGE_ROUNDS", 0)  # its cap runs again soon
                    await engine.maintain()
                return purged, not capped and engine.purge_capped
            finally:
                rt.engine = None

        assert asyncio.run(run()) == (3, True)
        assert inbox_ids(rt) == ["new"]
        assert rt.db.read_sync(lambda c: c.execute("SELECT count(*) FROM api_log").fetchone()[0]) == 1
    finally:
        rt.close()


def test_events_freed_by_an_outbox_purge_go_in_the_next_maintenance(
        storage_settings: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Found by the operations audit: the inbox purge's scan went past events still referred to
    by the outbox and looked at them again only an hour later, after their rows were purged."""
    storage = {**storage_settings, "retention_days": 1, "inbox_retention_days": 2}
    rt = make_runtime(storage, tmp_path)
    try:
        ingest(rt, ["a", "b", "c"], OLD)
        ingest(rt, ["new"], retention.cutoff_iso(0))
        route_all(rt)

        async def run() -> None:
            engine = Engine(rt)
            try:
                assert await engine.maintain() == 0  # still pending: every event is kept
                assert inbox_ids(rt) == ["a", "b", "c", "new"]
                await rt.db.write(lambda c: c.execute(
                    "UPDATE outbox SET state = 'done', updated_at = 0 WHERE message_id != 'new'"))
                with caplog.at_level(logging.INFO, "hookyard"):
                    assert await engine.maintain() == 3
            finally:
                rt.engine = None

        asyncio.run(run())
        assert inbox_ids(rt) == ["new"]
        assert "deleted 3 finished deliveries past retention_days" in caplog.text
        assert "deleted 3 inbox events past inbox_retention_days" in caplog.text
    finally:
        rt.close()


def test_inbox_retention_shorter_than_outbox_retention_is_a_config_error() -> None:
    base = {"sources": [{"name": "web", "plugin": "segment", "write_key": "k" * 10}]}
    with pytest.raises(ConfigError, match="inbox_retention_days .* at least storage.retention_days"):
        parse_config({**base, "storage": {"retention_days": 7, "inbox_retention_days": 1}})
    parse_config({**base, "storage": {"retention_days": 7, "inbox_retention_days": 7}})
    parse_config({**base, "storage": {"retention_days": 7, "inbox_retention_days": 0}})


def test_expedite_brings_waiting_retries_forward(runtime: Runtime) -> None:
    """outbox.expedite on both backends: only rows waiting past the spread move, each to a
    time within it (the backlog audit's slow drain)."""
    ingest(runtime, ["a", "b", "c"], retention.cutoff_iso(0))
    route_all(runtime)
    now = time.time()
    runtime.db.write_sync(lambda c: c.execute(
        "UPDATE outbox SET next_at = ? WHERE message_id IN ('a', 'b')", (now + 600,)))
    runtime.db.write_sync(lambda c: c.execute(
        "UPDATE outbox SET next_at = ? WHERE message_id = 'c'", (now + 5,)))
    assert runtime.db.write_sync(lambda c: outbox.expedite(c, "seg", now, 10)) == 2
    due = dict(runtime.db.read_sync(lambda c: c.execute(
        "SELECT message_id, next_at FROM outbox").fetchall()))
    assert all(now <= due[m] <= now + 10 for m in ("a", "b")) and due["c"] == now + 5


def test_the_outbox_purge_gets_past_recently_finished_rows_made_long_ago(runtime: Runtime) -> None:
    """Reviewer: rows made long ago but finished today (last week's dead letters, retried and
    delivered) filled the purge's window of the oldest ids; it deleted nothing, and every row
    behind them stayed, however old, until they too were past retention. When the first
    window deletes nothing, one more is read, from a position kept between maintenance runs;
    the first is read every time (re-check: rows passing retention there waited for the
    position to come round again)."""
    now = time.time()
    week_ago = now - 7 * 86400
    # ids 1-4: finished today; 5-7: a week ago; 8: today; 9-10: a week ago
    stamps = [now] * 4 + [week_ago] * 3 + [now] + [week_ago] * 2
    runtime.db.write_sync(lambda c: c.executemany(
        "INSERT INTO outbox (destination, state, attempts, created_at, updated_at)"
        " VALUES ('d', 'done', 1, ?, ?)", [(week_ago, at) for at in stamps]))
    cutoff = now - 86400
    positions: dict[tuple[str, str], int] = {}

    def purge() -> int:
        return int(runtime.db.write_sync(
            lambda c: retention.purge_outbox(c, cutoff, ["d"], limit=4, positions=positions)))

    assert purge() == 3  # ids 1-4 all recent, so 5-8 too: the three old ones
    assert positions == {("d", "done"): 8}
    assert purge() == 2  # ids 1-4 again, then 9-10 after the position; the last row: reset
    assert positions == {}
    # re-check: rows at the front that pass retention go at once, whatever the position
    runtime.db.write_sync(lambda c: c.executemany(
        "INSERT INTO outbox (destination, state, attempts, created_at, updated_at)"
        " VALUES ('d', 'done', 1, ?, ?)", [(now, now)] * 5))
    assert purge() == 0 and list(positions) == [("d", "done")]  # a window after ids 1-4
    runtime.db.write_sync(lambda c: c.execute(
        "UPDATE outbox SET updated_at = ? WHERE id IN (1, 2)", (week_ago,)))
    assert purge() == 2 and positions == {}
    left = runtime.db.read_sync(lambda c: c.execute(
        "SELECT count(*) FROM outbox WHERE updated_at < ?", (cutoff,)).fetchone()[0])
    assert left == 0
