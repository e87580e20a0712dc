"""Timestamps as the Segment spec writes them: ISO-8601, UTC, milliseconds, ``Z``.

Shared by the core (``receivedAt``, replay windows, the profile store's event times) and
connectors (the Segment forwarder's ``sentAt`` and corrected ``timestamp``, Pushwoosh's dates).
"""

from __future__ import annotations

import functools
import re
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


_LEAP_SECOND = re.compile(r"([Tt ]\d\d:\d\d:)60(?![0-9])")


def parse_iso(value: str) -> datetime | None:
    """An aware datetime from an ISO-8601 date or time, or None when ``value`` is not one.

    Surrounding spaces are ignored, ``Z`` or ``z`` means UTC, a time without an offset is
    taken as UTC; an explicit offset is kept (``astimezone(UTC)`` to convert). A leap second
    (``23:59:60``, which Python's datetime cannot hold) is read as ``23:59:59``, not refused.
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
        second_before, leap = _LEAP_SECOND.subn(r"\g<1>59", text, count=1)
        return parse_iso(second_before) if leap else None
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


def _time_field(raw: Mapping[str, Any], field: str) -> int | None:
    text = raw.get(field)
    return _to_micros(text) if isinstance(text, str) and text else None  # each event its own


def event_micros(raw: Mapping[str, Any]) -> int | None:
    """When a Segment event happened, in :func:`micros`, corrected for the client's clock as
    Segment does it, but at the time hookyard received it:
    ``receivedAt - (sentAt - timestamp)``, ``timestamp`` falling back to ``originalTimestamp``.

    * An event with both a ``timestamp`` and an ``originalTimestamp`` was processed already
      (by Segment: its Webhooks destination sends such events, with the client's ``sentAt``
      and Segment's own ``receivedAt``): its ``timestamp`` is the corrected time, kept. Correcting
      it again moved it by the client's skew a second time, and by the webhook's delay.
    * Without ``sentAt`` (a raw HTTP call, an import), or with a ``sentAt`` before the event's
      own time (a broken clock, not a skew), the event's own time as it is.
    * Without a time of its own (or an unreadable one: ``"yesterday"``), ``receivedAt``.

    None without any of them. Whole microseconds (no float)."""
    stamp = _time_field(raw, "timestamp")
    original = _time_field(raw, "originalTimestamp")
    if stamp is not None and original is not None:
        return stamp
    own = stamp if stamp is not None else original
    sent, received = _micros(raw.get("sentAt")), _micros(raw.get("receivedAt"))
    if own is not None and sent is not None and received is not None and sent >= own:
        corrected = received - (sent - own)
        # a skew that moves the time out of the years 1-9999: the event's own time
        return corrected if _MIN_US <= corrected <= _MAX_US else own
    return own if own is not None else received


def event_time(raw: Mapping[str, Any]) -> str | None:
    """:func:`event_micros` written as every destination sends a time (UTC, milliseconds,
    ``Z``), whatever offset, precision or form (a week date) the client used."""
    us = event_micros(raw)
    return iso_micros(us) if us is not None else None


def order_time(raw: Mapping[str, Any]) -> str | None:
    """:func:`event_time`, but never later than ``receivedAt``: the time by which one event of
    a user counts as older than another (the profile store keeps an identify from rolling
    newer traits back when a replay brings it again). An event cannot have happened after
    hookyard received it; a client clock or a ``timestamp`` in the future (2099) would
    otherwise make every later identify of that user "older", and its traits never change."""
    us, received = event_micros(raw), _micros(raw.get("receivedAt"))
    if us is not None and received is not None and us > received:
        us = received
    return iso_micros(us) if us is not None else None
