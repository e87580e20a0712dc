"""The profile store's read API (JSON, admin token required like every ``/api/`` route).

    GET /api/subscribers?q=&cursor=&limit=            paged, searchable by id or channel value
    GET /api/subscribers/{distinct_id}                  properties, channels, preferences
    GET /api/subscribers/{distinct_id}/events?cursor=   the user's events, last received first
    GET /api/workflow-runs?distinct_id=&workflow=&cursor=

``?destination=NAME`` picks a profile destination when several are configured.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_to_bytes

from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

from ..connectors import DestinationContext
from ..operator_input import check_query, int_param, page_limit

if TYPE_CHECKING:
    from ..runtime import Runtime


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


SUBSCRIBERS = "/api/subscribers/"
EVENTS_SUFFIX = "/events"


def subscriber_path(request: Request) -> tuple[str, bool]:
    """The distinct_id of ``/api/subscribers/{distinct_id}[/events]`` and whether the events
    are asked for, read from the path as sent: an id with a slash, sent encoded (``a%2Fevents``),
    is that user's profile, not the events of user ``a``."""
    raw = request.scope.get("raw_path")  # None from a server that does not pass it: decoded
    path = raw.decode("latin-1") if raw else request.url.path
    tail = path[path.rfind(SUBSCRIBERS) + len(SUBSCRIBERS):]
    events = tail.endswith(EVENTS_SUFFIX)
    if events:
        tail = tail[: -len(EVENTS_SUFFIX)]
    return (unquote_to_bytes(tail).decode("utf-8", "replace") if raw else tail), events


def routes(runtime: Runtime) -> list[BaseRoute]:
    from .plugin import store_for

    def destination(request: Request) -> DestinationContext | None:
        wanted = request.query_params.get("destination") or None  # empty: not given
        for d in runtime.destinations.values():
            if d.config.plugin == "profiles" and (wanted is None or d.name == wanted):
                return d.context
        return None

    async def run(request: Request, fn: Any, *allowed: str) -> JSONResponse:
        try:
            check_query(request.query_params, ("destination", *allowed))
        except ValueError as exc:
            return _error(400, str(exc))
        ctx = destination(request)
        if ctx is None:
            wanted = request.query_params.get("destination") or None
            if wanted is not None:
                names = [d.name for d in runtime.destinations.values()
                         if d.config.plugin == "profiles"]
                return _error(404, f"no profile store destination {wanted!r}"
                              f" (configured: {', '.join(names) or 'none'})")
            return _error(404, "no profile store destination is configured")
        try:
            result = await asyncio.to_thread(fn, store_for(ctx), ctx.name)
        except ValueError as exc:  # a page parameter (hookyard.operator_input)
            return _error(400, str(exc))
        if result is None:
            return _error(404, "subscriber not found")
        return JSONResponse(result)

    async def list_subscribers(request: Request) -> JSONResponse:
        q = request.query_params

        def fn(store: Any, dest: str) -> dict[str, Any]:
            items, nxt = store.subscribers(
                dest, query=q.get("q"), after=q.get("cursor"), limit=page_limit(q)
            )
            return {"subscribers": items, "next": nxt}

        return await run(request, fn, "q", "cursor", "limit")

    async def one_subscriber(request: Request) -> JSONResponse:
        uid, events = subscriber_path(request)
        if events:
            return await subscriber_events(request, uid)
        return await run(request, lambda store, dest: store.subscriber(dest, uid))

    async def subscriber_events(request: Request, uid: str) -> JSONResponse:
        q = request.query_params

        def fn(store: Any, dest: str) -> dict[str, Any] | None:
            if store.subscriber(dest, uid) is None:
                return None
            items, nxt = store.events(
                dest, uid, before=int_param(q, "cursor", minimum=1), limit=page_limit(q)
            )
            return {"events": items, "next": str(nxt) if nxt is not None else None}

        return await run(request, fn, "cursor", "limit")

    async def workflow_runs(request: Request) -> JSONResponse:
        q = request.query_params

        def fn(store: Any, dest: str) -> dict[str, Any]:
            items, nxt = store.workflow_runs(
                dest, distinct_id=q.get("distinct_id"), workflow=q.get("workflow"),
                before=int_param(q, "cursor", minimum=1), limit=page_limit(q),
            )
            return {"runs": items, "next": str(nxt) if nxt is not None else None}

        return await run(request, fn, "distinct_id", "workflow", "cursor", "limit")

    from ..url_convertors import register

    register()
    return [
        Route("/api/subscribers", list_subscribers, methods=["GET"]),
        # one route: the decoded path cannot tell ``a%2Fevents`` from ``a/events``
        Route("/api/subscribers/{distinct_id:anypath}", one_subscriber, methods=["GET"]),
        Route("/api/workflow-runs", workflow_runs, methods=["GET"]),
    ]
