"""A recording fake HTTP destination for tests: a real Starlette app served by uvicorn on loopback.

    with FakeServer() as fake:                      # 127.0.0.1, free port
        fake.fail(429, times=1, retry_after="1")    # first request: 429, then the default answer
        ...                                         # point the code under test at fake.url
        [req] = fake.wait_for(1, path="/hook")
        assert req.json()["type"] == "track"

Answers are chosen per request: a path-specific rule beats a global one; within a scope the
oldest queued ``times=N`` rule is used first, then the ``times=None`` ("from now on") rule, then
the default ``200 {"ok": true}``. Every request is recorded before it is answered.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

Handler = Callable[["RecordedRequest"], "tuple[int, Any] | tuple[int, Any, dict[str, str]]"]
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]


@dataclass
class RecordedRequest:
    """One request as the fake received it.

    ``path`` is URL-decoded (``/users/a%2Fb`` is recorded as ``/users/a/b``): rules and
    ``requests_to``/``wait_for(path=)`` match on it. ``raw_path`` is the path exactly as sent,
    percent-escapes kept, so a test can check that a plugin encodes what it puts in a path
    (``assert req.raw_path == "/users/a%2Fb"``). ``query`` is the raw query string.
    """

    method: str
    path: str
    query: str
    headers: dict[str, str]  # lower-case keys; repeated headers joined with ", "
    body: bytes
    received_at: float
    raw_path: str = ""

    def json(self) -> Any:
        return msgspec.json.decode(self.body)


@dataclass
class _Rule:
    kind: str  # "respond" | "hang" | "close" | "handler"
    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    handler: Handler | None = None
    times: int | None = None


_DEFAULT = _Rule("respond", 200, {"ok": True})


def _encode(body: Any) -> tuple[bytes, str | None]:
    if body is None:
        return b"", None
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), None
    return msgspec.json.encode(body), "application/json"


class FakeServer:
    """A real HTTP server on a loopback address that records requests and answers as told."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        addr = ipaddress.ip_address(host)  # an IPv4 loopback literal only: never listen elsewhere
        if addr.version != 4 or not addr.is_loopback:
            raise ValueError(f"FakeServer only binds IPv4 loopback addresses, not {host!r}")
        self.host, self.port = host, port
        self._cond = threading.Condition(threading.RLock())
        self._records: list[RecordedRequest] = []
        self._queues: dict[str | None, deque[_Rule]] = {}
        self._base: dict[str | None, _Rule] = {}
        self._stopping = threading.Event()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._app = Starlette(routes=[Route("/{path:path}", self._endpoint, methods=METHODS)])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    # -- lifecycle ----------------------------------------------------------------------------
    def start(self) -> FakeServer:
        if self._server is None:
            self._launch()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes `hang` handlers so shutdown never waits for them
        server, thread = self._server, self._thread
        if server is not None and thread is not None:
            server.should_exit = True
            thread.join(timeout=5)  # `hang` watches _stopping; uvicorn's grace period is 2 s
        self._server = self._thread = None

    def down(self) -> None:
        """Stop listening (connections are refused); records and port are kept."""
        self.stop()

    def up(self) -> None:
        """Listen again, on the same port."""
        self.start()

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _launch(self) -> None:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # `up` rebinds the same port
        sock.bind((self.host, self.port))
        self.port = int(sock.getsockname()[1])
        config = uvicorn.Config(self._app, host=self.host, port=self.port, log_level="warning",
                                lifespan="off", timeout_graceful_shutdown=2)
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True,
                                  name=f"fake-server-{self.port}")
        self._stopping.clear()
        self._server, self._thread = server, thread
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                sock.close()
                raise RuntimeError(f"fake server did not start on {self.url}")
            time.sleep(0.01)

    # -- records ------------------------------------------------------------------------------
    @property
    def requests(self) -> list[RecordedRequest]:
        with self._cond:
            return list(self._records)

    def requests_to(self, path: str) -> list[RecordedRequest]:
        with self._cond:
            return [r for r in self._records if r.path == path]

    def json_bodies(self, path: str | None = None) -> list[Any]:
        return [r.json() for r in (self.requests if path is None else self.requests_to(path))]

    def clear(self) -> None:
        with self._cond:
            self._records.clear()

    def wait_for(self, count: int, timeout: float = 10.0,
                 path: str | None = None) -> list[RecordedRequest]:
        """Block until at least ``count`` requests (to ``path``) are recorded; return them."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                got = self.requests if path is None else self.requests_to(path)
                if len(got) >= count:
                    return got
                left = deadline - time.monotonic()
                if left <= 0:
                    seen = [f"{r.method} {r.path} {r.body[:120]!r}" for r in self._records]
                    where = f" to {path}" if path else ""
                    raise AssertionError(f"expected >= {count} request(s){where} within "
                                         f"{timeout} s, got {len(got)}; recorded: {seen}")
                self._cond.wait(left)

    # -- behaviour ----------------------------------------------------------------------------
    def respond(self, status: int = 200, body: Any = None, headers: dict[str, str] | None = None,
                *, path: str | None = None, times: int | None = None) -> None:
        """Answer ``status`` with ``body`` (bytes as is, None empty, anything else as JSON)."""
        self._add(_Rule("respond", status, body, dict(headers or {}), times=times), path)

    def fail(self, status: int = 500, times: int | None = None,
             retry_after: str | float | None = None, path: str | None = None) -> None:
        """Answer ``status`` with a JSON error body and, when given, a ``Retry-After`` header
        (seconds as a number or text, or an HTTP date)."""
        if isinstance(retry_after, float) and retry_after.is_integer():
            retry_after = int(retry_after)
        headers = {"retry-after": str(retry_after)} if retry_after is not None else {}
        body = {"ok": False, "error": f"fake failure {status}"}
        self._add(_Rule("respond", status, body, headers, times=times), path)

    def hang(self, seconds: float = 30.0, times: int | None = None,
             path: str | None = None) -> None:
        """Sleep ``seconds`` before answering (with the standing rule or the default answer)."""
        self._add(_Rule("hang", seconds=seconds, times=times), path)

    def close_connection(self, times: int | None = None, path: str | None = None) -> None:
        """Read the request, then close the connection without any HTTP answer."""
        self._add(_Rule("close", times=times), path)

    def set_handler(self, fn: Handler | None, path: str | None = None) -> None:
        """From now on answer with ``fn(request) -> (status, body[, headers])``; None removes it."""
        if fn is not None:
            self._add(_Rule("handler", handler=fn), path)
            return
        with self._cond:
            if path in self._base and self._base[path].kind == "handler":
                del self._base[path]

    def reset(self) -> None:
        """Back to the default answer everywhere; records are kept."""
        with self._cond:
            self._queues.clear()
            self._base.clear()

    def _add(self, rule: _Rule, path: str | None) -> None:
        with self._cond:
            if rule.times is None:
                self._base[path] = rule
                self._queues.pop(path, None)
            elif rule.times > 0:
                self._queues.setdefault(path, deque()).append(rule)

    def _pick(self, path: str) -> _Rule:
        with self._cond:
            for key in (path, None):
                queue = self._queues.get(key)
                if queue:
                    rule = queue[0]
                    rule.times = (rule.times or 1) - 1
                    if rule.times <= 0:
                        queue.popleft()
                    return rule
                if key in self._base:
                    return self._base[key]
            return _DEFAULT

    # -- the ASGI side ------------------------------------------------------------------------
    async def _endpoint(self, request: Request) -> Response:
        headers: dict[str, str] = {}
        for key, value in request.headers.items():
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        rec = RecordedRequest(request.method, request.url.path,
                              request.scope.get("query_string", b"").decode("latin-1"), headers,
                              await request.body(), time.time(), raw_path.decode("latin-1"))
        with self._cond:
            self._records.append(rec)
            self._cond.notify_all()
        rule = self._pick(rec.path)
        if rule.kind == "hang":
            deadline = time.monotonic() + rule.seconds
            while time.monotonic() < deadline and not self._stopping.is_set():
                await asyncio.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
            with self._cond:  # then answer with the standing rule (or close if stopping)
                rule = self._base.get(rec.path) or self._base.get(None) or _DEFAULT
            rule = _Rule("close") if self._stopping.is_set() else rule
            rule = _DEFAULT if rule.kind == "hang" else rule
        if rule.kind == "close":
            await self._drop(request)
            return Response(status_code=500)  # never sent: the connection is gone
        status, body, extra = rule.status, rule.body, rule.headers
        if rule.kind == "handler" and rule.handler is not None:
            answer = rule.handler(rec)
            status, body = answer[0], answer[1]
            extra = dict(answer[2]) if len(answer) > 2 else {}
        content, media_type = _encode(body)
        return Response(content, status_code=status, headers=extra, media_type=media_type)

    async def _drop(self, request: Request) -> None:
        """Close this request's transport so the client sees a disconnect, not a 500."""
        server, client = self._server, request.scope.get("client")
        if server is None or client is None:
            raise RuntimeError("fake server: no connection to drop")
        for conn in list(server.server_state.connections):
            if getattr(conn, "client", None) == tuple(client):
                getattr(conn, "transport").close()  # noqa: B009 - protocols differ by backend
                for _ in range(200):  # until connection_lost marks the cycle disconnected
                    if conn not in server.server_state.connections:
                        return
                    await asyncio.sleep(0.005)
                return
        # not among the open connections: the client is already gone, nothing to drop
