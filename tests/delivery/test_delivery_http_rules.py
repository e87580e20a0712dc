"""The common HTTP rules against real loopback peers: redirects are never followed (a 3xx is a
permanent failure naming its Location, the request is not re-sent anywhere), and a deliver hook
that answers the wrong number of results is told how many, with a warning naming the
destination."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from delivery_kit import PLUGIN, dead_letters, recorder, send, trace, track, wait_until
from hookyard import hookimpl
from hookyard.connectors import Connector, DestinationContext
from hookyard.deliveries import Delivery, DeliveryResult, MapResult, classify_http
from hookyard.events import Event, event_type
from hookyard.http import HttpClient
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer

Start = Callable[..., HookyardServer]
NOT_FOLLOWED = "redirects are not followed: fix the destination's URL setting"


async def _send(url: str, **kw: Any) -> DeliveryResult:
    client = HttpClient(connect_timeout=1, total_timeout=2)
    try:
        result, _ = await client.send("POST", url, **kw)
    finally:
        await client.close()
    return result


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_send_does_not_follow_a_redirect(
    fake_destination: Callable[[], FakeServer], status: int
) -> None:
    fake = fake_destination()
    fake.respond(status, None, {"Location": "/landing"}, path="/hook")
    result = asyncio.run(_send(fake.url + "/hook", json={"x": 1},
                               headers={"X-Acme-Key": "acme-key-0123456789"}))
    assert (result.outcome, result.http_status) == ("permanent", status)
    assert result.error == f"HTTP {status} (redirect to /landing; {NOT_FOLLOWED})"
    [req] = fake.requests  # one request, and nothing sent to /landing (nor its headers)
    assert (req.method, req.path, req.json()) == ("POST", "/hook", {"x": 1})


def test_a_3xx_without_location_is_permanent_too(fake_destination: Callable[[], FakeServer]) -> None:
    fake = fake_destination()
    fake.respond(300, b"choose")
    result = asyncio.run(_send(fake.url + "/hook", data=b"{}"))
    assert (result.outcome, result.http_status, result.response_body) == ("permanent", 300, "choose")
    assert result.error == f"HTTP 300 ({NOT_FOLLOWED})"


def test_a_redirecting_destination_gets_dead_letters_not_deliveries(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    fake.respond(302, None, {"Location": f"{fake.url}/landing"}, path="/batch")
    server = hookyard_server({"destinations": [recorder(fake.url)]}, plugins=[PLUGIN])
    assert send(server, "/v1/track", track("r1", 1)).status_code == 200
    [dl] = wait_until(lambda: dead_letters(server), what="a dead letter")
    assert (dl["message_id"], dl["attempts"], dl["last_status"]) == ("r1-1", 1, 302)
    assert dl["last_error"] == f"HTTP 302 (redirect to {fake.url}/landing; {NOT_FOLLOWED})"
    [row] = trace(server, "r1-1")
    assert [(a["outcome"], a["http_status"]) for a in row["attempts_log"]] == [("permanent", 302)]
    assert [r.path for r in fake.requests] == ["/batch"]


class MiscountSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    answer: str  # "extra": one result too many; "tuple": the right results in a tuple


class MiscountPlugin:
    """A destination whose deliver hook answers the wrong shape (sends nothing)."""

    @hookimpl
    def register_connectors(self) -> list[Connector]:
        return [Connector(name="miscount", kind="destination", settings=MiscountSettings,
                          batch_size=5, description="test destination")]

    @hookimpl
    def map_event(self, destination: DestinationContext, event: Event,
                  raw: dict[str, Any]) -> MapResult:
        return MapResult.send(Delivery(kind=event_type(event), body={"id": raw["messageId"]}))

    @hookimpl
    async def deliver(self, destination: DestinationContext, deliveries: list[Delivery],
                      client: HttpClient) -> Any:
        results = [DeliveryResult.ok()] * len(deliveries)
        if destination.settings.answer == "extra":
            return results + [DeliveryResult.ok()]
        return tuple(results)


def test_a_wrong_number_of_results_is_counted_and_logged(
    hookyard_server: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hookyard.delivery")
    policy = {"max_attempts": 1}
    server = hookyard_server({"destinations": [
        {"name": name, "plugin": "miscount", "sources": ["web"], "settings": {"answer": name},
         "delivery": policy} for name in ("extra", "tuple")]}, plugins=[MiscountPlugin()])
    events = [track(f"m{i}", 1) for i in range(5)]
    assert send(server, "/v1/batch", {"batch": events}).status_code == 200
    wait_until(lambda: len(dead_letters(server)) == 10, what="10 dead letters")
    # max_attempts = 1: "gave up after 1 attempts: <the attempt's error>"
    errors = {(d["destination"], d["last_error"].partition(": ")[2]) for d in dead_letters(server)}
    counted = re.compile(r"deliver hook returned (\d+) results? for (\d+) deliver(y|ies)")
    for dest, error in errors:
        if dest == "extra":
            match = counted.fullmatch(error)
            assert match and int(match[1]) == int(match[2]) + 1, error
        else:
            assert re.fullmatch(r"deliver hook returned tuple, not a list, for \d deliver(y|ies)",
                                error), error
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING
                and "deliver hook returned" in r.getMessage()]
    assert any(w.startswith("destination extra: deliver hook returned ") for w in warnings)
    assert any(w.startswith("destination tuple: deliver hook returned tuple") for w in warnings)
    assert not [r for r in caplog.records if r.exc_info and "deliver hook" in r.getMessage()]


@pytest.mark.parametrize(("body", "error"), [
    (b'{"success": false, "message": "Invalid write key"}', "HTTP 401: Invalid write key"),
    (b'{"error": "invalid_token", "error_description": "The token expired"}',
     "HTTP 401: The token expired"),
    (b'{"type": "about:blank", "title": "Unauthorized", "detail": "key revoked"}',
     "HTTP 401: key revoked"),
    (b'{"error": {"message": "no such app", "code": 7}}', "HTTP 401: no such app"),
    (b'{"error": "  line one\\nline two"}', "HTTP 401: line one"),
    (b'{"ok": false}', "HTTP 401"),
    (b"<html>Unauthorized</html>", "HTTP 401"),
    (b'{"message": "' + b"x" * 300 + b'"}', "HTTP 401: " + "x" * 200 + "…"),
])
def test_a_json_error_answer_gives_its_reason(body: bytes, error: str) -> None:
    """Found by the judge-style audit: dlq list showed 'HTTP 401' for a forwarder's dead
    letter, with Segment's reason only in the stored body."""
    assert classify_http(401, {}, body).error == error


def test_an_answer_is_read_up_to_a_limit_gzip_included(
    fake_destination: Callable[[], FakeServer],
) -> None:
    """A peer answering 100 MB (or a gzip bomb) had its whole body read into the worker's
    memory: 1.2 GB for 0.5 MB on the wire (delivery adversity audit)."""
    import gzip

    from hookyard.http import MAX_RESPONSE_BYTES

    fake = fake_destination()
    fake.respond(200, b"x" * (3 * MAX_RESPONSE_BYTES), path="/big")
    fake.respond(200, gzip.compress(b"0" * (20 * MAX_RESPONSE_BYTES)),
                 {"Content-Encoding": "gzip"}, path="/bomb")
    fake.respond(200, {"ok": True}, path="/small")

    async def go() -> list[tuple[int, int]]:
        client = HttpClient()
        try:
            out = []
            for path in ("/big", "/bomb", "/small", "/big", "/small"):  # the pool still works
                _, resp = await client.send("POST", fake.url + path, json={})
                assert resp is not None
                out.append((resp.status, len(resp.body)))
            return out
        finally:
            await client.close()

    assert asyncio.run(go()) == [(200, MAX_RESPONSE_BYTES), (200, MAX_RESPONSE_BYTES),
                                 (200, len(b'{"ok":true}')), (200, MAX_RESPONSE_BYTES),
                                 (200, len(b'{"ok":true}'))]


def test_no_request_starts_that_the_deliver_calls_time_could_not_answer(
    fake_destination: Callable[[], FakeServer],
) -> None:
    """A Novu call of 100 identifies, 10 at a time, to a peer answering each in 6 s overran
    its 54 s: every result was thrown away, those of the 90 answered too, and all were sent
    again (delivery adversity audit). Requests that could not be answered in time are not
    started: retried later, no attempt counted."""
    from hookyard.http import NOT_STARTED, send_deadline

    fake = fake_destination()
    fake.hang(1.1, path="/slow")  # every answer takes 1.1 s

    async def go() -> list[DeliveryResult]:
        client = HttpClient(total_timeout=2.0)
        try:
            with send_deadline(1.6):
                # at 0 s: the call's first wave always goes, its timeout cut to 1.6 s
                first = (await client.send("POST", fake.url + "/slow", json={}))[0]
                second = (await client.send("POST", fake.url + "/slow", json={}))[0]  # at 1.1 s
                third = (await client.send("POST", fake.url + "/slow", json={}))[0]
            outside = (await client.send("POST", fake.url + "/slow", json={}))[0]
            return [first, second, third, outside]
        finally:
            await client.close()

    first, second, third, outside = asyncio.run(go())
    assert first.outcome == "ok" and outside.outcome == "ok"
    # second: 0.5 s left of the call, under the 2 s timeout, past the first second: not sent
    assert (second.outcome, second.sent, second.error) == ("retryable", False, NOT_STARTED)
    assert third.sent is False
    assert len(fake.requests_to("/slow")) == 2


def test_an_answer_that_is_not_http_is_an_invalid_answer_not_a_400() -> None:
    """aiohttp refuses a bad status line with an error carrying a status 400 of its own, which
    the attempt log showed as if the peer had answered 400 (delivery adversity audit)."""
    import socket
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def answer() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(b"HTTP/1.1 abc nonsense\r\n\r\n")
        conn.close()

    threading.Thread(target=answer, daemon=True).start()
    try:
        result = asyncio.run(_send(f"http://127.0.0.1:{port}/x", json={}))
    finally:
        listener.close()
    assert result.outcome == "retryable" and result.http_status is None
    assert (result.error or "").startswith("invalid HTTP answer: "), result.error
    assert "\n" not in (result.error or "")
