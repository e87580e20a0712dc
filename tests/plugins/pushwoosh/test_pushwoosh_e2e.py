"""End to end through a real hookyard server: the Pushwoosh source shares /v1/{call} with the
Segment source (the write key picks the owner) and the Pushwoosh destination delivers to a
loopback fake of the Pushwoosh API."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from typing import Any

import httpx
from hookyard.testing.fake_server import FakeServer

WEB_KEY = "web-write-key"
PW_KEY = "pw-write-key"


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def test_sources_share_the_path_and_events_reach_pushwoosh(
    hookyard_server: Callable[..., Any], fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    fake.respond(200, {"status_code": 200, "status_message": "OK", "response": None})
    server = hookyard_server({
        "sources": [
            {"name": "web", "plugin": "segment", "write_key": WEB_KEY},
            {"name": "pushwoosh-events", "plugin": "pushwoosh", "write_key": PW_KEY,
             "settings": {"events": "Email Sent, Push Delivered"}},
        ],
        "destinations": [
            {"name": "pushwoosh", "plugin": "pushwoosh", "sources": ["web", "pushwoosh-events"],
             "settings": {"api_key": "pw-token", "application": "AAAAA-BBBBB",
                          "base_url": fake.url}},
        ],
    })
    post = httpx.Client(base_url=server.url, timeout=10)
    identify = {"userId": "u1", "traits": {"language": "en-US", "logins": 3},
                "timestamp": "2026-01-01T00:00:00Z"}
    assert post.post("/v1/identify", json=identify, headers=basic(WEB_KEY)).status_code == 200
    sent = {"userId": "u1", "event": "email sent", "properties": {"campaign_id": "CMP-1"},
            "timestamp": "2026-01-01T00:00:00Z"}
    assert post.post("/v1/track", json=sent, headers=basic(PW_KEY)).status_code == 200
    other = {"userId": "u1", "event": "SMS Sent"}
    assert post.post("/v1/track", json=other, headers=basic(PW_KEY)).status_code == 200  # stored
    refused = post.post("/v1/identify", json=identify, headers=basic(PW_KEY))
    assert refused.status_code == 404
    assert post.post("/v1/track", json=sent, headers=basic("nobody-key")).status_code == 401

    tags, event = fake.wait_for(2, timeout=15)
    assert (tags.path, event.path) == ("/json/1.3/setTags", "/json/1.3/postEvent")
    assert tags.headers["authorization"] == "Token pw-token"
    assert tags.json() == {"request": {"application": "AAAAA-BBBBB", "userId": "u1",
                                       "tags": {"Language": "en", "logins": 3}}}
    assert event.json()["request"] == {
        "application": "AAAAA-BBBBB", "event": "email sent",
        "attributes": {"campaign_id": "CMP-1"}, "timestampUTC": 1767225600, "userId": "u1",
    }
    time.sleep(0.5)  # the filtered "SMS Sent" would come next, for the same user
    assert len(fake.requests) == 2
    post.close()
