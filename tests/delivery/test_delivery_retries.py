"""Result classes end to end: a real hookyard server delivers through the ``recorder`` test
connector to a real loopback peer that answers as told. 2xx ok; 408/429/5xx, connect errors,
timeouts and dropped connections are retried (Retry-After honoured); other 4xx and exhausted
retries become dead letters; every attempt shows in ``GET /api/deliveries``."""

from __future__ import annotations

import email.utils
import re
import time
from collections.abc import Callable
from typing import Any

import pytest
from delivery_kit import PLUGIN, Peer, dead_letters, recorder, send, trace, track, wait_until
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer

Start = Callable[..., HookyardServer]


def start(hookyard_server: Start, fake: FakeServer, **dest: Any) -> HookyardServer:
    return hookyard_server({"destinations": [recorder(fake.url, **dest)]}, plugins=[PLUGIN])


def settled(server: HookyardServer, message_id: str, state: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        rows = trace(server, message_id)
        return rows[0] if rows and rows[0]["state"] == state else None

    row: dict[str, Any] = wait_until(check, what=f"{message_id} to be {state}")
    return row


def test_5xx_is_retried_and_every_attempt_is_traced(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    peer.fail("u1-1", (500, {"e": 1}, {}), (503, "busy", {}))
    server = start(hookyard_server, fake)
    assert send(server, "/v1/track", track("u1", 1)).status_code == 200
    row = settled(server, "u1-1", "done")
    assert row["destination"] == "rec" and row["attempts"] == 3 and row["user_key"] == "u1"
    assert row["request"]["body"]["seq"] == 1 and row["kind"] == "track"
    log = row["attempts_log"]
    assert [a["attempt"] for a in log] == [1, 2, 3]
    assert [a["outcome"] for a in log] == ["retryable", "retryable", "ok"]
    assert [a["http_status"] for a in log] == [500, 503, 200]
    assert [a["error"] for a in log] == ["HTTP 500", "HTTP 503", None]
    assert all(a["latency_ms"] >= 0 and a["at"] > 0 for a in log)
    assert peer.accepted_ids() == ["u1-1"]


def test_retryable_and_permanent_statuses(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    retryable = [408, 429, 500, 502, 503, 504, 599]
    permanent = [400, 401, 403, 404, 409, 410, 413, 422]
    for status in retryable + permanent:
        peer.fail(f"s{status}-1", (status, {"status": status}, {}))
    peer.fail("s201-1", (201, None, {}))
    server = start(hookyard_server, fake, per_item=True, delivery={"batch_size": 1})
    batch = [track(f"s{status}", 1) for status in [201, *retryable, *permanent]]
    assert send(server, "/v1/batch", {"batch": batch}).status_code == 200
    assert settled(server, "s201-1", "done")["attempts"] == 1
    for status in retryable:
        row = settled(server, f"s{status}-1", "done")
        assert row["attempts"] == 2, status
        assert [a["http_status"] for a in row["attempts_log"]] == [status, 200]
    for status in permanent:
        row = settled(server, f"s{status}-1", "dead")
        assert row["attempts"] == 1, status
        assert row["last_status"] == status and row["last_error"] == f"HTTP {status}"
        assert row["attempts_log"][0]["outcome"] == "permanent"
    assert sorted(peer.accepted_ids()) == sorted(f"s{s}-1" for s in retryable)
    assert {d["message_id"] for d in dead_letters(server)} == {f"s{s}-1" for s in permanent}


def test_dead_letter_keeps_what_an_operator_needs(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    peer.fail("bad-1", (400, b"x" * 5000, {}))
    server = start(hookyard_server, fake)
    assert send(server, "/v1/track", track("bad", 1)).status_code == 200
    settled(server, "bad-1", "dead")
    [dl] = dead_letters(server)
    assert dl["destination"] == "rec" and dl["message_id"] == "bad-1"
    assert dl["user_key"] == "bad" and dl["kind"] == "track"
    assert dl["attempts"] == 1 and dl["last_status"] == 400 and dl["last_error"] == "HTTP 400"
    assert dl["response_body"].startswith("xxx") and 1000 <= len(dl["response_body"]) <= 2001


def test_retry_after_seconds_and_http_date_are_honoured(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    date = email.utils.formatdate(time.time() + 2.2, usegmt=True)  # 1 s resolution: >= 1.2 s
    peer.fail("ra-1", (429, None, {"Retry-After": "1"}))
    peer.fail("rd-1", (503, None, {"Retry-After": date}))
    server = start(hookyard_server, fake, per_item=True, delivery={"retry_max_seconds": 5})
    assert send(server, "/v1/batch", {"batch": [track("ra", 1), track("rd", 1)]}).status_code == 200
    for user, floor in (("ra", 0.95), ("rd", 1.0)):
        settled(server, f"{user}-1", "done")
        sent = [r.received_at for r in fake.requests if r.json()["messageId"] == f"{user}-1"]
        assert len(sent) == 2 and sent[1] - sent[0] >= floor, (user, sent)


def test_a_429_holds_back_the_destinations_next_requests(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    """Delivery adversity audit: a 429 delayed its own delivery only, so a destination over its
    rate limit went on at full concurrency, each refused request spending an attempt: 91 % of
    requests refused and dead letters from a destination that was up. Now no new request goes
    out for what the 429 asked (here 1 s)."""
    fake = fake_destination()
    limited_until = [0.0]

    def rate_limit(req: Any) -> tuple[int, Any, dict[str, str]]:
        now = time.monotonic()
        if not limited_until[0]:
            limited_until[0] = now + 1.0
        if now < limited_until[0]:
            return 429, {"error": "slow down"}, {"Retry-After": "1"}
        return 200, {"ok": True}, {}

    fake.set_handler(rate_limit)
    server = start(hookyard_server, fake, per_item=True,
                   delivery={"batch_size": 1, "concurrency": 4, "retry_initial_seconds": 0.1,
                             "retry_max_seconds": 2, "max_attempts": 3})
    sent = [track(f"r{u}", 1) for u in range(40)]
    assert send(server, "/v1/batch", {"batch": sent}).status_code == 200
    for event in sent:
        settled(server, event["messageId"], "done")
    refused = [r for r in fake.requests if r.received_at - fake.requests[0].received_at < 0.9]
    assert len(refused) <= 4 + 1, len(refused)  # those in flight when the first 429 came back


def test_one_users_429s_do_not_hold_the_others(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    """Re-check: with a 429 holding the whole destination, an API limiting each user's rate
    made every user wait each time one user's retry was refused again (54 of 600 delivered
    in 40 s)."""
    fake, peer, server = slow_user(hookyard_server, fake_destination, batch_size=1, concurrency=2)
    assert send(server, "/v1/track", track("slow", 1)).status_code == 200
    fake.wait_for(1)
    started = time.monotonic()
    others = [track(f"o{u}", 1) for u in range(30)]
    assert send(server, "/v1/batch", {"batch": others}).status_code == 200
    not_held(peer, others, started)


def test_one_users_429_in_a_call_of_many_users_holds_only_that_user(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    """Soak audit: a deliver call carries many users' deliveries (Novu's 100); all of them
    were counted as refused when one of them got a 429, so one sporadic 429 held the whole
    destination, and a Novu backlog grew 16 times slower than it drained."""
    _, peer, server = slow_user(hookyard_server, fake_destination, batch_size=10, concurrency=1)
    peer.fail("slow2-1", (429, None, {"Retry-After": "2"}))  # another user, once, in
    started = time.monotonic()  # another call with deliveries in it: no hold either (re-check)
    others = [track(f"o{u}", 1) for u in range(40)]
    # one call: slow and 9 others; the next: slow2 and 9 others (each call delivers some)
    batch = [track("slow", 1), *others[:9], track("slow2", 1), *others[9:], track("slow", 2)]
    assert send(server, "/v1/batch", {"batch": batch}).status_code == 200
    not_held(peer, others, started)


def slow_user(hookyard_server: Start, fake_destination: Callable[[], FakeServer],
              **delivery: Any) -> tuple[FakeServer, Peer, Any]:
    """A server whose peer refuses user slow's first event five times: 429, Retry-After 2."""
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    for _ in range(5):
        peer.fail("slow-1", (429, None, {"Retry-After": "2"}))
    server = start(hookyard_server, fake, per_item=True,
                   delivery={"retry_max_seconds": 5, **delivery})
    return fake, peer, server


def not_held(peer: Peer, others: list[dict[str, Any]], started: float) -> None:
    """Every other user's event delivered sooner than the slow user's 2 s hold."""
    wait_until(lambda: {e["messageId"] for e in others} <= set(peer.accepted_ids()),
               what="the other users' events")
    assert time.monotonic() - started < 1.9


def test_retry_after_is_capped_by_retry_max_seconds(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    peer.fail("cap-1", (429, None, {"Retry-After": "3600"}))
    server = start(hookyard_server, fake, delivery={"retry_max_seconds": 0.3})
    started = time.monotonic()
    assert send(server, "/v1/track", track("cap", 1)).status_code == 200
    settled(server, "cap-1", "done")
    assert time.monotonic() - started < 5


def test_connect_errors_timeouts_and_dropped_connections_are_retried(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    fake.hang(1.5, times=1, path="/item")  # the first request times out (total timeout 0.3 s)
    fake.close_connection(times=1, path="/item")  # the second is dropped without an answer
    server = start(hookyard_server, fake, per_item=True,
                   delivery={"total_timeout_seconds": 0.3})
    assert send(server, "/v1/track", track("net", 1)).status_code == 200
    row = settled(server, "net-1", "done")
    errors = [a["error"] or "" for a in row["attempts_log"]]
    assert errors[0] == "timeout" and errors[1].startswith("connection error")
    assert [a["outcome"] for a in row["attempts_log"]] == ["retryable", "retryable", "ok"]

    port = fake.port
    fake.down()  # nothing listens: connection refused
    assert send(server, "/v1/track", track("net", 2)).status_code == 200
    wait_until(lambda: [r for r in trace(server, "net-2") if len(r["attempts_log"]) >= 2],
               what="2 attempts")
    down = trace(server, "net-2")[0]
    # between attempts the row waits ("pending") or is already claimed for the next one
    assert down["state"] in ("pending", "inflight")
    assert down["last_error"].startswith("connection error")
    fake.up()
    assert fake.port == port
    assert settled(server, "net-2", "done")["attempts_log"][-1]["http_status"] == 200


@pytest.mark.parametrize(
    ("policy", "expected"),
    [({"max_attempts": 3}, "gave up after 3 attempts: HTTP 503"),
     ({"max_attempts": 1000, "give_up_after_seconds": 0.4}, "gave up after")],
    ids=["max_attempts", "give_up_after_seconds"],
)
def test_exhausted_retries_become_dead_letters(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer],
    policy: dict[str, Any], expected: str,
) -> None:
    fake = fake_destination()
    fake.fail(503)
    server = start(hookyard_server, fake, delivery={**policy, "retry_max_seconds": 0.1})
    assert send(server, "/v1/track", track("gone", 1)).status_code == 200
    row = settled(server, "gone-1", "dead")
    assert row["last_error"].startswith(expected) and row["last_status"] == 503
    log = row["attempts_log"]
    assert len(log) == row["attempts"] and all(a["outcome"] == "retryable" for a in log)
    if "give_up_after_seconds" in policy:
        assert 2 <= row["attempts"] < 1000
        assert log[-1]["at"] - row["created_at"] >= 0.4
    else:
        assert row["attempts"] == 3
    [dl] = dead_letters(server)
    assert dl["message_id"] == "gone-1" and dl["attempts"] == row["attempts"]


def test_a_misbehaving_deliver_hook_never_loses_the_event(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    modes = {  # misbehave -> (final state, attempts, first error)
        "hang": ("dead", 2, "deliver hook did not answer within 0.45 s"),
        "raise": ("dead", 2, "deliver hook raised KeyError: 'oops'"),
        "none": ("dead", 2, "deliver hook returned NoneType, not a DeliveryResult"),
        "short": ("dead", 2, "deliver hook returned 0 results for 1 delivery"),
        "retryable": ("dead", 2, "busy, try later"),
        "permanent": ("dead", 1, "account suspended"),
    }
    policy = {"max_attempts": 2, "lease_seconds": 0.5, "total_timeout_seconds": 0.4}
    server = hookyard_server({"destinations": [
        recorder(fake.url, name=mode, misbehave=mode, delivery=policy) for mode in modes]},
        plugins=[PLUGIN])
    assert send(server, "/v1/track", track("mb", 1)).status_code == 200
    rows = wait_until(lambda: (r := trace(server, "mb-1")) and all(
        x["state"] == "dead" for x in r) and len(r) == len(modes) and r, what="dead letters")
    by_dest = {r["destination"]: r for r in rows}
    for mode, (state, attempts, error) in modes.items():
        row = by_dest[mode]
        assert (row["state"], row["attempts"]) == (state, attempts), mode
        assert row["attempts_log"][0]["error"] == error, mode
    assert by_dest["permanent"]["last_status"] == 403
    assert by_dest["retryable"]["attempts_log"][0]["http_status"] == 503
    assert by_dest["hang"]["last_error"].startswith("gave up after 2 attempts: deliver hook")


def test_deliveries_waiting_for_a_retry_are_a_metric(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    import httpx

    fake = fake_destination()
    fake.fail(503)
    server = start(hookyard_server, fake, delivery={"retry_initial_seconds": 60,
                                                    "retry_max_seconds": 60})
    for seq in (1, 2):
        assert send(server, "/v1/track", track(f"u{seq}", 1)).status_code == 200
    for seq in (1, 2):
        wait_until(lambda: [r["attempts"] for r in trace(server, f"u{seq}-1")] == [1],  # noqa: B023
                   what="a failed first attempt")
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'hookyard_retry_queue_depth{destination="rec"} 2.0' in metrics
    assert 'hookyard_outbox_rows{destination="rec",state="pending"} 2.0' in metrics
    # (the backlog audit: nothing said how stale a backlog was)
    [age] = re.findall(r'hookyard_oldest_pending_seconds\{destination="rec"\} ([0-9.e+-]+)', metrics)
    assert 0 < float(age) < 60


def test_waiting_retries_go_out_soon_after_the_destination_delivers_again(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Found by the backlog audit: each delivery kept its own backoff (up to 10 minutes), so
    after a long outage the backlog drained for minutes at a fraction of the destination's
    pace. A destination that delivers again after failing a while has its waiting retries
    brought forward, spread over a few seconds."""
    from hookyard.delivery import outbox, worker

    monkeypatch.setattr(worker, "EXPEDITE_AFTER", 0.3)  # (30 s: an outage, not a blip)
    monkeypatch.setattr(outbox, "EXPEDITE_SPREAD", 0.5)
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    peer.default = (503, {"error": "down"}, {})
    server = start(hookyard_server, fake, delivery={"retry_initial_seconds": 60,
                                                    "retry_max_seconds": 60})
    for user in ("u1", "u2", "u3"):
        assert send(server, "/v1/track", track(user, 1)).status_code == 200
    wait_until(lambda: all(trace(server, f"{u}-1") and trace(server, f"{u}-1")[0]["attempts"] >= 1
                           for u in ("u1", "u2", "u3")), what="the first failed attempts")
    time.sleep(0.4)
    peer.default = (200, {"ok": True}, {})  # back; the retries wait up to 60 s
    began = time.monotonic()
    assert send(server, "/v1/track", track("fresh", 1)).status_code == 200
    wait_until(lambda: sorted(peer.accepted_ids()) == ["fresh-1", "u1-1", "u2-1", "u3-1"],
               timeout=15, what="the waiting retries delivered")
    assert time.monotonic() - began < 10


def test_waiting_retries_go_out_soon_also_after_a_restart(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer],
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any,
) -> None:
    """Found by the final re-check: a restart during the outage forgot the failures (the
    worker's memory of them), and the backlog drained at each row's own backoff again."""
    from hookyard.delivery import outbox, worker

    monkeypatch.setattr(worker, "EXPEDITE_AFTER", 0.3)
    monkeypatch.setattr(outbox, "EXPEDITE_SPREAD", 0.5)
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    peer.default = (503, {"error": "down"}, {})
    config = {"destinations": [recorder(fake.url, delivery={"retry_initial_seconds": 60,
                                                            "retry_max_seconds": 60})]}
    first = hookyard_server(config, plugins=[PLUGIN], data_dir=tmp_path / "data")
    for user in ("u1", "u2"):
        assert send(first, "/v1/track", track(user, 1)).status_code == 200
    wait_until(lambda: all(trace(first, f"{u}-1") and trace(first, f"{u}-1")[0]["attempts"] >= 1
                           for u in ("u1", "u2")), what="the first failed attempts")
    first.stop()
    time.sleep(0.4)
    peer.default = (200, {"ok": True}, {})
    second = hookyard_server(config, plugins=[PLUGIN], data_dir=tmp_path / "data")
    assert send(second, "/v1/track", track("fresh", 1)).status_code == 200
    wait_until(lambda: sorted(peer.accepted_ids()) == ["fresh-1", "u1-1", "u2-1"],
               timeout=15, what="the waiting retries delivered after the restart")


def test_a_retry_scheduled_before_the_clock_went_back_is_not_held(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer],
) -> None:
    """The wall clock stepped back an hour: every retry was then due an hour later, and each
    retrying user's events waited that long (resources audit). No retry waits longer than
    retry_max_seconds, so a row due later than that is due now."""
    import sqlite3

    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    for _ in range(100):
        peer.fail("clk-1", (503, None, {}))
    server = start(hookyard_server, fake, delivery={"retry_initial_seconds": 1,
                                                    "retry_max_seconds": 1})
    assert send(server, "/v1/track", track("clk", 1)).status_code == 200
    wait_until(lambda: [r["state"] for r in trace(server, "clk-1")] == ["pending"]
               and trace(server, "clk-1")[0]["attempts"] >= 1, what="a failed first attempt")
    conn = sqlite3.connect(server.runtime.data_dir / "hookyard.db")
    with conn:  # as if scheduled an hour ahead by a clock since set back
        conn.execute("UPDATE outbox SET next_at = ? WHERE message_id = 'clk-1' AND state ="
                     " 'pending'", (time.time() + 3600,))
    conn.close()
    peer.failures.clear()
    assert send(server, "/v1/track", track("clk", 2)).status_code == 200
    wait_until(lambda: peer.accepted_ids() == ["clk-1", "clk-2"], timeout=10,
               what="both delivered, in order, without waiting for the hour")


def test_an_answered_request_keeps_its_result_when_another_one_of_the_call_hangs(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer],
) -> None:
    """A request's timeout was cut to exactly what the deliver call had left, so the call's
    own timer fired first and threw away the result of a request answered 200 (sent again):
    the session's review. The cut leaves a margin."""
    fake = fake_destination()
    fake.respond(200, {"ok": True}, times=1)  # the first request: answered at once
    fake.hang(10, times=1)  # the second: hangs
    server = start(hookyard_server, fake, per_item=True, delivery={
        "total_timeout_seconds": 2, "connect_timeout_seconds": 1, "lease_seconds": 2.224,
        "retry_initial_seconds": 30, "retry_max_seconds": 30, "batch_size": 5})
    assert send(server, "/v1/batch", {"batch": [track("u1", 1), track("u2", 1)]}).status_code == 200
    first = settled(server, "u1-1", "done")
    assert first["attempts"] == 1
    wait_until(lambda: [r["attempts"] for r in trace(server, "u2-1")] == [1], timeout=15,
               what="the hanging request's attempt recorded")
    [hung] = trace(server, "u2-1")
    assert hung["state"] == "pending" and hung["last_error"] == "timeout"
