"""Retry policy: what one delivery attempt's result means for its outbox row.

Retries use exponential backoff with full jitter: the n-th retry waits a random time in
``[0, min(cap, initial * 2**(n-1))]`` and at least what ``Retry-After`` asked. A delivery that
fails permanently, or is still failing after ``max_attempts`` or ``give_up_after_seconds``,
becomes a dead letter.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, overload

from ..deliveries import RESPONSE_BODY_LIMIT, DeliveryResult
from .outbox import Claimed, Outcome

if TYPE_CHECKING:
    from ..config import DeliverySettings


def backoff(attempt: int, initial: float, cap: float, retry_after: float | None) -> float:
    """Seconds before retry number ``attempt`` (1-based): full jitter, Retry-After honoured.

    A random time in ``[0, min(cap, initial * 2**(attempt-1))]``, raised to what
    ``Retry-After`` asked for (itself capped at ``cap``, so a peer cannot park a delivery for
    days).
    """
    delay = random.uniform(0, min(cap, initial * 2.0 ** min(attempt - 1, 62)))
    if retry_after is not None:
        delay = max(delay, min(retry_after, cap))
    return delay


def seconds_text(value: float) -> str:
    """``0.45``, ``13.5``, ``54``: a duration for people, to the hundredth."""
    return f"{value:.2f}".rstrip("0").rstrip(".")


def _count(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def wrong_answer(results: object, deliveries: int) -> str:
    """The error of a deliver hook that did not answer a list of one result per delivery."""
    got = (_count(len(results), "result", "results") if isinstance(results, list)
           else f"{type(results).__name__}, not a list,")
    return f"deliver hook returned {got} for {_count(deliveries, 'delivery', 'deliveries')}"


@overload
def clip(text: str, limit: int = RESPONSE_BODY_LIMIT) -> str: ...
@overload
def clip(text: None, limit: int = RESPONSE_BODY_LIMIT) -> None: ...
@overload
def clip(text: str | None, limit: int = RESPONSE_BODY_LIMIT) -> str | None: ...


def clip(text: str | None, limit: int = RESPONSE_BODY_LIMIT) -> str | None:
    """Operators' copies of response bodies, errors, and the ingest log's refused paths and
    reasons are kept short."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + "…"


RATE_LIMITED_WAIT = 1.0
"""Seconds a destination that answered ``429`` without saying how long to wait gets no new
requests (with ``Retry-After`` or ``RateLimit-Reset``: that long, up to ``retry_max_seconds``)."""


def rate_limit_wait(policy: DeliverySettings, results: Iterable[DeliveryResult]) -> float | None:
    """How long the destination of a deliver call's ``results`` takes no new requests: it
    answered one of them ``429``. Each request sent meanwhile would be refused too and spend
    an attempt of its delivery: at full concurrency, a backlog larger than a Novu plan's rate
    made dead letters of a destination that was up (delivery adversity audit). None: no 429."""
    asked = [res.retry_after or 0.0 for res in results if res.rate_limited]
    if not asked:
        return None
    return min(max(max(asked), RATE_LIMITED_WAIT), policy.retry_max_seconds)


def decide(
    policy: DeliverySettings, destination: str, row: Claimed,
    message_id: str, res: DeliveryResult, latency: float, probe: bool = False,
) -> Outcome:
    """The outcome of one attempt at the outbox row ``(id, request, attempts, created_at)``:
    done, pending again after a backoff, or dead (permanent, or out of attempts or time).
    A paused destination's ``probe`` that fails is logged as an attempt but not counted
    against ``max_attempts`` (:mod:`.breaker`): it gives up on time only."""
    attempt = row[2] + 1
    now = time.time()
    state, next_at = "done", 0.0
    row_attempts: int | None = None
    if res.outcome == "retryable":
        age = now - row[3]
        if res.sent and probe:
            row_attempts = row[2]
            gave_up = age >= policy.give_up_after_seconds
        elif res.rate_limited:  # the destination is up and says "later", so only time gives
            # up (a backlog larger than its rate would run out of attempts while it is
            # delivered; delivery adversity audit)
            gave_up = age >= policy.give_up_after_seconds
        elif res.sent:
            gave_up = attempt >= policy.max_attempts or age >= policy.give_up_after_seconds
        else:  # held back behind a failing delivery of its user, never sent: no attempt is
            # counted, and the time limit is doubled, so that when that delivery runs out of
            # time (it was queued first) this one is still sent after it; the double limit
            # ends a hook that never sends at all
            attempt = row[2]
            gave_up = age >= 2 * policy.give_up_after_seconds
        if gave_up:
            state = "dead"
        else:
            state = "pending"
            # a 429 waits what it asked, not longer for the attempts it made: refused many
            # times under a long limit, a delivery waited up to retry_max_seconds (final re-check);
            # one that asks no time backs off as any failure does (it was retried every 0-5 s
            # for a day: checklist audit)
            asked = res.rate_limited and res.retry_after is not None
            step = 1 if asked else max(attempt, 1)
            next_at = now + backoff(
                step, policy.retry_initial_seconds, policy.retry_max_seconds, res.retry_after)
    elif res.outcome == "permanent":
        state = "dead"
    error = res.error
    if row_attempts is not None:  # its attempt number repeats in the log: say why
        error = f"probe of a paused destination, not counted: {error}"
    if state == "dead" and res.outcome == "retryable":
        error = (f"gave up after {attempt} attempts: {res.error}"
                 if res.sent and attempt >= policy.max_attempts and not probe
                 and not res.rate_limited else
                 f"gave up after {policy.give_up_after_seconds:g} s: {res.error}" if res.sent else
                 f"gave up after {2 * policy.give_up_after_seconds:g} s without being sent:"
                 f" {res.error}")
    return Outcome(
        outbox_id=row[0], destination=destination, message_id=message_id,
        attempt=attempt, outcome=res.outcome, state=state, next_at=next_at,
        http_status=res.http_status, error=clip(error), response_body=clip(res.response_body),
        latency_ms=latency, sent=res.sent, row_attempts=row_attempts,
    )
