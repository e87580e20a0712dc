"""The Pushwoosh destination's map_event hook, called directly and through the registry."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from hookyard.connectors import DestinationContext
from hookyard.deliveries import MapResult
from hookyard.events import Event
from hookyard.testing import (
    destination_context,
    map_with,
    sample_alias,
    sample_group,
    sample_identify,
    sample_page,
    sample_screen,
    sample_track,
)
from hookyard_pushwoosh.plugin import map_event
from hookyard_pushwoosh.settings import PushwooshSettings

APP = "ABCDE-12345"
JAN_1_2026 = 1767225600  # 2026-01-01T00:00:00Z


def ctx(**extra: Any) -> DestinationContext:
    settings = msgspec.convert(
        {"api_key": "pw-key", "application": APP, **extra}, PushwooshSettings
    )
    return DestinationContext(name="pushwoosh", plugin="pushwoosh", settings=settings)


def run(raw: dict[str, Any], **extra: Any) -> MapResult:
    event = msgspec.convert(raw, Event)  # type: ignore[arg-type]
    return map_event(destination=ctx(**extra), event=event, raw=raw)


def request_of(result: MapResult) -> dict[str, Any]:
    assert result.filtered is None, result.filtered
    [delivery] = result.deliveries
    body: dict[str, Any] = delivery.body
    assert list(body) == ["request"]
    return body["request"]  # type: ignore[no-any-return]


# -- identify -> setTags ----------------------------------------------------------------------
def test_identify_becomes_set_tags() -> None:
    result = run(sample_identify())
    [delivery] = result.deliveries
    assert (delivery.kind, delivery.method, delivery.path) == (
        "setTags",
        "POST",
        "/json/1.3/setTags",
    )
    assert delivery.ordering_key == "97980cfea0067"
    assert delivery.body == {
        "request": {
            "application": APP,
            "userId": "97980cfea0067",
            "tags": {
                "name": "Peter Gibbons",
                "email": "peter@example.com",
                "Language": "hi",
                "TimeZone": "Asia/Kolkata",
                "plan": "premium",
                "logins": 5,
            },
        }
    }
    assert "pw-key" not in msgspec.json.encode(delivery).decode()  # no secret in the outbox


def test_identify_sends_every_tag_type() -> None:
    """One identify with a trait of each Pushwoosh tag type, inferred and forced."""
    traits = {
        "logins": 5,  # Integer
        "plan": "premium",  # String
        "genres": ["rock", "jazz"],  # List
        "createdAt": "2024-05-01T10:30:45+02:00",  # Date
        "verified": True,  # Boolean
        "ltv": 19.95,  # Decimal
        "app_version": "2.10.1",  # Version (forced: never inferred)
    }
    request = request_of(run(sample_identify(traits=traits), tag_types={"app_version": "Version"}))
    assert request["tags"] == {
        "logins": 5,
        "plan": "premium",
        "genres": ["rock", "jazz"],
        "createdAt": "2024-05-01 08:30",  # Pushwoosh's "YYYY-MM-DD HH:mm", in UTC
        "verified": True,
        "ltv": 19.95,
        "app_version": "2.10.1",
    }
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", request["tags"]["createdAt"])
    encoded = msgspec.json.encode(run(sample_identify(traits=traits)).deliveries[0].body)
    assert b'"logins":5,' in encoded and b'"ltv":19.95' in encoded  # numbers stay numbers


def test_identify_reserved_traits_become_default_tags() -> None:
    traits = {
        "language": "pt-BR",
        "timezone": "America/Sao_Paulo",
        "email": "ana@example.com",
        "address": {"city": "Recife", "country": "BR", "postalCode": "50000"},
    }
    assert request_of(run(sample_identify(traits=traits)))["tags"] == {
        "Language": "pt",
        "TimeZone": "America/Sao_Paulo",
        "email": "ana@example.com",  # no Pushwoosh default tag: emails are a channel there
        "City": "Recife",
        "Country": "BR",
        "address": '{"postalCode":"50000"}',
    }


def test_identify_settings_rename_and_type_tags() -> None:
    request = request_of(
        run(sample_identify(), tag_names={"plan": "Plan"}, tag_types={"logins": "String"})
    )
    assert request["tags"]["Plan"] == "premium" and "plan" not in request["tags"]
    assert request["tags"]["logins"] == "5"


def test_identify_leaves_excluded_traits_out() -> None:
    traits = {"email": "a@b.co", "phone": "+1555", "address": {"city": "Austin"}, "plan": "pro"}
    request = request_of(run(sample_identify(traits=traits),
                             exclude_traits=["email", "phone", "address"]))
    assert request["tags"] == {"plan": "pro"}
    parts = request_of(run(sample_identify(traits=traits), exclude_traits=["address.city"]))
    assert "City" not in parts["tags"] and parts["tags"]["email"] == "a@b.co"
    only = run(sample_identify(traits={"email": "a@b.co"}), exclude_traits=["email"])
    assert only.filtered == "no traits to send as Pushwoosh tags"


def test_identify_with_user_id_from_a_dotted_path() -> None:
    raw = sample_identify(traits={"external_id": "crm-42", "plan": "pro"})
    request = request_of(run(raw, user_id_field="traits.external_id"))
    assert request["userId"] == "crm-42"
    assert request["tags"] == {"external_id": "crm-42", "plan": "pro"}


def test_numeric_user_id_is_sent_as_a_string() -> None:
    assert request_of(run(sample_identify(userId=1234)))["userId"] == "1234"


def test_identify_without_user_id_uses_the_device_id_as_hwid() -> None:
    raw = sample_identify(userId=None, anonymousId="anon-1", context={"device": {"id": "HW-1"}})
    request = request_of(run(raw))
    assert request["hwid"] == "HW-1" and "userId" not in request


def test_identify_switched_off() -> None:
    result = run(sample_identify(), create_or_update_user_profile=False)
    assert result.deliveries == []
    assert result.filtered == "Create or Update User Profile is disabled"


def test_identify_without_traits_is_skipped() -> None:
    result = run(sample_identify(traits={}))
    assert result.deliveries == [] and result.filtered == "no traits to send as Pushwoosh tags"


def test_identify_whose_traits_all_fail_coercion_is_skipped_with_the_reason() -> None:
    result = run(sample_identify(traits={"age": "old"}), tag_types={"age": "Integer"})
    assert (
        result.filtered
        == "no traits to send as Pushwoosh tags (left out: age (not a valid Integer))"
    )


# -- track -> postEvent -----------------------------------------------------------------------
def test_track_becomes_post_event() -> None:
    result = run(sample_track())
    [delivery] = result.deliveries
    assert (delivery.kind, delivery.path) == ("postEvent", "/json/1.3/postEvent")
    assert delivery.body == {
        "request": {
            "application": APP,
            "event": "User Registered",
            "attributes": {"plan": "Pro Annual", "accountType": "Facebook"},
            "timestampUTC": JAN_1_2026,
            "userId": "97980cfea0067",
        }
    }


@pytest.mark.parametrize("properties", [{}, None])
def test_track_with_empty_properties_sends_empty_attributes(properties: Any) -> None:
    raw = sample_track(properties=properties)
    if properties is None:
        raw.pop("properties", None)
    assert request_of(run(raw))["attributes"] == {}


def test_track_attributes_are_flattened() -> None:
    raw = sample_track(
        properties={
            "n": 2,
            "ok": True,
            "tags": ["a", 1],
            "cart": {"id": 7},
            "none": None,
            "price": 9.5,
        }
    )
    assert request_of(run(raw))["attributes"] == {
        "n": 2,
        "ok": True,
        "tags": ["a", "1"],
        "cart": '{"id":7}',
        "price": 9.5,
    }


def test_track_attributes_past_64_bits_go_as_text() -> None:
    """Found by the vendor audit: tags turned such a number into a String, attributes sent it
    as a number Pushwoosh's 64-bit Integer cannot hold."""
    raw = sample_track(properties={"total": 12345678901234567890, "max": 2**63 - 1, "low": -(2**63)})
    assert request_of(run(raw))["attributes"] == {
        "total": "12345678901234567890", "max": 2**63 - 1, "low": -(2**63)}


@pytest.mark.parametrize(
    "fields, expected",
    [
        ({"timestamp": "2026-01-01T05:30:00+05:30"}, JAN_1_2026),
        ({"timestamp": "2026-01-01T00:00:01.999Z"}, JAN_1_2026 + 1),
        ({"timestamp": None, "originalTimestamp": "2026-01-01T00:01:00Z"}, JAN_1_2026 + 60),
        (
            {"timestamp": "not a date", "originalTimestamp": "2026-01-01T00:02:00Z"},
            JAN_1_2026 + 120,
        ),
        ({"timestamp": None, "receivedAt": "2026-01-01T01:00:00.000Z"}, JAN_1_2026 + 3600),
        # a device clock six years behind: corrected by sentAt, as Segment does (an outside
        # audit: Pushwoosh got 2020 while the Segment forwarder sent the corrected time)
        ({"timestamp": "2020-01-01T00:00:00Z", "sentAt": "2020-01-01T00:00:10Z"}, JAN_1_2026 - 10),
    ],
)
def test_track_timestamp_conversion(fields: dict[str, Any], expected: int) -> None:
    assert request_of(run(sample_track(**fields)))["timestampUTC"] == expected


def test_track_without_any_timestamp_is_skipped() -> None:
    result = run(sample_track(timestamp=None, receivedAt=None))
    assert result.filtered == "no valid timestamp, originalTimestamp or receivedAt"


def test_track_timestamp_is_whole_unix_seconds_of_the_event_time() -> None:
    request = request_of(run(sample_track(timestamp="2026-03-04T05:06:07.890Z")))
    assert request["timestampUTC"] == 1772600767 and isinstance(request["timestampUTC"], int)


def test_track_falls_back_to_hwid_then_anonymous_id() -> None:
    with_device = sample_track(
        userId=None, anonymousId="anon-1", context={"device": {"id": "HW-9"}}
    )
    request = request_of(run(with_device))
    assert request["hwid"] == "HW-9" and "userId" not in request
    anonymous = sample_track(userId=None, anonymousId="8f65b16df378e7a6")
    assert request_of(run(anonymous))["hwid"] == "8f65b16df378e7a6"
    assert run(anonymous).deliveries[0].ordering_key == "8f65b16df378e7a6"


def test_track_with_a_user_id_also_names_the_device() -> None:
    """Pushwoosh starts a Customer Journey from postEvent only with the HWID; its SDKs send
    both. An anonymousId (a web library's random id) is never sent beside a userId."""
    raw = sample_track(anonymousId="anon-1", context={"device": {"id": "HW-9"}})
    request = request_of(run(raw))
    assert request["userId"] == raw["userId"] and request["hwid"] == "HW-9"
    assert "hwid" not in request_of(run(sample_track(anonymousId="anon-1")))
    identify = sample_identify(context={"device": {"id": "HW-9"}})
    assert "hwid" not in request_of(run(identify))  # setTags: the user's tags, by userId


def test_track_without_user_or_device_is_skipped() -> None:
    result = run(sample_track(userId=None))
    assert result.deliveries == []
    assert result.filtered == (
        "no Pushwoosh user: no userId (field userId), no context.device.id (hwid) and no anonymousId"
    )


def test_custom_user_id_field_missing_falls_back_to_anonymous_id() -> None:
    raw = sample_track(anonymousId="anon-7")
    assert request_of(run(raw, user_id_field="traits.external_id"))["hwid"] == "anon-7"


def test_track_switched_off() -> None:
    result = run(sample_track(), track_events=False)
    assert result.deliveries == [] and result.filtered == "Track Events is disabled"


@pytest.mark.parametrize(
    "raw, kind",
    [
        (sample_page(), "page"),
        (sample_screen(), "screen"),
        (sample_group(), "group"),
        (sample_alias(), "alias"),
    ],
)
def test_other_calls_are_skipped(raw: dict[str, Any], kind: str) -> None:
    result = run(raw)
    assert result.deliveries == []
    assert (
        result.filtered == f"Pushwoosh takes identify (tags) and track (events) calls, not {kind}"
    )


def test_map_through_the_registry() -> None:
    dest = destination_context("pushwoosh", {"api_key": "k", "application": APP})
    result = map_with(dest, sample_track(event="Signed Up"))
    assert request_of(result)["event"] == "Signed Up"
