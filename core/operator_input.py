"""What operators give the ``replay`` and ``dlq`` commands and the operator API: times,
dead-letter filters and page parameters, checked the same way everywhere (a bad value is a
``ValueError`` with a one-line reason: a 400 in the API, an ``Error:`` line in the CLI)."""

from __future__ import annotations

import math
import re
from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .times import iso_utc, parse_iso

if TYPE_CHECKING:
    from starlette.datastructures import QueryParams

TIME_FORMATS = "ISO-8601 (2026-01-31 or 2026-01-31T12:00:00Z, UTC when no zone is given) or Unix seconds"


def operator_time(value: Any, name: str = "time") -> datetime | None:
    """``value`` (an ISO-8601 date or time, or Unix seconds as a number or a string) as an aware
    datetime; None when ``value`` is None. A time without an offset is UTC. Empty, unreadable
    and unrepresentable times (outside the years 1-9999 in UTC) raise ValueError."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{name} must be a string or a number, got {type(value).__name__}")
    if isinstance(value, str) and not value.strip():
        raise ValueError(f"{name} is empty: use {TIME_FORMATS}")
    if isinstance(value, str) and len(value.strip()) == 8 and value.strip().isdigit():
        # 20261206 is a date (ISO-8601's basic form), not 1970-08-23 in Unix seconds: read as
        # seconds, it made a replay resend every event
        parsed = parse_iso(value.strip())
        if parsed is None:
            raise ValueError(f"invalid {name} {value!r}: use {TIME_FORMATS}")
        return parsed
    try:
        seconds = float(value)
    except ValueError:
        parsed = parse_iso(value) if isinstance(value, str) else None
        if parsed is None:
            raise ValueError(f"invalid {name} {value!r}: use {TIME_FORMATS}") from None
    else:
        if not math.isfinite(seconds):
            raise ValueError(f"invalid {name} {value!r}: not a finite number of seconds")
        try:
            parsed = datetime.fromtimestamp(seconds, UTC)
        except (OverflowError, OSError, ValueError):
            raise ValueError(f"{name} {value!r} is out of range (years 1-9999)") from None
    try:
        iso_utc(parsed)  # representable in UTC
    except (OverflowError, ValueError):
        raise ValueError(f"{name} {value!r} is out of range (years 1-9999)") from None
    return parsed


def parse_time(value: Any, name: str = "since") -> float | None:
    """:func:`operator_time` as Unix seconds (None stays None)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        operator_time(value, name)  # the checks
        return float(value)
    parsed = operator_time(value, name)
    return None if parsed is None else parsed.timestamp()


def window(since: Any, until: Any) -> tuple[str | None, str | None]:
    """A replay window ``[since, until)`` as the inbox's ``received_at`` texts (UTC, ms, ``Z``).
    Raises ValueError for a bad time or a window whose start is after its end."""
    lo, hi = operator_time(since, "since"), operator_time(until, "until")
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"since is after until ({since} > {until})")
    return (None if lo is None else iso_utc(lo)), (None if hi is None else iso_utc(hi))


def replay_start(since: Any, every: bool, *, cli: bool = False) -> None:
    """A replay names where it starts: ``since``, or ``all`` for every stored event of the
    source. Without either, a forgotten ``--since`` sent a whole history again to destinations
    that cannot deduplicate (a webhook, Pushwoosh events; newcomer audit)."""
    since_name, all_name = ("--since", "--all") if cli else ("since", '"all": true')
    if every and since is not None:
        raise ValueError(f"{all_name} cannot be combined with {since_name}")
    if not every and since is None:
        raise ValueError(
            f"say where the replay starts: {since_name} TIME (events received from then on), or"
            f" {all_name} for every stored event of the source (destinations that do not"
            " deduplicate, such as webhooks and Pushwoosh events, get them all again)")


MAX_DEAD_LETTER_IDS = 10_000
"""Ids one dead-letter request may list: each is a variable of one SQL statement, of which
SQLite takes 32,766 (262,000 ids, half the body limit, were a 500; docs audit)."""


def dead_letter_filter(
    action: str, destination: str | None, since: Any, ids: list[int] | None, every: bool,
    *, cli: bool = False,
) -> tuple[str | None, float | None, list[int] | None]:
    """The checked filter of a dead-letter ``retry`` or ``discard``: (destination, since as Unix
    seconds, ids). Discarding with no filter at all needs ``all``, so a mistyped or empty filter
    never discards every dead letter; retrying everything loses nothing and needs no flag."""
    if destination is not None and not destination:
        raise ValueError("destination is empty")
    if ids is not None and not ids:
        raise ValueError("ids is empty: list the dead letters' ids, or leave ids out")
    if ids is not None and len(ids) > MAX_DEAD_LETTER_IDS:
        raise ValueError(f"{len(ids):,} ids: at most {MAX_DEAD_LETTER_IDS:,} at once (or narrow"
                         " by destination and since instead)")
    when = parse_time(since, "since")
    narrowed = destination is not None or when is not None or ids is not None
    all_name = "--all" if cli else '"all": true'
    if every and narrowed:
        raise ValueError(f"{all_name} cannot be combined with a filter (destination, since, ids)")
    if action == "discard" and not narrowed and not every:
        filters = "--destination, --since or --id" if cli else "destination, since or ids"
        raise ValueError(
            f"discard needs a filter ({filters}), or {all_name} to discard every dead letter"
        )
    return destination, when, ids


def retry_refusal(destination: str | None, configured: Collection[str]) -> str | None:
    """Why dead letters of ``destination`` may not be retried, or None: a destination no longer
    in the config has no worker, so they would be pending for ever."""
    if destination is not None and destination not in configured:
        return (f"destination {destination!r} is not in the config, so no worker would deliver"
                " its dead letters: add it back first, or discard them")
    return None


PAGE_DEFAULT, PAGE_MAX = 50, 500
_INTEGER = re.compile(r"-?[0-9]+")


def check_query(query: QueryParams, allowed: Collection[str]) -> None:
    """ValueError for a query parameter the route does not take, or one given twice: an
    operator who asks for ``?since=`` where there is no such filter must not get everything
    back as if it had applied."""
    seen: set[str] = set()
    for name, _ in query.multi_items():
        if name not in allowed:
            takes = ", ".join(sorted(allowed)) or "none"
            raise ValueError(f"unknown query parameter {name!r} (this route takes: {takes})")
        if name in seen:
            raise ValueError(f"query parameter {name!r} is given more than once")
        seen.add(name)


def int_param(query: Mapping[str, str], name: str, minimum: int = 0) -> int | None:
    """The integer query parameter ``name`` (None when absent or empty): ASCII digits, ``minimum``
    or more (the API's cursors, statuses and counts are never negative) and within what SQLite
    can bind."""
    value = query.get(name)
    if not value:
        return None
    if _INTEGER.fullmatch(value) is None:  # not int()'s "+5", " 5", "1_0" or other scripts' digits
        raise ValueError(f"query parameter {name} must be an integer, got {value!r}")
    number = int(value)
    if not -(2**63) <= number < 2**63:  # what SQLite can bind; larger is a 400, not a 500
        raise ValueError(f"query parameter {name} is out of range: {value!r}")
    if number < minimum:
        raise ValueError(f"query parameter {name} must be at least {minimum}, got {value!r}")
    return number


def page_limit(query: Mapping[str, str]) -> int:
    """``limit``: the page size, 1-500 (default 50); outside that range an error, not a clamp."""
    limit = int_param(query, "limit", minimum=-(2**63))  # the range below says what is allowed
    if limit is None:
        return PAGE_DEFAULT
    if not 1 <= limit <= PAGE_MAX:
        raise ValueError(f"query parameter limit must be 1-{PAGE_MAX}, got {limit}")
    return limit
