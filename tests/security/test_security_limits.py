"""Request size limits hold before a body is read: a declared or streamed body past the limit
is answered 413 while the client is still sending, and a small gzip body that inflates past the
limit (a gzip bomb) is refused with 413 without being inflated."""

from __future__ import annotations

import gzip
import socket
import time
import zlib
from collections.abc import Callable

import pytest
from hookyard.testing.server import HookyardServer, basic_auth

KEY = "limits-write-key"
LIMIT = 512_000  # [server] max_request_bytes default


@pytest.fixture
def server(hookyard_server: Callable[..., HookyardServer]) -> HookyardServer:
    return hookyard_server({"sources": [{"name": "web", "plugin": "segment", "write_key": KEY}]})


def _head(server: HookyardServer, path: str, extra: dict[str, str]) -> bytes:
    headers = {"Host": "127.0.0.1", "Content-Type": "application/json", **basic_auth(KEY), **extra}
    lines = [f"POST {path} HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()), "", ""]
    return "\r\n".join(lines).encode()


def _connect(server: HookyardServer) -> socket.socket:
    sock = socket.create_connection((server.config.server.host, server.config.server.port),
                                    timeout=10)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)  # little kernel buffering
    return sock


def _read_status(sock: socket.socket) -> tuple[int, bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1]), data


def test_declared_content_length_over_the_limit_is_refused_before_any_body(
    server: HookyardServer,
) -> None:
    with _connect(server) as sock:
        started = time.monotonic()
        sock.sendall(_head(server, "/v1/track", {"Content-Length": str(10**12)}))
        status, answer = _read_status(sock)  # no body byte was sent
        seconds = time.monotonic() - started
    assert status == 413, answer
    assert b"larger than" in answer
    assert seconds < 5


def test_streamed_chunked_body_is_cut_off_at_the_limit(server: HookyardServer) -> None:
    """Transfer-Encoding: chunked, no length: the server must answer 413 once it has read past
    the limit, not after reading (or buffering) the whole 256 MB the client offers."""
    offered = 256 * 1024 * 1024
    chunk = b"[" + b" " * (64 * 1024 - 2) + b"]"
    sent = 0
    status = 0
    answer = b""
    with _connect(server) as sock:
        sock.sendall(_head(server, "/v1/batch", {"Transfer-Encoding": "chunked"}))
        sock.settimeout(0.5)
        started = time.monotonic()
        while sent < offered:
            try:
                sock.sendall(f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n")
                sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break  # the server stopped reading: its answer is waiting
            sock.setblocking(False)
            try:
                peek = sock.recv(65536)
            except BlockingIOError:
                peek = b""
            finally:
                sock.setblocking(True)
                sock.settimeout(0.5)
            if peek:
                answer = peek
                break
        seconds = time.monotonic() - started
        if not answer:
            sock.settimeout(10)
            try:
                status, answer = _read_status(sock)
            except (ConnectionResetError, TimeoutError):
                pass
    if answer and not status:
        status = int(answer.split(b" ", 2)[1])
    assert status == 413, (status, answer[:300])
    # answered long before the client could send what it offered
    assert sent < 16 * 1024 * 1024, f"server read {sent} bytes before refusing"
    assert seconds < 10
    print(f"chunked body refused after {sent} bytes sent ({seconds:.2f} s)")


def _bomb(size: int, wbits: int = 31) -> bytes:
    comp = zlib.compressobj(9, zlib.DEFLATED, wbits)
    block = b" " * (1 << 20)
    out = [comp.compress(b'{"batch": [')]
    for _ in range(size // len(block)):
        out.append(comp.compress(block))
    out.append(comp.compress(b"]}"))
    out.append(comp.flush())
    return b"".join(out)


@pytest.mark.parametrize(("encoding", "wbits"), [("gzip", 31), ("deflate", 15)])
def test_gzip_bomb_is_refused_with_413(server: HookyardServer, encoding: str, wbits: int) -> None:
    body = _bomb(64 * 1024 * 1024, wbits)  # 64 MB of JSON whitespace in ~64 KB
    assert len(body) < LIMIT  # the compressed body itself is within the limit
    started = time.monotonic()
    r = server.post("/v1/batch", None, content=body,
                    headers={"Content-Encoding": encoding, "Content-Type": "application/json"})
    seconds = time.monotonic() - started
    assert r.status_code == 413, r.text
    assert "decompressed body is larger than" in r.json()["error"]
    assert seconds < 5  # refused without inflating 64 MB


def test_gzip_just_under_the_limit_is_accepted(server: HookyardServer) -> None:
    ev = b'{"userId": "u1", "event": "E", "properties": {"pad": "' + b"x" * 20_000 + b'"}}'
    r = server.post("/v1/track", None, content=gzip.compress(ev),
                    headers={"Content-Encoding": "gzip", "Content-Type": "application/json"})
    assert r.status_code == 200, r.text


def test_refusals_are_logged_without_the_body(server: HookyardServer) -> None:
    secret_body = b'{"userId": "u1", "event": "E", "properties": {"card": "4111111111111111"}}'
    padded = secret_body + b" " * (LIMIT + 10)
    r = server.post("/v1/track", None, content=padded,
                    headers={"Content-Type": "application/json"})
    assert r.status_code == 413, r.text
    logs: list[dict[str, object]] = []
    deadline = time.monotonic() + 15  # a loaded CI machine: the log line is written in the background
    while not logs and time.monotonic() < deadline:  # refusals are logged after the answer
        logs = server.api("/api/logs").json()["items"]
        time.sleep(0.05)
    assert logs, "the refusal was not logged within 15 s"
    assert logs[0]["status"] == 413, logs
    assert "4111" not in str(logs)


def test_operator_api_bodies_are_limited_too(server: HookyardServer) -> None:
    """A huge body to an operator route is a 413 with a reason, not read into memory."""
    import httpx
    from hookyard.admin_api import ADMIN_BODY_LIMIT

    token = server.config.server.admin_token
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    big = b'{"ids": [' + b"1," * (ADMIN_BODY_LIMIT // 2) + b"1]}"
    r = httpx.post(f"{server.url}/api/dead-letters/retry", content=big, headers=headers, timeout=30)
    assert r.status_code == 413
    assert "larger than" in r.json()["error"]
    ok = httpx.post(f"{server.url}/api/dead-letters/retry", json={"ids": [1]}, headers=headers)
    assert ok.status_code == 200


def test_a_flood_of_refusals_gets_a_bounded_number_of_log_rows() -> None:
    """Found by an outside audit: every refused request wrote an API log row (about 800 bytes,
    kept for the retention period): a client with no key added 565 rows a second. Each kind
    of refusal now gets a burst of rows, then one every few seconds; the next row written says
    how many were left out."""
    from hookyard import refusal_budget
    from hookyard.refusal_budget import RefusalBudget

    budget = RefusalBudget()
    taken = [budget.take(None, 401) for _ in range(1000)]
    assert taken[:refusal_budget.BURST] == [0] * refusal_budget.BURST
    assert taken[refusal_budget.BURST:] == [None] * (1000 - refusal_budget.BURST)
    assert budget.take("web", 401) == 0 and budget.take(None, 400) == 0  # other kinds: own budget
    budget._buckets[(None, 401)][1] -= refusal_budget.REFILL_SECONDS  # time passes
    assert budget.take(None, 401) == 1000 - refusal_budget.BURST
    assert budget.take(None, 401) is None
