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


def test_an_event_segment_processed_keeps_its_timestamp() -> None:
    """From Segment's Webhooks destination: timestamp is Segment's corrected time, beside the
    phone's originalTimestamp and sentAt (1 h fast) and Segment's receivedAt, which hookyard
    replaces with its own. Corrected again, it moved an hour and the webhook's delay."""
    from hookyard.times import event_time

    raw = {"timestamp": "2026-01-01T01:20:08.466Z", "originalTimestamp": "2026-01-01T02:20:08.466Z",
           "sentAt": "2026-01-01T02:20:10.466Z", "receivedAt": "2026-01-01T01:20:16.469Z"}
    assert event_time(raw) == "2026-01-01T01:20:08.466Z"
    del raw["timestamp"]  # a client's event: corrected from originalTimestamp, as Segment does
    assert event_time(raw) == "2026-01-01T01:20:14.469Z"


def test_an_event_never_counts_as_later_than_its_arrival() -> None:
    from hookyard.times import event_time, order_time

    raw = {"timestamp": "2099-01-01T00:00:00Z", "receivedAt": "2026-01-01T00:00:00.000Z"}
    assert event_time(raw) == "2099-01-01T00:00:00.000Z"  # what destinations are sent
    assert order_time(raw) == "2026-01-01T00:00:00.000Z"  # what a later identify is older than


def test_a_leap_second_is_the_second_before() -> None:
    """Python's datetime cannot hold 23:59:60: the event got its receivedAt (years later)."""
    from hookyard.times import event_time

    raw = {"timestamp": "2016-12-31T23:59:60.250Z", "receivedAt": "2026-01-01T00:00:00.000Z"}
    assert event_time(raw) == "2016-12-31T23:59:59.250Z"
    assert event_time({**raw, "timestamp": "2016-12-31T23:60:00Z"}) == raw["receivedAt"]
