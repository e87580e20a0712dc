"""Novu destination end to end: a real hookyard server delivers to a loopback fake of Novu."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hookyard.errors import ConfigError
from hookyard.testing import sample_group, sample_identify, sample_page, sample_track
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer
from hookyard_novu.mapping import NO_USER_ID

SUBSCRIBERS = "/v2/subscribers"
TRIGGER = "/v1/events/trigger"
BULK = "/v1/events/trigger/bulk"
PROCESSED = {"acknowledged": True, "status": "processed"}
FAST_RETRIES = {"retry_initial_seconds": 0.05, "retry_max_seconds": 2.0, "max_attempts": 4}


def start(
    hookyard_server: Callable[..., HookyardServer], fake: FakeServer,
    deliver_process: bool = False, **settings: Any
) -> HookyardServer:
    server = hookyard_server(
        {
            "server": {"deliver_process": deliver_process},
            "destinations": [
                {
                    "name": "novu",
                    "plugin": "novu",
                    "sources": ["web"],
                    "delivery": FAST_RETRIES,
                    "settings": {
                        "api_key": "nv-secret",
                        "base_url": fake.url,
                        "workflows": {"User Registered": "welcome"},
                        **settings,
                    },
                }
            ],
        }
    )
    if deliver_process:  # its requests go out from the deliver process
        server.wait_for_deliver_process()
    return server


@pytest.fixture
def novu(fake_destination: Callable[[], FakeServer]) -> FakeServer:
    fake = fake_destination()
    fake.respond(201, {"data": {"_id": "x"}})
    fake.respond(201, {"data": PROCESSED}, path=TRIGGER)
    fake.set_handler(
        lambda req: (201, {"data": [PROCESSED] * len(req.json()["events"])}), path=BULK
    )
    return fake


def delivery(server: HookyardServer, message_id: str) -> dict[str, Any]:
    [row] = server.api(f"/api/deliveries?message_id={message_id}").json()["deliveries"]
    return row  # type: ignore[no-any-return]


@pytest.mark.parametrize("deliver_process", [False, True], ids=["worker", "deliver-process"])
def test_identify_track_group_reach_novu_and_the_rest_is_filtered(
    hookyard_server: Callable[..., HookyardServer], novu: FakeServer, deliver_process: bool
) -> None:
    server = start(hookyard_server, novu, deliver_process)
    identify, track, group = sample_identify(), sample_track(), sample_group()
    page, anonymous = sample_page(), sample_track(userId=None, anonymousId="anon-1")
    for path, body in (
        ("/v1/identify", identify),
        ("/v1/track", track),
        ("/v1/group", group),
        ("/v1/page", page),
        ("/v1/track", anonymous),
    ):
        assert server.post(path, body).status_code == 200
    server.wait_idle()
    subscriber, trigger, topic = novu.requests
    assert [r.path for r in novu.requests] == [
        SUBSCRIBERS,
        TRIGGER,
        "/v2/topics/acme/subscriptions",
    ]
    assert {r.headers["authorization"] for r in novu.requests} == {"ApiKey nv-secret"}
    assert subscriber.json() == {
        "subscriberId": "97980cfea0067",
        "firstName": "Peter",
        "lastName": "Gibbons",
        "email": "peter@example.com",
        "timezone": "Asia/Kolkata",
        "data": {"language": "hi", "plan": "premium", "logins": 5},
    }
    assert trigger.json() == {
        "name": "welcome",
        "to": {"subscriberId": "97980cfea0067"},
        "payload": {"plan": "Pro Annual", "accountType": "Facebook"},
        "transactionId": track["messageId"],
    }
    assert topic.json() == {"subscriptions": ["97980cfea0067"], "name": "Acme Inc"}
    for sent in (identify, track, group):
        row = delivery(server, sent["messageId"])
        assert (row["state"], row["attempts"]) == ("done", 1)
    assert delivery(server, anonymous["messageId"])["last_error"] == NO_USER_ID
    row = delivery(server, page["messageId"])
    assert row["state"] == "filtered" and "not page" in row["last_error"]


def test_rate_limit_with_retry_after_then_success(
    hookyard_server: Callable[..., HookyardServer], novu: FakeServer
) -> None:
    novu.fail(429, times=1, retry_after="1", path=SUBSCRIBERS)
    server = start(hookyard_server, novu)
    body = sample_identify()
    assert server.post("/v1/identify", body).status_code == 200
    first, second = novu.wait_for(2, path=SUBSCRIBERS)
    assert second.received_at - first.received_at >= 0.9  # Retry-After: 1 was honoured
    assert first.body == second.body
    server.wait_idle()
    row = delivery(server, body["messageId"])
    assert (row["state"], row["attempts"]) == ("done", 2)
    assert [(a["outcome"], a["http_status"]) for a in row["attempts_log"]] == [
        ("retryable", 429),
        ("ok", 201),
    ]


def test_server_error_then_success(
    hookyard_server: Callable[..., HookyardServer], novu: FakeServer
) -> None:
    novu.fail(500, times=1, path=TRIGGER)
    server = start(hookyard_server, novu)
    body = sample_track()
    assert server.post("/v1/track", body).status_code == 200
    first, second = novu.wait_for(2, path=TRIGGER)
    assert first.json()["transactionId"] == second.json()["transactionId"] == body["messageId"]
    server.wait_idle()
    row = delivery(server, body["messageId"])
    assert (row["state"], row["attempts"]) == ("done", 2)


def test_client_error_goes_to_dead_letters_at_once(
    hookyard_server: Callable[..., HookyardServer], novu: FakeServer
) -> None:
    novu.respond(400, {"statusCode": 400, "message": "email must be an email"}, path=SUBSCRIBERS)
    server = start(hookyard_server, novu)
    body = sample_identify(traits={"email": "not-an-email"})
    assert server.post("/v1/identify", body).status_code == 200
    server.wait_idle()
    assert len(novu.requests) == 1  # never retried
    [dead] = server.api("/api/dead-letters?destination=novu").json()["items"]
    assert (dead["message_id"], dead["kind"], dead["last_status"]) == (
        body["messageId"],
        "subscriber",
        400,
    )
    assert dead["last_error"] == "HTTP 400: email must be an email"


def test_queued_triggers_go_as_one_bulk_trigger(
    hookyard_server: Callable[..., HookyardServer], novu: FakeServer
) -> None:
    server = start(hookyard_server, novu, bulk_min=2)
    tracks = [sample_track(userId=f"user-{i}") for i in range(5)]
    tracks.append(sample_track(userId="user-0", event="Nope"))  # unmapped: skipped
    assert server.post("/v1/batch", {"batch": tracks}).status_code == 200
    server.wait_idle()
    [bulk] = novu.requests
    assert bulk.path == BULK and bulk.headers["authorization"] == "ApiKey nv-secret"
    events = bulk.json()["events"]
    assert [(e["to"]["subscriberId"], e["transactionId"]) for e in events] == [
        (t["userId"], t["messageId"]) for t in tracks[:5]
    ]
    for t in tracks[:5]:
        assert delivery(server, t["messageId"])["state"] == "done"
    assert (
        "no Novu workflow mapped for event 'Nope'"
        in delivery(server, tracks[5]["messageId"])["last_error"]
    )


def test_events_held_back_behind_a_failing_one_count_no_attempts(
    hookyard_server: Callable[..., HookyardServer], novu: FakeServer
) -> None:
    """A user's identify fails until it is a dead letter; the user's tracks, held back in the
    same batches meanwhile, were never sent, yet each such round counted as an attempt: they
    became dead letters too ("gave up after 3 attempts: not sent..."). Now only the identify
    runs out of attempts, and the tracks go once it is dead (an outside delivery audit)."""
    novu.set_handler(lambda req: (503, {"message": "busy"}) if req.json()["subscriberId"] == "bad"
                     else (201, {"data": {"_id": "x"}}), path=SUBSCRIBERS)
    server = hookyard_server({"destinations": [{
        "name": "novu", "plugin": "novu", "sources": ["web"],
        "delivery": {"retry_initial_seconds": 0.05, "retry_max_seconds": 0.2, "max_attempts": 3,
                     "batch_size": 10},
        "settings": {"api_key": "nv-secret", "base_url": novu.url,
                     "workflows": {"User Registered": "welcome"}},
    }]})
    ident = sample_identify(userId="bad")
    tracks = [sample_track(userId="bad") for _ in range(3)]
    assert server.post("/v1/batch", {"batch": [ident, *tracks]}).status_code == 200
    server.wait_idle(timeout=30)
    dead = delivery(server, ident["messageId"])
    assert dead["state"] == "dead" and dead["attempts"] == 3
    for t in tracks:
        row = delivery(server, t["messageId"])
        assert row["state"] == "done", row
        assert [a["outcome"] for a in row["attempts_log"]] == ["ok"], row


def test_unmapped_event_under_the_error_policy_is_a_dead_letter(
    hookyard_server: Callable[..., HookyardServer], novu: FakeServer
) -> None:
    server = start(hookyard_server, novu, send_unmapped="error")
    body = sample_track(event="Nope")
    assert server.post("/v1/track", body).status_code == 200
    server.wait_idle()
    assert novu.requests == []
    row = delivery(server, body["messageId"])
    assert (row["state"], row["kind"]) == ("dead", "unmapped")
    assert row["last_error"] == "no Novu workflow mapped for event 'Nope' (settings.workflows)"


def test_missing_api_key_refuses_to_start(
    hookyard_server: Callable[..., HookyardServer], novu: FakeServer
) -> None:
    with pytest.raises(ConfigError, match="api_key"):
        hookyard_server(
            {
                "destinations": [
                    {
                        "name": "novu",
                        "plugin": "novu",
                        "sources": ["web"],
                        "settings": {"base_url": novu.url},
                    }
                ]
            }
        )
