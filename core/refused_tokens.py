"""Wrong admin tokens: slowed down, counted and logged, for ``/api/*`` and the dashboard login.

The admin token guards every event and profile. A client guessing it used to get its 401 at
once, 1,200 times a second, with nothing in the log or the metrics. Now each wrong token
(one given, not a missing one: that is a client not set up yet) waits
:data:`FAILED_TOKEN_DELAY` before its answer, counts in
``hookyard_admin_tokens_refused_total{surface}``, and is logged: the first of a quiet spell
at once, the rest as one line per :data:`LOG_EVERY` seconds with how many and from where.
"""

from __future__ import annotations

import asyncio
import logging
import time

from prometheus_client import Counter

log = logging.getLogger("hookyard.security")

FAILED_TOKEN_DELAY = 0.25
"""Seconds a wrong admin token waits for its answer."""
LOG_EVERY = 60.0
"""Seconds between two log lines about wrong admin tokens."""


class RefusedTokens:
    """Counts and logs wrong admin tokens; one per app."""

    def __init__(self, counter: Counter | None = None) -> None:
        self.counter = counter  # hookyard_admin_tokens_refused_total, labelled by surface
        self._unlogged = 0
        self._clients: set[str] = set()
        self._logged_at = float("-inf")

    async def refused(self, surface: str, client: str | None) -> None:
        """Note a wrong token given to ``surface`` (``api``, ``dashboard``) by ``client``
        (its address), then wait :data:`FAILED_TOKEN_DELAY`."""
        if self.counter is not None:
            self.counter.labels(surface).inc()
        self._unlogged += 1
        if len(self._clients) < 10:  # a list of addresses, not a flood of them
            self._clients.add(client or "unknown")
        now = time.monotonic()
        if now - self._logged_at >= LOG_EVERY:
            log.warning("wrong admin token refused (%s; %d since the last such line, from %s)",
                        surface, self._unlogged, ", ".join(sorted(self._clients)))
            self._logged_at, self._unlogged = now, 0
            self._clients.clear()
        await asyncio.sleep(FAILED_TOKEN_DELAY)
