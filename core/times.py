"""Timestamps as the Segment spec writes them: ISO-8601, UTC, milliseconds, ``Z``.

Shared by the core (``receivedAt``, replay windows) and connectors (the Segment forwarder's
``sentAt`` and corrected ``timestamp``, Pushwoosh's dates).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

_second: tuple[int, str] = (0, "")


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
    """``2026-01-01T10:00:00.123Z``: an aware ``when`` in UTC, to the millisecond."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> datetime | None:
    """An aware datetime from an ISO-8601 date or time, or None when ``value`` is not one.

    Surrounding spaces are ignored, ``Z`` or ``z`` means UTC, a time without an offset is
    taken as UTC; an explicit offset is kept (``astimezone(UTC)`` to convert).
    """
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
