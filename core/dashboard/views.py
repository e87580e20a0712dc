"""The dashboard's request plumbing: authentication of every page, login/logout, error pages.

Page handlers (in :mod:`hookyard.dashboard.pages`) are ``async fn(view, request) -> Response``;
:meth:`Dashboard.guard` wraps each one: anonymous GETs are redirected to the login form, a wrong
Bearer token is answered 401, POSTs are parsed as forms and need the session's CSRF token.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from .. import operator_input
from ..errors import BEARER_CHALLENGE
from ..refused_tokens import TooManyGuesses
from .auth import (
    HOME,
    LOGIN_COOKIE,
    REVOKED_SESSIONS,
    SESSION_COOKIE,
    Identity,
    Refused,
    SessionAuth,
    read_form,
    safe_next,
    same,
    set_login_cookie,
)
from .queries import LocalApi
from .render import SECURITY_HEADERS, Renderer

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("hookyard.dashboard")


@dataclass
class Call:
    """One authenticated dashboard request."""

    request: Request
    ident: Identity
    form: dict[str, str]

    def param(self, name: str) -> str | None:
        value = self.request.query_params.get(name)
        return value.strip() or None if value is not None else None

    def id_param(self, name: str) -> str | None:
        """An id given in the query, as it is (a user id may begin or end with a space);
        None when absent or empty."""
        return self.request.query_params.get(name) or None

    def record_id(self, name: str) -> str:
        """The id of the record a detail page shows: its path segment, or ``?id=`` (an id of
        ``.`` or ``..`` cannot be a path segment: hookyard.dashboard.render.item_url)."""
        found = self.request.path_params.get(name) or self.id_param("id")
        if not found:
            raise Refused(404, f"no {name} given: pick one from the list")
        return found

    def int_param(self, name: str) -> int | None:
        """A non-negative integer in the query (the API's own check: ASCII digits only, where
        ``str.isdigit`` also takes ``²``, which ``int`` refuses)."""
        try:
            return operator_input.int_param(self.request.query_params, name)
        except ValueError:
            raise Refused(400, f"{name} must be a non-negative integer") from None


Handler = Callable[["Dashboard", Call], Awaitable[Response]]


class Dashboard:
    """Shared state of the dashboard pages of one runtime."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.auth = SessionAuth(rt.admin_token, revoked_file=rt.data_dir / REVOKED_SESSIONS)
        self.renderer = Renderer(rt)
        self.api = LocalApi(rt)

    # -- rendering -----------------------------------------------------------------------------
    def page(self, call: Call | None, name: str, nav: str, status: int = 200,
             **context: Any) -> Response:
        context.update(nav=nav, ident=call.ident if call else None,
                       csrf=call.ident.csrf if call else "",
                       path=call.request.url.path if call else "")
        return self.renderer.page(name, context, status)

    def error(self, request: Request, status: int, reason: str,
              ident: Identity | None = None, extra: dict[str, str] | None = None) -> Response:
        headers = {"WWW-Authenticate": BEARER_CHALLENGE} if status == 401 else {}
        headers.update(extra or {})
        return self.renderer.page(
            "error.html",
            {"status": status, "reason": reason, "nav": "", "ident": ident,
             "csrf": ident.csrf if ident else "", "path": request.url.path},
            status, headers,
        )

    @staticmethod
    def redirect(url: str) -> Response:
        return RedirectResponse(url, status_code=303, headers=SECURITY_HEADERS)

    # -- authentication ------------------------------------------------------------------------
    def guard(self, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            ident: Identity | None = None
            try:
                ident = await self.identify(request)
                if ident is None:
                    if request.method in ("GET", "HEAD"):
                        target = request.url.path
                        if request.url.query:
                            target += "?" + request.url.query
                        return self.redirect(f"/ui/login?next={quote(target, safe='')}")
                    raise Refused(401, "log in first: the admin token is required")
                form: dict[str, str] = {}
                if request.method == "POST":
                    form = await read_form(request)
                    self.auth.check_csrf(ident, form, request)
                return await handler(self, Call(request, ident, form))
            except Refused as exc:
                return self.error(request, exc.status, exc.reason, ident, exc.headers)

        return endpoint

    async def identify(self, request: Request) -> Identity | None:
        """:meth:`Auth.identify`; a Bearer token is checked in its address's turn, and a wrong
        one is slowed, counted and logged, as at the login form and on ``/api``."""
        header = request.headers.get("authorization") or ""
        if not header.lower().startswith("bearer "):
            return self.auth.identify(request)
        address = request.client.host if request.client else None
        try:
            async with self.rt.refused_tokens.turn(address):
                try:
                    return self.auth.identify(request)
                except Refused:
                    await self.rt.refused_tokens.refused("dashboard", address)
                    raise
        except TooManyGuesses as exc:
            raise Refused(429, exc.reason, {"Retry-After": "60"}) from None

    async def login_form(self, request: Request) -> Response:
        try:
            if await self.identify(request) is not None:
                return self.redirect(safe_next(request.query_params.get("next")))
        except Refused:
            pass
        return self._login_page(request, safe_next(request.query_params.get("next")), None, 200)

    def _login_page(self, request: Request, target: str, message: str | None,
                    status: int) -> Response:
        nonce = secrets.token_urlsafe(18)
        response = self.renderer.page("login.html", {
            "next": target, "message": message, "login_nonce": nonce, "nav": "", "ident": None,
            "csrf": "", "path": "/ui/login"}, status)
        set_login_cookie(response, request, nonce)
        return response

    async def login(self, request: Request) -> Response:
        try:
            form = await read_form(request)
        except Refused as exc:
            return self.error(request, exc.status, exc.reason)
        target = safe_next(form.get("next"))
        nonce = request.cookies.get(LOGIN_COOKIE) or ""
        given = form.get("csrf") or ""
        if not nonce or not same(nonce, given):
            return self._login_page(request, target, "The login form expired: try again.", 403)
        address = request.client.host if request.client else None
        try:
            right = await self.rt.refused_tokens.check(
                "dashboard", address, lambda: self.auth.token_ok(form.get("token") or ""))
        except TooManyGuesses as exc:
            return self._login_page(request, target, exc.reason[0].upper() + exc.reason[1:] + ".", 429)
        if not right:
            return self._login_page(request, target, "Wrong admin token.", 401)
        response = self.redirect(target)
        self.auth.set_session(response, request)
        response.delete_cookie(LOGIN_COOKIE, path="/ui/login")
        return response

    async def logout(self, call: Call) -> Response:
        self.auth.revoke(call.request.cookies.get(SESSION_COOKIE))
        response = self.redirect("/ui/login")
        self.auth.clear_session(response)
        return response

    async def home(self, request: Request) -> Response:
        return self.redirect(HOME)
