"""Times given by operators (``--since``, ``"since"``) and shown by the dashboard are UTC when
they carry no offset, whatever the server's time zone is."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hookyard.admin_api import parse_time
from hookyard.dashboard.render import when
from hookyard.times import iso_utc, parse_iso

NOON_UTC = 1767268800.0  # 2026-01-01T12:00:00Z


@pytest.fixture()
def far_time_zone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The server runs at UTC-10: a naive time read as local would be 10 hours off."""
    monkeypatch.setenv("TZ", "Pacific/Honolulu")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("text", [
    "2026-01-01T12:00:00Z", "2026-01-01T12:00:00", "2026-01-01 12:00:00", "2026-01-01T12:00:00z",
    "2026-01-01T13:00:00+01:00", " 2026-01-01T12:00:00.000Z ",
])
def test_parse_time_iso_is_utc_without_offset(far_time_zone: None, text: str) -> None:
    assert parse_time(text) == NOON_UTC


def test_parse_time_date_is_midnight_utc(far_time_zone: None) -> None:
    assert parse_time("2026-01-01") == NOON_UTC - 12 * 3600


@pytest.mark.parametrize("value", [NOON_UTC, int(NOON_UTC), str(NOON_UTC), "1767268800"])
def test_parse_time_unix_seconds(value: object) -> None:
    assert parse_time(value) == NOON_UTC


@pytest.mark.parametrize("value", [None, ""])
def test_parse_time_empty_is_no_bound(value: object) -> None:
    assert parse_time(value) is None


@pytest.mark.parametrize("value", ["yesterday", "2026-13-01", "nan", "inf", "1e400", [1], {"a": 1}])
def test_parse_time_refuses_with_a_reason(value: object) -> None:
    with pytest.raises(ValueError, match="invalid time"):
        parse_time(value)


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


def test_replay_reads_times_like_the_other_operator_inputs() -> None:
    from hookyard.delivery.replay import normalize_time

    assert normalize_time(" 2026-11-01T12:00:00+02:00 ") == "2026-11-01T10:00:00.000Z"
    assert normalize_time("2026-11-01t10:00:00z") == "2026-11-01T10:00:00.000Z"
    with pytest.raises(ValueError, match="not an ISO-8601"):
        normalize_time("nan")


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
