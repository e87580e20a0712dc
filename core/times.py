"""Timestamps as the Segment spec writes them: ISO-8601, UTC, milliseconds, ``Z``.

Shared by the core (``receivedAt``, replay windows) and connectors (the Segment forwarder's
``sentAt`` and corrected ``timestamp``, Pushwoosh's dates).
"""

from __future__ import annotations

import functools
import time
from datetime import UTC, datetime, timedelta

_second: tuple[int, str] = (0, "")
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def now_iso() -> str:
    """The current UTC time as Segment writes it: ``2026-01-01T00:00:00.000Z``.

    Formats the date and time only when the second changes (this runs for every ingest
    request and every delivery): about 0.3 us instead of 2.
    """
    global _second
    now = time.time()
    sec = int(now)
    cached = _second
    if cached[0] != sec:
        cached = (sec, datetime.fromtimestamp(sec, UTC).strftime("%Y-%m-%dT%H:%M:%S"))
        _second = cached
    return f"{cached[1]}.{int((now - sec) * 1000):03d}Z"


def iso_utc(when: datetime) -> str:
    """``2026-01-01T10:00:00.123Z``: an aware ``when`` in UTC, to the millisecond (cut, not
    rounded, as ``isoformat`` does)."""
    return iso_micros(micros(when))


def micros(when: datetime) -> int:
    """Microseconds since 1970-01-01 UTC of an aware ``when`` (exact: no float)."""
    return (when - EPOCH) // _MICROSECOND


def iso_micros(us: int) -> str:
    """:func:`iso_utc` of a time given in :func:`micros`; raises OverflowError outside the
    years 1-9999. About 1 us: the date and time of a second are formatted once (the events of
    a batch share their seconds), where ``astimezone().isoformat()`` took 4 us per call."""
    sec, frac = divmod(us, 1_000_000)
    return f"{_second_text(sec)}.{frac // 1000:03d}Z"


@functools.lru_cache(maxsize=4096)
def _second_text(sec: int) -> str:
    return (EPOCH + timedelta(seconds=sec)).isoformat()[:19]


def parse_iso(value: str) -> datetime | None:
    """An aware datetime from an ISO-8601 date or time, or None when ``value`` is not one.

    Surrounding spaces are ignored, ``Z`` or ``z`` means UTC, a time without an offset is
    taken as UTC; an explicit offset is kept (``astimezone(UTC)`` to convert).
    """
    try:  # the common case: Python 3.11 reads a trailing Z itself (4x faster than below)
        parsed = datetime.fromisoformat(value)
    except ValueError:
        pass
    else:
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    text = value.strip()
    if not text:
        return None
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
