"""Times and dead-letter filters given by operators (``--since``, ``"since"``, ``--until``):
UTC when they carry no offset, whatever the server's time zone is; empty, unreadable and
unrepresentable values are refused with a reason (a 400 / an ``Error:`` line, never a 500)."""

from __future__ import annotations

import pytest
from hookyard.operator_input import dead_letter_filter, parse_time, window

NOON_UTC = 1767268800.0  # 2026-01-01T12:00:00Z


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


def test_an_eight_digit_string_is_a_basic_iso_date(far_time_zone: None) -> None:
    """Read as Unix seconds, "20260101" was 1970-08-23 and a replay resent every event."""
    assert parse_time("20260101") == NOON_UTC - 12 * 3600
    with pytest.raises(ValueError, match="invalid since '20261306'"):
        parse_time("20261306")


def test_parse_time_none_is_no_bound() -> None:
    assert parse_time(None) is None


@pytest.mark.parametrize(("value", "reason"), [
    ("", "since is empty"), ("  ", "since is empty"),
    ("yesterday", "invalid since"), ("2026-13-01", "invalid since"), ("nan", "not a finite"),
    ("inf", "not a finite"), ("1e400", "not a finite"), ([1], "a string or a number"),
    ({"a": 1}, "a string or a number"), (True, "a string or a number"),
    ("9999-12-31T23:59:59-05:00", "out of range"), ("0001-01-01T00:00:00+01:00", "out of range"),
    (1e300, "out of range"), (-1e15, "out of range"),
])
def test_parse_time_refuses_with_a_reason(value: object, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_time(value)


def test_replay_window_reads_times_like_the_other_operator_inputs() -> None:
    assert window(" 2026-11-01T12:00:00+02:00 ", None) == ("2026-11-01T10:00:00.000Z", None)
    assert window(None, "2026-11-01t10:00:00z") == (None, "2026-11-01T10:00:00.000Z")
    assert window(NOON_UTC, str(NOON_UTC)) == ("2026-01-01T12:00:00.000Z",) * 2  # Unix seconds
    assert window(None, None) == (None, None)
    for since, until, reason in (
        ("nan", None, "not a finite"), ("", None, "since is empty"), (None, "", "until is empty"),
        ("9999-12-31T23:59:59-05:00", None, "out of range"),
        (None, "0001-01-01T00:00:00+01:00", "out of range"),
        ("2026-11-02", "2026-11-01", "since is after until"),
    ):
        with pytest.raises(ValueError, match=reason):
            window(since, until)


def test_dead_letter_filters() -> None:
    assert dead_letter_filter("retry", None, None, None, False) == (None, None, None)
    assert dead_letter_filter("discard", None, None, None, True) == (None, None, None)
    assert dead_letter_filter("discard", "crm", "1767268800", [3], False) == ("crm", NOON_UTC, [3])
    for action, args, reason in (
        ("discard", (None, None, None, False), '"all": true to discard every'),
        ("discard", ("", None, None, False), "destination is empty"),
        ("retry", (None, None, [], False), "ids is empty"),
        ("retry", (None, "", None, False), "since is empty"),
        ("retry", ("crm", None, None, True), "cannot be combined"),
    ):
        with pytest.raises(ValueError, match=reason):
            dead_letter_filter(action, *args)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="--destination, --since or --id"):
        dead_letter_filter("discard", None, None, None, False, cli=True)
