"""The profile store's notes about values it did not keep (a ``$locale`` that is not an ISO
639-1 code, an email trait that is not an address), logged without flooding the log.

Each kind of note (its channel or preference, per destination) is logged in full
:data:`FULL_PER_WINDOW` times per :data:`WINDOW_SECONDS`; the rest of the window is counted and
said in one line when the next note of that kind comes after it. ``"en-US"`` is a common
``language`` trait: one line per identify made 98.7 % of an hour's log (soak audit).
"""

from __future__ import annotations

import logging
import time

log = logging.getLogger("hookyard.profiles")

WINDOW_SECONDS = 60.0
FULL_PER_WINDOW = 10


class Notes:
    """Rate-limited notes, per kind."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], tuple[float, int, int]] = {}  # start, said, held

    def note(self, destination: str, uid: str, text: str) -> None:
        kind = (destination, text.split(" ", 1)[0])  # "$locale", "$email"...
        now = time.monotonic()
        start, said, held = self._windows.get(kind, (now, 0, 0))
        if now - start >= WINDOW_SECONDS:
            if held:
                log.info("profile store %s: %d more notes like %r in the last %.0f s (not"
                         " logged one by one)", destination, held, kind[1], now - start)
            start, said, held = now, 0, 0
        if said < FULL_PER_WINDOW:
            log.info("profile %s: %s", uid, text)
            said += 1
        else:
            held += 1
        if len(self._windows) > 10_000:  # kinds are few; a bound all the same
            self._windows.clear()
        self._windows[kind] = (start, said, held)
