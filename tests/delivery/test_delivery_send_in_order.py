"""hookyard.deliveries.send_in_order: the per-user order a deliver hook keeps when it sends a
batch's deliveries as separate requests (called directly, no server)."""

from __future__ import annotations

import asyncio

from hookyard.deliveries import HELD_BACK, Delivery, DeliveryResult, send_in_order


def batch(*keys: str) -> list[Delivery]:
    return [Delivery(kind="track", body={"n": i}, ordering_key=key) for i, key in enumerate(keys)]


def run(deliveries: list[Delivery], answers: dict[int, DeliveryResult],
        concurrency: int = 8) -> tuple[list[DeliveryResult], list[int], int]:
    """Results, the order the requests were sent in, and the most sent at once."""
    sent: list[int] = []
    busy = peak = 0

    async def send(d: Delivery) -> DeliveryResult:
        nonlocal busy, peak
        busy += 1
        peak = max(peak, busy)
        sent.append(d.body["n"])
        await asyncio.sleep(0.001)
        busy -= 1
        return answers.get(d.body["n"], DeliveryResult.ok(200))

    results = asyncio.run(send_in_order(deliveries, send, concurrency=concurrency))
    return results, sent, peak


def test_a_retryable_failure_holds_back_the_users_later_deliveries() -> None:
    deliveries = batch("u1", "u2", "u1", "u1", "u2")
    results, sent, _ = run(deliveries, {0: DeliveryResult.retryable("HTTP 503", retry_after=7.0)})
    assert [r.outcome for r in results] == ["retryable", "ok", "retryable", "retryable", "ok"]
    assert (results[2].error, results[2].retry_after) == (HELD_BACK, 7.0)
    assert sorted(sent) == [0, 1, 4]  # u1's later deliveries were never sent


def test_each_users_deliveries_go_one_after_another_in_order() -> None:
    deliveries = batch("u1", "u1", "u1", "u2", "u2")
    _, sent, _ = run(deliveries, {})
    assert [n for n in sent if n < 3] == [0, 1, 2]
    assert [n for n in sent if n >= 3] == [3, 4]


def test_a_permanent_failure_does_not_hold_the_user_back() -> None:
    results, sent, _ = run(batch("u1", "u1"), {0: DeliveryResult.permanent("HTTP 400")})
    assert [r.outcome for r in results] == ["permanent", "ok"]
    assert sent == [0, 1]


def test_users_are_sent_concurrently_within_the_limit() -> None:
    deliveries = batch(*(f"u{i}" for i in range(20)))
    _, _, peak = run(deliveries, {}, concurrency=4)
    assert peak == 4
    _, _, peak = run(deliveries, {}, concurrency=1)
    assert peak == 1


def test_deliveries_without_an_ordering_key_are_independent() -> None:
    results, sent, _ = run(batch("", ""), {0: DeliveryResult.retryable("timeout")})
    assert [r.outcome for r in results] == ["retryable", "ok"]
    assert sorted(sent) == [0, 1]


def test_after_429s_of_two_users_nothing_more_of_the_call_is_sent() -> None:
    """Delivery adversity audit: a rate limit is the destination's: the other users' requests,
    waiting for a slot, were refused too. One user's 429 holds back that user only (an API
    limiting each user's rate: re-check)."""
    deliveries = batch(*(f"u{i}" for i in range(10)))
    limited = DeliveryResult.retryable("HTTP 429", http_status=429, retry_after=3.0)
    results, sent, _ = run(deliveries, {0: limited, 1: limited}, concurrency=2)
    assert sent == [0, 1]  # the first two side by side, then nothing
    assert [r.sent for r in results] == [True, True] + [False] * 8
    assert all(r.retry_after == 3.0 for r in results)
    results, sent, _ = run(deliveries, {1: limited}, concurrency=2)
    assert sorted(sent) == list(range(10))  # one user's 429: the others go on
    results, sent, _ = run(deliveries, {0: limited, 3: limited}, concurrency=1)
    assert sorted(sent) == list(range(10))  # two users' own 429s, deliveries in between
