"""The retry policy as functions: result classes, Retry-After parsing and the backoff schedule
(exponential with full jitter, within the configured bounds). No server."""

from __future__ import annotations

import email.utils
import time

import pytest
from hookyard.config import DeliverySettings
from hookyard.deliveries import RESPONSE_BODY_LIMIT, classify_http, parse_retry_after
from hookyard.delivery.retry import backoff
from multidict import CIMultiDict


@pytest.mark.parametrize("status", [200, 201, 202, 204, 299])
def test_2xx_is_ok(status: int) -> None:
    res = classify_http(status, {}, b"{}")
    assert (res.outcome, res.http_status, res.error) == ("ok", status, None)


@pytest.mark.parametrize("status", [408, 429, 500, 502, 503, 504, 599])
def test_408_429_5xx_are_retryable(status: int) -> None:
    res = classify_http(status, {}, "x")
    assert (res.outcome, res.http_status, res.error) == ("retryable", status, f"HTTP {status}")


@pytest.mark.parametrize("status", [300, 304, 400, 401, 403, 404, 405, 409, 410, 413, 422, 451,
                                    600, 999])  # not HTTP statuses: not 5xx (adversity audit)
def test_other_statuses_are_permanent(status: int) -> None:
    res = classify_http(status, {"Retry-After": "5"}, "x")
    assert (res.outcome, res.error, res.retry_after) == ("permanent", f"HTTP {status}", None)


def test_response_body_is_truncated() -> None:
    res = classify_http(400, {}, b"y" * 10_000)
    assert res.response_body is not None
    assert len(res.response_body) == RESPONSE_BODY_LIMIT + 1 and res.response_body.endswith("…")
    assert classify_http(500, {}, "\xff" * 3).response_body == "\xff" * 3


def test_retry_after_header_is_read_from_the_response() -> None:
    headers = CIMultiDict({"retry-after": "7"})  # aiohttp's headers: case-insensitive
    assert classify_http(429, headers).retry_after == 7
    assert classify_http(503, CIMultiDict()).retry_after is None


def test_a_429_without_retry_after_waits_for_its_rate_limit_reset() -> None:
    """Novu answers a 429 with ``RateLimit-Reset: 3`` and no ``Retry-After``: it was retried
    after 0.09 s (vendor audit). Retry-After still wins; a Unix time is made a wait."""
    import time

    assert classify_http(429, CIMultiDict({"RateLimit-Reset": "3"})).retry_after == 3.0
    assert classify_http(429, CIMultiDict({"RateLimit-Reset": "3", "Retry-After": "9"})
                         ).retry_after == 9.0
    later = classify_http(429, CIMultiDict({"X-RateLimit-Reset": str(int(time.time()) + 60)}))
    assert later.retry_after is not None and 55 < later.retry_after <= 60
    for odd in ("soon", "nan", "inf", ""):
        assert classify_http(429, CIMultiDict({"RateLimit-Reset": odd})).retry_after is None
    assert classify_http(503, CIMultiDict({"RateLimit-Reset": "3"})).retry_after is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [("120", 120.0), (" 3 ", 3.0), ("0", 0.0), ("1.5", 1.5), ("-4", 0.0), ("soon", None),
     ("", None), (None, None), ("Wed, 99 Foo 2026 xx", None),
     # an offset of 20 digits: OverflowError, which failed the whole deliver call
     ("Mon, 01 Jan 2020 00:00:00 +99999999999999999999", None)],
)
def test_parse_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value) == expected


def test_parse_retry_after_http_date() -> None:
    now = time.time()
    future = email.utils.formatdate(now + 90, usegmt=True)
    assert 88 <= (parse_retry_after(future, now=now) or 0) <= 90
    past = email.utils.formatdate(now - 90, usegmt=True)
    assert parse_retry_after(past, now=now) == 0.0


@pytest.mark.parametrize("attempt", range(1, 26))
def test_backoff_full_jitter_stays_within_bounds(attempt: int) -> None:
    initial, cap = 5.0, 600.0
    ceiling = min(cap, initial * 2 ** (attempt - 1))
    delays = [backoff(attempt, initial, cap, None) for _ in range(300)]
    assert all(0 <= d <= ceiling for d in delays)
    # full jitter: spread over the whole range, not clustered at the ceiling
    assert min(delays) < ceiling * 0.2 and max(delays) > ceiling * 0.8


def test_backoff_honours_retry_after_up_to_the_cap() -> None:
    assert all(backoff(1, 5.0, 600.0, 30.0) >= 30.0 for _ in range(100))
    assert all(backoff(9, 5.0, 600.0, 30.0) <= 600.0 for _ in range(100))
    assert backoff(1, 5.0, 600.0, 86_400.0) == 600.0  # a peer cannot park a delivery for a day
    assert 0 <= backoff(1, 5.0, 600.0, 0.0) <= 5.0


def test_backoff_never_overflows() -> None:
    assert 0 <= backoff(100_000, 5.0, 600.0, None) <= 600.0


def test_default_policy() -> None:
    policy = DeliverySettings()
    assert (policy.retry_initial_seconds, policy.retry_max_seconds) == (5.0, 600.0)
    assert (policy.max_attempts, policy.give_up_after_seconds) == (20, 86_400.0)
    assert (policy.connect_timeout_seconds, policy.total_timeout_seconds) == (5.0, 15.0)
    # the default schedule: upper bounds 5, 10, 20, ... s, capped at 10 min from the 8th retry
    bounds = [min(600.0, 5.0 * 2 ** (n - 1)) for n in range(1, 20)]
    assert bounds[:8] == [5, 10, 20, 40, 80, 160, 320, 600] and set(bounds[7:]) == {600}


def test_a_delivery_not_sent_counts_no_attempt_and_outlives_the_one_it_waits_for() -> None:
    """Held back behind a failing delivery of its user, it was counted as an attempt (dead
    letters that were never sent), and with the time limit it died in the same round as the
    delivery it waited for (an outside audit, then its re-check)."""
    from hookyard.deliveries import DeliveryResult
    from hookyard.delivery.retry import decide

    policy = DeliverySettings(max_attempts=3, give_up_after_seconds=100.0)
    held = DeliveryResult.not_sent("not sent: held back")
    now = time.time()
    fresh = decide(policy, "d", (1, b"", 2, now), "m", held, 0.0)
    assert (fresh.state, fresh.attempt, fresh.sent) == ("pending", 2, False)  # not 3: dead
    late = decide(policy, "d", (1, b"", 2, now - 150), "m", held, 0.0)
    assert late.state == "pending"  # past the limit that ended the delivery it waited for
    gone = decide(policy, "d", (1, b"", 2, now - 250), "m", held, 0.0)
    assert gone.state == "dead" and "gave up after 200 s without being sent" in (gone.error or "")
    head = decide(policy, "d", (1, b"", 0, now - 150), "m", DeliveryResult.retryable("503"), 0.0)
    assert head.state == "dead"


def test_a_429_gives_up_on_time_only_and_sets_how_long_the_destination_waits() -> None:
    """Delivery adversity audit: a rate-limited destination is up and says "later": a backlog
    larger than its rate spent every delivery's attempts on 429s and made dead letters."""
    from hookyard.deliveries import DeliveryResult
    from hookyard.delivery.retry import decide, rate_limit_wait

    policy = DeliverySettings(max_attempts=3, retry_max_seconds=30)
    row = (1, b"{}", 2, time.time(), None)  # two attempts so far: the third is the last
    limited = classify_http(429, CIMultiDict({"Retry-After": "5"}))
    assert decide(policy, "d", row, "m", limited, 1.0).state == "pending"
    many = (1, b"{}", 40, time.time(), None)  # refused 40 times: waits what it asked, not 30 s
    assert decide(policy, "d", many, "m", limited, 1.0).next_at - time.time() < 5.5
    assert decide(policy, "d", row, "m", classify_http(503, {}), 1.0).state == "dead"
    old = (1, b"{}", 2, time.time() - 90_000, None)  # past give_up_after_seconds
    assert decide(policy, "d", old, "m", limited, 1.0).error == "gave up after 86400 s: HTTP 429"
    assert rate_limit_wait(policy, [DeliveryResult.ok(), limited]) == 5.0
    assert rate_limit_wait(policy, [classify_http(429, {})]) == 1.0  # at least a second
    assert rate_limit_wait(policy, [classify_http(429, {"Retry-After": "3600"})]) == 30.0
    assert rate_limit_wait(policy, [classify_http(503, {"Retry-After": "9"})]) is None


def test_a_429_that_asks_no_time_backs_off_as_any_failure() -> None:
    """Checklist audit: with no Retry-After (nor a rate-limit reset), a 429 was retried every
    0-5 s for a day; it backs off exponentially, and still gives up on time only."""
    from hookyard.delivery.retry import decide

    policy = DeliverySettings(max_attempts=3, retry_initial_seconds=5, retry_max_seconds=600)
    bare = classify_http(429, {})
    waits = [decide(policy, "d", (1, b"{}", 40, time.time(), None), "m", bare, 1.0)
             for _ in range(50)]
    assert {w.state for w in waits} == {"pending"}  # 41 attempts: time only gives up
    assert max(w.next_at for w in waits) - time.time() > 60  # up to the 600 s cap, not 5 s
