"""How ``hookyard serve`` runs uvicorn: its socket, bound before anything is printed, and an
HTTP protocol that does not keep silent connections open.

uvicorn arms its keep-alive timeout (``timeout_keep_alive``, 5 s) only after a response: a
client that connects and sends nothing holds a connection, and a file descriptor, forever (an
outside audit held 20,000 that way and the server stopped answering). Here the timer is also
armed when the connection opens, and (httptools) it is disarmed when a request's headers are
complete rather than at its first byte: a client that trickles its headers is cut off after the
same 5 s, and one whose headers pass :data:`MAX_HEADER_BYTES` is answered 431. A body that
stalls is answered 408 (:mod:`hookyard.body_deadline`).

httptools is lenient where RFC 9112 is not; :func:`header_problem` refuses what it lets through:
an HTTP/1.1 request without ``Host`` or with two (400), a transfer coding other than ``chunked``
(501: ``gzip, chunked`` was read as chunked and the body taken as it came), and two
``Authorization`` headers (400: the last one won, so a proxy and hookyard could each check a
different credential).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from typing import Any

import msgspec

from .errors import ConfigError


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (uvicorn listens on it); ConfigError with the
    reason when that is not possible (port in use, address not on this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = " (another program uses it: choose another with --port)" \
            if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    sock.set_inheritable(True)
    return sock


def raise_fd_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit, and return it: every
    connection is a file, and at the limit new connections (``/healthz`` too) are reset
    without a log line. Many systems start services at a soft 1,024 under a far higher hard
    limit, as nginx's ``worker_rlimit_nofile`` and Go's runtime raise it too."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def url_host(host: str) -> str:
    """``host`` as written in a URL (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host


MAX_HEADER_BYTES = 65_536
"""A request's line and headers together (httptools itself sets no limit: an outside audit's
30 MB header was read into memory and answered 200). nginx allows 32 KB by default."""
_HEADERS_BODY = b'{"success":false,"error":"request headers are larger than 65536 bytes"}'
_HEADERS_TOO_LARGE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: " + str(len(_HEADERS_BODY)).encode() + b"\r\nconnection: close\r\n\r\n"
    + _HEADERS_BODY
)


def header_problem(headers: list[tuple[bytes, bytes]], http_version: str) -> tuple[int, str] | None:
    """The status and reason to refuse a request's headers with (names in lower case, as
    uvicorn keeps them), or None when they are fine."""
    hosts = auths = 0
    for name, value in headers:
        if name == b"host":
            hosts += 1
        elif name == b"authorization":
            auths += 1
        elif name == b"transfer-encoding" and value.lower() != b"chunked":
            return 501, "Transfer-Encoding other than chunked is not supported" \
                        " (use Content-Encoding: gzip for a compressed body)"
    if hosts > 1 or (hosts == 0 and http_version == "1.1"):
        return 400, "an HTTP/1.1 request needs exactly one Host header"
    if auths > 1:
        return 400, "more than one Authorization header"
    return None


def _error_answer(status: int, reason: str) -> bytes:
    body = msgspec.json.encode({"success": False, "error": reason})
    phrase = {400: "Bad Request", 501: "Not Implemented"}[status]
    return (f"HTTP/1.1 {status} {phrase}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class _RefusedHeaders(Exception):
    """Raised in a parser callback: httptools stops, and uvicorn answers 400 through
    ``send_400_response``, which here writes the stored reason instead of its own."""


def http_protocol() -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol (httptools when installed, else h11), with the idle timeout
    armed from the moment a connection opens."""
    base: Any
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as base
    except ImportError:  # pragma: no cover - uvicorn[standard] installs httptools
        from uvicorn.protocols.http.h11_impl import H11Protocol as base
    trickle_guard = hasattr(base, "on_headers_complete")  # httptools' parser callbacks

    class IdleTimeoutProtocol(base):  # type: ignore[misc, valid-type]
        header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )

        header_bytes = 0

        def data_received(self, data: bytes) -> None:
            # uvicorn disarms the idle timer at the first byte; it stays armed here until the
            # request's headers are complete, so headers trickled byte by byte are cut off too
            if self.timeout_keep_alive_task is not None and trickle_guard:
                self.header_timer, self.timeout_keep_alive_task = self.timeout_keep_alive_task, None
            if self.header_timer is not None:  # in a request's line and headers
                budget = MAX_HEADER_BYTES - self.header_bytes
                if len(data) > budget and data.find(b"\r\n\r\n", 0, budget + 4) < 0:
                    self.transport.write(_HEADERS_TOO_LARGE)  # before httptools reads them
                    self.transport.close()
                    return
            super().data_received(data)
            # the count goes on only while the headers are still incomplete after ``data``
            self.header_bytes = self.header_bytes + len(data) if self.header_timer else 0

        refused: tuple[int, str] | None = None

        def on_headers_complete(self) -> None:
            self._disarm_header_timer()
            self.refused = header_problem(self.headers, self.parser.get_http_version())
            if self.refused is not None:
                raise _RefusedHeaders(self.refused[1])
            super().on_headers_complete()

        def send_400_response(self, msg: str) -> None:
            if self.refused is None:
                super().send_400_response(msg)
                return
            self.transport.write(_error_answer(*self.refused))
            self.transport.close()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm_header_timer()
            super().connection_lost(exc)

        def _disarm_header_timer(self) -> None:
            if self.header_timer is not None:
                self.header_timer.cancel()
                self.header_timer = None

    return IdleTimeoutProtocol
