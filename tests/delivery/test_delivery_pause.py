"""A destination that fails every delivery is paused and probed (hookyard.delivery.breaker).

Found by the outage audit: with 800,000 deliveries waiting, each on its own retry schedule, a
down destination got 1,300 attempts a second (a core busy, the attempt log growing 34 MB a
minute), and every delivery spent its ``max_attempts`` within an hour or two."""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from delivery_kit import PLUGIN, Peer, recorder, send, trace, track, wait_until
from hookyard.config import DeliverySettings
from hookyard.delivery.breaker import Breaker
from hookyard.delivery.outbox import Outcome
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer

Start = Callable[..., HookyardServer]


def paused(server: HookyardServer) -> float:
    metrics = httpx.get(f"{server.url}/metrics").text
    [value] = re.findall(r'hookyard_destination_paused\{destination="rec"\} ([0-9.]+)', metrics)
    return float(value)


def outcome(kind: str, sent: bool = True) -> Outcome:
    state = {"ok": "done", "retryable": "pending", "permanent": "dead"}[kind]
    return Outcome(outbox_id=1, destination="d", message_id="m", attempt=1, outcome=kind,
                   state=state, next_at=0.0, http_status=None, error=f"{kind} error",
                   response_body=None, latency_ms=1.0, sent=sent)


def test_breaker_pauses_after_failures_in_a_row_and_a_delivery_ends_it() -> None:
    breaker = Breaker("d", DeliverySettings(pause_after_failures=3, retry_initial_seconds=1,
                                            retry_max_seconds=600))
    assert breaker.wait() is None
    assert not breaker.record([outcome("retryable"), outcome("retryable")], ["u1"])
    assert not breaker.record([outcome("ok")], ["u1"])  # a delivery starts the count again
    # a failed call counts once, however many deliveries it held (a batch of 100 refused by
    # one 503 paused the destination at once: the session's review)
    assert not breaker.record([outcome("retryable")] * 100, ["u1"])
    assert not breaker.record([outcome("retryable"), outcome("ok")], ["u2"])  # delivered
    assert not breaker.record([outcome("retryable")] * 2, ["u1"])
    # permanent failures and deliveries never sent neither count nor end the run
    assert not breaker.record([outcome("permanent"), outcome("retryable", sent=False)], ["u3"])
    assert not breaker.record([outcome("retryable")], ["u1"])
    # one user's failures alone never pause it (outage re-check: one user answered 500 while
    # no one else sent anything paused the destination, holding everyone's events)
    assert not breaker.record([outcome("retryable")], ["u1"])
    assert breaker.failures == 3 and not breaker.paused
    assert breaker.record([outcome("retryable")], ["u2"])
    assert breaker.paused and 0.9 < (breaker.wait() or 0) <= 1.0
    assert breaker.last_error == "retryable error"
    # a batch sent before the pause failing now does not push the first probe back
    assert not breaker.record([outcome("retryable")])
    assert (breaker.wait() or 0) <= 1.0
    breaker.probe_started()
    breaker.record([outcome("retryable")])  # the probe failed: twice as long, then capped
    assert 1.9 < (breaker.wait() or 0) <= 2.0
    for _ in range(10):
        breaker.probe_started()
        breaker.record([outcome("retryable")])
    assert 29 < (breaker.wait() or 0) <= 30.0
    breaker.probe_started()
    assert not breaker.record([outcome("ok")])
    assert breaker.wait() is None and not breaker.paused
    assert breaker.probe_every == 1.0  # the next pause probes early again


def test_a_refusal_ends_a_pause_as_a_delivery_does() -> None:
    """Scale audit: a destination back but answering 400 stayed paused, one dead letter per
    probe (3 a second for 316,000 events, where unpaused it answered them all in 45 s)."""
    breaker = Breaker("d", DeliverySettings(pause_after_failures=1))
    assert breaker.record([outcome("retryable")] * 2, ["u1", "u2"])
    breaker.probe_started()
    revoked = dataclasses.replace(outcome("permanent"), http_status=401)
    assert not breaker.record([revoked])  # a proxy or a revoked key may say so: still paused
    assert breaker.paused
    breaker.probe_started()
    refused = dataclasses.replace(outcome("permanent"), http_status=400)
    assert not breaker.record([refused])
    assert not breaker.paused


def test_breaker_probes_no_slower_than_the_retry_cap_and_can_be_off() -> None:
    quick = Breaker("d", DeliverySettings(pause_after_failures=1, retry_initial_seconds=0.05,
                                          retry_max_seconds=0.2))
    assert quick.record([outcome("retryable")] * 2, ["u1", "u2"])
    for _ in range(5):
        quick.probe_started()
        quick.record([outcome("retryable")])
    assert (quick.wait() or 0) <= 0.2
    off = Breaker("d", DeliverySettings(pause_after_failures=0))
    assert not off.record([outcome("retryable")] * 100, ["u1", "u2"])
    assert off.wait() is None


def test_a_probe_waits_at_least_what_a_retry_after_asked() -> None:
    breaker = Breaker("d", DeliverySettings(pause_after_failures=1, retry_initial_seconds=1,
                                            retry_max_seconds=600))
    assert breaker.record([outcome("retryable")], ["u1", "u2"], retry_after=30)
    assert 29 < (breaker.wait() or 0) <= 30  # not the first probe's 1 s (outage re-check)
    breaker.probe_started()
    breaker.record([outcome("retryable")], ["u1"], retry_after=3600)
    assert 29 < (breaker.wait() or 0) <= 30  # capped like the probes


def test_a_destination_failing_every_delivery_is_paused_probed_and_drained(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    peer.default = (503, {"error": "down"}, {})
    server = hookyard_server({"destinations": [recorder(
        fake.url, per_item=True, delivery={"batch_size": 1, "pause_after_failures": 5,
                                           "max_attempts": 8})]}, plugins=[PLUGIN])
    sent = [track(f"u{u}", seq) for seq in range(1, 4) for u in range(10)]
    assert send(server, "/v1/batch", {"batch": sent}).status_code == 200
    wait_until(lambda: paused(server) == 1.0, what="the destination paused")
    page = httpx.get(f"{server.url}/ui/destinations", headers=server.admin_headers).text
    assert re.search(r'data-destination="rec">.*?badge b-paused', page, re.S)
    before = len(fake.requests)
    time.sleep(1.5)
    probes = len(fake.requests) - before
    # one probe every 0.05-0.2 s (the test policy's retry_max_seconds): without the pause the
    # 30 deliveries were retried every 0-0.2 s each, ~150 requests a second
    assert probes <= 16, probes
    assert not [r for r in (trace(server, e["messageId"])[0] for e in sent)
                if r["state"] == "dead"], "no delivery ran out of attempts while paused"
    peer.default = (200, {"ok": True}, {})
    wait_until(lambda: len(set(peer.accepted_ids())) == 30, what="the backlog delivered")
    assert paused(server) == 0.0
    order: dict[str, list[int]] = {}
    for message_id in peer.accepted_ids():
        user, seq = message_id.split("-")
        order.setdefault(user, []).append(int(seq))
    assert all(seqs == sorted(seqs) for seqs in order.values()), order


def test_deliveries_of_a_paused_destination_still_give_up_in_time(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hookyard.delivery import worker

    monkeypatch.setattr(worker, "GIVE_UP_CHECK_SECONDS", 0.2)
    fake = fake_destination()
    fake.fail(503)
    server = hookyard_server({"destinations": [recorder(
        fake.url, per_item=True, delivery={"batch_size": 1, "pause_after_failures": 2,
                                           "give_up_after_seconds": 1.5,
                                           "retry_initial_seconds": 0.5,
                                           "retry_max_seconds": 0.5})]}, plugins=[PLUGIN])
    sent = [track(f"u{u}", 1) for u in range(12)]
    assert send(server, "/v1/batch", {"batch": sent}).status_code == 200

    def all_dead() -> list[dict[str, Any]] | None:
        traces = [trace(server, e["messageId"]) for e in sent]
        rows = [t[0] for t in traces if t]
        return rows if len(rows) == len(sent) and all(r["state"] == "dead" for r in rows) else None

    rows: list[dict[str, Any]] = wait_until(all_dead, what="every delivery given up")
    waited = [r for r in rows if r["last_error"].startswith("gave up after 1.5 s: rec was paused")]
    assert waited, [r["last_error"] for r in rows]
    assert all(r["attempts"] < 4 for r in waited)


def test_a_short_pause_makes_no_dead_letters_of_an_old_backlog(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Delivery adversity audit: the first probe of any pause made dead letters of every
    delivery older than give_up_after_seconds (a slow destination's backlog, never tried)
    after a blip of 3 s, or at a restart. Only a pause that lasted that long gives up."""
    from hookyard.delivery import worker

    monkeypatch.setattr(worker, "GIVE_UP_CHECK_SECONDS", 0.2)
    fake = fake_destination()
    fake.hang(0.4, times=8)  # slow: the backlog gets older than give_up_after_seconds
    fake.fail(503, times=4)  # then a blip: paused for about a second, probed, resumed
    server = hookyard_server({"destinations": [recorder(
        fake.url, per_item=True, delivery={"batch_size": 1, "concurrency": 1,
                                           "pause_after_failures": 2,
                                           "give_up_after_seconds": 3,
                                           "retry_initial_seconds": 0.3,
                                           "retry_max_seconds": 0.5})]}, plugins=[PLUGIN])
    sent = [track(f"u{u}", 1) for u in range(60)]
    assert send(server, "/v1/batch", {"batch": sent}).status_code == 200
    fake.wait_for(len(sent), timeout=20)  # each once: 8 slow, 4 failed (too old: dead), 48
    rows = [trace(server, e["messageId"])[0] for e in sent]
    states = [(r["state"], r["attempts"], r["last_error"]) for r in rows]
    assert sum(r["state"] == "done" for r in rows) >= len(sent) - 4, states
    # each dead letter failed its own attempt or probe (a probe's is not counted: attempts
    # may be 0), none was given up for waiting while paused
    assert not any("was paused" in (r["last_error"] or "") for r in rows), states


def test_users_whose_events_fail_do_not_hold_the_others(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer],
) -> None:
    """Outage re-check: a peer answering 500 for some users paused the destination once only
    their retries were left, and every probe took the oldest delivery, theirs: new users'
    events waited up to 24 h. A probe now tries a user whose next delivery never failed."""
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    for user in ("bad0", "bad1", "bad2"):
        for _ in range(50):
            peer.fail(f"{user}-1", (500, {"error": "no"}, {}))
    server = hookyard_server({"destinations": [recorder(
        fake.url, per_item=True, delivery={"batch_size": 1, "pause_after_failures": 3,
                                           "retry_initial_seconds": 0.2,
                                           "retry_max_seconds": 1})]}, plugins=[PLUGIN])
    bad = [track(f"bad{i}", 1) for i in range(3)]
    assert send(server, "/v1/batch", {"batch": bad}).status_code == 200
    wait_until(lambda: paused(server) == 1.0, what="paused by the failing users alone")
    good = [track(f"good{i}", 1) for i in range(5)]
    assert send(server, "/v1/batch", {"batch": good}).status_code == 200
    wait_until(lambda: {f"good{i}-1" for i in range(5)} <= set(peer.accepted_ids()),
               timeout=10, what="the new users' events delivered")
    wait_until(lambda: paused(server) == 0.0, what="the pause ended")


def test_a_failed_probe_is_logged_but_not_counted_against_max_attempts() -> None:
    """Outage re-check: probes going round 10 users' deliveries made dead letters of all of
    them in about 3 h; before that, the same exemption kept only for probes made rows past
    max_attempts die at a restart. A probe's failure is the destination's: it gives up on
    time only, and the row keeps its count."""
    from hookyard.deliveries import DeliveryResult
    from hookyard.delivery.retry import decide

    policy = DeliverySettings(max_attempts=3)
    row = (1, b"{}", 2, time.time())  # two attempts so far: the third is the last
    failed = DeliveryResult.retryable("connection refused")
    plain = decide(policy, "d", (*row, None), "m", failed, 1.0)
    probe = decide(policy, "d", (*row, None), "m", failed, 1.0, probe=True)
    assert (plain.state, plain.counted) == ("dead", 3)
    assert (probe.state, probe.attempt, probe.counted) == ("pending", 3, 2)
    assert probe.error == "probe of a paused destination, not counted: connection refused"
    old = (1, b"{}", 2, time.time() - 90_000, None)  # past give_up_after_seconds
    assert decide(policy, "d", old, "m", failed, 1.0, probe=True).state == "dead"


def test_a_restart_during_an_outage_probes_before_sending_the_backlog(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer], tmp_path: Any,
) -> None:
    """Outage re-check: a restart started unpaused and sent the backlog again before pausing,
    an attempt each (two restarts made dead letters of half a backlog with max_attempts 3).
    Deliveries of several users waiting for a retry at start-up: one probe first."""
    fake = fake_destination()
    fake.fail(503)
    config = {"destinations": [recorder(fake.url, per_item=True, delivery={
        "batch_size": 1, "retry_initial_seconds": 2, "retry_max_seconds": 2})]}
    first = hookyard_server(config, plugins=[PLUGIN], data_dir=tmp_path / "d")
    sent = [track(f"u{u}", 1) for u in range(10)]
    assert send(first, "/v1/batch", {"batch": sent}).status_code == 200
    wait_until(lambda: all(trace(first, e["messageId"])
                           and trace(first, e["messageId"])[0]["attempts"] >= 1 for e in sent),
               what="every delivery failed once")
    first.stop()
    before = len(fake.requests)
    second = hookyard_server(config, plugins=[PLUGIN], data_dir=tmp_path / "d")
    assert paused(second) == 1.0
    time.sleep(1.5)
    assert len(fake.requests) - before <= 2  # the probe (and at most a second one)
