"""End to end through a real hookyard server: the Pushwoosh source shares /v1/{call} with the
Segment source (the write key picks the owner), its events reach other destinations (the profile
store), and the Pushwoosh destination delivers to a loopback fake of the Pushwoosh API, including
Pushwoosh's error-in-a-200-body answers."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
from hookyard.testing import sample_identify, sample_track
from hookyard.testing.fake_server import FakeServer, RecordedRequest
from hookyard.testing.server import HookyardServer, basic_auth

WEB_KEY = "web-write-key"
PW_KEY = "pw-write-key"
OK = {"status_code": 200, "status_message": "OK", "response": None}
SET_TAGS, POST_EVENT = "/json/1.3/setTags", "/json/1.3/postEvent"
FAST_RETRIES = {"retry_initial_seconds": 0.05, "retry_max_seconds": 1.0, "max_attempts": 4}


def start(
    hookyard_server: Callable[..., HookyardServer],
    fake: FakeServer,
    pw_events: str = "Email Sent, Push Delivered",
    deliver_process: bool = False,
) -> HookyardServer:
    server = hookyard_server(
        {
            "server": {"deliver_process": deliver_process},
            "sources": [
                {"name": "web", "plugin": "segment", "write_key": WEB_KEY},
                {
                    "name": "pushwoosh-events",
                    "plugin": "pushwoosh",
                    "write_key": PW_KEY,
                    "settings": {"events": pw_events},
                },
            ],
            "destinations": [
                {
                    "name": "pushwoosh",
                    "plugin": "pushwoosh",
                    "sources": ["web", "pushwoosh-events"],
                    "delivery": FAST_RETRIES,
                    "settings": {
                        "api_key": "env:HY_TEST_PUSHWOOSH_KEY",
                        "application": "AAAAA-BBBBB",
                        "base_url": fake.url,
                    },
                },
            ],
        }
    )
    if deliver_process:  # its requests go out from the deliver process
        server.wait_for_deliver_process()
    return server


@pytest.fixture
def pushwoosh(
    fake_destination: Callable[[], FakeServer], monkeypatch: pytest.MonkeyPatch
) -> FakeServer:
    monkeypatch.setenv("HY_TEST_PUSHWOOSH_KEY", "pw-token")
    fake = fake_destination()
    fake.respond(200, OK)
    return fake


def delivery(server: HookyardServer, message_id: str) -> dict[str, Any]:
    [row] = server.api(f"/api/deliveries?message_id={message_id}").json()["deliveries"]
    return row  # type: ignore[no-any-return]


def stored(server: HookyardServer, message_id: str) -> dict[str, Any]:
    [row] = server.api(f"/api/events?message_id={message_id}").json()["items"]
    return row  # type: ignore[no-any-return]


@pytest.mark.parametrize("deliver_process", [False, True], ids=["worker", "deliver-process"])
def test_sources_share_the_path_and_events_reach_pushwoosh(
    hookyard_server: Callable[..., HookyardServer], pushwoosh: FakeServer, deliver_process: bool
) -> None:
    server = start(hookyard_server, pushwoosh, deliver_process=deliver_process)
    post = httpx.Client(base_url=server.url, timeout=10)
    identify = {
        "userId": "u1",
        "traits": {"language": "en-US", "logins": 3},
        "timestamp": "2026-01-01T00:00:00Z",
    }
    assert post.post("/v1/identify", json=identify, headers=basic_auth(WEB_KEY)).status_code == 200
    sent = {
        "userId": "u1",
        "event": "email sent",
        "properties": {"campaign_id": "CMP-1"},
        "timestamp": "2026-01-01T00:00:00Z",
        "messageId": "pw-sent-1",
    }
    assert post.post("/v1/track", json=sent, headers=basic_auth(PW_KEY)).status_code == 200
    other = {"userId": "u1", "event": "SMS Sent", "messageId": "pw-sms-1"}
    answer = post.post("/v1/track", json=other, headers=basic_auth(PW_KEY))
    assert (answer.status_code, answer.json()) == (200, {"success": True})  # stored, not routed
    refused = post.post("/v1/identify", json=identify, headers=basic_auth(PW_KEY))
    assert refused.status_code == 404
    assert post.post("/v1/track", json=sent, headers=basic_auth("nobody-key")).status_code == 401
    post.close()
    server.wait_idle()

    tags, event = pushwoosh.requests  # one user: in order, and nothing for "SMS Sent"
    assert (tags.path, event.path) == (SET_TAGS, POST_EVENT)
    assert tags.headers["authorization"] == event.headers["authorization"] == "Token pw-token"
    assert tags.json() == {
        "request": {
            "application": "AAAAA-BBBBB",
            "userId": "u1",
            "tags": {"Language": "en", "logins": 3},
        }
    }
    assert event.json()["request"] == {
        "application": "AAAAA-BBBBB",
        "event": "email sent",
        "attributes": {"campaign_id": "CMP-1"},
        "timestampUTC": 1767225600,
        "userId": "u1",
    }
    filtered = stored(server, "pw-sms-1")
    assert (filtered["source"], filtered["event"]["event"]) == ("pushwoosh-events", "SMS Sent")
    assert filtered["filtered"] == 'event "SMS Sent" is not in this source\'s events list'
    assert server.api("/api/deliveries?message_id=pw-sms-1").json()["deliveries"] == []
    assert stored(server, "pw-sent-1")["filtered"] is None
    assert delivery(server, "pw-sent-1")["state"] == "done"


def test_without_user_id_the_device_id_or_anonymous_id_is_the_hwid(
    hookyard_server: Callable[..., HookyardServer], pushwoosh: FakeServer
) -> None:
    server = start(hookyard_server, pushwoosh)
    device = sample_track(userId=None, anonymousId="anon-1", context={"device": {"id": "HW-1"}})
    hwid_only = sample_track(userId=None, anonymousId="8f65b16df378e7a6", properties=None)
    for body in (device, hwid_only):
        assert server.post("/v1/track", body, write_key=WEB_KEY).status_code == 200
    server.wait_idle()
    requests = {r.json()["request"]["hwid"]: r.json()["request"] for r in pushwoosh.requests}
    assert set(requests) == {"HW-1", "8f65b16df378e7a6"}
    assert all("userId" not in r for r in requests.values())
    assert requests["8f65b16df378e7a6"]["attributes"] == {}  # no properties: still sent, empty


def _answer(req: RecordedRequest) -> tuple[int, Any]:
    """Pushwoosh's answers, by user: errors in an HTTP 200 body, as its JSON API sends them."""
    user = req.json()["request"].get("userId")
    if user == "arg-user":
        return 200, {"status_code": 210, "status_message": "Argument error", "response": None}
    if user == "bad-key-user":
        return 200, {
            "status_code": 401,
            "status_message": "Wrong API access token",
            "response": None,
        }
    return 200, OK


def test_errors_in_a_200_body_are_classified(
    hookyard_server: Callable[..., HookyardServer], pushwoosh: FakeServer
) -> None:
    pushwoosh.set_handler(_answer)
    # rate limiting, answered with HTTP 200 too: once, then the same request goes through
    pushwoosh.respond(
        200, {"status_code": 429, "status_message": "Too many requests"}, path=POST_EVENT, times=1
    )
    server = start(hookyard_server, pushwoosh)
    argument = sample_identify(userId="arg-user")
    bad_key = sample_identify(userId="bad-key-user")
    limited = sample_track(userId="rate-user")
    for path, body in (
        ("/v1/identify", argument),
        ("/v1/identify", bad_key),
        ("/v1/track", limited),
    ):
        assert server.post(path, body, write_key=WEB_KEY).status_code == 200
    server.wait_idle()

    for body, error in (
        (argument, "Pushwoosh status_code 210: Argument error"),
        (bad_key, "Pushwoosh status_code 401: Wrong API access token"),
    ):
        row = delivery(server, body["messageId"])
        assert (row["state"], row["attempts"], row["last_error"]) == ("dead", 1, error)
    dead = server.api("/api/dead-letters?destination=pushwoosh").json()["items"]
    assert {(d["message_id"], d["kind"], d["last_status"]) for d in dead} == {
        (argument["messageId"], "setTags", 200),
        (bad_key["messageId"], "setTags", 200),
    }
    assert any("Argument error" in (d["response_body"] or "") for d in dead)

    row = delivery(server, limited["messageId"])
    assert (row["state"], row["attempts"]) == ("done", 2)
    assert [(a["outcome"], a["http_status"]) for a in row["attempts_log"]] == [
        ("retryable", 200),
        ("ok", 200),
    ]
    first, second = pushwoosh.requests_to(POST_EVENT)
    assert first.body == second.body  # the same request, retried


def test_pushwoosh_message_events_reach_the_profile_store(
    hookyard_server: Callable[..., HookyardServer],
) -> None:
    server = hookyard_server(
        {
            "sources": [
                {
                    "name": "pw",
                    "plugin": "pushwoosh",
                    "write_key": PW_KEY,
                    "settings": {"events": " email sent ,PUSH DELIVERED, Email Bounced"},
                }
            ],
            "destinations": [{"name": "profiles", "plugin": "profiles", "sources": ["pw"]}],
        }
    )

    def message(name: str, **extra: Any) -> dict[str, Any]:
        return {
            "type": "track",
            "userId": "user_3078a",
            "event": name,
            "properties": {
                "message_type": name.split()[0],
                "campaign_id": "CMP-9",
                "device_type": "android",
            },
            "timestamp": "2026-01-01T00:00:00.000Z",
            "messageId": f"m-{name}",
            **extra,
        }

    batch = [
        message("Email Sent"),
        message("Push Delivered"),
        message("SMS Sent"),
        message("Email Bounced"),
    ]
    assert server.post("/v1/batch", {"batch": batch}, write_key=PW_KEY).status_code == 200
    server.wait_idle()
    events = server.api("/api/subscribers/user_3078a/events").json()["events"]
    got = {e["event"]: e for e in events}
    assert set(got) == {"Email Sent", "Push Delivered", "Email Bounced"}
    assert stored(server, "m-SMS Sent")["filtered"] is not None
    for name, event in got.items():  # the properties and ids came along
        assert event["properties"] == message(name)["properties"]
        assert event["messageId"] == f"m-{name}"
