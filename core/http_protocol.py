"""The HTTP protocol ``hookyard serve`` gives uvicorn: its httptools protocol, with the limits
httptools does not set and the checks RFC 9112 asks for.

* **Idle connections.** uvicorn arms its keep-alive timeout (``timeout_keep_alive``, 5 s) only
  after a response: a client that connects and sends nothing holds a file descriptor forever
  (an outside audit held 20,000 that way). Here the timer is also armed when the connection
  opens, and it is disarmed when a request's headers are complete rather than at its first
  byte: headers trickled in are cut off after the same 5 s. A body that stalls is answered 408
  (:mod:`hookyard.body_deadline`).
* **Header size.** A request line and headers over :data:`MAX_HEADER_BYTES` are answered 431
  before httptools reads them (it keeps them whole, copying them on every read).
* **One request at a time.** What a client sends after a complete request is held, unparsed,
  until that request is answered; reading stops once :data:`MAX_HEADER_BYTES` are held. The
  next request then meets the same limits and timer as a first one (an outside audit streamed
  400 MB of headers behind a slow answer), and its refusal comes after the answer before it,
  never in its place. (Requests that arrive in one read together are still pipelined by uvicorn,
  in order; a malformed one among them is refused after the answers before it too.)
* **Framing and trailers.** Bytes of a chunked body that are not body (chunk sizes, extensions,
  trailer fields) are limited to :data:`MAX_HEADER_BYTES` plus eight per body byte (431); trailer
  fields are dropped, never merged into the request's headers (a trailer could otherwise bring
  the ``Authorization`` that counts).
* **Ambiguous headers** (:func:`header_problem`): an HTTP version other than 1.0 or 1.1 is 505;
  an HTTP/1.1 request without ``Host``, or any with two, 400; two ``Authorization`` or
  ``Content-Encoding`` headers 400; a transfer coding other than ``chunked`` 501 (``gzip,
  chunked`` was read as chunked), and chunked in HTTP/1.0 400. Such a request is answered by a
  small ASGI app in its turn, with ``connection: close``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import msgspec

MAX_HEADER_BYTES = 65_536
"""A request's line and headers together (httptools itself sets no limit: an outside audit's
30 MB header was read into memory and answered 200). nginx allows 32 KB by default."""
FRAMING_PER_BODY_BYTE = 8
"""Chunk framing allowed per body byte on top of :data:`MAX_HEADER_BYTES` (``1\\r\\nx\\r\\n`` is
five bytes of framing for one of body: even a client sending one-byte chunks passes)."""

Asgi = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]


ERROR_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found",
               405: "method_not_allowed", 408: "request_timeout",
               413: "payload_too_large", 431: "headers_too_large", 500: "internal_error",
               501: "not_implemented", 503: "unavailable", 505: "http_version_not_supported"}


def error_body(status: int, reason: str) -> bytes:
    """The JSON of every ingest refusal: ``{"success": false, "error": reason, "code": ...,
    "message": reason}``. ``code`` and ``message`` are the fields of Segment's own API errors,
    which Segment's older Python library and RudderStack's read: without them they took a 401
    or 400 for a network error and retried it for minutes instead of giving up."""
    return msgspec.json.encode({"success": False, "error": reason,
                                "code": ERROR_CODES.get(status, f"http_{status}"),
                                "message": reason})


def _answer(status: int, phrase: str, reason: str) -> bytes:
    body = error_body(status, reason)
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


HEADERS_TOO_LARGE = f"request headers are larger than {MAX_HEADER_BYTES} bytes"
_HEADERS_TOO_LARGE = _answer(431, "Request Header Fields Too Large", HEADERS_TOO_LARGE)
_FRAMING_TOO_LARGE = _answer(431, "Request Header Fields Too Large",
                             "the chunked body's framing and trailers are larger than"
                             f" {MAX_HEADER_BYTES} bytes")


def header_problem(headers: list[tuple[bytes, bytes]], http_version: str) -> tuple[int, str] | None:
    """The status and reason to refuse a request's headers with (names in lower case, as
    uvicorn keeps them), or None when they are fine."""
    if http_version not in ("1.1", "1.0"):
        return 505, f"HTTP version {http_version} is not supported (use HTTP/1.1)"
    hosts = auths = encodings = 0
    size = 0
    for name, value in headers:
        size += len(name) + len(value) + 4
        if name == b"host":
            hosts += 1
        elif name == b"authorization":
            auths += 1
        elif name == b"content-encoding":
            encodings += 1
        elif name == b"transfer-encoding":
            if value.strip().lower() != b"chunked":
                return 501, ("Transfer-Encoding other than chunked is not supported"
                             " (use Content-Encoding: gzip for a compressed body)")
            if http_version == "1.0":
                return 400, "Transfer-Encoding: chunked needs HTTP/1.1"
    if size > MAX_HEADER_BYTES:  # read in one go with a request before it
        return 431, HEADERS_TOO_LARGE
    if hosts > 1 or (hosts == 0 and http_version == "1.1"):
        return 400, "a request needs exactly one Host header (HTTP/1.0: at most one)"
    if auths > 1:
        return 400, "more than one Authorization header"
    if encodings > 1:
        return 400, "more than one Content-Encoding header"
    return None


def refusal_app(status: int, reason: str) -> Asgi:
    """An ASGI app that answers ``status`` with ``reason`` and closes the connection."""
    body = error_body(status, reason)
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), (b"connection", b"close")]

    async def app(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


def http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with the limits and checks of the module docstring (h11's,
    with the idle timer only, where httptools is missing)."""
    base: Any
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # pragma: no cover - uvicorn[standard] installs httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    httptools = hasattr(base, "on_headers_complete")  # httptools' parser callbacks

    class HardenedProtocol(base):  # type: ignore[misc, valid-type]
        header_timer: asyncio.TimerHandle | None = None
        header_bytes = 0  # of the request line and headers being read
        held: bytearray | None = None  # what came after a request not answered yet
        after_headers = 0  # bytes of the current request read since its headers, of them body:
        body_bytes = 0
        open_cycles: list[Any] = []  # pipelined requests not answered yet (per connection)

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.open_cycles = []
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

        def data_received(self, data: bytes) -> None:
            if not httptools:  # pragma: no cover
                super().data_received(data)
                return
            cycle = self.cycle  # uvicorn's current request: more_body until it is all read
            if self.held is not None or (
                cycle is not None and not cycle.more_body and not cycle.response_complete
            ):
                self._hold(data)
                return
            # uvicorn disarms the idle timer at the first byte; it stays armed here until the
            # request's headers are complete, so headers trickled byte by byte are cut off too
            if self.timeout_keep_alive_task is not None:
                self.header_timer, self.timeout_keep_alive_task = self.timeout_keep_alive_task, None
            if self.header_timer is not None:  # in a request's line and headers
                budget = MAX_HEADER_BYTES - self.header_bytes
                if len(data) > budget and data.find(b"\r\n\r\n", 0, budget + 4) < 0:
                    self._refuse(_HEADERS_TOO_LARGE)  # before httptools reads them
                    return
            in_body = cycle is not None and cycle.more_body
            super().data_received(data)
            # the count goes on only while the headers are still incomplete after ``data``
            self.header_bytes = self.header_bytes + len(data) if self.header_timer else 0
            if in_body and self.cycle is cycle and cycle.more_body:  # all of it body or framing
                self.after_headers += len(data)
                framing = self.after_headers - self.body_bytes
                if framing > MAX_HEADER_BYTES + FRAMING_PER_BODY_BYTE * self.body_bytes:
                    self._refuse(_FRAMING_TOO_LARGE)

        def _hold(self, data: bytes) -> None:
            if self.held is None:
                self.held = bytearray()
            self.held += data
            if len(self.held) > MAX_HEADER_BYTES:
                self.flow.pause_reading()  # resumed when the answer is complete

        def _refuse(self, answer: bytes) -> None:
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.disconnected = True  # its app answers nobody now
            self.transport.write(answer)
            self.transport.close()

        deferred_400: str | None = None  # a request httptools refused, behind one in flight

        def send_400_response(self, msg: str) -> None:
            cycle = self.cycle
            if (cycle is not None and cycle.more_body and not cycle.response_started
                    and not any(not c.response_complete for c in self.open_cycles)):
                # the bad bytes are this request's own body (broken chunked framing): refuse
                # it now, not after the body deadline; the app waiting for the rest of the
                # body hears that the client is gone when the connection closes
                super().send_400_response(msg)
                return
            if cycle is not None and not cycle.response_complete:
                # a malformed request read in one go with the one before it: that one is
                # answered first, then this refusal (it took the place of that answer)
                self.deferred_400 = msg
                self.flow.pause_reading()
                return
            super().send_400_response(msg)

        def on_response_complete(self) -> None:
            if self.open_cycles:
                self.open_cycles = [c for c in self.open_cycles if not c.response_complete]
            super().on_response_complete()
            if (self.pipeline or self.cycle is None or not self.cycle.response_complete
                    or self.transport.is_closing()):
                return
            if self.deferred_400 is not None:
                msg, self.deferred_400 = self.deferred_400, None
                super().send_400_response(msg)  # writes it and closes the connection
            elif self.held is not None:
                data, self.held = bytes(self.held), None
                self.data_received(data)  # the next request, as if it came now

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            self.after_headers = self.body_bytes = 0
            problem = header_problem(self.headers, self.parser.get_http_version())
            before = self.cycle
            if before is not None and not before.response_complete:
                self.open_cycles.append(before)  # pipelined: uvicorn forgets it (connection_lost)
            if problem is None:
                super().on_headers_complete()
            else:
                app: Any = getattr(self, "app")  # noqa: B009 - uvicorn's attribute, untyped
                self.app = refusal_app(*problem)
                try:  # answered in its turn, after any request still being answered
                    super().on_headers_complete()
                finally:
                    self.app = app
            # trailer fields go to a list of their own, never into the request's headers
            self.headers: list[tuple[bytes, bytes]] = []

        def on_body(self, body: bytes) -> None:
            self.body_bytes += len(body)
            super().on_body(body)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            self.held = None
            # uvicorn tells only the newest request that the client left; one of those read
            # with it (pipelined) and still running then wrote to the closed transport and
            # logged a traceback (an outside audit)
            for cycle in self.open_cycles:  # (uvicorn's own tells the newest)
                if not cycle.response_complete:
                    cycle.disconnected = True
                    cycle.message_event.set()
            self.open_cycles = []
            super().connection_lost(exc)

        def _disarm_header_timer(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

    return HardenedProtocol
