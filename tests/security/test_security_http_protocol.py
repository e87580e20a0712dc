"""HTTP at the byte level, against hookyard's own protocol (:mod:`hookyard.http_protocol`):
what an outside audit sent over raw sockets, and what httptools alone let through."""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable

import pytest
from hookyard.testing.server import HookyardServer, basic_auth

Start = Callable[..., HookyardServer]
EVENT = b'{"type":"track","userId":"raw","event":"E","messageId":"raw-1"}'


@pytest.fixture
def server(hookyard_server: Start) -> HookyardServer:
    return hookyard_server()


def exchange(server: HookyardServer, *parts: bytes, rcvbuf: int = 0) -> bytes:
    """Send ``parts`` (a pause between them), read until the server closes or goes quiet."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.socket() as conn:
        if rcvbuf:
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        conn.connect((host, int(port)))
        conn.settimeout(3)
        for i, part in enumerate(parts):
            if i:
                time.sleep(0.1)
            try:
                conn.sendall(part)
            except OSError:
                break
        answer = b""
        try:
            while chunk := conn.recv(65536):
                answer += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return answer


def statuses(answer: bytes) -> list[int]:
    return [int(s) for s in re.findall(rb"HTTP/1\.1 (\d{3}) ", answer)]


def auth(server: HookyardServer) -> bytes:
    return b"Authorization: " + basic_auth(server.write_key())["Authorization"].encode() + b"\r\n"


def test_headers_of_a_request_behind_one_in_flight_are_limited_too(server: HookyardServer) -> None:
    """The 64 KiB limit held only for a connection's first request: 400 MB of headers went in
    behind a slow answer, the server's memory grew by 470 MB."""
    small = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    big = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000 + b"\r\n\r\n"
    assert statuses(exchange(server, small + big)) == [200, 431]  # read in one go
    assert statuses(exchange(server, small, big)) == [200, 431]  # while the first is answered


def test_a_flood_of_trailers_is_cut_off(server: HookyardServer) -> None:
    head = b"POST /v1/track HTTP/1.1\r\nHost: x\r\n" + auth(server)
    chunked = head + b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(EVENT) + EVENT + b"\r\n0\r\n"
    answer = exchange(server, chunked + b"X-T: ", *[b"a" * 100_000] * 30)
    assert statuses(answer) == [431] and b"framing and trailers" in answer


def test_a_trailer_is_never_one_of_the_request_headers(server: HookyardServer) -> None:
    """A trailer carried the Authorization that counted (a proxy checks another)."""
    body = b"%x\r\n" % len(EVENT) + EVENT + b"\r\n0\r\n" + auth(server) + b"\r\n"
    answer = exchange(server, b"POST /v1/track HTTP/1.1\r\nHost: x\r\n"
                              b"Transfer-Encoding: chunked\r\n\r\n" + body)
    assert statuses(answer) == [401]
    assert server.api("/api/events?message_id=raw-1").json()["items"] == []


def test_a_refused_request_is_answered_after_the_one_before_it(server: HookyardServer) -> None:
    """Its refusal took the place of the answer before it (a committed event read as refused)."""
    ok = b"POST /v1/track HTTP/1.1\r\nHost: x\r\n" + auth(server) + \
        b"Content-Length: %d\r\n\r\n" % len(EVENT) + EVENT
    bad = b"GET /readyz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"
    assert statuses(exchange(server, ok + bad)) == [200, 400]
    assert statuses(exchange(server, ok, bad)) == [200, 400]
    healthz = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    assert statuses(exchange(server, healthz * 3, healthz, healthz + bad)) == [200] * 5 + [400]
    malformed = b"GET /readyz HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n"  # httptools' own
    assert statuses(exchange(server, ok + malformed)) == [200, 400]
    assert statuses(exchange(server, ok, malformed)) == [200, 400]


SIZED = b"Content-Length: %d\r\n\r\n" % len(EVENT) + EVENT
CHUNKED = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n" % len(EVENT) + EVENT + b"\r\n0\r\n\r\n"


@pytest.mark.parametrize(("request_bytes", "status", "reason"), [
    (b"POST /v1/track HTTP/2.0\r\n" + SIZED, 505, b"HTTP version 2.0 is not supported"),
    (b"POST /v1/track HTTP/1.0\r\n" + CHUNKED, 400, b"needs HTTP/1.1"),
    (b"POST /v1/track HTTP/1.1\r\nHost: x\r\nContent-Encoding: identity\r\n"
     b"Content-Encoding: gzip\r\n" + SIZED, 400, b"more than one Content-Encoding"),
])
def test_versions_and_codings_httptools_took(
    server: HookyardServer, request_bytes: bytes, status: int, reason: bytes
) -> None:
    answer = exchange(server, request_bytes)
    assert statuses(answer) == [status] and reason in answer, answer


def test_a_client_gone_before_its_pipelined_answers_logs_no_traceback(
    server: HookyardServer, caplog: pytest.LogCaptureFixture
) -> None:
    """uvicorn told only the newest pipelined request that the client left; an older one
    still running wrote to the closed transport ("Exception in ASGI application")."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.socket() as conn:
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
        conn.connect((host, int(port)))
        conn.sendall(b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n" * 100)
        time.sleep(1.0)
    time.sleep(1.0)
    assert "Exception in ASGI application" not in caplog.text
    assert statuses(exchange(server, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")) == [200]
