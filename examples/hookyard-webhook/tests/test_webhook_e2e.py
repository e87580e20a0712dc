"""End to end: events sent to a real hookyard server reach a fake receiver as signed batches."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from hookyard.testing import ANY, assert_request, sample_identify, sample_track
from hookyard.testing.fake_server import FakeServer
from hookyard_webhook import verify

SECRET = "whsec-0123456789abcdef"
SIGNED = {"content-type": "application/json", "webhook-timestamp": ANY, "webhook-signature": ANY}


def config(url: str) -> dict[str, Any]:
    return {
        "destinations": [
            {
                "name": "hook",
                "plugin": "webhook",
                "sources": ["web"],
                "settings": {"url": url, "secret": SECRET},
                "delivery": {"retry_initial_seconds": 0.05, "retry_max_seconds": 0.1},
            }
        ]
    }


def check_signature(req: Any) -> list[dict[str, Any]]:
    assert_request(req, method="POST", path="/hook", headers=SIGNED)
    assert verify(
        SECRET, req.body, req.headers["webhook-timestamp"], req.headers["webhook-signature"]
    )
    events: list[dict[str, Any]] = req.json()["batch"]
    return events


def test_events_arrive_signed(
    hookyard_server: Callable[..., Any], fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    server = hookyard_server(config(fake.url + "/hook"))
    batch = [sample_identify(userId=f"u{i}") for i in range(3)] + [sample_track(userId="u0")]
    assert server.post("/v1/batch", {"batch": batch}).status_code == 200
    server.wait_idle()
    received = [e for req in fake.requests_to("/hook") for e in check_signature(req)]
    assert sorted(e["messageId"] for e in received) == sorted(e["messageId"] for e in batch)
    assert {e["messageId"]: e["userId"] for e in received} == {
        e["messageId"]: e["userId"] for e in batch
    }


def test_a_failed_batch_is_retried_with_a_fresh_signature(
    hookyard_server: Callable[..., Any], fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    fake.fail(503, times=1)
    server = hookyard_server(config(fake.url + "/hook"))
    event = sample_track()
    assert server.post("/v1/track", event).status_code == 200
    first, second = fake.wait_for(2, path="/hook")
    assert check_signature(first) == check_signature(second)
    assert second.json()["batch"][0]["messageId"] == event["messageId"]
    assert int(second.headers["webhook-timestamp"]) >= int(first.headers["webhook-timestamp"])
    server.wait_idle()
    answer = server.api(f"/api/deliveries?message_id={event['messageId']}").json()
    [delivery] = answer["deliveries"]
    assert [a["outcome"] for a in delivery["attempts_log"]] == ["retryable", "ok"]
