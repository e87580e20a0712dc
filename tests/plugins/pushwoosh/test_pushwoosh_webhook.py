"""The Pushwoosh source on ``/connector/pushwoosh/``: Pushwoosh's own Webhook integration, which
posts one JSON object per message event to a URL and sends no header (the vendor audit: the
Segment export could not reach hookyard, and this body was refused everywhere)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest
from hookyard.connectors import IngestRequest, ParsedEvent, RefusedEvent, SourceContext
from hookyard.errors import BadRequest
from hookyard.testing.server import HookyardServer
from hookyard_pushwoosh.plugin import authenticate, parse_events
from hookyard_pushwoosh.settings import PushwooshSourceSettings

KEY = "pw-write-key-123"
PATH = "/connector/pushwoosh/"


def body(**extra: Any) -> dict[str, Any]:
    """A body as Pushwoosh's Webhook integration documents it."""
    return {"event_name": "Email Sent", "message_id": 2000003258,
            "message_code": "B780-1234563C-12340375", "campaign_id": 960001,
            "platform": "Email", "application_code": "3ABCD-12341", "hwid": "ann@example.com",
            "user_id": "1500008", "payload": "Welcome aboard", **extra}


def source(events: str = "") -> SourceContext:
    return SourceContext("pw", "pushwoosh", KEY, PushwooshSourceSettings(events=events))


def request(data: Any, query: dict[str, str] | None = None,
            headers: dict[str, str] | None = None) -> IngestRequest:
    raw = data if isinstance(data, bytes) else msgspec.json.encode(data)
    return IngestRequest("POST", PATH, headers or {}, raw,
                         query={"writeKey": KEY} if query is None else query)


def parsed(data: Any, events: str = "") -> list[ParsedEvent | RefusedEvent]:
    return parse_events(source=source(events), request=request(data))


def test_authenticate_takes_the_write_key_from_the_url() -> None:
    assert authenticate(source=source(), request=request(body())).accepted
    wrong = authenticate(source=source(), request=request(body(), {"writeKey": "nope"}))
    assert (wrong.accepted, wrong.reason) == (False, "invalid write key")
    missing = authenticate(source=source(), request=request(body(), {}))
    assert not missing.accepted and "?writeKey=<write key>" in (missing.reason or "")
    bearer = request(body(), {}, {"authorization": f"Bearer {KEY}"})
    assert authenticate(source=source(), request=bearer).accepted


def test_parse_events_makes_a_track_of_each_webhook_object() -> None:
    [item] = parsed(body())
    assert isinstance(item, ParsedEvent) and item.filtered is None
    raw = msgspec.json.decode(item.raw)
    assert (raw["type"], raw["event"], raw["userId"]) == ("track", "Email Sent", "1500008")
    assert raw["properties"]["message_code"] == "B780-1234563C-12340375"
    assert raw["properties"]["payload"] == "Welcome aboard"
    assert raw["messageId"].startswith("pw-")
    # the same body sent again is the same event (stored once); another one is not
    [again] = parsed(body())
    [other] = parsed(body(event_name="Email Opened"))
    assert isinstance(again, ParsedEvent) and isinstance(other, ParsedEvent)
    assert msgspec.json.decode(again.raw)["messageId"] == raw["messageId"]
    assert msgspec.json.decode(other.raw)["messageId"] != raw["messageId"]


def test_without_a_user_id_the_hwid_is_the_anonymous_id() -> None:
    [item] = parsed(body(user_id="", hwid="HW-1"))
    assert isinstance(item, ParsedEvent)
    raw = msgspec.json.decode(item.raw)
    assert "userId" not in raw and raw["anonymousId"] == "HW-1"
    [numeric] = parsed(body(user_id=42))
    assert isinstance(numeric, ParsedEvent) and msgspec.json.decode(numeric.raw)["userId"] == "42"


def test_the_events_list_applies_and_bad_objects_are_refused_alone() -> None:
    [kept, skipped] = parsed([body(), body(event_name="Email Bounced")], events="Email Sent")
    assert isinstance(kept, ParsedEvent) and kept.filtered is None
    assert isinstance(skipped, ParsedEvent)
    assert skipped.filtered == 'event "Email Bounced" is not in this source\'s events list'
    [no_name, no_user] = parsed([body(event_name=""), body(user_id=None, hwid=None)])
    assert isinstance(no_name, RefusedEvent) and "event_name is required" in no_name.reason
    assert isinstance(no_user, RefusedEvent) and "user_id or hwid" in no_user.reason


def test_a_write_key_in_the_body_is_neither_stored_nor_forwarded() -> None:
    """Fuzz audit: a ``writeKey`` field was kept in the event's properties (inbox, read API,
    every destination), where the Segment paths drop it."""
    [item] = parsed(body(writeKey=KEY, write_key=KEY))
    assert isinstance(item, ParsedEvent) and KEY.encode() not in item.raw
    [plain] = parsed(body())
    assert isinstance(plain, ParsedEvent)
    assert msgspec.json.decode(item.raw)["messageId"] == msgspec.json.decode(plain.raw)["messageId"]


def test_the_body_is_read_as_the_tracking_api_reads_one() -> None:
    """Fuzz audit: a bare NaN, a lone UTF-16 surrogate and a byte order mark were refused here
    and taken on /v1; a user_id of 12.5 was 'no user', one of true was dropped unseen, and a
    too long one was refused naming $.userId."""
    text = msgspec.json.encode(body()).replace(b'"payload":"Welcome aboard"',
                                               b'"payload":"\\ud83c","score":NaN')
    [item] = parsed(b"\xef\xbb\xbf" + text)
    assert isinstance(item, ParsedEvent)
    props = msgspec.json.decode(item.raw)["properties"]
    assert (props["payload"], props["score"]) == ("\ufffd", None)
    [decimal] = parsed(body(user_id=12.5))
    assert isinstance(decimal, ParsedEvent) and msgspec.json.decode(decimal.raw)["userId"] == "12.5"
    [true, long] = parsed([body(user_id=True), body(user_id="u" * 600)])
    assert isinstance(true, RefusedEvent) and true.reason == "user_id must be text or a number, not bool"
    assert isinstance(long, RefusedEvent) and long.reason == "user_id is longer than 512 characters"


@pytest.mark.parametrize("levels", [150, 5_000])
def test_an_object_nested_too_deeply_is_refused_alone(levels: int) -> None:
    """The tracking API's limit (hookyard.nesting): 150 levels were stored, and past the
    decoder's own limit the whole body was a 400."""
    deep = msgspec.json.encode(body(payload="__DEEP__")).replace(
        b'"__DEEP__"', b"[" * levels + b"]" * levels)
    stored, refused = parsed(b"[" + msgspec.json.encode(body()) + b"," + deep + b"]")
    assert isinstance(stored, ParsedEvent)
    assert isinstance(refused, RefusedEvent) and "nested too deeply" in refused.reason
    if levels > 1_000:  # re-check: an object's own "batch" field was emptied and stored
        alone = msgspec.json.encode(body(batch="__DEEP__")).replace(
            b'"__DEEP__"', b"[0, " + b"[" * levels + b"]" * levels + b"]")
        with pytest.raises(BadRequest, match="nested too deeply"):
            parsed(alone)


@pytest.mark.parametrize("data", [b"{", b"[]", b"3", b'"x"', b"\xff"])
def test_a_body_that_is_not_an_object_is_a_bad_request(data: bytes) -> None:
    with pytest.raises(BadRequest):
        parsed(data)


def test_pushwoosh_webhook_end_to_end(hookyard_server: Callable[..., HookyardServer]) -> None:
    server = hookyard_server({
        "sources": [{"name": "pw", "plugin": "pushwoosh", "write_key": KEY,
                     "settings": {"events": "Email Sent, Email Opened"}}],
        "destinations": [{"name": "profiles", "plugin": "profiles", "sources": ["pw"]}],
    })
    url = f"{server.url}{PATH}?writeKey={KEY}"
    for _ in range(2):  # Pushwoosh sending one twice: stored once
        answer = httpx.post(url, json=body())
        assert answer.status_code == 200, answer.text
    assert httpx.post(url, json=body(event_name="Email Bounced")).status_code == 200
    assert httpx.post(f"{server.url}{PATH}?writeKey=wrong", json=body()).status_code == 401
    missing = httpx.post(f"{server.url}{PATH}", json=body())
    assert missing.status_code == 401 and "writeKey" in missing.json()["error"]
    assert httpx.post(url, content=b"{").status_code == 400
    for twice in (f"writeKey=wrong&writeKey={KEY}", f"writeKey={KEY}&writeKey=wrong"):
        # fuzz audit: the last one was taken, so the order decided between 200 and 401
        refused = httpx.post(f"{server.url}{PATH}?{twice}", json=body(payload="twice"))
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"] == "query parameter 'writeKey' is given more than once"
    other = httpx.post(f"{url}&x=1&x=2", json=body(payload="other"))  # not the key's: taken
    assert other.status_code == 200, other.text
    server.wait_idle()
    events = server.api("/api/subscribers/1500008/events").json()["events"]
    assert [e["event"] for e in events] == ["Email Sent"] * 2  # Bounced: not in the list
    assert {e["properties"]["payload"] for e in events} == {"Welcome aboard", "other"}
    logged = server.api("/api/logs").json()["items"]
    assert all("writeKey" not in item["path"] and KEY not in str(item) for item in logged)
