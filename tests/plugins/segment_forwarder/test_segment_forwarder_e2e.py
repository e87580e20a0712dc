"""The Segment forwarder end to end: a real hookyard server relays what a Segment source received
to a loopback fake of Segment's tracking API, and Segment's own Python library is the reference
for what arrives there."""

from __future__ import annotations

import base64
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from hookyard.testing import assert_requests, sample_identify, sample_page, sample_track
from hookyard.testing.fake_server import FakeServer, RecordedRequest
from hookyard.testing.server import HookyardServer
from hookyard_segment.forwarder import MAX_EVENT_BYTES

analytics = pytest.importorskip("segment.analytics")

SOURCE_KEY = "web-source-key"
SEGMENT_KEY = "seg-write-key"
FAST_RETRIES = {"retry_initial_seconds": 0.05, "retry_max_seconds": 1.0, "max_attempts": 4}
BASIC = "Basic " + base64.b64encode(f"{SEGMENT_KEY}:".encode()).decode()


def start(
    hookyard_server: Callable[..., HookyardServer], fake: FakeServer, **server: Any
) -> HookyardServer:
    return hookyard_server(
        {
            "server": server,
            "sources": [{"name": "web", "plugin": "segment", "write_key": SOURCE_KEY}],
            "destinations": [
                {
                    "name": "to-segment",
                    "plugin": "segment",
                    "sources": ["web"],
                    "delivery": FAST_RETRIES,
                    "settings": {"write_key": "env:HY_TEST_SEGMENT_KEY", "base_url": fake.url},
                }
            ],
        }
    )


@pytest.fixture
def segment(
    fake_destination: Callable[[], FakeServer], monkeypatch: pytest.MonkeyPatch
) -> FakeServer:
    monkeypatch.setenv("HY_TEST_SEGMENT_KEY", SEGMENT_KEY)
    fake = fake_destination()
    fake.respond(200, {"success": True})
    return fake


def delivery(server: HookyardServer, message_id: str) -> dict[str, Any]:
    [row] = server.api(f"/api/deliveries?message_id={message_id}").json()["deliveries"]
    return row  # type: ignore[no-any-return]


def test_a_batch_is_relayed_to_v1_batch_with_basic_auth(
    hookyard_server: Callable[..., HookyardServer], segment: FakeServer
) -> None:
    server = start(hookyard_server, segment)
    events = [sample_identify(), sample_track(writeKey=SOURCE_KEY), sample_page(userId="u2")]
    body = {"batch": events, "sentAt": "2026-01-01T00:00:01.000Z"}
    assert server.post("/v1/batch", body, write_key=SOURCE_KEY).status_code == 200
    server.wait_idle()
    [req] = assert_requests(
        segment,
        1,
        path="/v1/batch",
        method="POST",
        headers={"authorization": BASIC, "content-type": "application/json"},
    )
    batch = req.json()
    assert set(batch) == {"batch", "sentAt"}
    assert datetime.fromisoformat(batch["sentAt"]).tzinfo is not None
    assert [e["messageId"] for e in batch["batch"]] == [e["messageId"] for e in events]
    for forwarded, original in zip(batch["batch"], events, strict=True):
        assert not {"writeKey", "sentAt", "receivedAt"} & set(forwarded)
        assert {k: v for k, v in forwarded.items() if k != "timestamp"} == {
            k: v for k, v in original.items() if k not in ("timestamp", "receivedAt", "writeKey")
        }
        assert datetime.fromisoformat(forwarded["timestamp"]).tzinfo is not None
    assert SOURCE_KEY.encode() not in req.body
    for e in events:
        assert delivery(server, e["messageId"])["state"] == "done"


def test_server_error_is_retried_with_the_same_events(
    hookyard_server: Callable[..., HookyardServer], segment: FakeServer
) -> None:
    segment.fail(503, times=1)
    server = start(hookyard_server, segment)
    event = sample_track()
    assert server.post("/v1/track", event, write_key=SOURCE_KEY).status_code == 200
    first, second = segment.wait_for(2, path="/v1/batch")
    assert first.json()["batch"] == second.json()["batch"]  # same body: Segment dedupes
    server.wait_idle()
    row = delivery(server, event["messageId"])
    assert (row["state"], row["attempts"]) == ("done", 2)
    assert [(a["outcome"], a["http_status"]) for a in row["attempts_log"]] == [
        ("retryable", 503),
        ("ok", 200),
    ]


def test_oversize_event_is_a_dead_letter_with_the_reason_and_the_rest_goes_on(
    hookyard_server: Callable[..., HookyardServer], segment: FakeServer
) -> None:
    # hookyard itself may take bigger events than Segment (server.max_event_bytes): those stop
    # at the forwarder instead of making Segment refuse a whole batch
    server = start(hookyard_server, segment, max_event_bytes=64 * 1024)
    big = sample_track(properties={"blob": "x" * (MAX_EVENT_BYTES + 1000)})
    small = sample_track(userId="u2")
    body = {"batch": [big, small]}
    assert server.post("/v1/batch", body, write_key=SOURCE_KEY).status_code == 200
    server.wait_idle()
    [req] = assert_requests(segment, 1, path="/v1/batch")
    assert [e["messageId"] for e in req.json()["batch"]] == [small["messageId"]]
    [dead] = server.api("/api/dead-letters?destination=to-segment").json()["items"]
    assert (dead["message_id"], dead["kind"], dead["attempts"]) == (big["messageId"], "track", 1)
    assert dead["last_error"].startswith("event is larger than Segment's 32 KB limit (")
    assert delivery(server, small["messageId"])["state"] == "done"


# -- Segment's own library as the reference --------------------------------------------------
def library_batch(host: str, write_key: str) -> None:
    """What analytics-python sends for one identify and one track, flushed as one batch."""
    client = analytics.Client(
        write_key, host=host, sync_mode=False, max_retries=0, upload_size=10, upload_interval=0.05
    )
    when = datetime(2026, 1, 1, tzinfo=UTC)  # the library still sends the batch's sentAt = now
    client.identify(
        "97980cfea0067",
        {"email": "peter@example.com", "logins": 5},
        timestamp=when,
        message_id="lib-identify-1",
    )
    client.track(
        "97980cfea0067",
        "User Registered",
        {"plan": "Pro Annual"},
        timestamp=when,
        message_id="lib-track-1",
    )
    client.flush()
    client.join()


def test_segment_sees_what_the_library_would_have_sent_it(
    hookyard_server: Callable[..., HookyardServer],
    fake_destination: Callable[[], FakeServer],
    segment: FakeServer,
) -> None:
    """analytics-python -> Segment directly, and analytics-python -> hookyard -> forwarder ->
    Segment: same endpoint, same Basic header, same content type, the same events (messageId,
    context.library, integrations, traits/properties), each dated to within a second of the
    library's own timestamp (hookyard's clock-skew correction adds the few milliseconds between
    the library's sentAt and hookyard's receivedAt); the library's ``writeKey`` body field is
    not repeated (the Basic header carries the key)."""
    direct = fake_destination()
    direct.respond(200, {"success": True})
    library_batch(direct.url, SEGMENT_KEY)
    [reference] = direct.wait_for(1, path="/v1/batch")

    server = start(hookyard_server, segment)
    library_batch(server.url, SOURCE_KEY)
    server.wait_idle()
    [relayed] = assert_requests(segment, 1, path="/v1/batch")
    same_batch(relayed, reference)


def same_batch(relayed: RecordedRequest, reference: RecordedRequest) -> None:
    assert (relayed.method, relayed.path) == (reference.method, reference.path)
    assert relayed.headers["authorization"] == reference.headers["authorization"] == BASIC
    assert relayed.headers["content-type"] == reference.headers["content-type"]
    ours, theirs = relayed.json(), reference.json()
    assert theirs.pop("writeKey") == SEGMENT_KEY and "writeKey" not in ours
    assert set(ours) == set(theirs) == {"batch", "sentAt"}
    assert [e["type"] for e in ours["batch"]] == ["identify", "track"]
    for mine, lib in zip(ours["batch"], theirs["batch"], strict=True):
        mine_ts, lib_ts = mine.pop("timestamp"), lib.pop("timestamp")
        assert abs(_seconds(mine_ts) - _seconds(lib_ts)) < 1.0
        assert mine == lib
    assert [e["messageId"] for e in ours["batch"]] == ["lib-identify-1", "lib-track-1"]


def _seconds(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
