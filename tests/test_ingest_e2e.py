"""End to end through a real hookyard server on a loopback port: the official
``segment-analytics-python`` client and raw HTTP against the Segment source (tracking API and
webhook), the operator API and the API log."""

from __future__ import annotations

import ast
import base64
import gzip
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import segment.analytics as analytics
from hookyard.api_models import OutboxRow
from hookyard.errors import BadRequest
from hookyard.http_protocol import ERROR_CODES
from hookyard.testing import (
    sample_alias,
    sample_group,
    sample_identify,
    sample_page,
    sample_screen,
    sample_track,
)
from hookyard.testing.server import HookyardServer
from segment.analytics.request import APIError

KEY = "test-write-key"
CONFIG = {
    "sources": [{"name": "web", "plugin": "segment", "write_key": KEY}],
    "destinations": [{"name": "profiles", "plugin": "profiles", "sources": ["web"]}],
}
SAMPLES: dict[str, Callable[..., dict[str, Any]]] = {
    "identify": sample_identify,
    "track": sample_track,
    "page": sample_page,
    "screen": sample_screen,
    "group": sample_group,
    "alias": sample_alias,
}


def basic(key: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:".encode()).decode()}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def mid() -> str:
    return str(uuid.uuid4())


_AST_LOCK = threading.RLock()


@pytest.fixture(autouse=True)
def _serialize_ast_parse(monkeypatch: pytest.MonkeyPatch) -> None:
    """CPython 3.11's ``ast.parse`` keeps its recursion counter in module-global state: pytest
    formatting a failure (main thread) while a server thread formats a logged traceback (3.11
    tracebacks parse source for their ``^^^`` markers) can crash the whole session with
    ``INTERNALERROR SystemError: AST constructor recursion depth mismatch``. These tests provoke
    server-side errors on purpose, so serialize ``ast.parse`` while they run."""
    parse = ast.parse

    def locked(*args: Any, **kwargs: Any) -> Any:
        with _AST_LOCK:
            return parse(*args, **kwargs)

    monkeypatch.setattr(ast, "parse", locked)


@pytest.fixture
def server(hookyard_server: Callable[..., HookyardServer]) -> HookyardServer:
    return hookyard_server(CONFIG)


@pytest.fixture
def http(server: HookyardServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as client:
        yield client


def post(http: httpx.Client, path: str, body: Any, headers: dict[str, str] | None = None,
         **kw: Any) -> httpx.Response:
    """POST ``body`` (bytes as is, anything else as JSON) with the web source's Basic auth."""
    h = basic(KEY) if headers is None else headers
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http.post(path, content=content, headers={"Content-Type": "application/json", **h}, **kw)


def stored(server: HookyardServer, message_id: str) -> list[dict[str, Any]]:
    """The inbox rows (as /api/events shows them) with that messageId."""
    r = server.api(f"/api/events?message_id={message_id}")
    assert r.status_code == 200, r.text
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def inbox_count(server: HookyardServer) -> int:
    return int(server.runtime.db.read_sync(
        lambda c: c.execute("SELECT count(*) FROM inbox").fetchone()[0]))


def assert_ok(r: httpx.Response) -> None:
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True}


def assert_refused(r: httpx.Response, status: int, reason: str) -> None:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["success"] is False
    assert reason in body["error"], body
    # Segment's API error fields: older Segment and RudderStack Python libraries read both,
    # and without them retried a 4xx for minutes as if it were a network error
    assert body["message"] == body["error"] and body["code"] == ERROR_CODES[status], body


# -- the official Python client ------------------------------------------------------------------
@pytest.mark.parametrize("use_gzip", [False, True], ids=["plain", "gzip"])
def test_official_client_every_call(server: HookyardServer, use_gzip: bool) -> None:
    client = analytics.Client(KEY, host=server.url, gzip=use_gzip, sync_mode=True, max_retries=0)
    ids = {name: mid() for name in ("identify", "track", "group", "page", "screen", "alias")}
    client.identify("u1", {"email": "u1@example.com", "name": "Ada", "plan": "pro"},
                    message_id=ids["identify"])
    client.track("u1", "User Registered", {"plan": "Pro Annual"}, message_id=ids["track"])
    client.group("u1", "acme", {"name": "Acme Inc"}, message_id=ids["group"])
    client.page("u1", "Docs", "Install", {"url": "https://example.com/"}, message_id=ids["page"])
    client.screen("u1", "Onboarding", "Step 1", message_id=ids["screen"])
    client.alias("anon-1", "u1", message_id=ids["alias"])
    server.wait_idle()

    for call, message_id in ids.items():
        [row] = stored(server, message_id)
        event = row["event"]
        assert row["source"] == "web" and row["filtered"] is None
        assert event["type"] == call
        assert event["userId"] == "u1"
        assert event["context"]["library"]["name"] == "analytics-python"
        assert event["sentAt"] and event["timestamp"] and event["receivedAt"]
        assert "writeKey" not in event
    items = server.api("/api/events?limit=50").json()["items"]
    by_type = {i["event"]["type"]: i["event"] for i in items}
    assert by_type["track"]["event"] == "User Registered"
    assert by_type["track"]["properties"] == {"plan": "Pro Annual"}
    assert by_type["group"]["groupId"] == "acme"
    assert by_type["page"]["name"] == "Install" and by_type["page"]["category"] == "Docs"
    assert by_type["alias"]["previousId"] == "anon-1"

    user = server.api("/api/subscribers/u1").json()
    assert user["distinct_id"] == "u1"
    assert user["properties"] == {"email": "u1@example.com", "name": "Ada", "plan": "pro"}
    assert user["channels"] == {"$email": ["u1@example.com"]}
    events = server.api("/api/subscribers/u1/events").json()
    assert [e["event"] for e in events["events"]] == ["User Registered"]
    assert events["events"][0]["messageId"] == ids["track"]

    logs = server.api("/api/logs?status=200").json()["items"]
    assert len(logs) == 6 and {entry["path"] for entry in logs} == {"/v1/batch"}


def test_official_client_background_batches(server: HookyardServer) -> None:
    errors: list[Any] = []
    client = analytics.Client(KEY, host=server.url, gzip=True, upload_size=10,
                              on_error=lambda e, batch: errors.append(e), max_retries=0)
    for i in range(25):
        client.track(f"user-{i % 5}", "Item Viewed", {"i": i})
    client.identify("user-0", {"email": "zero@example.com"})
    client.shutdown()
    assert errors == []
    server.wait_idle()
    tracks = server.api("/api/events?type=track&limit=100").json()["items"]
    assert sorted(t["event"]["properties"]["i"] for t in tracks) == list(range(25))
    logs = server.api("/api/logs?status=200&limit=100").json()["items"]
    assert sum(entry["events"] for entry in logs) == 26
    assert len(server.api("/api/subscribers/user-3/events").json()["events"]) == 5


def test_official_client_nan_does_not_lose_its_batch(server: HookyardServer) -> None:
    """Python's json.dumps writes float("nan") as a bare NaN, which is not JSON: the whole
    batch was refused (and dropped by the library) for one value from a pandas frame."""
    errors: list[Any] = []
    client = analytics.Client(KEY, host=server.url, upload_size=50,
                              on_error=lambda e, batch: errors.append(e), max_retries=0)
    for i in range(50):
        score = {7: float("nan"), 8: float("inf"), 9: float("-inf")}.get(i, 1.5)
        client.track("nan-user", "Scored", {"score": score, "note": "NaN Infinity"})
    client.shutdown()
    assert errors == []
    tracks = server.api("/api/events?user_id=nan-user&limit=100").json()["items"]
    scores = [t["event"]["properties"]["score"] for t in tracks]
    assert len(scores) == 50 and scores.count(None) == 3 and scores.count(1.5) == 47
    assert {t["event"]["properties"]["note"] for t in tracks} == {"NaN Infinity"}


def test_official_client_wrong_key_is_refused(server: HookyardServer) -> None:
    client = analytics.Client("wrong-write-key", host=server.url, sync_mode=True, max_retries=0)
    with pytest.raises(APIError) as err:
        client.track("u1", "User Registered")
    assert err.value.status == 401
    assert inbox_count(server) == 0


# -- raw HTTP: the tracking API ------------------------------------------------------------------
@pytest.mark.parametrize("call", list(SAMPLES))
def test_each_call(server: HookyardServer, http: httpx.Client, call: str) -> None:
    body = SAMPLES[call](custom={"kept": [1, 2]})
    body.pop("receivedAt")
    assert_ok(post(http, f"/v1/{call}", body))
    [row] = stored(server, body["messageId"])
    event = row["event"]
    assert event["type"] == call
    assert event["custom"] == {"kept": [1, 2]}  # unknown fields survive
    assert event["receivedAt"].endswith("Z")


def test_message_id_and_received_at_are_added(server: HookyardServer, http: httpx.Client) -> None:
    body = sample_track(userId="no-mid-user", receivedAt="1999-01-01T00:00:00.000Z")
    body.pop("messageId")
    assert_ok(post(http, "/v1/track", body))
    [row] = server.api("/api/events?user_id=no-mid-user").json()["items"]
    assert uuid.UUID(row["event"]["messageId"])
    assert row["event"]["receivedAt"] > "2000"  # the server's clock, not the client's


def test_events_can_be_listed_by_anonymous_id(server: HookyardServer, http: httpx.Client) -> None:
    """A dead letter's user_key may be an anonymousId: /api/events?user_id= found none of
    those events (operator audit)."""
    body = sample_track(anonymousId="anon-listed")
    body.pop("userId", None)
    assert_ok(post(http, "/v1/track", body))
    [row] = server.api("/api/events?anonymous_id=anon-listed").json()["items"]
    assert row["event"]["anonymousId"] == "anon-listed"
    assert server.api("/api/events?user_id=anon-listed").json()["items"] == []


@pytest.mark.parametrize("blank", ["", " ", "\t\n"])
def test_a_blank_message_id_is_replaced(server: HookyardServer, http: httpx.Client,
                                        blank: str) -> None:
    """Not a key: two events with messageId " " are two events, not one and a repeat."""
    user = f"blank-mid-{len(blank)}"
    for n in range(2):
        assert_ok(post(http, "/v1/track", sample_track(userId=user, messageId=blank, event=f"E{n}")))
    rows = server.api(f"/api/events?user_id={user}").json()["items"]
    assert sorted(r["event"]["event"] for r in rows) == ["E0", "E1"]
    assert all(uuid.UUID(r["event"]["messageId"]) for r in rows)


def test_numeric_ids_are_taken(server: HookyardServer, http: httpx.Client) -> None:
    """Segment's Node libraries pass a numeric messageId through, and Python's a float
    groupId: each event was refused (silently, inside a batch's 200). A number is the
    messageId's text as a key, so a repeat of it is stored once."""
    track = sample_track(userId="num-ids", messageId=981234)
    group = sample_group(userId="num-ids", groupId=1.5, messageId="num-group")
    alias = sample_alias(userId="num-ids", previousId=2.5, messageId="num-alias")
    for _ in range(2):
        r = post(http, "/v1/batch", {"batch": [track, group, alias]})
        assert_ok(r)
        assert "refused" not in r.json()
    [row] = stored(server, "981234")
    assert str(row["event"]["messageId"]) == "981234"
    assert stored(server, "num-group")[0]["event"]["groupId"] == 1.5
    assert len(stored(server, "num-alias")) == 1


def test_type_field_may_be_omitted(server: HookyardServer, http: httpx.Client) -> None:
    body = sample_identify()
    body.pop("type")
    assert_ok(post(http, "/v1/identify", body))
    assert stored(server, body["messageId"])[0]["event"]["type"] == "identify"


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/import"])
def test_batch_and_import(server: HookyardServer, http: httpx.Client, path: str) -> None:
    events = [make() for make in SAMPLES.values()]
    body = {"batch": events, "context": {"ip": "192.0.2.1"}, "sentAt": "2026-01-01T00:00:01Z"}
    r = post(http, path, body)
    assert_ok(r)
    for sent in events:
        [row] = stored(server, sent["messageId"])
        assert row["event"]["type"] == sent["type"]
        assert row["event"]["context"] == {"ip": "192.0.2.1"}
    [log] = server.api("/api/logs?status=200&source=web").json()["items"]
    assert (log["path"], log["events"]) == (path, 6)


def test_write_key_in_body(server: HookyardServer, http: httpx.Client) -> None:
    body = {**sample_track(), "writeKey": KEY}
    assert_ok(post(http, "/v1/track", body, headers={}))
    [row] = stored(server, body["messageId"])
    assert "writeKey" not in row["event"]


def test_gzip_body(server: HookyardServer, http: httpx.Client) -> None:
    events = [sample_track(), sample_identify()]
    body = gzip.compress(json.dumps({"batch": events}).encode())
    r = post(http, "/v1/batch", body, headers={**basic(KEY), "Content-Encoding": "gzip"})
    assert_ok(r)
    single = sample_page()
    r = post(http, "/v1/page", gzip.compress(json.dumps(single).encode()),
             headers={**basic(KEY), "Content-Encoding": "gzip"})
    assert_ok(r)
    for sent in [*events, single]:
        assert len(stored(server, sent["messageId"])) == 1


def test_bad_gzip_is_400(http: httpx.Client) -> None:
    headers = {**basic(KEY), "Content-Encoding": "gzip"}
    plain = json.dumps(sample_track()).encode()  # says gzip, is not
    assert_refused(post(http, "/v1/track", plain, headers), 400, "gzip")
    truncated = gzip.compress(json.dumps(sample_track()).encode())[:-6]
    assert_refused(post(http, "/v1/track", truncated, headers), 400, "gzip")
    r = post(http, "/v1/track", b"{}", {**basic(KEY), "Content-Encoding": "br"})
    assert_refused(r, 400, "Content-Encoding")


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        ("/v1/track", b"{not json", "malformed JSON"),
        ("/v1/track", b'{"userId": "u1"}', "event"),
        ("/v1/identify", b'{"traits": {}}', "userId or anonymousId is required"),
        ("/v1/identify", b'{"userId": "u1", "traits": "x"}', "traits"),
        ("/v1/batch", b'{"batch": {}}', "invalid batch"),
        ("/v1/batch", b'{"batch": [{"type": "nope", "userId": "u"}]}', "type must be one of"),
    ],
)
def test_bad_body_is_400_with_reason(server: HookyardServer, http: httpx.Client, path: str,
                                      body: bytes, reason: str) -> None:
    assert_refused(post(http, path, body), 400, reason)
    assert inbox_count(server) == 0


def test_an_answer_lists_a_hundred_refused_events_and_counts_them_all(
        server: HookyardServer, http: httpx.Client) -> None:
    """Re-check: every refused event was listed (a 500 KB batch of {} had a 16 MB answer)."""
    r = post(http, "/v1/batch", {"batch": [sample_track()] + [{}] * 150})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert len(answer["refused"]) == 100 and answer["refused_count"] == 150
    assert answer["refused"][0]["index"] == 1


def test_a_bad_event_in_a_batch_is_refused_alone(server: HookyardServer,
                                                http: httpx.Client) -> None:
    """As Segment's API does (200, the event dropped): the libraries drop a whole batch
    answered 400, which would lose the valid events with it. The answer and the API log say
    which event was refused and why."""
    good = sample_track()
    r = post(http, "/v1/batch", {"batch": [good, {"type": "track", "userId": "u"}]})
    assert r.status_code == 200, r.text
    [refused] = r.json()["refused"]
    assert refused["index"] == 1 and "not a valid Segment event" in refused["error"]
    assert len(stored(server, good["messageId"])) == 1
    [log] = server.api("/api/logs?status=200").json()["items"]
    assert log["error"].startswith("1 of 2 events refused: [1] the event is not a valid")


def test_wrong_and_missing_key_are_401(server: HookyardServer, http: httpx.Client) -> None:
    r = post(http, "/v1/track", sample_track(), basic("wrong-write-key"))
    assert_refused(r, 401, "invalid write key")
    assert r.headers["www-authenticate"].startswith("Basic")
    assert_refused(post(http, "/v1/track", sample_track(), {}), 401, "missing write key")
    assert_refused(post(http, "/v1/track", sample_track(), bearer("wrong-write-key")), 401,
                   "invalid write key")
    assert inbox_count(server) == 0
    assert_ok(post(http, "/v1/track", sample_track(), bearer(KEY)))  # Customer.io's library


def test_event_over_32kb_is_413(server: HookyardServer, http: httpx.Client) -> None:
    """A single event over 32 KB is a 413; in a batch it is refused alone, as an invalid one
    is (Segment's libraries drop a whole batch answered 4xx)."""
    ok = sample_track(properties={"blob": "x" * 30_000})
    assert_ok(post(http, "/v1/track", ok))
    big = sample_track(properties={"blob": "x" * 33_000})
    assert_refused(post(http, "/v1/track", big), 413, "32768")
    small = sample_track()
    r = post(http, "/v1/batch", {"batch": [small, big]})
    assert r.status_code == 200, r.text
    assert r.json()["refused"] == [{"index": 1, "error": "event is larger than 32768 bytes"}]
    assert stored(server, big["messageId"]) == [] and len(stored(server, small["messageId"])) == 1
    assert_refused(post(http, "/v1/batch", {"batch": [big, big]}), 413, "every event")
    assert inbox_count(server) == 2
    metrics = http.get("/metrics").text  # the client saw 200: operators alert on this counter
    assert 'hookyard_events_refused_total{source="web"} 1.0' in metrics
    assert 'hookyard_events_received_total{source="web"} 3.0' in metrics
    assert 'hookyard_events_accepted_total{source="web"} 2.0' in metrics


def test_the_32kb_limit_is_on_the_event_as_sent(server: HookyardServer, http: httpx.Client) -> None:
    """Segment's libraries check each item of a batch at 32,768 bytes as they encode it; the
    batch's ``sentAt`` and ``context``, merged into each stored event, do not count (an outside
    audit: an item of 32,740 bytes took its whole batch with it as a 413)."""
    item = sample_track(properties={"blob": ""})
    item["properties"]["blob"] = "x" * (32_740 - len(json.dumps(item)))
    assert len(json.dumps(item)) == 32_740  # as analytics-python encodes and measures it
    body = {"batch": [item, sample_track()], "sentAt": "2026-01-01T00:00:10.000Z",
            "context": {"library": {"name": "analytics-python", "version": "2.4.0"}}}
    r = post(http, "/v1/batch", body)
    assert_ok(r)
    [row] = stored(server, item["messageId"])
    assert row["event"]["sentAt"] == "2026-01-01T00:00:10.000Z"


def test_request_over_500kb_is_413(server: HookyardServer, http: httpx.Client) -> None:
    batch = {"batch": [sample_track(properties={"blob": "x" * 20_000}) for _ in range(30)]}
    body = json.dumps(batch).encode()
    assert len(body) > 512_000
    assert_refused(post(http, "/v1/batch", body), 413, "larger than")

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
        for i in range(0, len(body), 64_000):
            yield body[i:i + 64_000]

    r = http.post("/v1/batch", content=chunks(), headers=basic(KEY))
    assert r.status_code == 413
    assert inbox_count(server) == 0
    deadline = time.monotonic() + 5  # logged after the answer, under the path's only source
    while len(logs := server.api("/api/logs?status=413").json()["items"]) < 2:
        assert time.monotonic() < deadline, logs
        time.sleep(0.05)
    assert {log["source"] for log in logs} == {"web"}


def test_gzip_bomb_is_413(server: HookyardServer, http: httpx.Client) -> None:
    inflated = b'{"batch": [], "pad": "' + b" " * 5_000_000 + b'"}'
    bomb = gzip.compress(inflated, compresslevel=9)
    assert len(bomb) < 20_000
    r = post(http, "/v1/batch", bomb, {**basic(KEY), "Content-Encoding": "gzip"})
    assert_refused(r, 413, "decompressed")
    assert inbox_count(server) == 0


def test_unknown_call_is_404(http: httpx.Client) -> None:
    assert_refused(post(http, "/v1/nonsense", sample_track()), 404, "unknown call")


def test_anonymous_event_accepted_then_filtered_by_profile_store(server: HookyardServer,
                                                                 http: httpx.Client) -> None:
    body = sample_identify(userId=None, anonymousId="anon-42")
    assert_ok(post(http, "/v1/identify", body))
    server.wait_idle()
    [row] = stored(server, body["messageId"])
    assert row["event"]["anonymousId"] == "anon-42"
    r = server.api(f"/api/deliveries?message_id={body['messageId']}")
    [delivery] = r.json()["deliveries"]
    assert delivery["destination"] == "profiles"
    assert delivery["state"] == "filtered"
    assert "userId is required" in delivery["last_error"]
    # exactly the fields the OpenAPI document lists (a column added later leaked into it)
    assert set(delivery) == set(OutboxRow.__struct_fields__)
    assert delivery["next_at"] is None  # no retry scheduled (it said 0: 1970 on a dashboard)
    assert server.api("/api/subscribers").json()["subscribers"] == []


def test_duplicate_message_id_is_stored_once(server: HookyardServer, http: httpx.Client) -> None:
    body = sample_track(userId="dup-user")
    for _ in range(3):
        assert_ok(post(http, "/v1/track", body))
    assert_ok(post(http, "/v1/batch", {"batch": [body, body]}))
    server.wait_idle()
    assert len(stored(server, body["messageId"])) == 1
    assert len(server.api("/api/subscribers/dup-user/events").json()["events"]) == 1
    r = server.api(f"/api/deliveries?message_id={body['messageId']}")
    assert len(r.json()["deliveries"]) == 1


# -- raw HTTP: the webhook -----------------------------------------------------------------------
def test_webhook_single_and_array(server: HookyardServer, http: httpx.Client) -> None:
    one = sample_identify(userId="hook-user", traits={"email": "hook@example.com"})
    assert_ok(post(http, "/connector/segment/", one, bearer(KEY)))
    many = [sample_track(userId="hook-user"), sample_track(userId="hook-user", event="Other")]
    assert_ok(post(http, "/connector/segment/", many, bearer(KEY)))
    assert_ok(post(http, "/connector/segment", sample_page(userId="hook-user"), bearer(KEY)))
    server.wait_idle()
    for sent in [one, *many]:
        assert len(stored(server, sent["messageId"])) == 1
    user = server.api("/api/subscribers/hook-user").json()
    assert user["channels"] == {"$email": ["hook@example.com"]}
    events = server.api("/api/subscribers/hook-user/events").json()["events"]
    assert sorted(e["event"] for e in events) == ["Other", "User Registered"]


def test_webhook_without_user_id_is_400_and_stored_nowhere(server: HookyardServer,
                                                           http: httpx.Client) -> None:
    anon = sample_track(userId=None, anonymousId="anon-1")
    r = post(http, "/connector/segment/", anon, bearer(KEY))
    assert_refused(r, 400, "userId is required")
    r = post(http, "/connector/segment/", [anon, sample_identify(userId=None)], bearer(KEY))
    assert_refused(r, 400, "[0] userId is required (every event refused)")
    server.wait_idle()
    assert inbox_count(server) == 0
    r = server.api(f"/api/deliveries?message_id={anon['messageId']}")
    assert r.json()["deliveries"] == []
    assert server.api("/api/subscribers").json()["subscribers"] == []


def test_webhook_array_stores_its_identified_events_and_lists_the_anonymous_ones(
    server: HookyardServer, http: httpx.Client
) -> None:
    """Segment's batching webhook does not retry a 400: an anonymous page view in the batch
    must not lose the identified events next to it."""
    good = sample_track(userId="w1")
    anon = sample_track(userId=None, anonymousId="anon-1")
    r = post(http, "/connector/segment/", [good, anon], bearer(KEY))
    assert r.status_code == 200, r.text
    assert r.json() == {"success": True, "refused": [{"index": 1, "error": "userId is required"}]}
    assert r.headers["access-control-allow-origin"] == "*"
    assert len(stored(server, good["messageId"])) == 1
    assert stored(server, anon["messageId"]) == []
    server.wait_idle()
    assert server.api("/api/subscribers/w1/events").json()["events"][0]["event"] == good["event"]
    items = server.api("/api/logs?status=200").json()["items"]
    [entry] = [i for i in items if i["path"] == "/connector/segment/"]
    assert (entry["status"], entry["events"]) == (200, 1)
    assert entry["error"] == "1 of 2 events refused: [1] userId is required"


def test_webhook_auth(server: HookyardServer, http: httpx.Client) -> None:
    assert_refused(post(http, "/connector/segment/", sample_track(), bearer("nope")), 401,
                   "invalid write key")
    assert_refused(post(http, "/connector/segment/", sample_track(), basic("nope")), 401,
                   "invalid write key")
    r = post(http, "/connector/segment/", sample_track(), {})
    assert_refused(r, 401, "Bearer")
    assert r.headers["www-authenticate"] == 'Bearer realm="hookyard"'  # the scheme it takes
    assert inbox_count(server) == 0


# -- operator API, health, API log ---------------------------------------------------------------
def test_api_requires_admin_token(server: HookyardServer, http: httpx.Client) -> None:
    for path in ("/api/events", "/api/logs", "/api/subscribers", "/api/workflow-runs",
                 "/api/deliveries?message_id=x"):
        assert http.get(path).status_code == 401
        assert http.get(path, headers=bearer("wrong-token")).status_code == 401
        assert http.get(path, headers=basic(server.runtime.admin_token)).status_code == 401
        assert http.get(path, headers=server.admin_headers).status_code == 200
    assert http.post("/api/replay", json={"source": "web"}).status_code == 401
    # the answer says which: none sent, another scheme, or a wrong token
    assert http.get("/api/logs").json()["error"].startswith("admin token required:")
    assert "as a Bearer token" in http.get("/api/logs", headers=basic("x")).json()["error"]
    assert http.get("/api/logs", headers=bearer("wrong-token")).json()["error"].startswith(
        "invalid admin token")


def test_an_unknown_path_answers_like_ingest(server: HookyardServer, http: httpx.Client) -> None:
    """A Segment library pointed at a wrong path (a host ending in /v1, June's /sdk/batch)
    reads ``code``: with ``{"error"}`` alone it took the 404 for a network error and retried
    for minutes (client-libraries audit). /api/ keeps its own error shape."""
    for path in ("/v1/v1/batch", "/sdk/batch"):
        r = http.post(path, json={"batch": []}, headers=basic(KEY))
        assert r.status_code == 404
        body = r.json()
        assert body["code"] == "not_found" and body["success"] is False
        assert "the tracking API is POST /v1/<call>" in body["message"]
    assert http.get("/api/nope", headers=server.admin_headers).json() == {"error": "Not Found"}


def test_healthz(http: httpx.Client) -> None:
    r = http.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_api_log_records_accepted_and_refused(server: HookyardServer, http: httpx.Client) -> None:
    assert_ok(post(http, "/v1/batch", {"batch": [sample_track(), sample_identify()]}))
    post(http, "/v1/track", sample_track(), basic("wrong-write-key"))
    post(http, "/v1/track", b"{oops")
    post(http, "/connector/segment/", sample_track(userId=None, anonymousId="a"), bearer(KEY))
    expected = {(200, "/v1/batch"), (401, "/v1/track"), (400, "/v1/track"),
                (400, "/connector/segment/")}
    deadline = time.monotonic() + 5
    while True:  # refusals are logged right after the answer
        items = server.api("/api/logs").json()["items"]
        if {(i["status"], i["path"]) for i in items} >= expected or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    by_key = {(i["status"], i["path"]): i for i in items}
    assert set(by_key) == expected
    accepted = by_key[(200, "/v1/batch")]
    assert (accepted["source"], accepted["events"], accepted["error"]) == ("web", 2, None)
    assert accepted["at"].endswith("Z") and accepted["method"] == "POST"
    assert by_key[(401, "/v1/track")]["source"] == "web"  # the path's only source
    assert "invalid write key" in by_key[(401, "/v1/track")]["error"]
    assert by_key[(400, "/v1/track")]["source"] == "web"
    assert "malformed JSON" in by_key[(400, "/v1/track")]["error"]
    assert by_key[(400, "/connector/segment/")]["error"] == "userId is required"
    refused = server.api("/api/logs?status=401").json()["items"]
    assert [i["path"] for i in refused] == ["/v1/track"]


# -- nothing answers 500 -------------------------------------------------------------------------
ODD_BODIES = [
    b"",
    b"null",
    b"[]",
    b"[null]",
    b'"str"',
    b"0",
    b"{}",
    b'{"batch": [[]]}',
    b'{"type": null, "userId": {}}',
    b'{"userId": "u", "traits": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    b'{"userId": "u", "traits": ' + b'{"a": ' * 3000 + b"1" + b"}" * 3000 + b"}",
    b'{"userId": "u\xff\xfe", "event": "e\xc3", "traits": {}}',
    b"\xff\xfe\x00{",
    b'{"userId": "u", "event": "e", "properties": {"n": 1' + b"0" * 4000 + b"}}",
    b'{"userId": 1' + b"0" * 40 + b', "event": "e", "traits": {"f": -1e308}}',
    b'{"userId": "u", "event": "e", "properties": {"n": 1e999}}',
    b'{"userId": "u", "event": "e", "timestamp": "not a date", "context": []}',
    b'{"userId": "u", "event": "e", "messageId": ' + b'"' + b"m" * 10_000 + b'"}',
    b'{"userId": "u", "event": "\\ud800", "writeKey": 7}',
    b'{"writeKey": "\xff\xfe", "userId": "u", "event": "e"}',
    b'{"writeKey": "' + KEY.encode() + b'", "a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
]


def test_nothing_answers_500(server: HookyardServer, http: httpx.Client) -> None:
    statuses: list[int] = []
    errors: list[tuple[Any, ...]] = []
    for body in ODD_BODIES:
        for path, auth in (("/v1/identify", basic(KEY)), ("/v1/track", basic(KEY)),
                           ("/v1/batch", basic(KEY)), ("/connector/segment/", bearer(KEY)),
                           ("/v1/track", {})):  # no header: the key is looked for in the body
            where = (path, "Basic" if auth else "no auth", body[:60])
            try:  # a fresh connection each time: a crash must not hide behind a reset one
                r = post(http, path, body, {**auth, "Connection": "close"})
            except httpx.TransportError as exc:
                errors.append((*where, repr(exc)))
                continue
            statuses.append(r.status_code)
            if r.status_code >= 500 or not r.headers["content-type"].startswith("application/json"):
                errors.append((*where, r.status_code))
    assert errors == []
    assert 400 in statuses and 401 in statuses
    assert http.get("/healthz").status_code == 200
    assert_ok(post(http, "/v1/track", sample_track()))


def test_an_empty_body_says_so(server: HookyardServer, http: httpx.Client) -> None:
    for body in (b"", b"  \n"):
        assert_refused(post(http, "/v1/track", body), 400, "malformed JSON: the body is empty")


def test_a_refused_unread_body_closes_the_connection() -> None:
    """408 and 413 may leave the body unread or still coming: what follows on the connection
    is not a new request (RFC 9110 15.5.9; an outside audit saw it parsed as one)."""
    from hookyard.errors import PayloadTooLarge, RequestTimeout
    from hookyard.ingest import _error_answer

    for exc in (RequestTimeout("slow"), PayloadTooLarge("big")):
        status, _body, headers = _error_answer(exc)
        assert (b"connection", b"close") in headers, status
    _status, _body, headers = _error_answer(BadRequest("bad"))
    assert (b"connection", b"close") not in headers


def test_a_trailing_slash_is_the_same_call(server: HookyardServer, http: httpx.Client) -> None:
    """Not a 307 to an http:// URL (wrong behind a TLS proxy, and not every client follows a
    redirect of a POST with its body)."""
    event = sample_track()
    assert_ok(post(http, "/v1/track/", event))
    assert len(stored(server, event["messageId"])) == 1
    assert post(http, "/v1/tracks/", sample_track()).status_code == 404


def test_invalid_utf8_anywhere_is_refused_and_an_old_stored_one_still_reads(
    server: HookyardServer, http: httpx.Client
) -> None:
    """A bad byte in a field no Struct names used to be stored (200), then failed every read
    of it: /api/events answered 500. Now it is refused; a row stored that way before still
    reads, with U+FFFD."""
    from hookyard.inbox import LogEntry, insert_events

    bad = b'{"userId":"u8","event":"x","extra":"\xff"}'
    assert_refused(post(http, "/v1/track", bad), 400, "invalid UTF-8")
    raw = b'{"type":"track","userId":"old-u8","event":"x","extra":"\xff"}'
    row = ("web", mid(), "track", "old-u8", None, "x", "2026-01-01T00:00:00.000Z", raw, 0)
    log = LogEntry("2026-01-01T00:00:00.000Z", "web", "POST", "/v1/track", 200, 1, None, 1.0)
    server.runtime.db.write_sync(lambda conn: insert_events(conn, [row], log))
    r = server.api("/api/events?user_id=old-u8")
    assert r.status_code == 200, r.text
    assert r.json()["items"][0]["event"]["extra"] == "\ufffd"
    assert server.api("/api/events").status_code == 200


def test_a_host_bug_answers_json_500_and_the_server_goes_on(
    server: HookyardServer, http: httpx.Client, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Ingest requests skip Starlette's middleware (hookyard.app.HookyardApp): a bug in the
    host's own code still answers a JSON 500 with the CORS header and is logged."""
    from hookyard import ingest

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(ingest, "event_rows", broken)
    r = post(http, "/v1/track", sample_track())
    assert r.status_code == 500
    assert r.json()["error"] == r.json()["message"] == "internal server error"
    assert r.headers["access-control-allow-origin"] == "*"
    assert "ingest request to /v1/track failed" in caplog.text
    monkeypatch.undo()
    assert_ok(post(http, "/v1/track", sample_track()))


def test_unroutable_event_does_not_stall_the_pipeline(server: HookyardServer,
                                                      http: httpx.Client) -> None:
    """An out-of-range number in a field the call's Struct does not type (``properties`` on an
    identify) must be refused at ingest, or at least not stop the router for every later event."""
    poison = b'{"userId": "p1", "traits": {}, "properties": {"n": 1e999}}'
    r = post(http, "/v1/identify", poison)
    assert r.status_code in (200, 400), r.text
    later = sample_identify(userId="after-poison", traits={"email": "later@example.com"})
    assert_ok(post(http, "/v1/identify", later))
    server.wait_idle(timeout=5)
    user = server.api("/api/subscribers/after-poison").json()
    assert user["channels"] == {"$email": ["later@example.com"]}


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/api/events?cursor=abc", None),
        ("GET", "/api/events?limit=abc", None),
        ("GET", "/api/logs?cursor=1.5", None),
        ("GET", "/api/dead-letters?limit=-", None),
        ("GET", "/api/subscribers?limit=abc", None),
        ("GET", "/api/subscribers/u1/events?cursor=x", None),
        ("GET", "/api/workflow-runs?cursor=x", None),
        ("POST", "/api/replay", {"source": "web", "destination": "nope"}),
        ("POST", "/api/replay", {"source": ["web"]}),
        ("POST", "/api/replay", {"source": "web", "since": "garbage"}),
        ("POST", "/api/replay", {}),
        ("POST", "/api/destinations/profiles/preview", {"type": "nope"}),
    ],
)
def test_operator_api_never_answers_500(server: HookyardServer, method: str, path: str,
                                        body: Any) -> None:
    r = server.api(path, method, json=body) if body is not None else server.api(path, method)
    assert r.status_code in (400, 404), (r.status_code, r.text)


def test_long_paths_are_logged_short_and_not_remembered(server: HookyardServer,
                                                         http: httpx.Client) -> None:
    """Refusals are logged without authentication: a client must not fill the disk (API log)
    or the memory (the per-path source cache) with 64 KB paths."""
    assert_ok(post(http, "/v1/track", sample_track()))
    call = "a" * 5000
    r = post(http, f"/v1/{call}", sample_track())
    assert r.status_code == 404 and len(r.json()["error"]) < 200
    deadline = time.monotonic() + 5
    while not (items := server.api("/api/logs?status=404").json()["items"]):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert len(items[0]["path"]) <= 513 and items[0]["path"].endswith("…")
    ingest = server._server.config.app.ingest  # type: ignore[union-attr]
    assert list(ingest._candidates) == ["/v1/track"]


def test_a_get_on_an_ingest_path_is_405_with_ingests_error_body(http: httpx.Client) -> None:
    r = http.get("/v1/track")
    assert r.status_code == 405 and set(r.headers["allow"].split(", ")) == {"POST", "OPTIONS"}
    assert r.json() == {"success": False, "error": "Method Not Allowed",
                        "code": "method_not_allowed", "message": "Method Not Allowed"}
