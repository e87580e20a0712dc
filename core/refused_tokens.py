"""Wrong admin tokens: slowed down, counted and logged, for ``/api/*`` and the dashboard login.

The admin token guards every event and profile. A client guessing it used to get its 401 at
once, 1,200 times a second, with nothing in the log or the metrics. Now each wrong token
(one given, not a missing one: that is a client not set up yet) waits
:data:`FAILED_TOKEN_DELAY` before its answer, counts in
``hookyard_admin_tokens_refused_total{surface}``, and is logged: the first of a quiet spell
at once, the rest as one line per :data:`LOG_EVERY` seconds with how many and from where.

The delay alone did not slow a client that sent its guesses in parallel (385 a second with 200
at a time; web-surfaces audit), and its right guess was answered at once beside the waiting
wrong ones. So the checks of an address that gave a wrong token in the last
:data:`PENALTY_SECONDS` take turns (:meth:`turn`): a wrong one holds the turn for its delay, so
such an address tries at most four tokens a second, right ones included. An address with no
wrong token lately is checked at once, without a turn. At most :data:`MAX_WAITING` checks of an
address wait for their turn; more are answered 429 at once without being checked (the final
re-check: 50 parallel guesses kept the right token of an admin behind the same address
waiting 12 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable

from prometheus_client import Counter

log = logging.getLogger("hookyard.security")

FAILED_TOKEN_DELAY = 0.25
"""Seconds a wrong admin token waits for its answer."""
LOG_EVERY = 60.0
"""Seconds between two log lines about wrong admin tokens."""
PENALTY_SECONDS = 60.0
"""How long after a wrong token an address's checks take turns."""
MAX_WAITING = 16
"""Checks of one address that may wait for their turn; more are refused at once (429)."""


class TooManyGuesses(Exception):
    """An address has :data:`MAX_WAITING` token checks waiting: answer 429 without checking."""

    reason = "too many wrong admin tokens from this address: try again in a minute"


class RefusedTokens:
    """Counts and logs wrong admin tokens; one per app."""

    def __init__(self, counter: Counter | None = None) -> None:
        self.counter = counter  # hookyard_admin_tokens_refused_total, labelled by surface
        self._unlogged = 0
        self._clients: set[str] = set()
        self._logged_at = float("-inf")
        self._turns: dict[str, tuple[asyncio.Lock, list[int]]] = {}  # per address: lock, users
        self._last_wrong: dict[str, float] = {}  # per address: when it last gave a wrong token

    @contextlib.asynccontextmanager
    async def turn(self, client: str | None) -> AsyncIterator[None]:
        """Check a token given by ``client`` (its address): at once for an address without a
        wrong token lately, else in its turn, one check at a time, a wrong one
        (:meth:`refused`, awaited inside) holding the turn for its delay. Raises
        :class:`TooManyGuesses` when :data:`MAX_WAITING` checks of the address wait already.
        An address's entry lives while one of its checks does."""
        key = client or "unknown"
        entry = self._turns.get(key)
        if entry is None and time.monotonic() - self._last_wrong.get(key, -PENALTY_SECONDS) >= PENALTY_SECONDS:
            yield
            return
        if entry is None:
            entry = self._turns[key] = (asyncio.Lock(), [0])
        lock, users = entry
        if users[0] >= MAX_WAITING:
            raise TooManyGuesses(TooManyGuesses.reason)
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                self._turns.pop(key, None)

    async def check(self, surface: str, client: str | None, right: Callable[[], bool]) -> bool:
        """``right()``, the comparison of a token ``client`` gave to ``surface``, made in the
        address's turn (:meth:`turn`); a wrong one is slowed, counted and logged
        (:meth:`refused`). Raises :class:`TooManyGuesses`."""
        async with self.turn(client):
            if right():
                return True
            await self.refused(surface, client)
            return False

    async def refused(self, surface: str, client: str | None) -> None:
        """Note a wrong token given to ``surface`` (``api``, ``dashboard``) by ``client``
        (its address), then wait :data:`FAILED_TOKEN_DELAY`."""
        if self.counter is not None:
            self.counter.labels(surface).inc()
        now = time.monotonic()
        if len(self._last_wrong) > 10_000:  # many addresses: keep those still in their penalty
            self._last_wrong = {k: t for k, t in self._last_wrong.items()
                                if now - t < PENALTY_SECONDS}
        self._last_wrong[client or "unknown"] = now
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
