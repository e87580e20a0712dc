"""The log lines of delivery attempts, with a destination that is down kept to one a while.

Every attempt is stored (``GET /api/deliveries``) and counted (``/metrics``); the log is for a
person reading it. A delivery that becomes a dead letter is logged at WARNING, each one. A
failure that will be retried is logged at WARNING at most once per :data:`RETRY_LINE_SECONDS`
per destination, saying how many more failed since its last line; the others are at DEBUG. (An
outside audit: at 300 events/s, a destination down logged 25,000 lines a minute, 12 MB.) A
delivered attempt is logged at DEBUG.
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
        self.last_line = -RETRY_LINE_SECONDS  # monotonic time of the last retry line
        self.unlogged = 0  # retryable failures since then, logged at DEBUG only

    def record(self, outcomes: Iterable[Outcome]) -> None:
        debug = log.isEnabledFor(logging.DEBUG)
        for o in outcomes:
            if not o.sent:  # held back behind a failure of the same user: that one is logged
                continue
            if o.outcome == "ok":
                if debug:  # (a log record and its extra dict cost ~2 us per delivery)
                    self._line(logging.DEBUG, o, "")
                continue
            if o.state == "dead":
                self._line(logging.WARNING, o, "")
                continue
            now = time.monotonic()
            if now - self.last_line < RETRY_LINE_SECONDS:
                self.unlogged += 1
                if debug:
                    self._line(logging.DEBUG, o, "")
                continue
            more = (f" [and {self.unlogged} more failures of {o.destination} to retry since the"
                    f" last such line, {now - self.last_line:.0f} s ago; each is logged at DEBUG]"
                    if self.unlogged else "")
            self._line(logging.WARNING, o, more)
            self.last_line, self.unlogged = now, 0

    @staticmethod
    def _line(level: int, o: Outcome, more: str) -> None:
        log.log(level, "delivery %s to %s attempt %d: %s%s%s", o.message_id, o.destination,
                o.attempt, o.outcome, f" ({o.error})" if o.error else "", more,
                extra={"destination": o.destination, "message_id": o.message_id,
                       "attempt": o.attempt, "outcome": o.outcome, "state": o.state,
                       "http_status": o.http_status, "latency_ms": round(o.latency_ms, 2)})
