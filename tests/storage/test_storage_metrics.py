"""The size gauges of /metrics on both backends: live outbox states are counted at every
scrape; the counts that read whole indexes (inbox, finished rows) are reused for a minute once
they get slow, and are exact at every scrape while they are fast."""

from __future__ import annotations

import time

import pytest
from hookyard import metrics, sizes
from hookyard.deliveries import Delivery
from hookyard.delivery import outbox
from hookyard.events import encoder
from hookyard.inbox import event_rows, insert_events
from hookyard.runtime import Runtime
from hookyard.testing import sample_track
from hookyard.times import now_iso
from storage_kit import log_entry, parsed


def add(rt: Runtime, state: str, n: int, start: int) -> None:
    now = time.time()
    raws = [sample_track(messageId=f"m{start + i}", userId="u") for i in range(n)]
    rows = event_rows("web", [parsed(r) for r in raws], now_iso())
    rt.db.write_sync(lambda c: insert_events(c, rows, log_entry(n)))
    out = [("seg", start + i, f"m{start + i}", "u", "track",
            encoder.encode(Delivery(kind="track", body={}, message_id=f"m{start + i}")),
            state, now, now, None, "segment") for i in range(n)]
    rt.db.write_sync(lambda c: outbox.insert_rows(c, out))


def scrape(collector: metrics._SizeCollector) -> dict[str, float]:
    found: dict[str, float] = {}
    for family in collector.collect():
        for sample in family.samples:
            found[sample.name + "".join(f",{v}" for v in sample.labels.values())] = sample.value
    return found


def test_fast_counts_are_exact_at_every_scrape(runtime: Runtime) -> None:
    collector = metrics._SizeCollector(runtime)
    add(runtime, "done", 3, 0)
    assert scrape(collector)["hookyard_inbox_events"] == 3
    add(runtime, "done", 2, 3)
    add(runtime, "pending", 1, 5)
    now = scrape(collector)
    assert now["hookyard_inbox_events"] == 6
    assert now["hookyard_outbox_rows,seg,done"] == 5 and now["hookyard_outbox_rows,seg,pending"] == 1
    # a live state with no rows, and no retries: a 0 sample, not "no data" (an outside audit)
    assert now["hookyard_outbox_rows,seg,dead"] == 0 and now["hookyard_outbox_rows,seg,inflight"] == 0
    assert now["hookyard_retry_queue_depth,seg"] == 0


def test_slow_counts_are_reused_live_ones_are_not(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sizes, "SLOW_COUNT_SECONDS", 0.0)  # every full count counts as slow
    collector = metrics._SizeCollector(runtime)
    add(runtime, "done", 3, 0)
    first = scrape(collector)
    assert first["hookyard_inbox_events"] == 3 and first["hookyard_outbox_rows,seg,done"] == 3
    add(runtime, "done", 2, 3)
    add(runtime, "pending", 4, 5)
    add(runtime, "dead", 1, 9)
    second = scrape(collector)
    assert second["hookyard_inbox_events"] == 3  # reused (for MIN_REUSE_SECONDS: a quick count)
    assert second["hookyard_outbox_rows,seg,done"] == 3
    assert second["hookyard_outbox_rows,seg,pending"] == 4  # live: counted now
    assert second["hookyard_outbox_rows,seg,dead"] == 1
    monkeypatch.setattr(sizes, "FINISHED_COUNTS_SECONDS", 0.0)
    third = scrape(collector)
    assert third["hookyard_inbox_events"] == 10 and third["hookyard_outbox_rows,seg,done"] == 5


def test_a_slow_count_is_reused_for_a_hundred_times_its_duration_within_bounds() -> None:
    assert sizes.reuse_seconds(0.001) == sizes.MIN_REUSE_SECONDS == 1.0
    assert sizes.reuse_seconds(0.1) == pytest.approx(10.0)  # ~2 million rows
    assert sizes.reuse_seconds(30.0) == sizes.FINISHED_COUNTS_SECONDS == 60.0


def test_the_dashboard_shares_the_slow_counts(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    from hookyard.dashboard.queries import destination_health

    monkeypatch.setattr(sizes, "SLOW_COUNT_SECONDS", 0.0)
    collector = metrics._SizeCollector(runtime)
    add(runtime, "done", 3, 0)
    assert scrape(collector)["hookyard_outbox_rows,seg,done"] == 3  # counted, and slow
    add(runtime, "done", 2, 3)
    add(runtime, "pending", 1, 5)
    health = runtime.db.read_sync(lambda c: destination_health(c, ["seg"], runtime.sizes))
    assert health["seg"].states == {"done": 3, "pending": 1}  # finished: the scrape's count


def test_unrouted_events_count_what_the_router_has_not_mapped(runtime: Runtime) -> None:
    """hookyard_unrouted_events: grows while routing is stuck or behind, 0 once routed."""
    import asyncio

    from hookyard.delivery import router

    collector = metrics._SizeCollector(runtime)
    assert scrape(collector)["hookyard_unrouted_events"] == 0
    raws = [sample_track(messageId=f"r{i}", userId="u") for i in range(5)]
    rows = event_rows("web", [parsed(r) for r in raws], now_iso())
    runtime.db.write_sync(lambda c: insert_events(c, rows, log_entry(5)))
    assert scrape(collector)["hookyard_unrouted_events"] == 5
    assert asyncio.run(router.route_batch(runtime, limit=3))[0] == 3
    assert scrape(collector)["hookyard_unrouted_events"] == 2
    while asyncio.run(router.route_batch(runtime))[0]:
        pass
    assert scrape(collector)["hookyard_unrouted_events"] == 0


def test_a_scrape_that_cannot_read_the_sizes_says_so_once(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The storage gauges are left out while the database cannot be read (the scrape itself
    succeeds), with one warning per outage instead of silence or one per scrape."""
    caplog.set_level("INFO", logger="hookyard.metrics")
    collector = metrics._SizeCollector(runtime)
    read = runtime.db.read_sync

    def broken(fn: object) -> object:
        raise OSError("disk I/O error")

    monkeypatch.setattr(runtime.db, "read_sync", broken)
    for _ in range(3):
        assert "hookyard_inbox_events" not in scrape(collector)
    warnings = [r for r in caplog.records if r.name == "hookyard.metrics" and r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].exc_info is not None
    monkeypatch.setattr(runtime.db, "read_sync", read)
    assert "hookyard_inbox_events" in scrape(collector)
    assert any("back" in r.getMessage() for r in caplog.records if r.name == "hookyard.metrics")
