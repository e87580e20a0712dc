"""The operator dashboard: server-rendered pages under ``/ui/`` (``/`` redirects there).

Jinja2 templates and static assets live in this package (no build step). Every page needs the
admin token: a login form sets a signed session cookie, or send ``Authorization: Bearer``. See
docs/dashboard.md.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from ..url_convertors import register as _register_convertors
from . import pages
from .render import STATIC
from .views import Dashboard

if TYPE_CHECKING:
    from ..runtime import Runtime

Endpoint = Callable[[Request], Awaitable[Response]]


def routes(rt: Runtime) -> list[BaseRoute]:
    """The dashboard's routes (kept out of the OpenAPI document)."""
    _register_convertors()
    view = Dashboard(rt)
    guard = view.guard

    def get(path: str, endpoint: Endpoint) -> Route:
        return Route(path, endpoint, methods=["GET"], include_in_schema=False)

    def post(path: str, endpoint: Endpoint) -> Route:
        return Route(path, endpoint, methods=["POST"], include_in_schema=False)

    return [
        get("/", view.home),
        get("/ui", view.home),
        get("/ui/", view.home),
        get("/ui/login", view.login_form),
        post("/ui/login", view.login),
        post("/ui/logout", guard(Dashboard.logout)),
        get("/ui/sources", guard(pages.sources)),
        post("/ui/sources/{name}/write-key", guard(pages.write_key)),
        get("/ui/events", guard(pages.events)),
        get("/ui/events/{message_id:anypath}", guard(pages.event_detail)),
        get("/ui/logs", guard(pages.logs)),
        get("/ui/subscribers", guard(pages.subscribers)),
        get("/ui/subscribers/{distinct_id:anypath}", guard(pages.subscriber)),
        get("/ui/destinations", guard(pages.destinations)),
        get("/ui/dead-letters", guard(pages.dead_letters)),
        post("/ui/dead-letters/{action}", guard(pages.dead_letter_action)),
        get("/ui/plugins", guard(pages.plugins)),
        Mount("/ui/static", app=StaticFiles(directory=STATIC), name="dashboard-static"),
        # a page with the menu, not Starlette's text (405 for a known path's other method)
        Route("/ui/{rest:anypath}", guard(pages.not_found), methods=["GET", "POST"],
              include_in_schema=False),
    ]


__all__ = ["routes", "Dashboard"]
