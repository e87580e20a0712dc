"""The recording fake HTTP destination, exercised with real HTTP clients (httpx and aiohttp)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from urllib.parse import quote

import aiohttp
import httpx
import pytest
from hookyard.http import HttpClient
from hookyard.testing.fake_server import FakeServer, RecordedRequest


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


def test_records_requests_and_default_answer(fake: FakeServer) -> None:
    assert fake.url == f"http://127.0.0.1:{fake.port}" and fake.port > 0
    r = httpx.post(f"{fake.url}/hook?x=1&y=2", json={"type": "track", "event": "Signed Up"},
                   headers={"X-Custom": "abc"})
    assert r.status_code == 200 and r.json() == {"ok": True}
    httpx.get(f"{fake.url}/other")
    [req, other] = fake.requests
    assert (req.method, req.path, req.query) == ("POST", "/hook", "x=1&y=2")
    assert req.headers["x-custom"] == "abc" and req.headers["content-type"] == "application/json"
    assert req.json() == {"type": "track", "event": "Signed Up"}
    assert req.received_at <= other.received_at <= time.time()
    assert [r.method for r in fake.requests_to("/other")] == ["GET"]
    assert fake.json_bodies("/hook") == [{"type": "track", "event": "Signed Up"}]
    fake.clear()
    assert fake.requests == []


def test_respond_with_times_falls_back(fake: FakeServer) -> None:
    fake.respond(201, {"id": 7}, {"X-Reply": "yes"})
    fake.respond(202, b"raw", times=2)
    fake.respond(203, [1], times=1)
    answers = [httpx.post(f"{fake.url}/a", content=b"x") for _ in range(5)]
    assert [r.status_code for r in answers] == [202, 202, 203, 201, 201]
    assert answers[0].content == b"raw" and answers[2].json() == [1]
    assert answers[3].json() == {"id": 7} and answers[3].headers["x-reply"] == "yes"
    assert len(fake.requests) == 5
    fake.reset()
    assert httpx.get(fake.url).json() == {"ok": True}


def test_fail_with_retry_after_is_recorded(fake: FakeServer) -> None:
    fake.fail(429, times=1, retry_after="1")
    first = httpx.post(f"{fake.url}/hook", json={"n": 1})
    assert first.status_code == 429 and first.headers["retry-after"] == "1"
    assert httpx.post(f"{fake.url}/hook", json={"n": 2}).status_code == 200
    assert fake.json_bodies() == [{"n": 1}, {"n": 2}]
    fake.fail(503)
    assert [httpx.get(fake.url).status_code for _ in range(3)] == [503, 503, 503]


def test_path_specific_rules_beat_global_ones(fake: FakeServer) -> None:
    fake.fail(500)
    fake.respond(200, {"fine": True}, path="/good")
    fake.fail(400, times=1, path="/good")
    assert httpx.get(f"{fake.url}/good").status_code == 400
    assert httpx.get(f"{fake.url}/good").json() == {"fine": True}
    assert httpx.get(f"{fake.url}/bad").status_code == 500


def test_set_handler(fake: FakeServer) -> None:
    def echo(req: RecordedRequest) -> tuple[int, object, dict[str, str]]:
        return 207, {"got": req.json(), "path": req.path}, {"x-echo": "1"}

    fake.set_handler(echo, path="/echo")
    fake.set_handler(lambda req: (418, b"teapot"))
    r = httpx.post(f"{fake.url}/echo", json={"a": 1})
    assert r.status_code == 207 and r.headers["x-echo"] == "1"
    assert r.json() == {"got": {"a": 1}, "path": "/echo"}
    assert httpx.get(f"{fake.url}/x").content == b"teapot"
    fake.set_handler(None)
    assert httpx.get(f"{fake.url}/x").status_code == 200


def test_hang_times_out_the_client_then_recovers(fake: FakeServer) -> None:
    fake.hang(5, times=1)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{fake.url}/slow", json={"n": 1}, timeout=0.3)
    assert fake.json_bodies("/slow") == [{"n": 1}]  # recorded before answering
    assert httpx.post(f"{fake.url}/slow", json={"n": 2}, timeout=2).status_code == 200
    fake.hang(0.2, times=1)
    started = time.monotonic()
    assert httpx.get(fake.url, timeout=5).json() == {"ok": True}
    assert time.monotonic() - started >= 0.2


def test_stop_does_not_wait_for_a_hanging_request() -> None:
    server = FakeServer().start()
    server.hang(60)
    errors: list[Exception] = []

    def call() -> None:
        try:
            httpx.get(server.url, timeout=30)
        except httpx.HTTPError as exc:
            errors.append(exc)

    thread = threading.Thread(target=call)
    thread.start()
    server.wait_for(1)
    started = time.monotonic()
    server.stop()
    thread.join(timeout=10)
    assert time.monotonic() - started < 3 and not thread.is_alive()
    assert len(errors) == 1  # the client sees a disconnect, not an answer


def test_close_connection_gives_a_disconnect(fake: FakeServer) -> None:
    fake.close_connection(times=1, path="/drop")

    async def run() -> int:
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await session.post(f"{fake.url}/drop", json={"n": 1})
            async with session.post(f"{fake.url}/drop", json={"n": 2}) as resp:
                return resp.status

    assert asyncio.run(run()) == 200
    with pytest.raises(httpx.RemoteProtocolError):
        fake.close_connection(times=1)
        httpx.get(f"{fake.url}/x")
    assert fake.json_bodies("/drop") == [{"n": 1}, {"n": 2}]
    assert len(fake.requests) == 3


def test_down_refuses_connections_and_up_reuses_the_port(fake: FakeServer) -> None:
    with httpx.Client() as client:  # a pooled keep-alive connection must not survive `down`
        assert client.post(f"{fake.url}/hook", json={"n": 1}).status_code == 200
        port, url = fake.port, fake.url
        fake.down()
        with pytest.raises(httpx.ConnectError):
            client.post(f"{url}/hook", json={"n": 2}, timeout=2)
        assert fake.json_bodies() == [{"n": 1}]
        fake.up()
        assert fake.port == port and fake.url == url
        assert client.post(f"{url}/hook", json={"n": 3}).status_code == 200
    assert fake.json_bodies() == [{"n": 1}, {"n": 3}]


def test_wait_for_blocks_until_requests_arrive(fake: FakeServer) -> None:
    def later() -> None:
        time.sleep(0.2)
        for n in range(3):
            httpx.post(f"{fake.url}/late", json={"n": n})

    threading.Thread(target=later).start()
    got = fake.wait_for(3, timeout=5, path="/late")
    assert [r.json()["n"] for r in got] == [0, 1, 2]
    assert fake.wait_for(2) == got


def test_wait_for_timeout_says_what_was_recorded(fake: FakeServer) -> None:
    httpx.post(f"{fake.url}/hook", content=b"hello")
    with pytest.raises(AssertionError, match=r"got 0.*POST /hook b'hello'"):
        fake.wait_for(1, timeout=0.2, path="/elsewhere")


def test_only_loopback_addresses() -> None:
    with pytest.raises(ValueError):
        FakeServer(host="0.0.0.0")


def test_raw_path_is_the_path_as_sent(fake: FakeServer) -> None:
    """``path`` is decoded, so only ``raw_path`` shows whether a plugin percent-encoded a user
    id it put in a path (``a/b`` must go out as ``a%2Fb``, not as two path segments)."""
    async def send(paths: list[str]) -> None:
        client = HttpClient(connect_timeout=2, total_timeout=5)
        try:
            for path in paths:
                result, _ = await client.send("POST", fake.url + path, json={})
                assert result.outcome == "ok"
        finally:
            await client.close()

    asyncio.run(send([f"/users/{quote('a/b', safe='')}", "/users/a/b", "/users/a b"]))
    encoded, forgotten, spaced = fake.requests
    assert (encoded.path, encoded.raw_path) == ("/users/a/b", "/users/a%2Fb")
    assert (forgotten.path, forgotten.raw_path) == ("/users/a/b", "/users/a/b")
    assert (spaced.path, spaced.raw_path) == ("/users/a b", "/users/a%20b")  # aiohttp escaped it
    assert [r.raw_path for r in fake.requests_to("/users/a/b")] == ["/users/a%2Fb", "/users/a/b"]


def test_fail_takes_retry_after_as_a_number() -> None:
    """Found by the plugin-author audit: fail(429, retry_after=30) answered 500 (a header value
    that was not text) with a traceback."""
    import httpx

    with FakeServer() as fake:
        fake.fail(429, retry_after=30, times=1)
        fake.fail(503, retry_after=1.5, times=1, path="/b")
        first = httpx.post(fake.url + "/a", json={})
        second = httpx.post(fake.url + "/b", json={})
    assert (first.status_code, first.headers["retry-after"]) == (429, "30")
    assert (second.status_code, second.headers["retry-after"]) == (503, "1.5")
