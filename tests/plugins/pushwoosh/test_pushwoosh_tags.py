"""Pushwoosh destination settings and the traits -> tags rules (pure functions)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hookyard_pushwoosh.dates import pushwoosh_date, unix_seconds
from hookyard_pushwoosh.settings import PushwooshSettings, PushwooshSourceSettings
from hookyard_pushwoosh.tags import build_tags, coerce, infer_type, language_code

BASE = {"api_key": "pw-key", "application": "ABCDE-12345"}


def settings(**extra: Any) -> PushwooshSettings:
    return msgspec.convert({**BASE, **extra}, PushwooshSettings)


# -- settings ---------------------------------------------------------------------------------
def test_settings_defaults() -> None:
    s = settings()
    assert s.base_url == "https://api.pushwoosh.com"
    assert s.user_id_field == "userId"
    assert s.tag_types == {} and s.tag_names == {}
    assert s.create_or_update_user_profile is True and s.track_events is True


@pytest.mark.parametrize(
    "data, fragment",
    [
        ({"application": "A"}, "api_key"),
        ({"api_key": "k"}, "application"),
        ({**BASE, "api_key": ""}, "api_key"),
        ({**BASE, "api_key": "   "}, "api_key must not be blank"),
        ({**BASE, "apikey": "x"}, "apikey"),
        ({**BASE, "tag_types": {"age": "Number"}}, "tag_types"),
        ({**BASE, "base_url": "api.pushwoosh.com"}, "base_url"),
        ({**BASE, "user_id_field": "traits..id"}, "user_id_field"),
        ({**BASE, "tag_names": {"plan": ""}}, "tag_names"),
    ],
)
def test_settings_are_validated(data: dict[str, Any], fragment: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=fragment):
        msgspec.convert(data, PushwooshSettings)


def test_source_settings() -> None:
    assert msgspec.convert({}, PushwooshSourceSettings).events == ""
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"event": "x"}, PushwooshSourceSettings)


# -- inferred types ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, tag_type, sent",
    [
        (5, "Integer", 5),
        (0, "Integer", 0),
        (2**63 - 1, "Integer", 2**63 - 1),
        (-(2**63), "Integer", -(2**63)),
        # past Pushwoosh's 64-bit Integer: kept as text, not a setTags refused whole (an audit)
        (12345678901234567890, "String", "12345678901234567890"),
        (19.95, "Decimal", 19.95),
        (True, "Boolean", True),
        (False, "Boolean", False),
        (["rock", "jazz"], "List", ["rock", "jazz"]),
        ([1, True, None, "x"], "List", ["1", "true", "x"]),
        ("2024-05-01T10:30:45.123Z", "Date", "2024-05-01 10:30"),
        ("2024-05-01T10:30:00+02:00", "Date", "2024-05-01 08:30"),
        ("2024-05-01 23:59:59-01:00", "Date", "2024-05-02 00:59"),
        ("1990-02-28", "Date", "1990-02-28 00:00"),
        ("2024-13-45", "String", "2024-13-45"),
        ("20240101", "String", "20240101"),
        ("premium", "String", "premium"),
        ("1.2.3", "String", "1.2.3"),
        ({"plan": "pro", "seats": 3}, "String", '{"plan":"pro","seats":3}'),
    ],
)
def test_each_inferred_type(value: Any, tag_type: str, sent: Any) -> None:
    assert infer_type(value) == tag_type
    tags, dropped = build_tags({"t": value})
    assert tags == {"t": sent} and dropped == []


def test_null_traits_are_left_out() -> None:
    assert build_tags({"a": None, "b": "x"}) == ({"b": "x"}, [])


# -- forced types -----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "value, tag_type, sent",
    [
        ("42", "Integer", 42),
        (" -7 ", "Integer", -7),
        (3.0, "Integer", 3),
        ("3.0", "Integer", 3),
        (True, "Integer", 1),
        ("19.95", "Decimal", 19.95),
        (20, "Decimal", 20),
        (10**20, "Decimal", 1e20),  # past 64 bits: the nearest double, as a JSON number
        ("yes", "Boolean", True),
        ("FALSE", "Boolean", False),
        (1, "Boolean", True),
        ("a", "List", ["a"]),
        (7, "List", ["7"]),
        (1714559400, "Date", "2024-05-01 10:30"),
        (1714559400000, "Date", "2024-05-01 10:30"),
        ("1.2.3", "Version", "1.2.3"),
        ("9999.0.1.2", "Version", "9999.0.1.2"),
        (2, "Version", "2"),
        (5, "String", "5"),
        (False, "String", "false"),
        (["a", "b"], "String", '["a","b"]'),
    ],
)
def test_forced_types_coerce(value: Any, tag_type: Any, sent: Any) -> None:
    assert coerce(value, tag_type) == sent
    assert build_tags({"t": value}, tag_types={"t": tag_type}) == ({"t": sent}, [])


@pytest.mark.parametrize(
    "value, tag_type",
    [
        ("abc", "Integer"),
        (3.5, "Integer"),
        (2**63, "Integer"),
        ("-9223372036854775809", "Integer"),
        (True, "Decimal"),
        ("nan", "Decimal"),
        ("maybe", "Boolean"),
        (2, "Boolean"),
        ({"a": 1}, "List"),
        ("9" * 5000, "Integer"),  # int() refuses past 4,300 digits: it was a map_event crash
        (10**400, "Date"),  # float() refuses it: a map_event crash, the identify dead (fuzz)
        (10**400, "Decimal"),
        (-(10**400), "Decimal"),
        ("next tuesday", "Date"),
        (True, "Date"),
        ("0001-01-01T00:00:00+05:00", "Date"),  # before year 1 in UTC: an OverflowError
        ("9999-12-31T23:59:59-05:00", "Date"),  # after year 9999 in UTC
        ("1.2.3.4.5", "Version"),
        ("10000.1", "Version"),
        ("v1", "Version"),
    ],
)
def test_values_that_cannot_be_coerced_are_dropped(value: Any, tag_type: Any) -> None:
    tags, dropped = build_tags({"t": value, "ok": "x"}, tag_types={"t": tag_type})
    assert tags == {"ok": "x"}
    assert dropped == [f"t (not a valid {tag_type})"]


# -- reserved traits, renames, overrides ------------------------------------------------------
def test_reserved_traits_map_to_pushwoosh_default_tags() -> None:
    traits = {
        "language": "en-US",
        "timezone": "Asia/Kolkata",
        "address": {"city": "Chennai", "country": "IN", "street": "1 Main St", "state": None},
        "email": "peter@example.com",
        "firstName": "Peter",
        "createdAt": "2026-01-01T00:00:00.000Z",
    }
    tags, dropped = build_tags(traits)
    assert tags == {
        "Language": "en",
        "TimeZone": "Asia/Kolkata",
        "City": "Chennai",
        "Country": "IN",
        "address": '{"street":"1 Main St"}',
        "email": "peter@example.com",
        "firstName": "Peter",
        "createdAt": "2026-01-01 00:00",
    }
    assert dropped == []


def test_address_with_only_reserved_parts_sends_no_address_tag() -> None:
    tags, _ = build_tags({"address": {"city": "Paris", "country": "FR", "state": None}})
    assert tags == {"City": "Paris", "Country": "FR"}


@pytest.mark.parametrize(
    "raw, sent", [("hi", "hi"), ("pt_BR", "pt"), ("EN", "en"), ("Hindi", "Hindi")]
)
def test_language_code(raw: str, sent: str) -> None:
    assert language_code(raw) == sent


def test_renames_and_overrides() -> None:
    traits = {
        "plan": "premium",
        "logins": "5",
        "language": "fr",
        "address": {"city": "Lyon", "state": "ARA", "postalCode": "69001"},
        "app_version": "2.10.1",
    }
    tags, dropped = build_tags(
        traits,
        tag_names={"plan": "Plan", "language": "Locale", "address.state": "Region"},
        tag_types={"logins": "Integer", "Region": "String", "app_version": "Version"},
    )
    assert tags == {
        "Plan": "premium",
        "logins": 5,
        "Locale": "fr",
        "City": "Lyon",
        "Region": "ARA",
        "address": '{"postalCode":"69001"}',
        "app_version": "2.10.1",
    }
    assert dropped == []


def test_tag_type_by_tag_name_wins_over_trait_name() -> None:
    tags, _ = build_tags(
        {"score": "12"},
        tag_names={"score": "Score"},
        tag_types={"Score": "Integer", "score": "Decimal"},
    )
    assert tags == {"Score": 12}


def test_renamed_to_language_is_normalised_too() -> None:
    tags, _ = build_tags({"locale": "de-AT"}, tag_names={"locale": "Language"})
    assert tags == {"Language": "de"}


# -- dates ------------------------------------------------------------------------------------
def test_date_helpers() -> None:
    assert unix_seconds("2026-01-01T00:00:00.000Z") == 1767225600
    assert unix_seconds("2026-01-01T05:30:00.999+05:30") == 1767225600
    assert unix_seconds("2026-01-01T00:00:00") == 1767225600  # no offset: UTC
    assert unix_seconds("yesterday") is None and unix_seconds(None) is None
    assert unix_seconds("9999-12-31T23:59:59-05:00") is None  # outside what datetime holds
    # an ordinary string trait of that form is inferred as text, not a crash of map_event
    assert build_tags({"since": "0001-01-01T00:00:00+05:00"}) == (
        {"since": "0001-01-01T00:00:00+05:00"}, [])
    assert pushwoosh_date("2026-01-01T00:00:59Z") == "2026-01-01 00:00"
    assert pushwoosh_date(float("inf")) is None
