"""ISO-8601 timestamps in, Pushwoosh's date forms out (pure functions, no clock)."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from hookyard import times

PUSHWOOSH_DATE_FORMAT = "%Y-%m-%d %H:%M"
"""Pushwoosh Date tag values: ``"YYYY-MM-DD HH:mm"`` in UTC (minute precision)."""

# A calendar date, optionally with a time and an offset: what counts as a "date string" when a
# trait's tag type is inferred. Week dates, ordinal dates and compact forms are not matched, so
# values such as "2024" or "20240101" stay strings.
_ISO_RE = re.compile(
    r"^\d{4}-\d{2}-\d{2}"
    r"(?:[T ]\d{2}:\d{2}(?::\d{2}(?:[.,]\d{1,9})?)?(?:[Zz]|[+-]\d{2}(?::?\d{2})?)?)?$"
)
# Epoch numbers above this are taken as milliseconds (1e11 s is the year 5138).
_MILLIS_THRESHOLD = 100_000_000_000


def looks_like_iso_date(value: str) -> bool:
    """True for ``2024-05-01``, ``2024-05-01T10:30:00Z``, ``2024-05-01 10:30:00+02:00``..."""
    return _ISO_RE.match(value.strip()) is not None


def parse_tag_date(value: str) -> datetime | None:
    """An aware UTC datetime from an ISO-8601 date/datetime string (no offset = UTC), as a
    Pushwoosh date tag takes it; stricter than :func:`hookyard.times.parse_iso`: the string must
    look like a date first."""
    if not looks_like_iso_date(value):
        return None
    parsed = times.parse_iso(value.replace(",", "."))
    if parsed is None:
        return None
    try:
        return parsed.astimezone(UTC)
    except (OverflowError, ValueError):  # year 1 east of UTC, year 9999 west of it
        return None


def finite_float(value: int | float) -> float | None:
    """``value`` as a finite float; None for NaN, infinity and an integer of 309 digits or
    more (too large for a float)."""
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def from_epoch(value: float) -> datetime | None:
    """An aware UTC datetime from epoch seconds (or milliseconds, when that large)."""
    if not math.isfinite(value):
        return None
    seconds = value / 1000 if abs(value) >= _MILLIS_THRESHOLD else value
    try:
        return datetime.fromtimestamp(seconds, UTC)
    except (OverflowError, OSError, ValueError):
        return None


def to_datetime(value: object) -> datetime | None:
    """ISO string or epoch number -> aware UTC datetime; anything else -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        return parse_tag_date(value)
    if isinstance(value, int | float):
        number = finite_float(value)
        return from_epoch(number) if number is not None else None
    return None


def pushwoosh_date(value: object) -> str | None:
    """A Date tag value (``"YYYY-MM-DD HH:mm"``, UTC) or None when ``value`` is no date."""
    when = to_datetime(value)
    return when.strftime(PUSHWOOSH_DATE_FORMAT) if when is not None else None


def unix_seconds(value: object) -> int | None:
    """Whole UTC seconds since the epoch of an ISO-8601 string (``timestampUTC``)."""
    if not isinstance(value, str):
        return None
    when = parse_tag_date(value)
    return math.floor(when.timestamp()) if when is not None else None
