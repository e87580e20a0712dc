"""Timestamps as the Segment spec writes them: ISO-8601, UTC, milliseconds, ``Z``.

Shared by the core (``receivedAt``, replay windows, the profile store's event times) and
connectors (the Segment forwarder's ``sentAt`` and corrected ``timestamp``, Pushwoosh's dates).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

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


# the times iso_micros can write: the years 1-9999 in UTC
_MIN_US = micros(datetime(1, 1, 1, tzinfo=UTC))
_MAX_US = micros(datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC))


def _to_micros(text: str) -> int | None:
    parsed = parse_iso(text)
    if parsed is None:
        return None
    us = micros(parsed)
    return us if _MIN_US <= us <= _MAX_US else None


_micros_of = functools.lru_cache(maxsize=1024)(_to_micros)  # a batch shares sentAt, receivedAt


def _micros(value: Any) -> int | None:
    return _micros_of(value) if isinstance(value, str) else None


def _own_time(raw: Mapping[str, Any]) -> tuple[str | None, int | None]:
    """The event's own time, text and :func:`micros`: its ``timestamp``, else (missing or not a
    time) its ``originalTimestamp``; (None, None) when neither is a time."""
    for field in ("timestamp", "originalTimestamp"):
        text = raw.get(field)
        if isinstance(text, str) and text:
            us = _to_micros(text)  # each event its own
            if us is not None:
                return text, us
    return None, None


def _event_micros(raw: Mapping[str, Any]) -> tuple[int | None, bool]:
    """When a Segment event happened, in :func:`micros`, and whether that is the event's own
    time as it stands (no ``sentAt`` to correct it with): ``receivedAt - (sentAt - timestamp)``
    (``timestamp`` falling back to ``originalTimestamp``); without ``sentAt`` or with one before
    the event's own time, the event's own time; without one, ``receivedAt``; None without
    either."""
    _, own = _own_time(raw)
    sent, received = _micros(raw.get("sentAt")), _micros(raw.get("receivedAt"))
    # a sentAt before the event happened is a broken clock, not a skew to correct
    if own is not None and sent is not None and received is not None and sent >= own:
        corrected = received - (sent - own)
        # a skew that moves the time out of the years 1-9999: the event's own time, written anew
        return (corrected if _MIN_US <= corrected <= _MAX_US else own), False
    if own is not None:
        return own, True
    return received, False


def corrected_timestamp(raw: Mapping[str, Any]) -> str | None:
    """When a Segment event happened, corrected for the client's clock the way Segment does
    it, but at the time hookyard received it: ``receivedAt - (sentAt - timestamp)``.

    ``timestamp`` falls back to ``originalTimestamp``; without ``sentAt`` (a raw HTTP call, an
    import), or with a ``sentAt`` before the event's own time (a broken clock), the event's own
    time is kept as it is; without either, ``receivedAt``.
    None when there is nothing to change. Computed in whole microseconds (no float).
    """
    us, as_sent = _event_micros(raw)
    if as_sent:
        own_text, _ = _own_time(raw)
        return None if own_text == raw.get("timestamp") else own_text
    return iso_micros(us) if us is not None else None


def event_time(raw: Mapping[str, Any]) -> str | None:
    """The event's time as :func:`corrected_timestamp` finds it, always written the same way
    (UTC, milliseconds, ``Z``), whatever offset or precision the client used: ``receivedAt``
    when the event's own time is missing or not a time (``"yesterday"``); None without either."""
    us, _ = _event_micros(raw)
    return iso_micros(us) if us is not None else None
