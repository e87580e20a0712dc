"""The ingest endpoint shared by every source: size limits, gunzip, auth, parse, commit.

The handler knows no vendor: it finds the sources whose connector declared the request path,
asks their ``authenticate`` hooks in config order, lets the owner's ``parse_events`` hook turn
the body into events, and answers 2xx only after the events are committed to the inbox.
Every request, accepted or refused, leaves a line in the API log.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from typing import TYPE_CHECKING, Any

from starlette.requests import Request
from starlette.responses import Response

from .connectors import IngestRequest, SourceContext
from .errors import BadRequest, PayloadTooLarge, RequestError, StorageUnavailable, Unauthorized
from .events import encoder
from .inbox import InsertEvents, LogEntry, event_rows, insert_log
from .times import now_iso

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("hookyard.ingest")
OK_BODY = b'{"success":true}'
# Browsers (analytics.js) post from any origin, as to Segment's own API; keys are in the request,
# never in cookies, so allowing every origin exposes nothing.
CORS_HEADERS = {"Access-Control-Allow-Origin": "*"}
PREFLIGHT_HEADERS = {
    **CORS_HEADERS,
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Authorization, Content-Type, Content-Encoding",
    "Access-Control-Max-Age": "86400",
}
_background: set[asyncio.Task[Any]] = set()


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing with 413 as soon as it passes ``limit`` bytes."""
    length = request.headers.get("content-length")
    if length is not None:
        try:
            if int(length) > limit:
                raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        except ValueError:
            raise BadRequest("invalid Content-Length") from None
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_content(body: bytes, encoding: str, limit: int) -> bytes:
    """Undo ``Content-Encoding: gzip``/``deflate`` without inflating past ``limit`` (gzip bombs)."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "x-gzip", "deflate"):
        raise BadRequest(f"unsupported Content-Encoding {encoding!r}: use gzip or none")
    wbits = 16 + zlib.MAX_WBITS if encoding != "deflate" else zlib.MAX_WBITS
    inflater = zlib.decompressobj(wbits)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadRequest(f"invalid {encoding} body: {exc}") from None
    if len(out) > limit:
        raise PayloadTooLarge(f"decompressed body is larger than {limit} bytes")
    if not inflater.eof:
        raise BadRequest(f"truncated {encoding} body")
    return out


_OK_RAW_HEADERS = Response(OK_BODY, media_type="application/json", headers=CORS_HEADERS).raw_headers


class _OkResponse(Response):
    """``{"success":true}`` with the CORS header, its headers built once (saves ~4 us)."""

    def __init__(self) -> None:  # noqa: D107 - no Response.__init__: nothing to render
        self.status_code = 200
        self.background = None
        self.body = OK_BODY
        self.raw_headers = list(_OK_RAW_HEADERS)


def _error_response(exc: RequestError) -> Response:
    body = encoder.encode({"success": False, "error": exc.reason})
    headers = dict(CORS_HEADERS)
    if isinstance(exc, StorageUnavailable):
        headers["Retry-After"] = "5"
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = 'Basic realm="hookyard"'
    return Response(body, status_code=exc.status, media_type="application/json", headers=headers)


class IngestEndpoint:
    """ASGI-level handler for every ingest path of every source."""

    def __init__(self, runtime: Runtime, on_commit: Any = None) -> None:
        self.rt = runtime
        self.on_commit = on_commit
        self._candidates: dict[str, list[tuple[SourceContext, dict[str, str]]]] = {}

    def candidates(self, path: str) -> list[tuple[SourceContext, dict[str, str]]]:
        """The sources accepting on ``path`` with the path parameters of their own pattern."""
        found = self._candidates.get(path)
        if found is None:
            found = self.rt.sources_for(path)
            if len(self._candidates) < 4096:
                self._candidates[path] = found
        return found

    def authenticate(self, req: IngestRequest) -> SourceContext:
        reason = "invalid write key"
        for i, (source, params) in enumerate(self.candidates(req.path)):
            req.path_params = params
            try:
                result = self.rt.registry.call(
                    "authenticate", "source", source.plugin, source=source, request=req
                )
            except Exception:  # noqa: BLE001 - a plugin bug must refuse the request, not 500
                log.exception("authenticate hook of source %s failed", source.name)
                continue
            if result.accepted:
                return source
            if i == 0:
                reason = result.reason
        raise Unauthorized(reason)

    async def __call__(self, request: Request) -> Response:
        if request.method == "OPTIONS":  # CORS preflight
            return Response(status_code=204, headers=PREFLIGHT_HEADERS)
        started = time.perf_counter()
        server = self.rt.config.server
        source: SourceContext | None = None
        count = 0
        try:
            raw = await read_body(request, server.max_request_bytes)
            body = decode_content(
                raw, request.headers.get("content-encoding", ""), server.max_request_bytes
            )
            req = IngestRequest(
                method=request.method,
                path=request.scope["path"],  # not request.url: building it costs ~20 us
                headers={k.decode("latin-1").lower(): v.decode("latin-1") for k, v in request.scope["headers"]},
                body=body,
                path_params=dict(request.path_params),
                query=dict(request.query_params) if request.scope.get("query_string") else {},
            )
            source = self.authenticate(req)
            try:
                parsed = self.rt.registry.call(
                    "parse_events", "source", source.plugin, source=source, request=req
                )
            except RequestError:
                raise
            except Exception as exc:  # a plugin bug must not become a 500
                log.exception("parse_events of source %s failed", source.name)
                raise BadRequest(f"could not parse the body: {type(exc).__name__}") from None
            for i, ev in enumerate(parsed):
                if len(ev.raw) > server.max_event_bytes:
                    where = f"event {i} " if len(parsed) > 1 else "event "
                    raise PayloadTooLarge(f"{where}is larger than {server.max_event_bytes} bytes")
            count = len(parsed)
            received_at = now_iso()
            rows = event_rows(source.name, parsed, received_at)
            entry = LogEntry(received_at, source.name, request.method, req.path, 200, count, None,
                             (time.perf_counter() - started) * 1000)
            try:
                await self.rt.db.write(InsertEvents(rows, entry))
            except RequestError:
                raise
            except Exception as exc:
                log.exception("commit failed")
                raise StorageUnavailable(f"storage unavailable: {type(exc).__name__}") from None
        except RequestError as exc:
            self._log_refusal(request, source, exc, started)
            return _error_response(exc)
        if self.on_commit is not None:
            self.on_commit()
        if self.rt.metrics is not None:
            self.rt.metrics.ingest_ok(source.name, count)
        return _OkResponse()

    def _log_refusal(
        self, request: Request, source: SourceContext | None, exc: RequestError, started: float
    ) -> None:
        entry = LogEntry(
            now_iso(),
            source.name if source else None,
            request.method,
            request.scope["path"],
            exc.status,
            0,
            exc.reason,
            (time.perf_counter() - started) * 1000,
        )
        if self.rt.metrics is not None:
            self.rt.metrics.ingest_refused(source.name if source else None, exc.status)
        if exc.status >= 500:
            log.warning("ingest refused with %s: %s", exc.status, exc.reason)
            return
        try:
            fut = self.rt.db.submit(lambda conn: insert_log(conn, entry))
            fut.add_done_callback(lambda f: f.exception())  # a failed log line is not an error
        except Exception:  # noqa: BLE001 - logging a refusal must never fail the request
            log.exception("could not record refused request")
