"""The Segment forwarder destination: map_event and deliver against a real loopback server."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import msgspec
import pytest
from hookyard.connectors import DestinationContext
from hookyard.deliveries import Delivery, DeliveryResult
from hookyard.events import Event
from hookyard.http import HttpClient
from hookyard.testing import (
    deliver_with,
    destination_context,
    map_with,
    registry,
    sample_group,
    sample_identify,
    sample_page,
    sample_track,
)
from hookyard.testing.fake_server import FakeServer
from hookyard.times import event_time
from hookyard_segment.forwarder import (
    HELD_BACK,
    MAX_EVENT_BYTES,
    MAX_REQUEST_BYTES,
    SegmentForwarderSettings,
    basic_auth,
    batch_body,
    deliver,
    forwarded_event,
    map_event,
    pack,
)

WRITE_KEY = "abc123"


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer().start()
    server.respond(200, {"success": True})
    yield server
    server.stop()


def ctx(base_url: str = "https://api.segment.io") -> DestinationContext:
    settings = SegmentForwarderSettings(write_key=WRITE_KEY, base_url=base_url)
    return DestinationContext("segment-out", "segment", settings)


def mapped(raw: dict[str, Any], dest: DestinationContext | None = None) -> Delivery:
    event = msgspec.convert(raw, Event)  # type: ignore[arg-type]
    [delivery] = map_event(destination=dest or ctx(), event=event, raw=raw).deliveries
    return delivery


def send(dest: DestinationContext, deliveries: list[Delivery]) -> list[DeliveryResult]:
    async def go() -> list[DeliveryResult]:
        client = HttpClient(connect_timeout=2, total_timeout=10)
        try:
            return await deliver(destination=dest, deliveries=deliveries, client=client)
        finally:
            await client.close()

    return asyncio.run(go())


def padded_track(i: int, size: int) -> dict[str, Any]:
    """A track event whose forwarded JSON is exactly ``size`` bytes (when not too small)."""
    raw = sample_track(messageId=f"msg-{i}", properties={"pad": ""})
    base = len(msgspec.json.encode(forwarded_event(raw)))
    raw["properties"]["pad"] = "x" * max(0, size - base)
    return raw


def sent(raw: dict[str, Any]) -> dict[str, Any]:
    """What is forwarded for a sample event (same timestamp, no receivedAt)."""
    return {k: v for k, v in raw.items() if k != "receivedAt"}


# -- settings and mapping ---------------------------------------------------------------------
def test_settings() -> None:
    s = msgspec.convert({"write_key": "k"}, SegmentForwarderSettings)
    assert s.base_url == "https://api.segment.io"
    for bad in (
        {},
        {"write_key": ""},
        {"write_key": "  "},
        {"write_key": "k", "url": "x"},
        {"write_key": "k", "base_url": "api.segment.io"},
    ):
        with pytest.raises(msgspec.ValidationError):
            msgspec.convert(bad, SegmentForwarderSettings)


def test_basic_auth_header_value() -> None:
    assert basic_auth("abc123") == "Basic YWJjMTIzOg=="  # the reference document's example


@pytest.mark.parametrize(
    "raw, kind",
    [
        (sample_identify(), "identify"),
        (sample_track(), "track"),
        (sample_group(), "group"),
        (sample_page(), "page"),
    ],
)
def test_every_event_is_forwarded_as_stored(raw: dict[str, Any], kind: str) -> None:
    raw["unknownField"] = {"kept": True}
    delivery = mapped(raw)
    assert (delivery.kind, delivery.method, delivery.path) == (kind, "POST", "/v1/batch")
    assert delivery.body == sent(raw) and delivery.body["messageId"] == raw["messageId"]
    assert delivery.body["timestamp"] == raw["timestamp"]  # no sentAt: the event's own time
    assert WRITE_KEY not in msgspec.json.encode(delivery).decode()


def test_numeric_ids_are_forwarded_as_text() -> None:
    """Found by the vendor audit: a numeric userId (Segment's Node libraries pass one through)
    went to Segment as a number; its spec types ids as strings, and its Python library sends
    str(id)."""
    raw = sample_track(userId=12345, anonymousId=99, messageId=7, groupId=True)
    body = mapped(raw).body
    assert (body["userId"], body["anonymousId"], body["messageId"]) == ("12345", "99", "7")
    assert body["groupId"] is True  # not a number: left as the client sent it


def test_write_key_sent_at_and_received_at_are_not_forwarded() -> None:
    raw = sample_track(writeKey="hookyard-source-secret", sentAt="2026-01-01T00:00:00.000Z")
    body = mapped(raw).body
    assert not {"writeKey", "sentAt", "receivedAt"} & set(body)
    assert "hookyard-source-secret" not in msgspec.json.encode(body).decode()


@pytest.mark.parametrize(
    "fields, expected",
    [
        # a client 1 h behind: sent at 09:00:05 by its clock, received 10:00:05 -> 10:00:00
        (
            {
                "timestamp": "2026-01-01T09:00:00.000Z",
                "sentAt": "2026-01-01T09:00:05.000Z",
                "receivedAt": "2026-01-01T10:00:05.000Z",
            },
            "2026-01-01T10:00:00.000Z",
        ),
        # queued offline for a day on a correct clock: kept a day earlier than receivedAt
        (
            {
                "timestamp": "2026-01-01T00:00:00+02:00",
                "sentAt": "2026-01-02T00:00:00+02:00",
                "receivedAt": "2026-01-01T22:00:00.250Z",
            },
            "2025-12-31T22:00:00.250Z",
        ),
        # no timestamp: originalTimestamp is the client's time
        (
            {
                "timestamp": None,
                "originalTimestamp": "2026-01-01T00:00:00.000Z",
                "sentAt": "2026-01-01T00:00:10.000Z",
                "receivedAt": "2026-01-01T00:00:12.000Z",
            },
            "2026-01-01T00:00:02.000Z",
        ),
        # a sentAt before the event's own time is a broken clock: the timestamp is kept
        (
            {
                "timestamp": "2024-06-01T00:00:00Z",
                "sentAt": "0001-01-01T00:00:00Z",
                "receivedAt": "2026-01-01T00:00:00.000Z",
            },
            "2024-06-01T00:00:00.000Z",
        ),
        # no sentAt (a raw HTTP call, an import): the timestamp is kept, written in UTC with
        # milliseconds as every destination gets it (a week date or +05:30 as Segment reads it)
        ({"timestamp": "2020-05-01T10:00:00Z", "receivedAt": "2026-01-01T00:00:00.000Z"},
         "2020-05-01T10:00:00.000Z"),
        ({"timestamp": "2024-W01-1", "receivedAt": "2026-01-01T00:00:00.000Z"},
         "2024-01-01T00:00:00.000Z"),
        ({"timestamp": "2020-05-01T15:30:00.123456+05:30"}, "2020-05-01T10:00:00.123Z"),
        ({"timestamp": None, "originalTimestamp": "2020-05-01T10:00:00Z"},
         "2020-05-01T10:00:00.000Z"),
        # processed by Segment already (its Webhooks destination): timestamp is the corrected
        # time, with the client's originalTimestamp and sentAt beside it: kept, not corrected again
        (
            {
                "timestamp": "2026-01-01T01:20:08.466Z",
                "originalTimestamp": "2026-01-01T02:20:08.466Z",
                "sentAt": "2026-01-01T02:20:10.466Z",
                "receivedAt": "2026-01-01T01:20:16.469Z",
            },
            "2026-01-01T01:20:08.466Z",
        ),
        # no time of its own, or an unreadable one: when hookyard received it
        ({"timestamp": None, "receivedAt": "2026-01-01T00:00:00.000Z"}, "2026-01-01T00:00:00.000Z"),
        (
            {
                "timestamp": "yesterday",
                "sentAt": "2026-01-01T00:00:00Z",
                "receivedAt": "2026-01-01T00:00:01.000Z",
            },
            "2026-01-01T00:00:01.000Z",
        ),
    ],
)
def test_timestamp_is_fixed_to_when_the_event_happened(
    fields: dict[str, Any], expected: str
) -> None:
    raw = sample_track(**fields)
    assert event_time(raw) == expected
    assert mapped(raw).body["timestamp"] == expected


def test_forwarding_is_pure_so_replays_send_the_same_event() -> None:
    raw = sample_identify(sentAt="2026-01-01T00:00:01.000Z")
    assert mapped(raw).body == mapped(raw).body == forwarded_event(raw)


def test_map_through_the_registry() -> None:
    reg = registry()
    dest = destination_context("segment", {"write_key": WRITE_KEY}, reg=reg)
    [connector] = [c for c, _ in reg.all() if c.kind == "destination" and c.name == "segment"]
    assert connector.batch_size == 100 and connector.settings is SegmentForwarderSettings
    raw = sample_track()
    assert map_with(dest, raw, reg).deliveries[0].body == sent(raw)


# -- packing ----------------------------------------------------------------------------------
def test_pack_keeps_order_and_respects_the_limit() -> None:
    sent = "2026-01-01T00:00:00.000Z"
    overhead = len(batch_body([], sent))
    limit = overhead + 10 + 1 + 10  # exactly two 10-byte events and their comma
    assert pack([(0, 10), (1, 10), (2, 10), (3, 5)], sent, limit) == [[0, 1], [2, 3]]
    assert pack([(0, 10), (1, 11)], sent, limit) == [[0], [1]]
    assert pack([], sent) == []
    assert msgspec.json.decode(batch_body([b'{"a":1}', b"2"], sent)) == {
        "batch": [{"a": 1}, 2],
        "sentAt": sent,
    }


# -- delivery ---------------------------------------------------------------------------------
def test_one_batch_with_basic_auth(fake: FakeServer) -> None:
    raws = [sample_identify(), sample_track(), sample_page()]
    results = send(ctx(fake.url + "/"), [mapped(r) for r in raws])
    assert [(r.outcome, r.http_status) for r in results] == [("ok", 200)] * 3
    [req] = fake.requests
    assert (req.method, req.path) == ("POST", "/v1/batch")
    assert req.headers["authorization"] == "Basic " + base64.b64encode(b"abc123:").decode()
    assert req.headers["content-type"] == "application/json"
    body = req.json()
    assert body["batch"] == [sent(r) for r in raws]
    assert set(body) == {"batch", "sentAt"}
    assert datetime.fromisoformat(body["sentAt"]).tzinfo is not None


def test_batches_are_split_under_500_kb(fake: FakeServer) -> None:
    raws = [padded_track(i, 30_000) for i in range(40)]  # ~1.2 MB in all
    results = send(ctx(fake.url), [mapped(r) for r in raws])
    assert all(r.outcome == "ok" for r in results)
    requests = fake.requests
    # 16 events of 30,000 bytes (480,000 + commas + envelope) fit in 500 KB = 500,000 bytes;
    # 17 (510,016 bytes) would not
    assert [len(r.json()["batch"]) for r in requests] == [16, 16, 8]
    assert all(len(r.body) <= MAX_REQUEST_BYTES == 500_000 for r in requests)
    assert len(requests[0].body) > 480_000
    assert [e["messageId"] for r in requests for e in r.json()["batch"]] == [
        f"msg-{i}" for i in range(40)
    ]
    sent_ats = {r.json()["sentAt"] for r in requests}
    assert len(sent_ats) == 1


def test_results_follow_the_answer_of_each_request(fake: FakeServer) -> None:
    fake.respond(200, {"success": True}, times=1)
    fake.respond(403, {"error": "forbidden"}, times=1)
    fake.fail(503, times=1, retry_after="3")
    raws = [padded_track(i, 30_000) for i in range(40)]
    results = send(ctx(fake.url), [mapped(r) for r in raws])
    groups = [len(r.json()["batch"]) for r in fake.requests]
    first, second = groups[0], groups[0] + groups[1]
    assert {r.outcome for r in results[:first]} == {"ok"}
    assert {(r.outcome, r.http_status) for r in results[first:second]} == {("permanent", 403)}
    assert {(r.outcome, r.retry_after) for r in results[second:]} == {("retryable", 3.0)}


@pytest.mark.parametrize("status", [400, 413])
def test_a_refused_batch_is_sent_again_one_event_at_a_time(fake: FakeServer, status: int) -> None:
    """Segment (or a second hookyard) refusing a batch for one event would dead-letter all of
    it (an outside audit chained two hookyards: one event at the edge of 32 KB took two good
    ones with it): each is sent alone, and only the refused one fails."""
    fake.respond(status, {"error": "event 1 is larger than 32768 bytes"}, times=1)  # the batch
    fake.respond(200, {"success": True}, times=1)
    fake.respond(status, {"error": "too large"}, times=1)
    raws = [sample_track(messageId=f"m{i}") for i in range(3)]
    results = send(ctx(fake.url), [mapped(r) for r in raws])
    assert [(r.outcome, r.http_status) for r in results] == [
        ("ok", 200), ("permanent", status), ("ok", 200)]
    assert [[e["messageId"] for e in r.json()["batch"]] for r in fake.requests] == [
        ["m0", "m1", "m2"], ["m0"], ["m1"], ["m2"]]


def test_an_unauthorized_batch_is_not_sent_again(fake: FakeServer) -> None:
    fake.respond(401, {"error": "bad write key"}, times=1)
    results = send(ctx(fake.url), [mapped(sample_track(messageId=f"m{i}")) for i in range(3)])
    assert {(r.outcome, r.http_status) for r in results} == {("permanent", 401)}
    assert len(fake.requests) == 1


def test_a_batch_refused_for_an_invalid_write_key_is_not_split(fake: FakeServer) -> None:
    """Segment answers a wrong key ``400 {"code": "invalid_request", "message": "Invalid write
    key"}`` (when it does not answer 200): split one event per request, a batch of 100 was 101
    requests all answered the same (vendor audit)."""
    fake.respond(400, {"code": "invalid_request", "message": "Invalid write key"})
    results = send(ctx(fake.url), [mapped(sample_track(messageId=f"m{i}")) for i in range(3)])
    assert {(r.outcome, r.http_status, r.error) for r in results} == {
        ("permanent", 400, "HTTP 400: Invalid write key")}
    assert len(fake.requests) == 1


@pytest.mark.parametrize(("status", "body"), [
    (400, "Invalid write key"), (400, {"message": "Invalid writeKey"}),
    (400, {"error": "invalid_write_key"}), (403, "INVALID WRITE-KEY")])
def test_every_form_of_an_invalid_write_key_answer_fails_the_call_unsplit(
    fake: FakeServer, status: int, body: Any,
) -> None:
    """A plain-text body or another spelling was split one event per request (vendor
    re-check: 105 requests for 103 events)."""
    fake.respond(status, body)
    results = send(ctx(fake.url), [mapped(sample_track(messageId=f"m{i}")) for i in range(3)])
    assert {(r.outcome, r.http_status) for r in results} == {("permanent", status)}
    assert len(fake.requests) == 1


def test_a_message_id_too_long_for_segment_is_sent_as_a_stable_hash() -> None:
    """Segment drops, answering 200, an event whose messageId has 100 characters or more;
    hookyard accepts 256 (vendor re-check)."""
    long = "m" * 200
    first = forwarded_event(sample_track(messageId=long))["messageId"]
    assert first == forwarded_event(sample_track(messageId=long))["messageId"]
    assert first.startswith("hy-") and len(first) == 67
    assert forwarded_event(sample_track(messageId="m" * 99))["messageId"] == "m" * 99
    assert forwarded_event(sample_track(messageId="m" * 100))["messageId"].startswith("hy-")


def test_oversize_event_goes_to_dead_letters_and_the_rest_is_sent(fake: FakeServer) -> None:
    small, huge, other = sample_track(), padded_track(1, MAX_EVENT_BYTES + 100), sample_identify()
    exact = padded_track(2, MAX_EVENT_BYTES)
    assert len(msgspec.json.encode(forwarded_event(exact))) == MAX_EVENT_BYTES == 32_768
    results = send(ctx(fake.url), [mapped(small), mapped(huge), mapped(other), mapped(exact)])
    assert [r.outcome for r in results] == ["ok", "permanent", "ok", "ok"]
    assert results[1].error is not None
    assert results[1].error.startswith("event is larger than Segment's 32 KB limit")
    [req] = fake.requests
    assert [e["messageId"] for e in req.json()["batch"]] == [
        small["messageId"],
        other["messageId"],
        "msg-2",
    ]


def test_after_a_retryable_answer_the_later_batches_are_held_back(fake: FakeServer) -> None:
    fake.fail(429, times=1, retry_after="4")
    raws = [padded_track(i, 30_000) for i in range(40)]  # three batch requests
    results = send(ctx(fake.url), [mapped(r) for r in raws])
    [req] = fake.requests  # the rate-limited API is not asked again in the same call
    first = len(req.json()["batch"])
    assert {(r.outcome, r.http_status, r.retry_after) for r in results[:first]} == {
        ("retryable", 429, 4.0)
    }
    assert {(r.outcome, r.error, r.retry_after) for r in results[first:]} == {
        ("retryable", HELD_BACK, 4.0)
    }


def test_only_oversize_events_sends_nothing(fake: FakeServer) -> None:
    [result] = send(ctx(fake.url), [mapped(padded_track(1, 40_000))])
    assert result.outcome == "permanent"
    assert fake.requests == []


def test_deliver_through_the_registry(fake: FakeServer) -> None:
    dest = destination_context("segment", {"write_key": "other-key", "base_url": fake.url})
    results = deliver_with(dest, [mapped(sample_track(), dest)])
    assert [r.outcome for r in results] == ["ok"]
    [req] = fake.requests
    assert req.headers["authorization"] == basic_auth("other-key")
