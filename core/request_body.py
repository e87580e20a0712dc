"""Reading a request body: to a size limit, within the body deadline, and decompressed.

Every ingest request goes through :func:`receive_body` then :func:`decode_content`; the admin
API's JSON bodies through :func:`read_body`. A body past its limit is a 413 as soon as the
limit is passed (the rest is never read into memory), a gzip bomb is refused while it inflates,
and a client that stops sending is a 408 (:mod:`hookyard.body_deadline`).
"""

from __future__ import annotations

import asyncio
import zlib

from starlette.requests import ClientDisconnect, Request
from starlette.types import Receive

from . import body_deadline
from .body_deadline import watch_current_task
from .errors import BadRequest, PayloadTooLarge, RequestTimeout


async def receive_body(receive: Receive, content_length: str | None, limit: int) -> bytes:
    """The request body from the ASGI ``receive`` channel, refusing with 413 as soon as it
    passes ``limit`` bytes (``content_length``: the header, checked first). Raises
    ``ClientDisconnect`` when the client went away."""
    if content_length is not None:
        try:
            if int(content_length) > limit:
                raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        except ValueError:
            raise BadRequest("invalid Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    task, watch = watch_current_task()
    if task is not None:
        watch.begin(task)
    try:
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect
                raise ClientDisconnect()
            chunk = message.get("body", b"")
            if chunk:
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body is larger than {limit} bytes")
                chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    except asyncio.CancelledError:
        if task is None or not watch.end(task):
            raise
        task.uncancel()
        raise RequestTimeout(
            f"the request body did not arrive within {body_deadline.BODY_TIMEOUT_SECONDS:g} s"
        ) from None
    finally:
        if task is not None:
            watch.end(task)


async def read_body(request: Request, limit: int) -> bytes:
    """The body of a Starlette request (read once), refusing with 413 past ``limit`` bytes."""
    return await receive_body(request.receive, request.headers.get("content-length"), limit)


def decode_content(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip``/``deflate`` without inflating past ``limit`` (gzip bombs)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}: use gzip, deflate or none")
    wbits = 16 + zlib.MAX_WBITS
    if encoding == "deflate":  # HTTP's deflate is zlib-wrapped (RFC 9110), but some clients
        # send the raw stream: a body that does not start with a zlib header is read as one
        zlib_header = len(body) >= 2 and body[0] & 0x0F == 8 and (body[0] << 8 | body[1]) % 31 == 0
        wbits = zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS
    parts: list[bytes] = []
    size = 0
    while True:  # gzip allows several members, one after the other (RFC 1952)
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit + 1 - size)
        except zlib.error as exc:
            raise BadRequest(f"invalid {encoding} body: {exc}") from None
        size += len(out)
        if size > limit:
            raise PayloadTooLarge(f"decompressed body is larger than {limit} bytes")
        if not inflater.eof:
            raise BadRequest(f"truncated {encoding} body")
        parts.append(out)
        body = inflater.unused_data
        if not body:
            return parts[0] if len(parts) == 1 else b"".join(parts)
        if encoding == "deflate" or not body.startswith(b"\x1f\x8b"):
            raise BadRequest(f"unexpected data after the {encoding} body")
