"""The baseline servers, each run by ``python -m uvicorn bench.apps:<name>``.

``bare``: the smallest honest Starlette ingest endpoint: route ``POST /v1/{call}``, parse the
JSON body (Starlette's own ``request.json()``), answer ``200 {"success":true}``. No auth, no
validation, no storage: what hookyard is compared with in ``bench/ingest.py``.

``peer``: the delivery target of ``bench/delivery.py``: a raw ASGI app that reads the body and
answers ``200 {"ok":true}`` as fast as uvicorn allows, so the peer is never the bottleneck; it
counts what it received (``GET /stats``).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

OK = b'{"success":true}'


async def _ingest(request: Request) -> Response:
    await request.json()
    return Response(OK, media_type="application/json")


async def _healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type="application/json")


bare = Starlette(routes=[
    Route("/v1/{call}", _ingest, methods=["POST"]),
    Route("/healthz", _healthz, methods=["GET"]),
])

_PEER_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"11")]
_received = {"requests": 0, "events": 0}


async def peer(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """200 to everything; ``GET /stats`` tells how many requests and events (``"messageId"``
    keys in the bodies) arrived."""
    if scope["type"] != "http":
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
        return
    if scope["method"] == "GET":
        body = json.dumps(_received).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return
    chunks = []
    more = True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    _received["requests"] += 1
    _received["events"] += b"".join(chunks).count(b'"messageId"')
    await send({"type": "http.response.start", "status": 200, "headers": _PEER_HEADERS})
    await send({"type": "http.response.body", "body": b'{"ok":true}'})
