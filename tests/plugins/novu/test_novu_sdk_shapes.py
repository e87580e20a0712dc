"""hookyard sends Novu exactly what Novu's official Python SDK (``novu-py``) sends.

Two checks: (1) the SDK's own model classes, serialised by the SDK's own ``marshal_json`` (by
alias / camelCase, ``None`` left out), give the same JSON as hookyard's mapped bodies; (2) the SDK
itself and hookyard's deliver hook both send to the same loopback fake, and the recorded requests
(method, path, ``Authorization``, body) are the same.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hookyard.deliveries import Delivery
from hookyard.testing import (
    deliver_with,
    destination_context,
    map_with,
    registry,
    sample_group,
    sample_identify,
    sample_track,
)
from hookyard.testing.fake_server import FakeServer, RecordedRequest

novu_py = pytest.importorskip("novu_py")
from novu_py import models  # noqa: E402
from novu_py.utils import marshal_json  # noqa: E402

REG = registry()
API_KEY = "nv-secret"
SETTINGS: dict[str, Any] = {"api_key": API_KEY, "workflows": {"User Registered": "welcome"}}
TRAITS = {
    "name": "Peter Gibbons",
    "email": "peter@example.com",
    "phone": "+15551234",
    "avatar": "https://example.com/p.png",
    "locale": "en-US",
    "timezone": "Asia/Kolkata",
    "plan": "premium",
    "logins": 5,
    "address": {"city": "Austin"},
    "nickname": None,
}


def hookyard_delivery(raw: dict[str, Any], base_url: str | None = None) -> Delivery:
    settings = {**SETTINGS, **({"base_url": base_url} if base_url else {})}
    [delivery] = map_with(destination_context("novu", settings, reg=REG), raw, REG).deliveries
    return delivery


def hookyard_json(delivery: Delivery) -> str:
    return msgspec.json.encode(delivery.body).decode()


def same_json(ours: str, sdk: str) -> None:
    """Equal JSON, with the keys in the SDK's order at every level."""

    def pairs(text: str) -> Any:
        return json.loads(text, object_pairs_hook=lambda items: [list(i) for i in items])

    assert json.loads(ours) == json.loads(sdk)
    assert pairs(ours) == pairs(sdk)


# -- 1. the SDK's model classes -------------------------------------------------------------
def sdk_subscriber() -> models.CreateSubscriberRequestDto:
    return models.CreateSubscriberRequestDto(
        subscriber_id="97980cfea0067",
        first_name="Peter",
        last_name="Gibbons",
        email="peter@example.com",
        phone="+15551234",
        avatar="https://example.com/p.png",
        locale="en-US",
        timezone="Asia/Kolkata",
        data={"plan": "premium", "logins": 5, "address": {"city": "Austin"}, "nickname": None},
    )


CLEARING_TRAITS = {"email": None, "phone": None, "plan": "pro", "vip": None}
"""An identify clearing attributes: Novu's SDK sends an attribute set to None as ``null``."""


def sdk_clearing_subscriber() -> models.CreateSubscriberRequestDto:
    return models.CreateSubscriberRequestDto(
        subscriber_id="97980cfea0067", email=None, phone=None, data={"plan": "pro", "vip": None}
    )


def sdk_trigger(message_id: str, user: str = "97980cfea0067") -> models.TriggerEventRequestDto:
    return models.TriggerEventRequestDto(
        workflow_id="welcome",
        to=models.SubscriberPayloadDto(
            subscriber_id=user, first_name="Peter", last_name="Gibbons", email="peter@example.com"
        ),
        payload={"plan": "Pro Annual", "accountType": "Facebook"},
        transaction_id=message_id,
    )


def track_raw(user: str = "97980cfea0067") -> dict[str, Any]:
    return sample_track(
        userId=user, context={"traits": {"name": "Peter Gibbons", "email": "peter@example.com"}}
    )


def test_subscriber_upsert_matches_the_sdk_model() -> None:
    ours = hookyard_json(hookyard_delivery(sample_identify(traits=TRAITS)))
    same_json(ours, marshal_json(sdk_subscriber(), models.CreateSubscriberRequestDto))


def test_a_clearing_subscriber_upsert_matches_the_sdk_model() -> None:
    ours = hookyard_json(hookyard_delivery(sample_identify(traits=CLEARING_TRAITS)))
    same_json(ours, marshal_json(sdk_clearing_subscriber(), models.CreateSubscriberRequestDto))


def test_trigger_matches_the_sdk_model() -> None:
    raw = track_raw()
    ours = hookyard_json(hookyard_delivery(raw))
    same_json(ours, marshal_json(sdk_trigger(raw["messageId"]), models.TriggerEventRequestDto))


def test_bulk_trigger_matches_the_sdk_model() -> None:
    raws = [track_raw("u1"), track_raw("u2")]
    ours = msgspec.json.encode({"events": [hookyard_delivery(r).body for r in raws]}).decode()
    sdk = models.BulkTriggerEventDto(
        events=[sdk_trigger(r["messageId"], r["userId"]) for r in raws]
    )
    same_json(ours, marshal_json(sdk, models.BulkTriggerEventDto))


def test_topic_subscription_matches_the_sdk_model() -> None:
    ours = hookyard_json(hookyard_delivery(sample_group()))
    sdk = models.CreateTopicSubscriptionsRequestDto(
        subscriptions=["97980cfea0067"], name="Acme Inc"
    )
    same_json(ours, marshal_json(sdk, models.CreateTopicSubscriptionsRequestDto))


# -- 2. the SDK on the wire ------------------------------------------------------------------
@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer().start()
    yield server
    server.stop()


def sdk_request(fake: FakeServer, call: Any) -> RecordedRequest:
    """What the SDK sent for ``call(client)`` (its answer parsing does not matter here)."""
    before = len(fake.requests)
    with novu_py.Novu(secret_key=API_KEY, server_url=fake.url) as client:
        try:
            call(client)
        except Exception:  # noqa: BLE001 - the fake's answer is not a real Novu answer
            pass
    [request] = fake.requests[before:]
    return request


def hookyard_request(fake: FakeServer, delivery: Delivery) -> RecordedRequest:
    before = len(fake.requests)
    ctx = destination_context("novu", {**SETTINGS, "base_url": fake.url}, reg=REG)
    deliver_with(ctx, [delivery], REG)
    [request] = fake.requests[before:]
    return request


def same_request(ours: RecordedRequest, sdk: RecordedRequest) -> None:
    assert (ours.method, ours.path, ours.query) == (sdk.method, sdk.path, sdk.query)
    assert ours.headers["authorization"] == sdk.headers["authorization"] == f"ApiKey {API_KEY}"
    assert ours.headers["content-type"].split(";")[0] == sdk.headers["content-type"].split(";")[0]
    same_json(ours.body.decode(), sdk.body.decode())


def test_the_sdk_sends_the_same_subscriber_upsert(fake: FakeServer) -> None:
    sdk = sdk_request(
        fake, lambda c: c.subscribers.create(create_subscriber_request_dto=sdk_subscriber())
    )
    same_request(hookyard_request(fake, hookyard_delivery(sample_identify(traits=TRAITS))), sdk)


def test_the_sdk_sends_the_same_clearing_subscriber_upsert(fake: FakeServer) -> None:
    sdk = sdk_request(fake, lambda c: c.subscribers.create(
        create_subscriber_request_dto=sdk_clearing_subscriber()))
    ours = hookyard_request(fake, hookyard_delivery(sample_identify(traits=CLEARING_TRAITS)))
    same_request(ours, sdk)


def test_the_sdk_sends_the_same_subscriber_patch(fake: FakeServer) -> None:
    """The update sent when a Novu that only creates answers 409 (destination.py)."""
    sdk = sdk_request(fake, lambda c: c.subscribers.patch(
        subscriber_id="97980cfea0067", patch_subscriber_request_dto=models.PatchSubscriberRequestDto(
            email=None, phone=None, data={"plan": "pro", "vip": None})))
    fake.respond(409, {"statusCode": 409, "message": "exists"}, path="/v2/subscribers", times=1)
    before = len(fake.requests)
    ctx = destination_context("novu", {**SETTINGS, "base_url": fake.url}, reg=REG)
    deliver_with(ctx, [hookyard_delivery(sample_identify(traits=CLEARING_TRAITS))], REG)
    [_, ours] = fake.requests[before:]
    same_request(ours, sdk)


def test_the_sdk_sends_the_same_trigger(fake: FakeServer) -> None:
    raw = track_raw()
    sdk = sdk_request(
        fake, lambda c: c.trigger(trigger_event_request_dto=sdk_trigger(raw["messageId"]))
    )
    same_request(hookyard_request(fake, hookyard_delivery(raw)), sdk)


def test_the_sdk_sends_the_same_bulk_trigger(fake: FakeServer) -> None:
    raws = [track_raw("u1"), track_raw("u2")]
    dto = models.BulkTriggerEventDto(
        events=[sdk_trigger(r["messageId"], r["userId"]) for r in raws]
    )
    sdk = sdk_request(fake, lambda c: c.trigger_bulk(bulk_trigger_event_dto=dto))
    fake.respond(201, {"data": [{"acknowledged": True, "status": "processed"}] * 2})
    before = len(fake.requests)
    ctx = destination_context("novu", {**SETTINGS, "base_url": fake.url, "bulk_min": 2},
                              reg=REG)
    deliver_with(ctx, [hookyard_delivery(r) for r in raws], REG)
    [ours] = fake.requests[before:]
    same_request(ours, sdk)


def test_the_sdk_sends_the_same_topic_subscription(fake: FakeServer) -> None:
    dto = models.CreateTopicSubscriptionsRequestDto(
        subscriptions=["97980cfea0067"], name="Acme Inc"
    )
    sdk = sdk_request(
        fake,
        lambda c: c.topics.subscriptions.create(
            topic_key="acme", create_topic_subscriptions_request_dto=dto
        ),
    )
    same_request(hookyard_request(fake, hookyard_delivery(sample_group())), sdk)
