"""The ingest endpoint shared by every source: size limits, gunzip, auth, parse, commit.

The handler knows no vendor: it finds the sources whose connector declared the request path,
asks their ``authenticate`` hooks in config order, lets the owner's ``parse_events`` hook turn
the body into events, and answers 2xx only after the events are committed to the inbox.
Every request, accepted or refused, leaves a line in the API log.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.datastructures import QueryParams
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from .connectors import (
    BASIC_CHALLENGE,
    AuthResult,
    IngestRequest,
    ParsedEvent,
    RefusedEvent,
    Reply,
    SourceContext,
)
from .delivery.retry import clip
from .errors import (
    BadRequest,
    PayloadTooLarge,
    RequestError,
    RequestTimeout,
    SourceHookFailed,
    StorageUnavailable,
    Unauthorized,
)
from .events import encoder
from .http_protocol import error_body
from .inbox import InsertEvents, LogEntry, event_rows, insert_log
from .nesting import TOO_DEEP, plugin_raw_too_deep
from .parse_checks import check_parsed, wrong_type
from .refusal_budget import RefusalBudget
from .request_body import decode_content, receive_body
from .times import now_iso
from .tracking_api import WRITE_KEY_NAMES

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
MAX_CACHED_PATH = 256
MAX_LOGGED_PATH = 512  # refusals are logged without authentication: kept short
MAX_LOGGED_ERROR = 1000
RawHeaders = list[tuple[bytes, bytes]]
Answer = tuple[int, bytes, RawHeaders]
"""An ingest response as the ASGI messages carry it: status, body, raw headers."""


def _json_answer(status: int, body: bytes, headers: dict[str, str] = CORS_HEADERS) -> Answer:
    """A JSON answer with its headers rendered (content-type, length, ``headers``)."""
    rendered = Response(body, status_code=status, media_type="application/json", headers=headers)
    return status, body, rendered.raw_headers


_OK = _json_answer(200, OK_BODY)
_INTERNAL_ERROR = _json_answer(500, error_body(500, "internal server error"))


def _query(query_string: bytes) -> dict[str, str]:
    """The query's parameters; a write key given twice is refused (``?writeKey=a&writeKey=b``
    must not mean whichever comes last). Other parameters: the last one, as Starlette reads
    them (a client's own repeated ``?x=1&x=1`` lost its events: re-check)."""
    params = QueryParams(query_string)
    for name in WRITE_KEY_NAMES:
        if len(params.getlist(name)) > 1:
            raise BadRequest(f"query parameter {name!r} is given more than once")
    return dict(params.multi_items())


class _RawResponse(Response):
    """A Starlette response from an :data:`Answer` (headers already rendered)."""

    def __init__(self, answer: Answer) -> None:  # noqa: D107 - no Response.__init__: nothing to render
        self.status_code, self.body, headers = answer
        self.background = None
        self.raw_headers = list(headers)


def _error_answer(exc: RequestError) -> Answer:
    body = error_body(exc.status, clip(exc.reason, MAX_LOGGED_ERROR))
    headers = dict(CORS_HEADERS)
    if isinstance(exc, StorageUnavailable | SourceHookFailed):
        headers["Retry-After"] = "5"
    if isinstance(exc, Unauthorized):
        headers["WWW-Authenticate"] = exc.challenge
    if isinstance(exc, RequestTimeout | PayloadTooLarge):
        # the body may be unread, or still coming: what follows on the connection is not a
        # new request (RFC 9110 15.5.9), so it is closed after the answer
        headers["Connection"] = "close"
    return _json_answer(exc.status, body, headers)




def _without_refused(
    parsed: list[ParsedEvent | RefusedEvent], refused: list[tuple[int, str]], too_large: int,
    limit: int,
) -> list[ParsedEvent]:
    """The events to store; when every event was refused, BadRequest with the first reason
    (PayloadTooLarge when every one was too large: ``too_large`` of them were)."""
    kept = [ev for ev in parsed if not isinstance(ev, RefusedEvent)]
    if not kept:
        index, reason = refused[0]
        if too_large == len(refused):
            raise PayloadTooLarge(f"every event is larger than {limit} bytes")
        raise BadRequest(reason if len(parsed) == 1 else f"[{index}] {reason} (every event refused)")
    return kept


def _refusal_note(refused: list[tuple[int, str]], stored: int) -> str:
    """The API log's error column of a partly refused request."""
    shown = "; ".join(f"[{i}] {reason}" for i, reason in refused[:5])
    more = f"; and {len(refused) - 5} more" if len(refused) > 5 else ""
    return f"{len(refused)} of {len(refused) + stored} events refused: {shown}{more}"


MAX_LISTED_REFUSALS = 100
"""Refused events an answer lists at most (then ``refused_count`` says how many in all)."""


def _partial_answer(refused: list[tuple[int, str]]) -> Answer:
    """200 with the events that were refused (the others are committed): the first
    :data:`MAX_LISTED_REFUSALS`, and with more, how many in all."""
    answer: dict[str, Any] = {"success": True, "refused": [
        {"index": i, "error": clip(reason, MAX_LOGGED_ERROR)}
        for i, reason in refused[:MAX_LISTED_REFUSALS]]}
    if len(refused) > MAX_LISTED_REFUSALS:
        answer["refused_count"] = len(refused)
    return _json_answer(200, encoder.encode(answer))


def _reply_answer(reply: Reply) -> Answer:
    """The answer a ``parse_events`` hook chose (:class:`~hookyard.connectors.Reply`)."""
    body = b"" if reply.status in (204, 304) else reply.body
    headers = {**CORS_HEADERS, **reply.headers}
    rendered = Response(body, status_code=reply.status, headers=headers,
                        media_type=reply.content_type if body else None)
    return reply.status, body, rendered.raw_headers


# a request cut off by shutdown (its body still arriving when the grace ran out): 503 + Retry-After
_SHUTTING_DOWN = _error_answer(StorageUnavailable("the server is shutting down: retry"))


class IngestEndpoint:
    """The handler of every ingest path of every source.

    :meth:`asgi` answers a ``POST`` as a plain ASGI app (the host hands ingest requests to it
    before Starlette's middleware and router: ~25 us less per request); the instance is also
    the Starlette endpoint of the ingest routes (CORS preflight, an app under a root path).
    """

    def __init__(self, runtime: Runtime, on_commit: Any = None) -> None:
        self.rt = runtime
        self.on_commit = on_commit
        self._candidates: dict[str, list[tuple[SourceContext, dict[str, str]]]] = {}
        self.refusals = RefusalBudget()

    def candidates(self, path: str) -> list[tuple[SourceContext, dict[str, str]]]:
        """The sources accepting on ``path`` with the path parameters of their own pattern."""
        found = self._candidates.get(path)
        if found is None:
            found = self.rt.sources_for(path)
            # any POST path lands here: only short ones are remembered (a client must not be
            # able to fill the memory with 64 KB paths)
            if len(path) <= MAX_CACHED_PATH and len(self._candidates) < 4096:
                self._candidates[path] = found
        return found

    def authenticate(self, req: IngestRequest) -> SourceContext:
        """The source that accepts ``req``; else :class:`Unauthorized` with the first
        source's reason, or :class:`SourceHookFailed` when no source accepted and a hook
        failed."""
        reason, challenge = "invalid write key", BASIC_CHALLENGE
        failed: SourceContext | None = None
        candidates = self.candidates(req.path)
        for i, (source, params) in enumerate(candidates):
            req.path_params = params
            try:
                result = self.rt.registry.call(
                    "authenticate", "source", source.plugin, source=source, request=req
                )
            except Exception as exc:  # noqa: BLE001 - a plugin bug must not be a 500, nor a 401
                log.exception("authenticate hook of source %s failed%s", source.name,
                              self.rt.registry.blamed(exc, "source", source.plugin))
                failed = failed or source
                continue
            if not isinstance(result, AuthResult):
                log.error("authenticate hook of source %s %s", source.name, wrong_type(
                    result, "an AuthResult (hookyard.connectors.AuthResult.accept() or .refuse())"))
                failed = failed or source
                continue
            if result.accepted:
                return source
            if i == 0:
                reason, challenge = result.reason, result.challenge
        if failed is not None:
            raise SourceHookFailed("the source could not check this request (its plugin"
                                   " failed: see the server log); retry later")
        raise Unauthorized(reason, challenge)

    async def __call__(self, request: Request) -> Response:
        if request.method == "OPTIONS":  # CORS preflight
            return Response(status_code=204, headers=PREFLIGHT_HEADERS)
        return _RawResponse(await self.handle(request.scope, request.receive))

    async def asgi(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Answer an ingest request (ASGI); a bug answers 500 and is logged, never raised."""
        try:
            status, body, headers = await self.handle(scope, receive)
        except ClientDisconnect:
            return  # nobody left to answer
        except asyncio.CancelledError:  # the server stops and its grace ran out (a slow body)
            log.info("ingest request to %s cut off by shutdown", scope["path"][:MAX_LOGGED_PATH])
            status, body, headers = _SHUTTING_DOWN  # answered, not a traceback: retry later
        except Exception:  # noqa: BLE001 - what Starlette's ServerErrorMiddleware would do
            log.exception("ingest request to %s failed", scope["path"][:MAX_LOGGED_PATH])
            status, body, headers = _INTERNAL_ERROR
        try:
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        except (OSError, RuntimeError):  # the client went away meanwhile (a closed transport)
            log.debug("client of %s left before the answer", scope["path"][:MAX_LOGGED_PATH])

    async def handle(self, scope: Scope, receive: Receive) -> Answer:
        """Read, authenticate, parse and commit one ingest request; the answer to send."""
        started = time.perf_counter()
        server = self.rt.config.server
        source: SourceContext | None = None
        count = 0
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            raw = await receive_body(receive, headers.get("content-length"), server.max_request_bytes)
            body = decode_content(raw, headers.get("content-encoding", ""), server.max_request_bytes)
            req = IngestRequest(
                method=scope["method"],
                path=scope["path"],
                headers=headers,
                body=body,
                path_params=dict(scope.get("path_params") or {}),
                query=_query(scope["query_string"]) if scope.get("query_string") else {},
                client=peer[0] if (peer := scope.get("client")) else None,
            )
            source = self.authenticate(req)
            try:
                parsed = self.rt.registry.call(
                    "parse_events", "source", source.plugin, source=source, request=req
                )
                check_parsed(parsed)
            except RequestError:
                raise
            except Reply as reply:  # the source answers itself: nothing is stored
                self._log_line(req.method, req.path, source, reply.status, None, started)
                return _reply_answer(reply)
            except (msgspec.DecodeError, json.JSONDecodeError, UnicodeDecodeError) as exc:
                # the body is not JSON (a plugin that decodes it itself, as the docs' example
                # does): the client's to fix, not to retry (the re-check)
                raise BadRequest(f"malformed JSON: {exc}") from None
            except RecursionError:  # a plugin's decoder met ~1,000 levels: not to retry
                raise BadRequest(f"the request's JSON is {TOO_DEEP}") from None
            except Exception as exc:  # a plugin bug: not a 500, nor a 400 that the client
                # takes as final and drops its events for (a plugin's reasons to refuse a body
                # are BadRequest, NotFound, PayloadTooLarge); retried, they are taken once fixed
                log.exception("parse_events of source %s (connector %r) failed%s; answered 503",
                              source.name, source.plugin,
                              self.rt.registry.blamed(exc, "source", source.plugin))
                raise SourceHookFailed(f"the source could not read this request (its plugin"
                                       f" failed with {type(exc).__name__}: see the server log);"
                                       " retry later") from None
            refused: list[tuple[int, str]] = []
            too_large = 0
            for i, ev in enumerate(parsed):
                if isinstance(ev, RefusedEvent):
                    refused.append((i, ev.reason))
                elif ev.checked is not ev.raw and plugin_raw_too_deep(ev.raw):
                    # a plugin's own event, held to the limit hookyard's parsers apply
                    if len(parsed) == 1:
                        raise BadRequest(f"the event is {TOO_DEEP}")
                    refused.append((i, f"the event is {TOO_DEEP}"))
                    parsed[i] = RefusedEvent(f"the event is {TOO_DEEP}")
                elif (ev.sent_bytes or len(ev.raw)) > server.max_event_bytes:
                    reason = f"event is larger than {server.max_event_bytes} bytes"
                    if len(parsed) == 1:
                        raise PayloadTooLarge(reason)
                    refused.append((i, reason))  # alone, as an invalid event of a batch
                    parsed[i] = RefusedEvent(reason)
                    too_large += 1
            if refused:
                parsed = _without_refused(parsed, refused, too_large, server.max_event_bytes)
            count = len(parsed)
            received_at = now_iso()
            rows = event_rows(source.name, parsed, received_at)
            entry = LogEntry(received_at, source.name, req.method, req.path, 200, count,
                             _refusal_note(refused, count) if refused else None,
                             (time.perf_counter() - started) * 1000, started)
            try:
                await self.rt.db.write(InsertEvents(rows, entry))
            except RequestError:
                raise
            except Exception as exc:
                log.exception("commit failed")
                raise StorageUnavailable(f"storage unavailable: {type(exc).__name__}") from None
        except RequestError as exc:
            if source is None:  # refused before a source took it (401, 413...): the path's
                source = self._only_source(scope["path"])  # only source, if it has one
            self._log_refusal(scope["method"], scope["path"], source, exc, started)
            return _error_answer(exc)
        if self.on_commit is not None:
            self.on_commit()
        if self.rt.metrics is not None:
            self.rt.metrics.ingest_ok(source.name, count, len(refused))
        return _partial_answer(refused) if refused else _OK

    def _only_source(self, path: str) -> SourceContext | None:
        """The one source on ``path``, whose API log a refusal before authentication belongs
        in; None when several share it (the write key would have told which)."""
        candidates = self.candidates(path)
        return candidates[0][0] if len(candidates) == 1 else None

    def _log_refusal(
        self, method: str, path: str, source: SourceContext | None, exc: RequestError,
        started: float,
    ) -> None:
        if self.rt.metrics is not None:
            self.rt.metrics.ingest_refused(source.name if source else None, exc.status)
        if isinstance(exc, StorageUnavailable):  # no log line can be written either; the
            # outage itself is logged once by the database (hookyard.group_commit)
            log.debug("ingest refused with %s: %s", exc.status, exc.reason)
            return
        skipped = self.refusals.take(source.name if source else None, exc.status)
        if skipped is None:  # a flood of refusals: counted in /metrics, not each in the log
            return
        reason = exc.reason if not skipped else (
            f"{exc.reason} (and {skipped} more {exc.status} refusals not logged)")
        self._log_line(method, path, source, exc.status, reason, started)

    def _log_line(
        self, method: str, path: str, source: SourceContext | None, status: int,
        error: str | None, started: float,
    ) -> None:
        """An API log line for a request that stored nothing (written after the answer)."""
        entry = LogEntry(
            now_iso(),
            source.name if source else None,
            method,
            clip(path, MAX_LOGGED_PATH),
            status,
            0,
            clip(error, MAX_LOGGED_ERROR),
            (time.perf_counter() - started) * 1000,
        )
        try:
            fut = self.rt.db.submit(lambda conn: insert_log(conn, entry))
            fut.add_done_callback(lambda f: f.exception())  # a failed log line is not an error
        except Exception:  # noqa: BLE001 - logging a refusal must never fail the request
            log.exception("could not record refused request")
