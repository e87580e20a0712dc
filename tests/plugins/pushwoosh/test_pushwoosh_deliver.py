"""The Pushwoosh destination's deliver hook against a real loopback HTTP server."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hookyard.connectors import DestinationContext
from hookyard.deliveries import Delivery, DeliveryResult
from hookyard.events import Event
from hookyard.http import HttpClient
from hookyard.testing import deliver_with, destination_context, sample_identify, sample_track
from hookyard.testing.fake_server import FakeServer, RecordedRequest
from hookyard_pushwoosh.plugin import deliver, map_event
from hookyard_pushwoosh.settings import PushwooshSettings

APP = "ABCDE-12345"
OK = {"status_code": 200, "status_message": "OK", "response": None}


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer().start()
    server.respond(200, OK)
    yield server
    server.stop()


def ctx(base_url: str, **extra: Any) -> DestinationContext:
    data = {"api_key": "pw-secret", "application": APP, "base_url": base_url, **extra}
    return DestinationContext("pushwoosh", "pushwoosh", msgspec.convert(data, PushwooshSettings))


def mapped(dest: DestinationContext, raw: dict[str, Any]) -> Delivery:
    event = msgspec.convert(raw, Event)  # type: ignore[arg-type]
    [delivery] = map_event(destination=dest, event=event, raw=raw).deliveries
    return delivery


def send(dest: DestinationContext, deliveries: list[Delivery]) -> list[DeliveryResult]:
    async def go() -> list[DeliveryResult]:
        client = HttpClient(connect_timeout=2, total_timeout=5)
        try:
            return await deliver(destination=dest, deliveries=deliveries, client=client)
        finally:
            await client.close()

    return asyncio.run(go())


def test_set_tags_and_post_event_are_sent_with_the_token(fake: FakeServer) -> None:
    dest = ctx(fake.url + "/")
    identify, track = mapped(dest, sample_identify()), mapped(dest, sample_track())
    results = send(dest, [identify, track])
    assert [r.outcome for r in results] == ["ok", "ok"]
    assert results[0].http_status == 200
    tags_req, event_req = fake.requests  # one user: in order
    assert (tags_req.method, tags_req.path) == ("POST", "/json/1.3/setTags")
    assert event_req.path == "/json/1.3/postEvent"
    for req in (tags_req, event_req):
        assert req.headers["authorization"] == "Token pw-secret"
        assert req.headers["content-type"] == "application/json"
    assert tags_req.json() == identify.body
    assert event_req.json()["request"]["timestampUTC"] == 1767225600


def test_error_in_a_200_body_is_permanent(fake: FakeServer) -> None:
    fake.respond(200, {"status_code": 210, "status_message": "Argument error", "response": None})
    [result] = send(ctx(fake.url), [mapped(ctx(fake.url), sample_track())])
    assert result.outcome == "permanent"
    assert result.http_status == 200
    assert result.error == "Pushwoosh status_code 210: Argument error"
    assert result.response_body is not None and "Argument error" in result.response_body


@pytest.mark.parametrize(
    "body, outcome",
    [
        ({"status_code": 500, "status_message": "Internal error"}, "retryable"),
        # rate limiting, by code or by message
        ({"status_code": 429, "status_message": "Too many requests"}, "retryable"),
        ({"status_code": 210, "status_message": "Too Many Requests"}, "retryable"),
        ({"status_code": 400, "status_message": "API rate limit exceeded"}, "retryable"),
        ({"status_code": 210, "status_message": "Request throttled, try later"}, "retryable"),
        # a bad or unauthorised API key, and argument errors: retrying cannot help
        ({"status_code": 401, "status_message": "Wrong API access token"}, "permanent"),
        (
            {"status_code": 401, "status_message": "Authorization token is missing or invalid"},
            "permanent",
        ),
        ({"status_code": 403, "status_message": "Access denied"}, "permanent"),
        ({"status_code": 210, "status_message": "Application not found"}, "permanent"),
        ({"status_code": "200", "status_message": "OK"}, "ok"),
        ({"result": "no status code"}, "ok"),
        (b"not json", "retryable"),  # not Pushwoosh (a proxy's page): never delivered
        (b"<html>Welcome to nginx!</html>", "retryable"),
        (None, "retryable"),  # an empty body
    ],
)
def test_status_code_in_the_body(fake: FakeServer, body: Any, outcome: str) -> None:
    fake.respond(200, body)
    [result] = send(ctx(fake.url), [mapped(ctx(fake.url), sample_identify())])
    assert result.outcome == outcome


@pytest.mark.parametrize(
    "status, outcome",
    [
        (400, "permanent"),
        (401, "permanent"),
        (404, "permanent"),
        (500, "retryable"),
        (503, "retryable"),
    ],
)
def test_http_errors(fake: FakeServer, status: int, outcome: str) -> None:
    fake.respond(status, {"status_code": status, "status_message": "Malformed request string"})
    [result] = send(ctx(fake.url), [mapped(ctx(fake.url), sample_identify())])
    assert (result.outcome, result.http_status) == (outcome, status)
    assert result.error == f"HTTP {status}: Malformed request string"


def test_rate_limit_in_a_200_body_honours_retry_after(fake: FakeServer) -> None:
    fake.respond(
        200,
        {"status_code": 429, "status_message": "Too many requests"},
        headers={"Retry-After": "3"},
        times=1,
    )
    dest = ctx(fake.url)
    [result] = send(dest, [mapped(dest, sample_identify())])
    assert (result.outcome, result.http_status, result.retry_after) == ("retryable", 200, 3.0)
    assert result.error == "Pushwoosh status_code 429: Too many requests"
    [result] = send(dest, [mapped(dest, sample_identify())])  # the next answer is OK
    assert result.outcome == "ok"


def test_rate_limit_honours_retry_after(fake: FakeServer) -> None:
    fake.fail(429, times=1, retry_after="7")
    [result] = send(ctx(fake.url), [mapped(ctx(fake.url), sample_track())])
    assert (result.outcome, result.http_status, result.retry_after) == ("retryable", 429, 7.0)


def test_connection_refused_is_retryable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dest = ctx(f"http://127.0.0.1:{port}")
    [result] = send(dest, [mapped(dest, sample_track())])
    assert result.outcome == "retryable" and result.error is not None
    assert result.error.startswith("connection error")


def _answer_by_user(req: RecordedRequest) -> tuple[int, Any]:
    request = req.json()["request"]
    if request.get("userId") == "bad-user":
        return 503, {"status_code": 500, "status_message": "Internal error"}
    if request.get("userId") == "wrong-user":
        return 200, {"status_code": 210, "status_message": "Argument error"}
    return 200, OK


def test_one_users_deliveries_stay_in_order_and_others_go_on(fake: FakeServer) -> None:
    fake.set_handler(_answer_by_user)
    dest = ctx(fake.url)
    deliveries = [
        mapped(dest, sample_track(userId="bad-user", event="First")),
        mapped(dest, sample_track(userId="good-user", event="A")),
        mapped(dest, sample_identify(userId="bad-user")),  # held back behind "First"
        mapped(dest, sample_track(userId="wrong-user", event="B")),
        mapped(dest, sample_track(userId="wrong-user", event="C")),  # permanent: no hold
        mapped(dest, sample_track(userId="good-user", event="D")),
    ]
    results = send(dest, deliveries)
    assert [r.outcome for r in results] == [
        "retryable",
        "ok",
        "retryable",
        "permanent",
        "permanent",
        "ok",
    ]
    assert results[0].http_status == 503 and results[2].http_status is None
    assert results[2].error is not None and "earlier delivery" in results[2].error
    sent = [(r.json()["request"].get("userId"), r.path) for r in fake.requests]
    assert ("bad-user", "/json/1.3/setTags") not in sent
    assert len(sent) == 5
    events = {
        u: [
            r.json()["request"]["event"]
            for r in fake.requests
            if r.json()["request"].get("userId") == u and r.path.endswith("postEvent")
        ]
        for u in ("good-user", "wrong-user")
    }
    assert events == {"good-user": ["A", "D"], "wrong-user": ["B", "C"]}


def test_different_users_are_sent_concurrently(fake: FakeServer) -> None:
    fake.hang(0.4)  # every answer takes 0.4 s
    dest = ctx(fake.url)
    deliveries = [mapped(dest, sample_track(userId=f"user-{i}")) for i in range(5)]

    async def go() -> tuple[list[DeliveryResult], float]:
        client = HttpClient()
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            results = await deliver(destination=dest, deliveries=deliveries, client=client)
        finally:
            await client.close()
        return results, loop.time() - started

    results, took = asyncio.run(go())
    assert [r.outcome for r in results] == ["ok"] * 5
    assert took < 1.5  # sequential would take 2 s


def test_at_most_20_requests_of_a_call_are_in_flight(fake: FakeServer) -> None:
    """``batch_size = 200`` sent 200 requests at once (vendor audit)."""
    fake.hang(0.3)
    dest = ctx(fake.url)
    deliveries = [mapped(dest, sample_track(userId=f"user-{i}")) for i in range(45)]
    results = send(dest, deliveries)
    assert [r.outcome for r in results] == ["ok"] * 45
    arrived = sorted(r.received_at for r in fake.requests)
    waves = [len([t for t in arrived if t - arrived[0] < 0.15])]
    assert waves == [20], arrived


def test_deliver_through_the_registry(fake: FakeServer) -> None:
    dest = destination_context(
        "pushwoosh", {"api_key": "k2", "application": APP, "base_url": fake.url}
    )
    [result] = deliver_with(dest, [mapped(dest, sample_identify())])
    assert result.outcome == "ok"
    [req] = fake.requests
    assert req.headers["authorization"] == "Token k2"
