"""The Pushwoosh source: write-key auth, /v1/track and /v1/batch, the events list."""

from __future__ import annotations

import base64
from typing import Any

import msgspec
import pytest
from hookyard.connectors import IngestRequest, ParsedEvent, RefusedEvent, SourceContext
from hookyard.errors import BadRequest, NotFound
from hookyard.events import Track
from hookyard.testing import registry, source_context
from hookyard_pushwoosh.plugin import authenticate, parse_events, register_connectors
from hookyard_pushwoosh.settings import PushwooshSourceSettings
from hookyard_pushwoosh.source import KNOWN_EVENTS

KEY = "pw-write-key-123"


def basic(key: str) -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def source(events: str = "") -> SourceContext:
    return SourceContext(
        "pushwoosh-events", "pushwoosh", KEY, PushwooshSourceSettings(events=events)
    )


def request(body: Any, call: str = "track", headers: dict[str, str] | None = None) -> IngestRequest:
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    return IngestRequest(
        "POST",
        f"/v1/{call}",
        headers if headers is not None else basic(KEY),
        data,
        path_params={"call": call},
    )


def message_event(name: str = "Email Sent", **extra: Any) -> dict[str, Any]:
    """An event as Pushwoosh's Segment exporter sends it."""
    return {
        "type": "track",
        "userId": "user_3078a",
        "event": name,
        "properties": {"message_type": "Email", "campaign_id": "CMP-1", "device_type": "web"},
        "timestamp": "2026-01-01T00:00:00.000Z",
        **extra,
    }


# -- connector and auth -----------------------------------------------------------------------
def test_the_source_connector_shares_the_tracking_path() -> None:
    [src] = [c for c in register_connectors() if c.kind == "source"]
    assert (src.name, src.paths, src.settings) == (
        "pushwoosh",
        ("/v1/{call}", "/connector/pushwoosh/", "/connector/pushwoosh"),
        PushwooshSourceSettings,
    )


def test_basic_write_key_is_accepted() -> None:
    assert authenticate(source=source(), request=request(message_event())).accepted


def test_body_write_key_is_accepted() -> None:
    req = request({**message_event(), "writeKey": KEY}, headers={})
    assert authenticate(source=source(), request=req).accepted


@pytest.mark.parametrize(
    "headers, body, reason",
    [
        (basic("someone-else"), message_event(), "invalid write key"),
        ({}, {**message_event(), "writeKey": "nope"}, "invalid write key"),
        ({"authorization": "Bearer someone-else"}, message_event(), "invalid write key"),
        ({}, message_event(), "missing write key"),
    ],
)
def test_wrong_or_missing_key_is_refused(headers: dict[str, str], body: Any, reason: str) -> None:
    result = authenticate(source=source(), request=request(body, headers=headers))
    assert not result.accepted and result.reason.startswith(reason)


def test_auth_through_the_registry_reaches_the_pushwoosh_plugin() -> None:
    reg = registry()
    ctx = source_context("pushwoosh", KEY, {"events": "Push Sent"}, reg=reg)
    ok = reg.call(
        "authenticate", "source", "pushwoosh", source=ctx, request=request(message_event())
    )
    assert ok.accepted
    [parsed] = reg.call(
        "parse_events",
        "source",
        "pushwoosh",
        source=ctx,
        request=request(message_event("Email Sent")),
    )
    assert parsed.filtered == 'event "Email Sent" is not in this source\'s events list'


# -- parsing and the events list --------------------------------------------------------------
def test_track_is_parsed_with_its_properties() -> None:
    [parsed] = parse_events(source=source(), request=request(message_event()))
    assert isinstance(parsed.event, Track) and parsed.event.event == "Email Sent"
    assert parsed.filtered is None
    raw = msgspec.json.decode(parsed.raw)
    assert raw["properties"] == {
        "message_type": "Email",
        "campaign_id": "CMP-1",
        "device_type": "web",
    }


def test_the_known_events_are_the_documents_seven() -> None:
    assert KNOWN_EVENTS == (
        "Email Sent",
        "Push Sent",
        "SMS Sent",
        "Email Delivered",
        "Push Delivered",
        "SMS Delivered",
        "Email Bounced",
    )


@pytest.mark.parametrize("name", KNOWN_EVENTS)
def test_each_known_event_is_accepted_with_its_properties(name: str) -> None:
    kind = name.split()[0]
    props = {"message_type": kind, "campaign_id": "CMP-7", "device_type": "ios"}
    body = message_event(name, properties=props)
    [parsed] = parse_events(source=source(", ".join(KNOWN_EVENTS)), request=request(body))
    assert parsed.filtered is None
    assert isinstance(parsed.event, Track) and parsed.event.event == name
    assert parsed.event.properties == props
    assert parsed.event.user_id == "user_3078a"
    # Pushwoosh's own setting lists them with "," and no space: the same
    [parsed] = parse_events(source=source(",".join(KNOWN_EVENTS)), request=request(body))
    assert parsed.filtered is None


def test_hwid_arrives_as_anonymous_id() -> None:
    body = message_event("Push Delivered", userId=None, anonymousId="8f65b16df378e7a6")
    [parsed] = parse_events(source=source(), request=request(body))
    assert parsed.event.anonymous_id == "8f65b16df378e7a6" and parsed.event.user_id is None


@pytest.mark.parametrize("events", ["", "   ", " , ,"])
def test_blank_events_list_accepts_everything(events: str) -> None:
    [parsed] = parse_events(source=source(events), request=request(message_event("SMS Bounced?")))
    assert parsed.filtered is None


@pytest.mark.parametrize(
    "name, accepted",
    [
        ("Email Sent", True),
        ("email sent", True),
        ("  PUSH DELIVERED ", True),
        ("SMS Sent", False),
        ("Email", False),
        ("Email Sent, Push Delivered", False),
    ],
)
def test_events_list_matches_trimmed_and_case_insensitive(name: str, accepted: bool) -> None:
    src = source("  email sent ,Push Delivered  ,, ")
    [parsed] = parse_events(source=src, request=request(message_event(name)))
    if accepted:
        assert parsed.filtered is None
    else:
        assert parsed.filtered == f'event "{name}" is not in this source\'s events list'


def test_batch_applies_the_list_per_event() -> None:
    body = {
        "batch": [
            message_event("Email Sent"),
            message_event("SMS Sent"),
            message_event("Email Bounced"),
        ]
    }
    parsed = parse_events(
        source=source("Email Sent, Email Bounced"), request=request(body, "batch")
    )
    assert [p.filtered is None for p in parsed] == [True, False, True]
    assert parsed[1].filtered == 'event "SMS Sent" is not in this source\'s events list'


def test_no_settings_means_no_filter() -> None:
    src = SourceContext("pw", "pushwoosh", KEY)
    [parsed] = parse_events(source=src, request=request(message_event("Anything")))
    assert parsed.filtered is None


@pytest.mark.parametrize("call", ["identify", "page", "group", "nonsense"])
def test_other_calls_are_not_found(call: str) -> None:
    with pytest.raises(NotFound, match=f"takes /v1/track, /v1/batch and /v1/import only, not /v1/{call}"):
        parse_events(source=source(), request=request({"userId": "u", "traits": {}}, call))


def test_import_is_batch() -> None:
    """Segment's server libraries (analytics-java) post to /v1/import; an outside audit."""
    body = {"batch": [message_event("Email Sent"), message_event("Push Delivered")]}
    parsed = parse_events(source=source(), request=request(body, "import"))
    assert [p.event.event for p in parsed] == ["Email Sent", "Push Delivered"]


def test_batch_with_a_non_track_event_refuses_it_alone() -> None:
    body = {"batch": [message_event(), {"type": "identify", "userId": "u", "traits": {}}]}
    good, refused = parse_events(source=source(), request=request(body, "batch"))
    assert isinstance(good, ParsedEvent) and isinstance(refused, RefusedEvent)
    assert refused.reason.startswith("type identify is not accepted")


def test_malformed_track_is_a_bad_request() -> None:
    with pytest.raises(BadRequest, match="malformed JSON"):
        parse_events(source=source(), request=request(b"{not json", "track"))
    with pytest.raises(BadRequest, match="userId or anonymousId is required"):
        parse_events(source=source(), request=request({"event": "Email Sent"}, "track"))
