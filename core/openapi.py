"""``GET /openapi.json`` (OpenAPI 3.1) built from the live routes and the msgspec types, and a
server-rendered reference page at ``/docs`` (no JavaScript, no CDN)."""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

from . import __version__
from . import api_models as m
from .events import EVENT_CLASSES
from .tracking_api import BATCH_CALLS

if TYPE_CHECKING:
    from .runtime import Runtime

REF = "#/components/schemas/{name}"


@dataclass
class Op:
    method: str
    path: str
    summary: str
    tag: str
    body: Any = None
    responses: dict[int, Any] = field(default_factory=dict)
    params: list[tuple[str, str, str]] = field(default_factory=list)  # (name, in, description)
    security: list[str] = field(default_factory=lambda: ["adminToken"])


def _ingest_ops(rt: Runtime) -> list[Op]:
    ops: list[Op] = []
    errors = {400: m.IngestError, 401: m.IngestError, 413: m.IngestError, 503: m.IngestError}
    seen: set[str] = set()
    for route in rt.routes:
        if "{call}" in route.pattern:
            calls: list[tuple[str, Any]] = list(EVENT_CLASSES.items())
            calls += [(c, m.Batch) for c in BATCH_CALLS]
            for call, body in calls:
                path = route.pattern.replace("{call}", call)
                if path not in seen:
                    seen.add(path)
                    ops.append(Op("post", path, f"Ingest {call}", "ingest", body,
                                  {200: m.IngestOK, **errors},
                                  security=["writeKey", "bearerWriteKey"]))
        elif route.pattern not in seen:
            seen.add(route.pattern)
            keyed = [s for s in route.sources if rt.registry.get("source", s.plugin).write_key]
            if keyed:
                ops.append(Op("post", route.pattern, "Ingest one event or a JSON array of events",
                              "ingest", list[Any], {200: m.IngestOK, **errors},
                              security=["bearerWriteKey"]))
            else:  # its plugins check requests their own way (a vendor's signature)
                plugins = ", ".join(sorted({s.plugin for s in route.sources}))
                ops.append(Op("post", route.pattern, f"Ingest (checked by the {plugins} plugin)",
                              "ingest", Any, {200: m.IngestOK, **errors}, security=[]))
    return ops


def operations(rt: Runtime) -> list[Op]:
    paging = [("cursor", "query", "cursor from the previous page's `next`"),
              ("limit", "query", "page size, 1-500 (default 50; other values are a 400)")]
    # 429: too many wrong admin tokens from the address (every request of it, for a minute)
    err = {400: m.ApiError, 401: m.ApiError, 429: m.ApiError}
    too_large = {413: m.ApiError}  # operator request bodies: 1 MB at most
    ops = _ingest_ops(rt) + [
        Op("get", "/healthz", "Liveness", "health", None, {200: m.Health}, security=[]),
        Op("get", "/readyz", "Readiness (database writable)", "health", None,
           {200: m.Health, 503: m.Health}, security=[]),
        Op("get", "/metrics", "Prometheus metrics", "health", None, {200: str}, security=[]),
        Op("get", "/api/logs", "The API log, newest first", "admin", None, {200: m.LogPage, **err},
           paging + [("source", "query", "source name"), ("status", "query", "HTTP status")]),
        Op("get", "/api/events", "Stored events, newest first", "admin", None,
           {200: m.InboxPage, **err},
           paging + [("source", "query", ""), ("type", "query", ""), ("message_id", "query", ""),
                     ("user_id", "query", "the event's userId"),
                     ("anonymous_id", "query", "the event's anonymousId")]),
        Op("get", "/api/deliveries", "Every delivery and attempt of one event", "admin", None,
           {200: m.DeliveryTrace, **err},
           [("message_id", "query", "required"), ("destination", "query", "")]),
        Op("get", "/api/dead-letters", "Dead letters, the last queued first", "admin", None,
           {200: m.DeadLetterPage, **err},
           paging + [("destination", "query", ""),
                     ("since", "query", "failed at or after: ISO-8601 (UTC when no zone is given)"
                                        " or Unix seconds")]),
        Op("post", "/api/dead-letters/retry", "Queue dead letters again", "admin",
           m.DeadLetterRequest, {200: m.DeadLetterResult, **err, **too_large}),
        Op("post", "/api/dead-letters/discard", "Discard dead letters", "admin",
           m.DeadLetterRequest, {200: m.DeadLetterResult, **err, **too_large}),
        Op("post", "/api/destinations/{name}/preview", "What a destination would send", "admin",
           dict[str, Any], {200: m.PreviewResult, 404: m.ApiError, **err, **too_large},
           [("name", "path", "destination name"),
            ("source", "query", "the source the event comes from (its honor_integrations"
             " applies)")]),
        Op("post", "/api/replay", "Map stored events again and queue their deliveries", "admin",
           m.ReplayRequest, {200: m.ReplayResult, 404: m.ApiError, **err, **too_large}),
    ]
    if any(d.config.plugin == "profiles" for d in rt.destinations.values()):
        dest = [("destination", "query", "profile destination (default: the first)")]
        ops += [
            Op("get", "/api/subscribers", "Subscribers (search by id or channel value)",
               "profiles", None, {200: m.SubscriberPage, 404: m.ApiError, **err},
               paging + dest + [("q", "query", "search")]),
            Op("get", "/api/subscribers/{distinct_id}", "One subscriber", "profiles", None,
               {200: m.Subscriber, 404: m.ApiError, **err},
               dest + [("distinct_id", "path", "the Segment userId (a `/` in it sent as %2F)")]),
            Op("get", "/api/subscribers/{distinct_id}/events",
               "A subscriber's events, the last received first (each has its own timestamp)",
               "profiles", None, {200: m.UserEventPage, 404: m.ApiError, **err},
               paging + dest + [("distinct_id", "path", "the Segment userId (a `/` in it sent as %2F)")]),
            Op("get", "/api/workflow-runs", "Workflow runs, newest first", "profiles", None,
               {200: m.WorkflowRunPage, 404: m.ApiError, **err},
               paging + dest + [("distinct_id", "query", ""), ("workflow", "query", "")]),
        ]
    return ops


_INTEGER_PARAMS: dict[str, dict[str, Any]] = {
    "limit": {"type": "integer", "minimum": 1, "maximum": 500},
    "cursor": {"type": "integer", "minimum": 1},  # an id; /api/subscribers pages by distinct_id
    "status": {"type": "integer", "minimum": 0},
}


def _param_schema(path: str, name: str, required: bool) -> dict[str, Any]:
    """A query or path parameter as the server checks it (hookyard.operator_input)."""
    if name in _INTEGER_PARAMS and not (name == "cursor" and path == "/api/subscribers"):
        return dict(_INTEGER_PARAMS[name])
    return {"type": "string", "minLength": 1} if required else {"type": "string"}


def build_openapi(rt: Runtime) -> dict[str, Any]:
    ops = operations(rt)
    types: list[Any] = []
    for op in ops:
        if op.body is not None:
            types.append(op.body)
        types.extend(op.responses.values())
    schemas, components = msgspec.json.schema_components(types, ref_template=REF)
    lookup = dict(zip(map(id, types), schemas, strict=True))
    paths: dict[str, Any] = {}
    op_ids: set[str] = set()
    for op in ops:
        op_id = op.method + "".join(c if c.isalnum() else "_" for c in op.path).rstrip("_")
        while op_id in op_ids:
            op_id += "_"
        op_ids.add(op_id)
        item: dict[str, Any] = {"summary": op.summary, "tags": [op.tag], "operationId": op_id,
                                "security": [{s: []} for s in op.security]}
        if op.params:
            item["parameters"] = [
                {"name": n, "in": where, "required": where == "path" or d == "required",
                 "description": d, "schema": _param_schema(op.path, n, d == "required")}
                for n, where, d in op.params
            ]
        if op.body is not None:
            item["requestBody"] = {"required": True, "content": {
                "application/json": {"schema": lookup[id(op.body)]}}}
        item["responses"] = {}
        for status, typ in op.responses.items():
            media = "text/plain" if typ is str else "application/json"
            item["responses"][str(status)] = {
                "description": {200: "OK", 400: "Bad request", 401: "Unauthorized",
                                404: "Not found", 413: "Too large",
                                429: "Too many wrong admin tokens from this address: try"
                                     " again after Retry-After seconds",
                                503: "Unavailable"}.get(status, "Answer"),
                "content": {media: {"schema": lookup[id(typ)]}},
            }
        paths.setdefault(op.path, {})[op.method] = item
    return {
        "openapi": "3.1.0",
        "info": {"title": "hookyard", "version": __version__,
                 "description": "Self-hosted event router for Segment-format customer data."},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "writeKey": {"type": "http", "scheme": "basic",
                             "description": "write key as user name, empty password"},
                "bearerWriteKey": {"type": "http", "scheme": "bearer",
                                   "description": "the source's write key"},
                "adminToken": {"type": "http", "scheme": "bearer",
                               "description": "the admin token ([server] admin_token)"},
            },
        },
    }


def render_docs(spec: dict[str, Any]) -> str:
    """A plain HTML reference of the API (no scripts)."""
    e = html.escape
    rows = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            auth = ", ".join(next(iter(s)) for s in op.get("security", [])) or "none"
            params = ", ".join(p["name"] for p in op.get("parameters", []))
            rows.append(f"<tr><td><code>{e(method.upper())}</code></td><td><code>{e(path)}</code></td>"
                        f"<td>{e(op['summary'])}</td><td>{e(params)}</td><td>{e(auth)}</td></tr>")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>hookyard API</title>"
        "<style>body{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}"
        "table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;"
        "padding:.4rem;text-align:left}code{font-size:.9em}</style></head><body>"
        f"<h1>hookyard API {e(spec['info']['version'])}</h1>"
        "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a> (OpenAPI 3.1).</p>"
        "<table><tr><th>method</th><th>path</th><th>what</th><th>parameters</th><th>auth</th></tr>"
        + "".join(rows) + "</table></body></html>"
    )
