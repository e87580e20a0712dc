"""The dashboard pages: sources, live events, API log, event detail, subscribers, destinations,
dead letters, plugins. Each is ``async fn(view, call) -> Response`` wrapped by
:meth:`hookyard.dashboard.views.Dashboard.guard`."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import urlencode

from starlette.responses import PlainTextResponse, Response
from starlette.routing import Match

from .. import operator_input
from ..connectors import DestinationContext
from ..events import EVENT_CLASSES
from .auth import Refused
from .queries import STATUS_HELP, STATUSES, destination_health, events_page
from .render import mask
from .views import Call, Dashboard

PAGE = 50
LOG_STATUSES = ("200", "400", "401", "404", "405", "408", "413", "503")
DONE_MESSAGES = {
    "retry": "{count} dead letter(s) queued for delivery again.",
    "discard": "{count} dead letter(s) discarded.",
}


def _query(**params: Any) -> str:
    """A query string of the non-empty ``params`` (for pagination links)."""
    return urlencode({k: v for k, v in params.items() if v not in (None, "")})


def _pager(path: str, cursor: Any, nxt: Any, **filters: Any) -> dict[str, Any]:
    """The links of a paged list with these ``filters``: back to its first page (on a later
    page) and on to the next (when there is one)."""
    first = _query(**filters)
    return {"first_url": (f"{path}?{first}" if first else path) if cursor not in (None, "") else None,
            "next_url": f"{path}?{_query(**filters, cursor=nxt)}" if nxt not in (None, "") else None}


def _choice(call: Call, name: str, allowed: tuple[str, ...] | list[str]) -> str | None:
    value = call.param(name)
    if value is not None and value not in allowed:
        raise Refused(400, f"{name} must be one of: {', '.join(allowed)}")
    return value


# -- sources ----------------------------------------------------------------------------------
async def sources(view: Dashboard, call: Call) -> Response:
    rt = view.rt
    base = str(call.request.base_url).rstrip("/")

    def last_seen(conn: Any) -> dict[str, str | None]:
        return {name: conn.execute("SELECT max(received_at) FROM inbox WHERE source = ?",
                                   (name,)).fetchone()[0] for name in rt.sources}

    seen = await rt.db.read(last_seen)
    items = []
    for name, src in rt.sources.items():
        connector = rt.registry.get("source", src.plugin)
        curl = None
        if "/v1/{call}" in connector.paths:
            curl = ("curl -u \"$HOOKYARD_WRITE_KEY:\" -H 'Content-Type: application/json' \\\n"
                    "  -d '{\"userId\":\"u1\",\"event\":\"Test Event\",\"properties\":{\"plan\":\"pro\"}}' \\\n"
                    f"  {base}/v1/track")
        items.append({
            "name": name, "plugin": src.plugin,
            "masked": mask(src.write_key) if src.write_key else None,
            "paths": connector.paths, "curl": curl, "last_seen": seen.get(name),
            "destinations": [d.name for d in rt.destinations_for(name)],
        })
    return view.page(call, "sources.html", "sources", sources=items)


async def write_key(view: Dashboard, call: Call) -> Response:
    """The full write key of a source, for the copy button (POST + CSRF, never in a page)."""
    src = view.rt.sources.get(call.request.path_params["name"])
    if src is None or not src.write_key:
        raise Refused(404, "no such source" if src is None else "this source has no write key")
    return PlainTextResponse(src.write_key, headers={"Cache-Control": "no-store"})


# -- live events, API log, event detail ---------------------------------------------------------
async def events(view: Dashboard, call: Call) -> Response:
    filters = {
        "source": _choice(call, "source", list(view.rt.sources)),
        "type": _choice(call, "type", tuple(EVENT_CLASSES)),
        "status": _choice(call, "status", STATUSES),
        "user_id": call.id_param("user_id"),
    }
    cursor = call.int_param("cursor")
    rows, nxt = await view.rt.db.read(
        lambda conn: events_page(conn, cursor=cursor, limit=PAGE, **filters))
    return view.page(
        call, "events.html", "events", rows=rows, filters=filters, cursor=cursor,
        **_pager("/ui/events", cursor, nxt, **filters),
        sources=list(view.rt.sources), types=list(EVENT_CLASSES), statuses=STATUSES,
        status_help=STATUS_HELP,
    )


async def logs(view: Dashboard, call: Call) -> Response:
    status = call.param("status")
    if status is not None and not (status.isdigit() and len(status) == 3):
        raise Refused(400, "status must be an HTTP status code such as 401")
    filters = {"source": _choice(call, "source", list(view.rt.sources)), "status": status}
    cursor = call.int_param("cursor")
    data = await view.api.get("/api/logs", **filters, cursor=cursor, limit=PAGE)
    nxt = data.get("next")
    return view.page(
        call, "logs.html", "logs", rows=data["items"], filters=filters, cursor=cursor,
        **_pager("/ui/logs", cursor, nxt, **filters),
        sources=list(view.rt.sources), statuses=LOG_STATUSES,
    )


async def event_detail(view: Dashboard, call: Call) -> Response:
    message_id = call.record_id("message_id")
    found = await view.api.get("/api/events", message_id=message_id, limit=50)
    if not found["items"]:
        raise Refused(404, f"no stored event has messageId {message_id!r}")
    trace = await view.api.get("/api/deliveries", message_id=message_id)
    items = []
    for item in found["items"]:
        deliveries = [d for d in trace["deliveries"] if d.get("inbox_id") in (item["id"], None)]
        items.append({**item, "deliveries": deliveries})
    profiles = _profile_destinations(view)
    return view.page(call, "event.html", "events", message_id=message_id, items=items,
                     has_profiles=bool(profiles))


# -- subscribers -------------------------------------------------------------------------------
def _profile_destinations(view: Dashboard) -> dict[str, DestinationContext]:
    return {d.name: d.context for d in view.rt.destinations.values()
            if d.config.plugin == "profiles"}


def _store(view: Dashboard, call: Call) -> tuple[str, Any, list[str]]:
    from ..profiles.plugin import store_for

    found = _profile_destinations(view)
    if not found:
        raise Refused(404, "no profile store destination is configured (plugin = \"profiles\")")
    name = call.param("destination") or next(iter(found))
    if name not in found:
        raise Refused(404, f"no profile store destination named {name!r}")
    return name, store_for(found[name]), list(found)


async def subscribers(view: Dashboard, call: Call) -> Response:
    dest, store, names = _store(view, call)
    q, after = call.param("q"), call.param("cursor")
    try:
        items, nxt = await asyncio.to_thread(store.subscribers, dest, query=q, after=after,
                                             limit=PAGE)
    except ValueError as exc:  # a search too long
        raise Refused(400, str(exc)) from None
    return view.page(
        call, "subscribers.html", "subscribers", rows=items, q=q, destination=dest,
        destinations=names,
        **_pager("/ui/subscribers", after, nxt, q=q, destination=dest),
    )


async def subscriber(view: Dashboard, call: Call) -> Response:
    dest, store, names = _store(view, call)
    uid = call.record_id("distinct_id")

    def load() -> dict[str, Any] | None:
        profile = store.subscriber(dest, uid)
        if profile is None:
            return None
        evs, _ = store.events(dest, uid, before=None, limit=PAGE)
        runs, _ = store.workflow_runs(dest, distinct_id=uid, workflow=None, before=None,
                                      limit=PAGE)
        return {"profile": profile, "events": evs, "runs": runs}

    data = await asyncio.to_thread(load)
    if data is None:
        raise Refused(404, f"no subscriber {uid!r} in profile store {dest!r}")
    return view.page(call, "subscriber.html", "subscribers", destination=dest,
                     destinations=names, uid=uid, limit=PAGE, **data)


# -- destinations, dead letters, plugins --------------------------------------------------------
async def destinations(view: Dashboard, call: Call) -> Response:
    names = list(view.rt.destinations)
    health = await view.rt.db.read(lambda conn: destination_health(conn, names, view.rt.sizes))
    rows = []
    workers = getattr(view.rt.engine, "workers", None) or {}
    for name, dest in view.rt.destinations.items():
        h = health[name]
        state, why = h.health(dest.config.enabled), ""
        breaker = getattr(workers.get(name), "breaker", None)
        if breaker is not None and breaker.paused and dest.config.enabled:
            # this process delivers, and the destination failed every delivery lately
            state, why = "paused", (f"failed {breaker.failures} requests in a row; one"
                                    f" delivery probes it every {breaker.first_probe:g}-"
                                    f"{breaker.max_probe:g} s until one succeeds")
        rows.append({"name": name, "plugin": dest.config.plugin, "sources": dest.config.sources,
                     "enabled": dest.config.enabled, "filter": dest.config.filter,
                     "trigger": dest.config.trigger, "h": h, "health": state, "why": why})
    return view.page(call, "destinations.html", "destinations", rows=rows)


async def dead_letters(view: Dashboard, call: Call) -> Response:
    dest = _choice(call, "destination", list(view.rt.destinations))
    cursor = call.int_param("cursor")
    data = await view.api.get("/api/dead-letters", destination=dest, cursor=cursor, limit=PAGE)
    done = _choice(call, "done", tuple(DONE_MESSAGES))
    count = call.int_param("count") or 0
    nxt = data.get("next")
    return view.page(
        call, "dead_letters.html", "dead-letters", rows=data["items"], destination=dest,
        destinations=list(view.rt.destinations), cursor=cursor,
        **_pager("/ui/dead-letters", cursor, nxt, destination=dest),
        flash=DONE_MESSAGES[done].format(count=count) if done else None,
    )


async def dead_letter_action(view: Dashboard, call: Call) -> Response:
    action = call.request.path_params["action"]
    if action not in DONE_MESSAGES:
        raise Refused(404, f"unknown action {action!r}: use retry or discard")
    body: dict[str, Any] = {}
    one = (call.form.get("id") or "").strip()
    if one:
        try:  # the API's check: ASCII digits only (isdigit takes "²", which int refuses)
            body["ids"] = [operator_input.int_param({"id": one}, "id", minimum=1)]
        except ValueError:
            raise Refused(400, "id must be a dead letter id") from None
    dest = (call.form.get("destination") or "").strip()
    if dest:
        if dest not in view.rt.destinations:
            raise Refused(400, f"no destination named {dest!r}")
        body["destination"] = dest
    if not one and not dest and call.form.get("all") == "1":  # "Discard all" of any destination
        body["all"] = True
    status, result = await view.api.call("POST", f"/api/dead-letters/{action}", body=body)
    if status != 200:
        raise Refused(status, (result or {}).get("error", f"HTTP {status}"))
    back = _query(destination=call.form.get("back_destination") or None, done=action,
                  count=result["count"])
    return view.redirect(f"/ui/dead-letters?{back}")


async def plugins(view: Dashboard, call: Call) -> Response:
    rt = view.rt
    owners = set()
    rows = []
    for connector, plugin in sorted(rt.registry.all(), key=lambda c: (c[0].name, c[0].kind)):
        owners.add(plugin)
        pool: Any = rt.sources.values() if connector.kind == "source" else (
            d.context for d in rt.destinations.values())
        used = [c.name for c in pool if c.plugin == connector.name]
        rows.append({"name": connector.name, "kind": connector.kind, "plugin": plugin,
                     "description": connector.description, "paths": connector.paths,
                     "batch_size": connector.batch_size, "used_by": used})
    others = sorted(name for name, _ in rt.pm.list_name_plugin()
                    if name not in owners and not name.startswith(("hookyard.", "_")))
    return view.page(call, "plugins.html", "plugins", rows=rows, others=others)


async def not_found(view: Dashboard, call: Call) -> Response:
    scope = call.request.scope
    for route in call.request.app.router.routes:  # the path is a dashboard route's, its method not
        if route.matches(scope)[0] is Match.PARTIAL:
            allowed = ", ".join(sorted(getattr(route, "methods", None) or ()))
            raise Refused(405, f"{call.request.method} is not allowed on"
                               f" {call.request.url.path[:200]}", {"Allow": allowed})
    raise Refused(404, f"no dashboard page at {call.request.url.path[:200]}: pick one from the menu")
