"""The attempt log lines: a destination that is down is one WARNING line a while, not one per
event (an outside audit: 25,000 lines a minute at 300 events/s), and so are its dead letters
(the backlog audit: 150,912 lines in a minute); its recovery is one line."""

from __future__ import annotations

import logging

import pytest
from hookyard.delivery import attempt_log
from hookyard.delivery.attempt_log import AttemptLog
from hookyard.delivery.outbox import Outcome


def outcome(i: int, outcome: str, state: str) -> Outcome:
    return Outcome(i, "crm", f"m{i}", 1, outcome, state, 0.0, None,
                   "connection error" if outcome != "ok" else None, None, 1.0)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The attempt log's clocks (monotonic and wall), moved on by hand."""
    now = [1000.0]
    monkeypatch.setattr(attempt_log.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(attempt_log.time, "time", lambda: now[0])
    return now


def test_retryable_failures_are_one_line_a_while(
    caplog: pytest.LogCaptureFixture, clock: list[float]
) -> None:
    caplog.set_level(logging.WARNING, logger="hookyard.delivery")
    log = AttemptLog()
    log.record([outcome(i, "retryable", "pending") for i in range(500)])
    clock[0] += 12
    log.record([outcome(500, "ok", "done"), outcome(501, "permanent", "dead"),
                outcome(502, "retryable", "dead")])  # given up: a dead letter too
    clock[0] += 11
    log.record([outcome(600, "retryable", "pending"), outcome(601, "permanent", "dead")])
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "delivery m0 to crm attempt 1: retryable (connection error)",
        "destination crm: 499 more failures to retry in the last 12 s",  # before the news
        "destination crm delivers again, after 12 s of failures",
        "delivery m501 to crm attempt 1: dead (connection error)",
        "delivery m600 to crm attempt 1: retryable (connection error)",
        "delivery m601 to crm attempt 1: dead (connection error) [and 1 more dead letters"
        " of crm (hookyard dlq list) since the last such line, 11 s ago; each is logged at"
        " DEBUG]",
    ]
    assert caplog.records[0].destination == "crm"  # type: ignore[attr-defined]


def test_at_debug_every_attempt_is_a_line(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="hookyard.delivery")
    AttemptLog().record([outcome(i, "retryable", "pending") for i in range(3)]
                        + [outcome(3, "ok", "done")])
    assert len(caplog.records) == 5  # and that it delivers again


def test_permanent_failures_alone_are_no_outage(caplog: pytest.LogCaptureFixture) -> None:
    """A 400 is the event's fault, not the destination's: no 'delivers again' after it."""
    caplog.set_level(logging.WARNING, logger="hookyard.delivery")
    log = AttemptLog()
    log.record([outcome(1, "permanent", "dead")])
    assert log.record([outcome(2, "ok", "done")]) is None
    assert not [r for r in caplog.records if "delivers again" in r.getMessage()]


def test_a_dead_deliver_process_is_no_outage(
    caplog: pytest.LogCaptureFixture, clock: list[float]
) -> None:
    """Chaos re-check: the batches a dead deliver process had were taken for the destination's
    failures, and its next delivery said it "delivers again, after 22 s of failures"."""
    caplog.set_level(logging.WARNING, logger="hookyard.delivery")
    log = AttemptLog()
    log.record([outcome(1, "retryable", "pending")], destination_failed=False)
    clock[0] += 30
    assert log.record([outcome(2, "ok", "done")]) is None
    assert not [r for r in caplog.records if "delivers again" in r.getMessage()]


def test_a_burst_is_counted_once_it_is_over_and_a_blip_is_no_news(
    caplog: pytest.LogCaptureFixture, clock: list[float]
) -> None:
    """Found by the final re-check: 100,000 deliveries given up in 3 s logged one line, the
    count waiting for a next line that never came; a destination failing every other request
    logged 'delivers again' 513 times a minute."""
    caplog.set_level(logging.WARNING, logger="hookyard.delivery")
    log = AttemptLog()
    log.record([outcome(i, "retryable", "dead") for i in range(100)])
    log.flush("crm")  # too soon: nothing
    clock[0] += 1
    log.record([outcome(100, "ok", "done")])  # after 1 s of failures: at DEBUG only
    clock[0] += 10
    log.flush("crm")
    log.flush("crm")
    assert [r.getMessage() for r in caplog.records] == [
        "delivery m0 to crm attempt 1: dead (connection error)",
        "destination crm: 99 more dead letters in the last 11 s (hookyard dlq list)",
    ]
