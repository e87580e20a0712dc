"""The log lines of delivery attempts, with a destination that is down kept to one a while.

Every attempt is stored (``GET /api/deliveries``) and counted (``/metrics``); the log is for a
person reading it. A failure that will be retried, and a delivery that becomes a dead letter,
are each logged at WARNING at most once per :data:`RETRY_LINE_SECONDS` per destination, saying
how many more there were since its last line; the others are at DEBUG. (Outside audits: at 300
events/s, a destination down logged 25,000 lines a minute, 12 MB; 150,891 deliveries given up
together logged 150,912 lines, 76 MB, in a minute.) The first delivered attempt after failures
says, once, that the destination delivers again and since when it had failed. A delivered
attempt is logged at DEBUG.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .outbox import Outcome

log = logging.getLogger("hookyard.delivery")
RETRY_LINE_SECONDS = 10.0


class AttemptLog:
    """One destination's attempt lines (see the module docstring)."""

    def __init__(self) -> None:
        # per kind of line (retried, dead): the monotonic time of its last WARNING, and how
        # many were logged at DEBUG only since
        self.last_line = {"retry": -RETRY_LINE_SECONDS, "dead": -RETRY_LINE_SECONDS}
        self.unlogged = {"retry": 0, "dead": 0}
        self.failing_since: float | None = None  # wall time of the first failure of a run

    def record(self, outcomes: Iterable[Outcome], destination_failed: bool = True) -> float | None:
        """Log ``outcomes``; when one is the first delivery after failures, how many seconds
        the destination had failed (else None). ``destination_failed=False``: the failures
        are not the destination's (a deliver process that ended with them): no run of its
        failures begins, which its next delivery would report as over (chaos re-check)."""
        debug = log.isEnabledFor(logging.DEBUG)
        recovered: float | None = None
        for o in outcomes:
            if not o.sent:  # held back behind a failure of the same user: that one is logged
                continue
            if o.outcome == "ok":
                if self.failing_since is not None:
                    recovered = time.time() - self.failing_since
                    if recovered >= RETRY_LINE_SECONDS:  # the count before the good news:
                        # after it, it read as if the destination still failed (docs audit)
                        self._flush_kind(o.destination, "retry", time.monotonic())
                    # a blip (a destination failing every other request) is no news
                    log.log(logging.WARNING if recovered >= RETRY_LINE_SECONDS else logging.DEBUG,
                            "destination %s delivers again, after %.0f s of failures",
                            o.destination, recovered, extra={"destination": o.destination})
                    self.failing_since = None
                if debug:  # (a log record and its extra dict cost ~2 us per delivery)
                    self._line(logging.DEBUG, o, "")
                continue
            if self.failing_since is None and o.outcome == "retryable" and destination_failed:
                self.failing_since = time.time()  # the destination's trouble; a permanent
                # one is the event's
            kind = "dead" if o.state == "dead" else "retry"
            now = time.monotonic()
            if now - self.last_line[kind] < RETRY_LINE_SECONDS:
                self.unlogged[kind] += 1
                if debug:
                    self._line(logging.DEBUG, o, "")
                continue
            more = ""
            if self.unlogged[kind]:
                what = (f"dead letters of {o.destination} (hookyard dlq list)" if kind == "dead"
                        else f"failures of {o.destination} to retry")
                more = (f" [and {self.unlogged[kind]} more {what} since the last such line,"
                        f" {now - self.last_line[kind]:.0f} s ago; each is logged at DEBUG]")
            self._line(logging.WARNING, o, more)
            self.last_line[kind], self.unlogged[kind] = now, 0
        return recovered

    def flush(self, destination: str) -> None:
        """Say how many failures and dead letters went unlogged since the last line, once
        :data:`RETRY_LINE_SECONDS` have passed: a burst (100,000 given up in 3 s) was otherwise
        never counted in the log. The worker calls it on every round."""
        now = time.monotonic()
        for kind in ("retry", "dead"):
            if now - self.last_line[kind] >= RETRY_LINE_SECONDS:
                self._flush_kind(destination, kind, now)

    def _flush_kind(self, destination: str, kind: str, now: float) -> None:
        count = self.unlogged[kind]
        if count:
            log.warning("destination %s: %d more %s in the last %.0f s%s", destination,
                        count, "dead letters" if kind == "dead" else "failures to retry",
                        now - self.last_line[kind], " (hookyard dlq list)" if kind == "dead" else "",
                        extra={"destination": destination})
            self.last_line[kind], self.unlogged[kind] = now, 0

    @staticmethod
    def _line(level: int, o: Outcome, more: str) -> None:
        log.log(level, "delivery %s to %s attempt %d: %s%s%s", o.message_id, o.destination,
                o.attempt, "dead" if o.state == "dead" else o.outcome,
                f" ({o.error})" if o.error else "", more,
                extra={"destination": o.destination, "message_id": o.message_id,
                       "attempt": o.attempt, "outcome": o.outcome, "state": o.state,
                       "http_status": o.http_status, "latency_ms": round(o.latency_ms, 2)})
