"""Times shown by the dashboard are UTC when they carry no offset, whatever the server's time
zone is (operators' ``--since`` / ``"since"``: tests/test_operator_input.py)."""

from __future__ import annotations

from hookyard.dashboard.render import when
from hookyard.times import iso_utc, parse_iso

NOON_UTC = 1767268800.0  # 2026-01-01T12:00:00Z


def test_dashboard_when_shows_naive_times_as_utc(far_time_zone: None) -> None:
    assert when("2026-01-01T12:00:00") == "2026-01-01 12:00:00"
    assert when("2026-01-01T13:00:00+01:00") == "2026-01-01 12:00:00"
    assert when(NOON_UTC) == "2026-01-01 12:00:00"
    assert when("not a time") == "not a time"
    assert when(None) == ""


def test_iso_round_trip() -> None:
    parsed = parse_iso("2026-01-01T12:00:00.123Z")
    assert parsed is not None
    assert iso_utc(parsed) == "2026-01-01T12:00:00.123Z"
    assert parse_iso("garbage") is None


def test_iso_utc_matches_isoformat_cut_to_milliseconds() -> None:
    """iso_utc formats each second once (cached) and cuts microseconds like isoformat does,
    for any offset and for years far from 1970."""
    import random
    from datetime import UTC, datetime, timedelta, timezone

    rng = random.Random(7)
    for _ in range(2000):
        us = rng.randrange(-62_000_000_000 * 10**6, 253_000_000_000 * 10**6)
        offset = timezone(timedelta(minutes=rng.randrange(-900, 900)))
        when = (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).astimezone(offset)
        expected = when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
        assert iso_utc(when) == expected


def test_parse_iso_fast_and_slow_paths_agree() -> None:
    assert parse_iso("2026-01-01T10:00:00Z") == parse_iso(" 2026-01-01t10:00:00z ")
    assert str(parse_iso("2026-01-01")) == "2026-01-01 00:00:00+00:00"
    assert str(parse_iso("2026-01-01T10:00:00+02:00")) == "2026-01-01 10:00:00+02:00"
    assert parse_iso("  ") is None
