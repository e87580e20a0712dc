"""When a destination's own rate limit is reached, as its ``429`` answers tell a worker.

One user's 429s hold only that user's deliveries, by their own Retry-After (an API limiting
each user's rate made the whole destination wait each time that user's retry was refused
again: re-check). Once 429s came for two users or more within :data:`RATE_LIMIT_WINDOW` with
no delivery in between (one request of several users' events counts for all of them), the
destination's limit is reached (two users limited each on their own, between other users'
deliveries, held everyone: final re-check): no new request goes out until :attr:`until`.
"""

from __future__ import annotations

import time

RATE_LIMIT_WINDOW = 10.0
"""Seconds within which 429s of two users say the destination's own rate limit is reached."""


class RateLimit:
    """One destination's 429s and how long it takes no new request."""

    def __init__(self) -> None:
        self.until = 0.0  # (monotonic) no new requests before: it answered 429
        self.users: dict[str, float] = {}  # user -> (monotonic) their last 429

    def refused(self, users: set[str], wait: float) -> float | None:
        """A call of ``users``' deliveries was answered ``429``, asking ``wait`` seconds: the
        new :attr:`until` when the destination's limit is reached (further than before),
        else None."""
        now = time.monotonic()
        for user in users:
            self.users[user] = now
        if len(self.users) < 2:
            return None
        self.users = {u: t for u, t in self.users.items() if t > now - RATE_LIMIT_WINDOW}
        if len(self.users) < 2 or now + wait <= self.until:
            return None
        self.until = now + wait
        return self.until

    def delivered(self) -> None:
        """A call had a delivery: it takes requests, the 429s so far were those users'."""
        self.users.clear()
