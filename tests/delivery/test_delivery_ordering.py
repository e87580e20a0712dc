"""Per-user ordering, batching and a short outage, through a real server and a real peer."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import pytest
from delivery_kit import (
    BATCH_SIZE,
    PLUGIN,
    Peer,
    items,
    recorder,
    send,
    states,
    trace,
    track,
    wait_until,
)
from hookyard.delivery import outbox, scan
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer

Start = Callable[..., HookyardServer]


def per_user(ids: list[str]) -> dict[str, list[int]]:
    """messageIds ``user-seq`` grouped by user, in the order given."""
    out: dict[str, list[int]] = defaultdict(list)
    for mid in ids:
        user, _, seq = mid.rpartition("-")
        out[user].append(int(seq))
    return out


def test_a_later_event_waits_while_an_earlier_one_retries(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    peer.fail("a-1", (503, None, {"Retry-After": "0.3"}), (503, None, {"Retry-After": "0.3"}))
    server = hookyard_server(
        {"destinations": [recorder(fake.url, per_item=True,
                                   delivery={"batch_size": 1, "concurrency": 4,
                                             "retry_max_seconds": 1})]},
        plugins=[PLUGIN])
    events = [track("a", 1), track("a", 2), track("a", 3), track("b", 1), track("b", 2),
              track("c", 1)]
    assert send(server, "/v1/batch", {"batch": events}).status_code == 200
    wait_until(lambda: len(peer.accepted_ids()) == 6, what="6 deliveries")
    accepted = peer.accepted_ids()
    assert per_user(accepted) == {"a": [1, 2, 3], "b": [1, 2], "c": [1]}
    # b and c were not held up by a's retries
    assert accepted.index("b-2") < accepted.index("a-1")
    assert accepted.index("c-1") < accepted.index("a-1")
    # a-2 was not even tried before a-1 succeeded
    sent = [r.json()["messageId"] for r in fake.requests]
    assert sent.count("a-1") == 3 and sent.count("a-2") == 1
    assert sent.index("a-2") > max(i for i, m in enumerate(sent) if m == "a-1")
    gaps = [r.received_at for r in fake.requests if r.json()["messageId"] == "a-1"]
    assert gaps[1] - gaps[0] >= 0.25 and gaps[2] - gaps[1] >= 0.25  # Retry-After: 0.3


def test_batches_respect_the_connector_batch_size(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    fake.hang(0.6, times=1)  # the first batch is slow: a backlog builds behind it
    server = hookyard_server(
        {"destinations": [recorder(fake.url, delivery={"concurrency": 1})]}, plugins=[PLUGIN])
    assert send(server, "/v1/track", track("u0", 0)).status_code == 200
    fake.wait_for(1)
    backlog = [track(f"u{i % 4}", i) for i in range(1, 24)]
    assert send(server, "/v1/batch", {"batch": backlog}).status_code == 200
    server.wait_idle()
    sizes = [len(items(r)) for r in fake.requests]
    assert sizes[0] == 1 and max(sizes) == BATCH_SIZE and all(s <= BATCH_SIZE for s in sizes)
    # 23 in batches of at most 5: 5 requests, or 6 when a user is still blocked by the
    # record of its previous batch as the next one is packed (results are stored together)
    assert sum(sizes) == 24 and 1 + 5 <= len(sizes) <= 1 + 6
    delivered = [it["messageId"] for r in fake.requests for it in items(r)]
    assert sorted(delivered) == sorted(e["messageId"] for e in [track("u0", 0), *backlog])
    for user, seqs in per_user(delivered).items():
        assert seqs == sorted(seqs), user


def test_the_delivery_batch_size_setting_overrides_the_connector(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    fake.hang(0.4, times=1)
    server = hookyard_server(
        {"destinations": [recorder(fake.url, delivery={"concurrency": 1, "batch_size": 2})]},
        plugins=[PLUGIN])
    assert send(server, "/v1/track", track("u0", 0)).status_code == 200
    fake.wait_for(1)
    assert send(server, "/v1/batch", {"batch": [track("u1", i) for i in range(1, 8)]}).status_code == 200
    server.wait_idle()
    sizes = [len(items(r)) for r in fake.requests]
    assert sizes == [1, 2, 2, 2, 1]
    delivered = [it["messageId"] for r in fake.requests for it in items(r)]
    assert per_user(delivered)["u1"] == list(range(1, 8))


def test_outage_then_everything_delivered_once_in_per_user_order(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    fake.down()
    server = hookyard_server(
        {"destinations": [recorder(fake.url, delivery={"max_attempts": 1000})]}, plugins=[PLUGIN])
    events = [track(f"user{i % 10}", i // 10) for i in range(200)]
    for chunk in (events[:100], events[100:]):
        assert send(server, "/v1/batch", {"batch": chunk}).status_code == 200
    wait_until(lambda: states(server).get("pending", 0) + states(server).get("inflight", 0) == 200
               and "connection error" in (trace(server, "user0-0")[0]["last_error"] or ""),
               what="deliveries failing while the peer is down")
    time.sleep(0.3)
    fake.up()
    server.wait_idle(timeout=20)
    assert states(server) == {"done": 200}
    delivered = [it["messageId"] for r in fake.requests for it in items(r)]
    assert sorted(delivered) == sorted(e["messageId"] for e in events)  # each exactly once
    assert per_user(delivered) == {f"user{u}": list(range(20)) for u in range(10)}
    assert all(len(items(r)) <= BATCH_SIZE for r in fake.requests)


def behind_a_waiting_backlog(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer], *,
    user: str = "big", rows: int = 600, retry_after: int = 600,
) -> tuple[HookyardServer, FakeServer, Peer]:
    """A server (concurrency 1, batch 1) whose ``user`` has ``rows`` rows, the first answered
    503 with ``Retry-After`` (retry_max_seconds twice that) and the rest waiting behind it."""
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    peer.fail(f"{user}-1", (503, None, {"Retry-After": str(retry_after)}))
    server = hookyard_server(
        {"destinations": [recorder(fake.url, per_item=True,
                                   delivery={"batch_size": 1, "concurrency": 1,
                                             "retry_max_seconds": 2 * retry_after})]},
        plugins=[PLUGIN])
    backlog = [track(user, i) for i in range(1, rows + 1)]
    for start in range(0, len(backlog), 100):
        assert send(server, "/v1/batch", {"batch": backlog[start:start + 100]}).status_code == 200
    wait_until(lambda: len(fake.requests) == 1, what=f"{user}-1 tried")
    return server, fake, peer


def test_a_user_behind_pages_of_a_waiting_users_rows_is_not_held_up(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scan stops at a page that holds only rows of blocked users (scanning on made 50 busy
    users deliver 200 events/s); a deep scan, at most every DEEP_SCAN_SECONDS, still finds a
    user queued behind them, so "a" waiting for its retry does not hold "z" back."""
    monkeypatch.setattr(scan, "DEEP_SCAN_SECONDS", 0.5)
    server, fake, peer = behind_a_waiting_backlog(hookyard_server, fake_destination,
                                                  user="a", rows=300, retry_after=30)
    time.sleep(1.0)  # full rescans meet a-1's retry wait and 299 blocked rows
    assert send(server, "/v1/batch", {"batch": [track("b", 1)]}).status_code == 200
    wait_until(lambda: "b-1" in peer.accepted_ids(), timeout=5, what="b-1 delivered")
    assert send(server, "/v1/track", track("z", 1)).status_code == 200
    wait_until(lambda: "z-1" in peer.accepted_ids(), timeout=5, what="z-1 delivered")
    assert [r.json()["messageId"] for r in fake.requests].count("a-1") == 1  # still waiting


def test_a_user_behind_more_rows_than_a_deep_scan_reads_is_still_found(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A deep scan read at most MAX_SCAN_PAGES pages: behind 4,000 rows of a user waiting for
    its retry (2,560 at concurrency 1), other users waited for that retry, up to 10 minutes
    (an outside delivery audit). It now leaves the blocked users' rows out in SQL."""
    monkeypatch.setattr(scan, "DEEP_SCAN_SECONDS", 0.5)
    monkeypatch.setattr(scan, "MAX_SCAN_PAGES", 4)  # 256 rows: the backlog below is more
    server, fake, peer = behind_a_waiting_backlog(hookyard_server, fake_destination)
    others = [track(f"small{u}", 1) for u in range(3)]
    assert send(server, "/v1/batch", {"batch": others}).status_code == 200
    wait_until(lambda: all(e["messageId"] in peer.accepted_ids() for e in others), timeout=10,
               what="the users behind big's backlog delivered")
    assert [r.json()["messageId"] for r in fake.requests].count("big-1") == 1  # still waiting
    assert not [m for m in peer.accepted_ids() if m.startswith("big-")]  # its order kept


def test_users_behind_a_waiting_backlog_flow_between_deep_scans(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by a deep scan, a user behind a waiting user's backlog got one batch per deep
    scan (every 5 s): 20 events took 96 s. The scans in between now leave the waiting user's
    rows out too, until its retry is due (a re-check of the deep-scan fix)."""
    monkeypatch.setattr(scan, "DEEP_SCAN_SECONDS", 3.0)
    monkeypatch.setattr(scan, "MAX_SCAN_PAGES", 4)
    server, fake, peer = behind_a_waiting_backlog(hookyard_server, fake_destination)
    other = [track("other", i) for i in range(1, 11)]
    assert send(server, "/v1/batch", {"batch": other}).status_code == 200
    wait_until(lambda: "other-1" in peer.accepted_ids(), timeout=10, what="other-1 delivered")
    first = time.monotonic()
    wait_until(lambda: "other-10" in peer.accepted_ids(), timeout=10, what="other-10 delivered")
    assert time.monotonic() - first < 2.5  # not one per deep scan (3 s apart)
    assert per_user(peer.accepted_ids())["other"] == list(range(1, 11))


def test_a_timer_rescan_that_skips_ahead_keeps_every_blocked_user_blocked(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rescan on the timer that meets a page of blocked rows goes on from where the
    incremental scans got; it must carry the users they found blocked there. It carried only
    those of its own pages, so "r", waiting for its retry behind "a"'s backlog, had its later
    event sent first (found by an outside audit under load: 13-208 users out of order)."""
    monkeypatch.setattr(scan, "DEEP_SCAN_SECONDS", 0.0)  # until r-1 is tried: every scan deep
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    peer.fail("a-1", (503, None, {"Retry-After": "30"}))
    peer.fail("r-1", (503, None, {"Retry-After": "30"}))
    server = hookyard_server(
        {"destinations": [recorder(fake.url, per_item=True,
                                   delivery={"batch_size": 1, "concurrency": 1,
                                             "retry_max_seconds": 60})]},
        plugins=[PLUGIN])
    backlog = [track("a", i) for i in range(1, 301)] + [track("r", 1), track("r", 2)]
    assert send(server, "/v1/batch", {"batch": backlog}).status_code == 200
    wait_until(lambda: {"a-1", "r-1"} <= {r.json()["messageId"] for r in fake.requests},
               what="a-1 and r-1 tried")
    monkeypatch.setattr(scan, "DEEP_SCAN_SECONDS", 60.0)  # from now on: no deep scan
    time.sleep(0.2)
    for i in range(1000, 1010):  # routing wakes: the incremental scans walk past r-1, r-2
        assert send(server, "/v1/track", track("a", i)).status_code == 200
        time.sleep(0.04)
    time.sleep(1.5)  # a rescan on the timer: a's rows only on its pages, then skips ahead
    assert send(server, "/v1/track", track("r", 3)).status_code == 200  # after the skip
    time.sleep(1.5)
    assert "r-3" not in peer.accepted_ids()  # it waits for r-1's retry, 30 s away
    assert [r.json()["messageId"] for r in fake.requests].count("r-1") == 1


def test_a_stuck_destination_does_not_read_its_backlog_again_and_again(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every user waits for an answer that does not come. Once a scan has got through the
    backlog finding only blocked users, a rescan on the timer (nothing changed here since)
    goes on from there: reading on from its first page re-read the whole backlog every
    second, a page per routing wake (the isolation test's stuck destination)."""
    monkeypatch.setattr(scan, "DEEP_SCAN_SECONDS", 60.0)  # no deep scan in this window
    fake = fake_destination()
    fake.hang(20.0)
    read = {"rows": 0}
    pending = outbox.pending

    def counted(*args: Any, **kwargs: Any) -> Any:
        rows = pending(*args, **kwargs)
        read["rows"] += len(rows)
        return rows

    monkeypatch.setattr(outbox, "pending", counted)
    server = hookyard_server(
        {"destinations": [recorder(fake.url, delivery={
            "batch_size": 1, "concurrency": 8, "total_timeout_seconds": 20.0,
            "lease_seconds": 30.0})]},
        plugins=[PLUGIN])
    backlog = [track(f"u{u}", i) for i in range(1, 201) for u in range(5)]
    for start in range(0, len(backlog), 100):
        assert send(server, "/v1/batch", {"batch": backlog[start:start + 100]}).status_code == 200
    wait_until(lambda: len(fake.requests) == 5, what="each user's first event in flight")

    def wakes(first: int, count: int) -> None:
        """Routing wakes: one more row of a blocked user every 40 ms."""
        for i in range(first, first + count):
            assert send(server, "/v1/track", track("u0", i)).status_code == 200
            time.sleep(0.04)

    wakes(1000, 30)  # the scans get through the 995 rows of blocked users
    read["rows"] = 0
    wakes(2000, 60)  # 2.4 s: two or three rescans on the timer
    assert read["rows"] < 600, read["rows"]  # (reading on from each first page: ~2,000)
    assert len(fake.requests) == 5


def test_a_long_ordering_key_is_stored_cut_with_a_hash() -> None:
    """Found by an outside audit: an event with a 20 KB userId stopped routing on PostgreSQL
    (its outbox index refused the key, and the router tried it again and again). Ingest now
    refuses such ids; a source plugin's event or a plugin's own key is cut, with a hash."""
    from hookyard.delivery.router import stored_key
    from hookyard.events import MAX_ID

    assert stored_key("user-1") == "user-1" and stored_key("u" * MAX_ID) == "u" * MAX_ID
    a, b = stored_key("u" * 20_000 + "a"), stored_key("u" * 20_000 + "b")
    assert len(a) == len(b) == MAX_ID and a != b and a == stored_key("u" * 20_000 + "a")
    assert a.startswith("u" * 400)
