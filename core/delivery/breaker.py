"""A destination that fails every delivery is paused: one delivery probes it now and then.

Without it, each of a down destination's deliveries kept its own retry schedule: with a
backlog of 800,000, 1,300 attempts a second went to a peer that refused them all, a core
busy and the attempt log growing by ~34 MB a minute (outage audit), and every delivery used
up its ``max_attempts`` within an hour or two and became a dead letter, to be retried by hand.

After ``pause_after_failures`` failed ``deliver`` calls in a row (each sent something that
will be retried and delivered nothing; a batch is one call) the worker stops claiming
deliveries of the destination. Every ``probe`` seconds —
``retry_initial_seconds`` at first, doubling up to ``retry_max_seconds`` or
:data:`PROBE_MAX_SECONDS`, whichever is shorter — it sends one (one batch), the oldest due or
not. The first one delivered ends the pause; the worker then brings the waiting retries
forward (:func:`hookyard.delivery.outbox.expedite`). A delivery not attempted while paused
spends none of its attempts, and a probe that fails does not make a dead letter of its delivery
for running out of attempts (the failure is the destination's; the first delivery in line would
otherwise be given up after 20 probes); one still waiting after ``give_up_after_seconds``
becomes a dead letter all the same (:func:`hookyard.delivery.outbox.give_up_waiting`).

A permanent failure (a 400 for one event) neither counts towards a pause nor ends one: it is
the event's trouble, not the destination's.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import DeliverySettings
    from .outbox import Outcome

log = logging.getLogger("hookyard.delivery")
PROBE_MAX_SECONDS = 60.0
"""The longest wait between two probes of a paused destination: it delivers again at most
this long after it is back (then its backlog drains at full speed)."""


class Breaker:
    """Whether one destination is paused, and when it is probed next (see the module)."""

    def __init__(self, destination: str, policy: DeliverySettings) -> None:
        self.destination = destination
        self.threshold = policy.pause_after_failures  # 0: never paused
        self.max_probe = min(policy.retry_max_seconds, PROBE_MAX_SECONDS)
        self.first_probe = min(policy.retry_initial_seconds, self.max_probe)
        self.failures = 0  # failed deliver calls in a row, none delivered since
        self.paused_at: float | None = None  # wall time it was paused (None: not paused)
        self.probe_every = self.first_probe
        self.probe_at = 0.0  # monotonic time the next probe may start
        self.last_error: str | None = None
        self.probing = False  # a probe was started and its result has not come back

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def wait(self) -> float | None:
        """None when the destination is not paused; else seconds until its next probe (0:
        now)."""
        if self.paused_at is None:
            return None
        return max(0.0, self.probe_at - time.monotonic())

    def probe_started(self) -> None:
        """The worker started a probe (it starts one only when nothing else is in flight, so
        the next result it records is the probe's)."""
        self.probing = True

    def record(self, outcomes: Iterable[Outcome]) -> bool:
        """Count the outcomes of one ``deliver`` call: a failure when one of its deliveries
        was sent and will be retried and none was delivered (a batch of 100 refused by one 503
        is one failure, not 100: the session's review); True when it pauses the destination
        (it was not)."""
        probe, self.probing = self.probing, False
        failed = delivered = False
        for o in outcomes:
            if not o.sent or o.outcome == "permanent":
                continue
            if o.outcome == "ok":
                delivered = True
            else:
                failed = True
                self.last_error = o.error
        if delivered:
            self.failures = 0
            if self.paused_at is not None:  # said once, however short the pause (the
                # "delivers again" line is a WARNING only after 10 s of failures)
                log.info("destination %s resumes: a delivery went through after %.0f s"
                         " paused", self.destination, time.time() - self.paused_at,
                         extra={"destination": self.destination})
                self.paused_at = None
                self.probe_every = self.first_probe
            return False
        if not failed:
            return False
        self.failures += 1
        if not self.threshold:
            return False
        if self.paused_at is not None:
            if probe:  # a probe failed: the next one waits longer (a batch sent before the
                # pause that fails now does not push the first probe back)
                self.probe_at = time.monotonic() + self.probe_every
                self.probe_every = min(self.max_probe, self.probe_every * 2)
            return False
        if self.failures < self.threshold:
            return False
        self.paused_at = time.time()
        self.probe_at = time.monotonic() + self.probe_every
        self.probe_every = min(self.max_probe, self.probe_every * 2)
        log.warning("destination %s paused after %d failed requests in a row (last: %s): one delivery"
                    " is tried every %g-%g s until one succeeds; the others wait, spending none"
                    " of their attempts", self.destination, self.failures, self.last_error,
                    self.first_probe, self.max_probe, extra={"destination": self.destination})
        return True
