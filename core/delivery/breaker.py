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
not, of a user not probed since the pause (round the users, then again), preferring a user
whose next delivery never failed (a new event: a retrying user's may be the one that fails),
and never sooner than a ``Retry-After`` asked. The first one delivered ends the pause; the worker then brings the
waiting retries forward (:func:`hookyard.delivery.outbox.expedite`). A delivery not attempted
while paused spends none of its attempts, nor does a probe that fails (it is logged, but the
failure is the destination's: probes going round 10 users' deliveries made dead letters of all
of them in about 3 h; outage re-check); one still waiting after ``give_up_after_seconds``
becomes a dead letter all the same (:func:`hookyard.delivery.outbox.give_up_waiting`). A probe
is one delivery, also for a connector that takes batches. New deliveries bring the next probe
forward to ``retry_initial_seconds``. Failures of a single user never pause the destination.

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
NOT_UP = (None, 401, 403, 404, 407)
"""Refusals that do not end a pause: no answer at all, or statuses a proxy or a revoked key
give as well (a backlog refused by them would be dead letters at full speed). Another refusal,
a 400 say, is the destination's own answer: it is up (paused, it made one dead letter per
probe, 3 a second for 316,000 events; scale audit)."""
PROBE_MAX_SECONDS = 30.0
"""The longest wait between two probes of a paused destination: it delivers again at most
this long after it is back (then its backlog drains at full speed). 60 s until a soak audit
found an idle destination delivering 32 s after it was back."""


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
        self.failing_users: set[str] = set()  # the users of the failures in a row (a few)
        self.probed: set[str] = set()  # users probed since the pause, or since all were
        self.fresh_first = True  # the next probe looks first for a user with no failed delivery
        self.hurried = False  # new deliveries brought the next probe forward already

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    def wait(self) -> float | None:
        """None when the destination is not paused; else seconds until its next probe (0:
        now)."""
        if self.paused_at is None:
            return None
        return max(0.0, self.probe_at - time.monotonic())

    def probe_started(self, users: Iterable[str] = ()) -> None:
        """The worker started a probe of ``users``' deliveries (it starts one only when nothing
        else is in flight, so the next result it records is the probe's). The next probes take
        other users' first (the oldest delivery was always the probe: one user's event that
        failed for ever kept the destination paused, holding every other user's; outage
        re-check), again one whose next delivery never failed first."""
        self.probing = True
        self.hurried = False
        self.probed.update(users)
        self.fresh_first = True

    def widen_probe(self) -> bool:
        """No user to probe was found: look next at users whose deliveries failed, then at
        users probed already. False when there is nowhere wider to look."""
        if self.fresh_first:
            self.fresh_first = False
            return True
        if self.probed:
            self.probed.clear()
            return True
        return False

    def record(self, outcomes: Iterable[Outcome], users: Iterable[str] = (),
               retry_after: float | None = None) -> bool:
        """Count the outcomes of one ``deliver`` call of ``users``' deliveries: a failure when
        one of them was sent and will be retried and none was delivered (a batch of 100
        refused by one 503 is one failure, not 100: the session's review). ``retry_after``:
        what the destination asked for, the least wait before the next probe. True when it
        pauses the destination (it was not). Failures of one user alone never pause it: that
        user's events are the trouble, not the destination (one user answered 500 while no
        one else sent anything paused it: outage re-check)."""
        probe, self.probing = self.probing, False
        failed = delivered = False
        for o in outcomes:
            if not o.sent or (o.outcome == "permanent" and o.http_status in NOT_UP):
                continue  # not sent, refused without an answer (a plugin's own reason), or
                # by what may not be the destination itself (a rotated key, a proxy's 404)
            if o.outcome == "ok" or o.outcome == "permanent":
                # a refusal (400, 404...) is an answer too: the destination is up, and
                # paused it made one dead letter per probe, 3 a second for 316,000 events
                # where unpaused it answered them all in 45 s (scale audit)
                delivered = True
            else:
                failed = True
                if o.state != "dead" or self.last_error is None:  # its own error, rather
                    self.last_error = o.error  # than "gave up after ...: <error>"
        if delivered:
            self.failing_users.clear()
            self.failures = 0
            if self.paused_at is not None:  # said once, however short the pause (the
                # "delivers again" line is a WARNING only after 10 s of failures)
                log.info("destination %s resumes: it answered a delivery after %.0f s"
                         " paused", self.destination, time.time() - self.paused_at,
                         extra={"destination": self.destination})
                self.paused_at = None
                self.probe_every = self.first_probe
            return False
        if not failed:
            return False
        self.failures += 1
        if len(self.failing_users) < 2:
            self.failing_users.update(users)
        if not self.threshold:
            return False
        wait = max(self.probe_every, min(retry_after or 0.0, self.max_probe))
        if self.paused_at is not None:
            if probe:  # a probe failed: the next one waits longer (a batch sent before the
                # pause that fails now does not push the first probe back)
                self.probe_at = time.monotonic() + wait
                self.probe_every = min(self.max_probe, self.probe_every * 2)
            return False
        if self.failures < self.threshold or len(self.failing_users) < 2:
            return False
        self.paused_at = time.time()
        self.probed.clear()
        self.probe_at = time.monotonic() + wait
        self.probe_every = min(self.max_probe, self.probe_every * 2)
        log.warning("destination %s paused after %d failed requests in a row (last: %s): one"
                    " delivery is tried every %g-%g s until one succeeds, each time of another"
                    " user; the others wait, spending none of their attempts", self.destination,
                    self.failures, self.last_error, self.first_probe, self.max_probe,
                    extra={"destination": self.destination})
        return True

    def start_paused(self, since: float | None = None) -> None:
        """Start paused, probing at once: the destination's deliveries of several users were
        waiting for a retry when the process started (a restart during an outage sent up to
        ``pause_after_failures`` x ``batch_size`` of them again before pausing, an attempt each:
        two restarts made dead letters of half a backlog with ``max_attempts = 3``; outage
        re-check). A destination that is back answers the first probe and resumes at once.
        ``since``: when its failures began (wall time), the pause's start."""
        if not self.threshold:
            return
        self.paused_at = min(time.time(), since or time.time())
        self.probe_at = time.monotonic()
        log.info("destination %s had deliveries of several users waiting for a retry at"
                 " start-up: one is sent first, the rest once it is delivered",
                 self.destination, extra={"destination": self.destination})

    def new_deliveries(self) -> None:
        """New deliveries were queued: a paused destination is probed within
        ``retry_initial_seconds`` (one of them may be a user's that never failed; they waited
        for a probe up to a minute: outage re-check), at most once per probe."""
        if self.paused_at is not None and not self.probing and not self.hurried:
            self.probe_at = min(self.probe_at, time.monotonic() + self.first_probe)
            self.hurried = True

