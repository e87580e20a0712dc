"""Novu destination, hook level: the ``deliver`` hook against a real loopback fake of Novu."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hookyard.deliveries import Delivery, DeliveryResult
from hookyard.http import HttpClient
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
from hookyard_novu.destination import HELD_BACK, decode, error_message, trigger_item_result

SUBSCRIBERS = "/v2/subscribers"
TRIGGER = "/v1/events/trigger"
BULK = "/v1/events/trigger/bulk"
PROCESSED = {"acknowledged": True, "status": "processed"}
DUPLICATE = (
    "transactionId property is not unique, please make sure all triggers have a "
    "unique transactionId"
)


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer().start()
    server.respond(201, {"data": {"_id": "x"}})
    yield server
    server.stop()


REG = registry()  # one plugin manager for the module: building one loads every entry point


def ctx(fake: FakeServer, **settings: Any) -> Any:
    return destination_context(
        "novu",
        {
            "api_key": "nv-secret",
            "base_url": fake.url,
            "workflows": {"User Registered": "welcome"},
            **settings,
        },
        reg=REG,
    )


def d(fake: FakeServer, raw: dict[str, Any], **settings: Any) -> Delivery:
    [delivery] = map_with(ctx(fake, **settings), raw, REG).deliveries
    return delivery


def identify(fake: FakeServer, user: str = "u1") -> Delivery:
    return d(fake, sample_identify(userId=user))


def track(fake: FakeServer, user: str = "u1", message_id: str | None = None) -> Delivery:
    raw = sample_track(userId=user)
    if message_id:
        raw["messageId"] = message_id
    return d(fake, raw)


def send(
    fake: FakeServer, deliveries: list[Delivery], client: HttpClient | None = None, **settings: Any
) -> list[DeliveryResult]:
    return deliver_with(ctx(fake, **settings), deliveries, REG, client=client)


def bulk_answer(*items: dict[str, Any]) -> Any:
    return lambda req: (201, {"data": list(items)})


def outcomes(results: list[DeliveryResult]) -> list[str]:
    return [r.outcome for r in results]


# -- answers ----------------------------------------------------------------------------------
def test_decode_and_error_message() -> None:
    assert decode(b'{"data": [1]}') == [1]
    assert decode(b'{"data": 1, "x": 2}') == {"data": 1, "x": 2}
    assert decode(b"") is None and decode(b"<html>") is None
    assert error_message(b'{"statusCode": 422, "message": ["a", "b"]}') == "a; b"
    assert error_message(b'{"message": ""}') is None and error_message(b"[]") is None


def test_error_message_of_a_validation_error_names_the_fields() -> None:
    """novu-py's ValidationErrorDto: the details are under ``errors`` (``message`` optional)."""
    errors = {"to.email": {"messages": ["to.email must be an email"], "value": "nope"},
              "payload": {"messages": ["must be an object"]}}
    body = msgspec.json.encode({"statusCode": 422, "path": "/v1/events/trigger", "errors": errors})
    assert error_message(body) == "to.email must be an email; payload: must be an object"
    generic = msgspec.json.encode({"statusCode": 422, "message": "Validation Error", "errors": errors})
    assert error_message(generic) == (
        "Validation Error; to.email must be an email; payload: must be an object")
    assert error_message(b'{"errors": {"x": {"value": 1}}, "message": "m"}') == "m"
    # novu-py's PayloadValidationExceptionDto (the vendor audit: only "Payload validation
    # failed" was kept, the field's own message was not)
    listed = {"statusCode": 400, "message": "Payload validation failed", "errors": [
        {"field": "plan", "message": "must be string", "value": 3, "schemaPath": "#/p"},
        {"field": "data.seats", "message": "data.seats must be integer"}]}
    assert error_message(msgspec.json.encode(listed)) == (
        "Payload validation failed; plan: must be string; data.seats must be integer")


def test_trigger_item_results() -> None:
    assert trigger_item_result(PROCESSED, 201).outcome == "ok"
    dup = trigger_item_result({"acknowledged": True, "status": "error", "error": [DUPLICATE]}, 201)
    assert dup.outcome == "ok"
    bad = trigger_item_result(
        {"acknowledged": True, "status": "error", "error": ["workflow_not_found"]}, 201
    )
    assert (bad.outcome, bad.error) == ("permanent", "Novu trigger error: workflow_not_found")
    inactive = trigger_item_result({"acknowledged": True, "status": "trigger_not_active"}, 201)
    assert (inactive.outcome, inactive.error) == ("permanent", "Novu trigger trigger_not_active")
    assert trigger_item_result("??", 201).outcome == "retryable"


# -- single requests ----------------------------------------------------------------------
def test_subscriber_upsert_with_api_key(fake: FakeServer) -> None:
    [result] = send(fake, [identify(fake)])
    assert (result.outcome, result.http_status) == ("ok", 201)
    [req] = fake.requests
    assert (req.method, req.path) == ("POST", SUBSCRIBERS)
    assert req.headers["authorization"] == "ApiKey nv-secret"
    assert req.headers["content-type"] == "application/json"
    assert req.json()["subscriberId"] == "u1"


def test_single_trigger_statuses(fake: FakeServer) -> None:
    fake.respond(201, {"data": {**PROCESSED, "transactionId": "m1"}}, path=TRIGGER, times=1)
    fake.respond(
        201,
        {"data": {"acknowledged": True, "status": "no_workflow_steps_defined"}},
        path=TRIGGER,
        times=1,
    )
    fake.respond(400, {"statusCode": 400, "message": DUPLICATE}, path=TRIGGER, times=1)
    fake.respond(
        422, {"statusCode": 422, "message": "to.email must be an email"}, path=TRIGGER, times=1
    )
    fake.respond(201, b"", path=TRIGGER, times=1)
    fake.respond(200, b"<html>captive portal</html>", path=TRIGGER, times=1)
    results = [send(fake, [track(fake)])[0] for _ in range(6)]
    assert outcomes(results) == ["ok", "permanent", "ok", "permanent", "retryable", "retryable"]
    assert results[1].error == "Novu trigger no_workflow_steps_defined"
    assert results[2].http_status == 400  # Novu already had this transactionId: delivered
    assert results[3].error == "HTTP 422: to.email must be an email"
    # Novu answers every call with JSON: anything else is not Novu, never counted delivered
    assert results[4].error == ("HTTP 201 with an empty body: not an answer of Novu's API"
                                " (is the destination's base_url right?)")
    assert "a body that is no JSON object or array" in (results[5].error or "")


def test_a_novu_that_only_creates_subscribers_gets_the_update_as_a_patch(fake: FakeServer) -> None:
    """Self-hosted Novu releases whose POST /v2/subscribers does not upsert answer 409 for a
    known subscriber: the same attributes go out as PATCH /v2/subscribers/{id}."""
    exists = {"statusCode": 409, "message": "Subscriber: u/1 already exists"}
    fake.respond(409, exists, path="/v2/subscribers", times=1)
    delivery = d(fake, sample_identify(userId="u/1", traits={"email": "a@b.co", "plan": "pro"}))
    [result] = send(fake, [delivery])
    assert result.outcome == "ok"
    first, patch = fake.requests
    assert (first.method, first.path) == ("POST", "/v2/subscribers")
    assert (patch.method, patch.raw_path) == ("PATCH", "/v2/subscribers/u%2F1")
    assert patch.json() == {"email": "a@b.co", "data": {"plan": "pro"}}
    fake.respond(409, exists, path="/v2/subscribers", times=1)
    fake.respond(404, {"statusCode": 404, "message": "Subscriber not found"}, times=1)
    [result] = send(fake, [delivery])
    assert result.outcome == "permanent" and result.error == "HTTP 404: Subscriber not found"


def test_a_subscriber_or_topic_answer_that_is_not_json_is_retried(fake: FakeServer) -> None:
    fake.respond(200, b"<!doctype html><title>Novu dashboard</title>")
    results = send(fake, [identify(fake)])
    assert outcomes(results) == ["retryable"]
    assert results[0].response_body is not None and "doctype" in results[0].response_body


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (400, "permanent"),
        (401, "permanent"),
        (404, "permanent"),
        (409, "permanent"),
        (408, "retryable"),
        (500, "retryable"),
        (502, "retryable"),
    ],
)
def test_http_statuses(fake: FakeServer, status: int, outcome: str) -> None:
    fake.respond(status, {"statusCode": status, "message": "nope"})
    [result] = send(fake, [identify(fake)])
    assert (result.outcome, result.http_status, result.error) == (
        outcome,
        status,
        f"HTTP {status}: nope",
    )


def test_rate_limit_honours_retry_after(fake: FakeServer) -> None:
    fake.fail(429, times=1, retry_after="7")
    [result] = send(fake, [identify(fake)])
    assert (result.outcome, result.http_status, result.retry_after) == ("retryable", 429, 7.0)


def test_timeout_and_refused_connection_are_retryable(fake: FakeServer) -> None:
    fake.hang(2.0, times=1)

    async def run() -> list[DeliveryResult]:
        client = HttpClient(connect_timeout=0.5, total_timeout=0.3)
        try:
            from hookyard_novu.destination import deliver_novu

            settings = ctx(fake).settings
            return await deliver_novu(settings, [identify(fake)], client)
        finally:
            await client.close()

    [result] = asyncio.run(run())
    assert (result.outcome, result.error) == ("retryable", "timeout")
    fake.down()
    [result] = send(fake, [identify(fake)])
    assert result.outcome == "retryable" and "connection error" in (result.error or "")


def test_topic_subscription_errors_in_a_2xx_answer(fake: FakeServer) -> None:
    group = d(fake, sample_group(userId="u1"))
    fake.respond(
        201, {"data": [{"_id": "s1"}], "meta": {"totalCount": 1, "successful": 1, "failed": 0}}
    )
    assert send(fake, [group])[0].outcome == "ok"
    fake.respond(
        201,
        {
            "data": [],
            "meta": {"totalCount": 1, "successful": 0, "failed": 1},
            "errors": [
                {
                    "subscriberId": "u1",
                    "code": "SUBSCRIBER_NOT_FOUND",
                    "message": "Subscriber with ID 'u1' could not be found.",
                }
            ],
        },
    )
    [result] = send(fake, [group])
    assert result.outcome == "permanent"
    assert result.error == (
        "Novu topic subscription failed: SUBSCRIBER_NOT_FOUND: "
        "Subscriber with ID 'u1' could not be found."
    )
    assert fake.requests[-1].path == "/v2/topics/acme/subscriptions"


def test_unmapped_event_fails_permanently_without_a_request(fake: FakeServer) -> None:
    unmapped = d(fake, sample_track(event="Nope"), send_unmapped="error")
    [result] = send(fake, [unmapped], send_unmapped="error")
    assert (result.outcome, result.error) == (
        "permanent",
        "no Novu workflow mapped for event 'Nope' (settings.workflows)",
    )
    assert fake.requests == []


# -- bulk ------------------------------------------------------------------------------------
def test_several_triggers_go_as_one_bulk_with_per_item_results(fake: FakeServer) -> None:
    fake.set_handler(
        bulk_answer(
            PROCESSED,
            {"acknowledged": True, "status": "error", "error": ["workflow_not_found"]},
            {"acknowledged": True, "status": "error", "error": [DUPLICATE]},
            # what failed inside Novu for that event (a 500 on a single trigger): retried
            {"acknowledged": True, "status": "error", "error": ["Internal server error"]},
        ),
        path=BULK,
    )
    # the errored items are sent again alone, and the single answer's status decides (the
    # vendor re-check: a bulk item's error text told a Redis OOM from a missing workflow badly)
    fake.set_handler(lambda req: {
        "u1": (422, {"statusCode": 422, "message": "workflow_not_found"}),
        "u3": (500, {"statusCode": 500, "message": "Internal server error"}),
    }[req.json()["to"]["subscriberId"]], path=TRIGGER)
    tracks = [track(fake, f"u{i}") for i in range(4)]
    results = send(fake, tracks, bulk_min=2)
    assert outcomes(results) == ["ok", "permanent", "ok", "retryable"]
    assert results[1].error == "HTTP 422: workflow_not_found"
    assert results[3].error == "HTTP 500: Internal server error"
    req = fake.requests[0]
    assert req.path == BULK and req.headers["authorization"] == "ApiKey nv-secret"
    assert req.json() == {"events": [t.body for t in tracks]}
    assert [r.json()["to"]["subscriberId"] for r in fake.requests_to(TRIGGER)] in (
        ["u1", "u3"], ["u3", "u1"])


def test_a_users_triggers_go_in_separate_rounds_and_a_429_holds_back_the_call(
    fake: FakeServer,
) -> None:
    """One trigger of a user per bulk (a retried one must not land after the user's later
    ones); a 429 (Novu's limit is the environment's) holds back the rest of the call."""
    fake.set_handler(
        lambda req: (201, {"data": [PROCESSED] * len(req.json()["events"])}), path=BULK)
    batch = [track(fake, "u1", "a1"), track(fake, "u1", "a2"), track(fake, "u2", "b1")]
    assert outcomes(send(fake, batch, bulk_min=2)) == ["ok"] * 3
    bulks = [[e["transactionId"] for e in r.json()["events"]] for r in fake.requests_to(BULK)]
    assert bulks == [["a1", "b1"]]  # a2 alone after them, as a single trigger
    assert [r.json()["transactionId"] for r in fake.requests_to(TRIGGER)] == ["a2"]
    fake.set_handler(lambda req: (429, {"message": "Too Many Requests"}, {"Retry-After": "7"}),
                     path=SUBSCRIBERS)
    calls = [identify(fake, "u3"), identify(fake, "u4"), track(fake, "u3"), track(fake, "u5"),
             track(fake, "u5")]
    before = len(fake.requests_to(TRIGGER))
    results = send(fake, calls)
    # round 1: the two identifies (429) and u5's first trigger, side by side; then nothing
    assert [r.outcome for r in results] == ["retryable", "retryable", "retryable", "ok",
                                            "retryable"]
    assert [r.sent for r in results] == [True, True, False, True, False]
    assert {r.retry_after for r in results if r.outcome == "retryable"} == {7.0}
    assert len(fake.requests_to(TRIGGER)) - before == 1


def test_after_a_429_the_call_sends_no_more_requests(fake: FakeServer) -> None:
    """Delivery adversity audit: the triggers of a round waiting for one of the 10 slots were
    sent after Novu's 429 all the same, each refused and spending an attempt."""
    from hookyard_novu.destination import MAX_CONCURRENT

    fake.set_handler(lambda req: (429, {"message": "Too Many Requests"}, {"Retry-After": "2"}),
                     path=TRIGGER)
    results = send(fake, [track(fake, f"u{i}") for i in range(MAX_CONCURRENT + 5)])
    assert len(fake.requests_to(TRIGGER)) == MAX_CONCURRENT  # the first wave, side by side
    assert sum(r.sent for r in results) == MAX_CONCURRENT
    assert all(r.outcome == "retryable" and r.retry_after == 2.0 for r in results)


def test_mixed_batch_keeps_each_users_order(fake: FakeServer) -> None:
    fake.set_handler(
        lambda req: (201, {"data": [PROCESSED] * len(req.json()["events"])}), path=BULK
    )
    fake.respond(201, {"data": PROCESSED}, path=TRIGGER)
    u1 = [
        identify(fake, "u1"),
        track(fake, "u1"),
        track(fake, "u1"),
        d(fake, sample_group(userId="u1")),
    ]
    u2 = [track(fake, "u2"), identify(fake, "u2")]
    batch = [u1[0], u2[0], u1[1], u2[1], u1[2], u1[3]]
    assert outcomes(send(fake, batch, bulk_min=2)) == ["ok"] * 6

    def user(req: RecordedRequest) -> str:
        body = req.json()
        if req.path == BULK:
            return ",".join(e["to"]["subscriberId"] for e in body["events"])
        return (
            body.get("subscriberId")
            or body.get("to", {}).get("subscriberId")
            or body["subscriptions"][0]
        )

    seen = [(r.path, user(r)) for r in fake.requests]
    # round 1: u1 identify + u2 trigger; round 2: u1's first trigger, u2 identify; round 3:
    # u1's second trigger (one trigger of a user per round); round 4: u1 group
    assert sorted(seen[:2]) == [(TRIGGER, "u2"), (SUBSCRIBERS, "u1")]
    assert sorted(seen[2:4]) == [(TRIGGER, "u1"), (SUBSCRIBERS, "u2")]
    assert seen[4:] == [(TRIGGER, "u1"), ("/v2/topics/acme/subscriptions", "u1")]


def test_retryable_failure_holds_back_the_users_later_deliveries(fake: FakeServer) -> None:
    def answer(req: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        if req.json()["subscriberId"] == "u1":
            return 503, {"message": "busy"}, {"Retry-After": "2"}
        return 201, {"data": {}}, {}

    fake.set_handler(answer, path=SUBSCRIBERS)
    fake.respond(201, {"data": PROCESSED}, path=TRIGGER)
    batch = [identify(fake, "u1"), identify(fake, "u2"), track(fake, "u1"), track(fake, "u2")]
    results = send(fake, batch)
    assert outcomes(results) == ["retryable", "ok", "retryable", "ok"]
    assert (results[0].error, results[0].retry_after) == ("HTTP 503: busy", 2.0)
    assert (results[2].error, results[2].retry_after) == (HELD_BACK, 2.0)
    assert [r.json()["to"]["subscriberId"] for r in fake.requests_to(TRIGGER)] == ["u2"]


def test_bulk_refused_as_a_whole_is_sent_one_by_one(fake: FakeServer) -> None:
    fake.respond(
        422, {"statusCode": 422, "message": "events.1.to.email must be an email"}, path=BULK
    )
    fake.set_handler(
        lambda req: (
            (422, {"message": "to.email must be an email"})
            if req.json()["to"]["subscriberId"] == "bad"
            else (201, {"data": PROCESSED})
        ),
        path=TRIGGER,
    )
    results = send(fake, [track(fake, "u1"), track(fake, "bad"), track(fake, "u3")], bulk_min=2)
    assert outcomes(results) == ["ok", "permanent", "ok"]
    assert results[1].error == "HTTP 422: to.email must be an email"
    assert len(fake.requests_to(BULK)) == 1 and len(fake.requests_to(TRIGGER)) == 3


@pytest.mark.parametrize(
    ("status", "outcome", "retry_after"),
    [(401, "permanent", None), (503, "retryable", 3.0), (429, "retryable", 3.0)],
)
def test_bulk_failing_as_a_whole(
    fake: FakeServer, status: int, outcome: str, retry_after: float | None
) -> None:
    fake.respond(status, {"message": "no"}, {"Retry-After": "3"}, path=BULK)
    results = send(fake, [track(fake, "u1"), track(fake, "u2")], bulk_min=2)
    assert {(r.outcome, r.http_status, r.retry_after) for r in results} == {
        (outcome, status, retry_after)
    }
    assert {r.error for r in results} == {f"HTTP {status}: no"}  # Novu's message, as novu.md says
    assert len(fake.requests) == 1


def test_unreadable_bulk_answer_is_retried(fake: FakeServer) -> None:
    fake.respond(201, {"data": [PROCESSED]}, path=BULK)  # one item for two events
    results = send(fake, [track(fake, "u1"), track(fake, "u2")], bulk_min=2)
    assert outcomes(results) == ["retryable", "retryable"]
    assert "unreadable Novu bulk trigger answer" in (results[0].error or "")


def test_more_than_100_triggers_are_split(fake: FakeServer) -> None:
    fake.set_handler(
        lambda req: (201, {"data": [PROCESSED] * len(req.json()["events"])}), path=BULK
    )
    fake.respond(201, {"data": PROCESSED}, path=TRIGGER)
    results = send(fake, [track(fake, f"u{i}") for i in range(130)])
    assert outcomes(results) == ["ok"] * 130
    # a bulk costs 100 of Novu Cloud's rate-limit tokens: the 30 left go as single triggers
    assert [len(r.json()["events"]) for r in fake.requests_to(BULK)] == [100]
    assert len(fake.requests_to(TRIGGER)) == 30
    results = send(fake, [track(fake, f"u{i}") for i in range(130)], bulk_min=20)
    assert sorted(len(r.json()["events"]) for r in fake.requests_to(BULK)[1:]) == [30, 100]


def test_fewer_triggers_than_bulk_min_go_one_by_one_in_each_users_order(
    fake: FakeServer,
) -> None:
    """The vendor audit: two users' trickle went as bulks of 2, each 100 of Novu Cloud's
    rate-limit tokens (2,000 tokens for 40 triggers, over the free plan's 60 a second)."""
    fake.respond(201, {"data": PROCESSED}, path=TRIGGER)
    batch = [track(fake, "u1", "m1"), track(fake, "u2", "m2"), track(fake, "u1", "m3")]
    assert outcomes(send(fake, batch)) == ["ok"] * 3
    assert fake.requests_to(BULK) == []
    sent = [r.json()["transactionId"] for r in fake.requests_to(TRIGGER)]
    assert sorted(sent) == ["m1", "m2", "m3"] and sent.index("m1") < sent.index("m3")
