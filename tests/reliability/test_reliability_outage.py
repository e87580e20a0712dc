"""Destination outage: the fake Segment API refuses connections for a stretch, then answers 503
and 429 for another, then recovers. Every event is delivered exactly once (no crash here) and
each user's events arrive in the order they were sent, though deliveries run concurrently."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import httpx
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer, basic_auth
from reliability_kit import EventCounter, forwarder, record_figures, track

USERS = 12
PER_USER = 25
WRITE_KEY = "outage-write-key"


def test_outage_then_recovery_delivers_everything_in_per_user_order(
    hookyard_server: Callable[..., HookyardServer], fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    counter = EventCounter(fake)
    # batch_size 1 and 8 concurrent requests: ordering is the engine's job, not the batch's
    # 2.2 s of outage with retries every 0.05-0.4 s: a user's first event is tried up to ~18
    # times, so the default 20 attempts would leave giving up to chance
    dest = forwarder("segment-out", fake.url, ["web"], batch_size=1, concurrency=8,
                     retry_initial_seconds=0.05, retry_max_seconds=0.4, max_attempts=100)
    server = hookyard_server({
        "sources": [{"name": "web", "plugin": "segment", "write_key": WRITE_KEY}],
        "destinations": [dest],
    })
    fake.down()
    sent: dict[str, list[int]] = defaultdict(list)
    with httpx.Client(base_url=server.url, headers=basic_auth(WRITE_KEY), timeout=10) as http:
        for seq in range(PER_USER):  # interleaved users, each user's events in seq order
            batch = [track(f"user-{u}", seq) for u in range(USERS)]
            assert http.post("/v1/batch", json={"batch": batch}).status_code == 200
            for ev in batch:
                sent[ev["userId"]].append(seq)
    time.sleep(1.0)  # connection refused: every attempt fails and is retried
    failed_while_down = _attempts(server, "retryable")
    counter.status = 503
    fake.up()
    time.sleep(0.6)  # up, but answering 503
    counter.status = 429
    time.sleep(0.6)
    counter.status = None
    outage_over = time.monotonic()
    total = USERS * PER_USER
    done_at = counter.wait_total(total, timeout=20)
    if done_at is None:
        states = server.runtime.db.read_sync(lambda c: c.execute(
            "SELECT state, count(*), max(attempts), max(next_at) - strftime('%s', 'now')"
            " FROM outbox GROUP BY state").fetchall())
        raise AssertionError(f"only {counter.total} of {total} delivered after the outage; "
                             f"outbox: {[tuple(r) for r in states]}")
    server.wait_idle(timeout=10)

    received: dict[str, list[int]] = defaultdict(list)
    for ev in counter.accepted:
        received[ev["userId"]].append(ev["properties"]["seq"])
    assert received == sent  # all delivered, once each, in each user's order
    statuses = {r[0] for r in server.runtime.db.read_sync(
        lambda c: c.execute("SELECT DISTINCT http_status FROM attempts").fetchall())}
    assert {None, 503, 429, 200} <= statuses  # refused connections, 5xx, 429, then success
    assert failed_while_down > 0
    retries = _attempts(server, "retryable")
    record_figures("destination outage", events=total, users=USERS,
                   failed_attempts=retries, drain_seconds_after_recovery=round(done_at - outage_over, 2),
                   order_violations=0, duplicates=0)


def _attempts(server: HookyardServer, outcome: str) -> int:
    return int(server.runtime.db.read_sync(
        lambda c: c.execute("SELECT count(*) FROM attempts WHERE outcome = ?", (outcome,))
        .fetchone()[0]))
