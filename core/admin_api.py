"""The operator API under ``/api/`` (admin token required; the host enforces it).

    GET  /api/logs?source=&status=&cursor=          the API log, newest first
    GET  /api/events?source=&type=&cursor=          the inbox, newest first
    GET  /api/deliveries?message_id=&destination=   every outbox row and attempt of an event
    GET  /api/dead-letters?destination=&since=&cursor=   failed deliveries
    POST /api/dead-letters/retry    {"destination"?, "since"?, "ids"?, "all"?}
    POST /api/dead-letters/discard  {"destination"?, "since"?, "ids"?} or {"all": true}
    POST /api/destinations/{name}/preview   body: a Segment event -> what would be sent
    POST /api/replay  {"source", "destination"?, "since"?, "until"?}
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import msgspec
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from .api_models import DeadLetterRequest, ReplayRequest
from .delivery import dead_letters as dlq
from .delivery import outbox
from .delivery.preview import preview_event
from .delivery.replay import replay
from .errors import BadRequest, ConfigError
from .inbox import UndecodableEvent, by_message_id, decode_row
from .operator_input import (
    check_query,
    dead_letter_filter,
    int_param,
    page_limit,
    parse_time,
    replay_start,
    retry_refusal,
)
from .request_body import read_body

if TYPE_CHECKING:
    from .runtime import Runtime

log = logging.getLogger("hookyard.replay")

_dec = msgspec.json.Decoder(dict[str, Any])


def _json(data: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(data), status_code=status, media_type="application/json")


def _error(status: int, message: str) -> Response:
    return _json({"error": message}, status)


def _int_param(request: Request, name: str, minimum: int = 0) -> int | None:
    try:
        return int_param(request.query_params, name, minimum)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _limit(request: Request) -> int:
    """``limit``: the page size, 1-500 (default 50); outside that range a 400, not a clamp."""
    try:
        return page_limit(request.query_params)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _cursor(request: Request) -> int | None:
    """``cursor``: the ``next`` of the page before (an id, 1 or more)."""
    return _int_param(request, "cursor", minimum=1)


PAGING = ("cursor", "limit")


def _query(request: Request, *allowed: str) -> None:
    """400 for a query parameter the route does not take, or one given twice."""
    try:
        check_query(request.query_params, allowed)
    except ValueError as exc:
        raise BadRequest(str(exc)) from None


def _no_query(request: Request) -> None:
    """400 for any query parameter on a route that takes its request as a JSON body
    (``POST /api/dead-letters/retry?destination=hook`` retried every destination's dead
    letters; operator audit)."""
    if request.query_params:
        names = ", ".join(sorted(set(request.query_params.keys())))
        raise BadRequest(f"this route takes no query parameters ({names}): send them in the"
                         " JSON body, e.g. {\"destination\": \"name\"}")


ADMIN_BODY_LIMIT = 1_000_000  # bytes: a dead-letter id list, a preview event, a replay request


async def _body(request: Request) -> dict[str, Any]:
    raw = await read_body(request, ADMIN_BODY_LIMIT)  # larger: 413, never read into memory
    if not raw.strip():
        return {}
    try:
        return _dec.decode(raw)
    except msgspec.ValidationError as exc:
        raise ValueError(f"body must be a JSON object: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError) as exc:
        raise ValueError(f"body is not valid JSON: {exc}") from None


def routes(rt: Runtime) -> list[BaseRoute]:
    db = rt.db

    def paged(sql: str, params: list[Any], request: Request, row_fn: Any) -> Any:
        cursor, limit = _cursor(request), _limit(request)
        if cursor is not None:
            sql += " AND id < ?"
            params.append(cursor)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit + 1)

        def run(conn: Any) -> dict[str, Any]:
            rows = conn.execute(sql, params).fetchall()
            items = [row_fn(r) for r in rows[:limit]]
            nxt = rows[limit - 1]["id"] if len(rows) > limit else None
            return {"items": items, "next": str(nxt) if nxt is not None else None}

        return db.read(run)

    def where(request: Request, columns: dict[str, str], *more: str,
              integers: tuple[str, ...] = ()) -> tuple[str, list[Any]]:
        """The route's equality filters (``integers`` among them checked as such); 400 for a
        parameter outside ``columns``, ``more`` and paging."""
        _query(request, *columns, *more, *PAGING)
        sql, params = " WHERE 1=1", []
        for param, column in columns.items():
            value: Any = request.query_params.get(param)
            if param in integers:
                value = _int_param(request, param)
            if value or value == 0:
                sql += f" AND {column} = ?"
                params.append(value)
        return sql, params

    async def logs(request: Request) -> Response:
        sql, params = where(request, {"source": "source", "status": "status"},
                            integers=("status",))
        return _json(await paged(f"SELECT * FROM api_log{sql}", params, request, dict))

    async def events(request: Request) -> Response:
        sql, params = where(request, {"source": "source", "type": "type", "user_id": "user_id",
                                      "anonymous_id": "anonymous_id"}, "message_id")
        message_id = request.query_params.get("message_id")
        if message_id:
            condition, times = by_message_id(db.dialect)
            sql += f" AND {condition}"
            params.extend([message_id] * times)

        def row(r: Any) -> dict[str, Any]:
            try:
                event = decode_row(r)
            except UndecodableEvent as exc:  # stored before ingest's checks: not a 500
                event = {"type": r["type"], "messageId": r["message_id"], "error": str(exc)}
            return {"id": r["id"], "source": r["source"], "filtered": r["filtered"],
                    "event": event}

        return _json(await paged(f"SELECT * FROM inbox{sql}", params, request, row))

    async def deliveries(request: Request) -> Response:
        _query(request, "message_id", "destination")
        message_id = request.query_params.get("message_id")
        if not message_id:
            return _error(400, "message_id is required")
        dest = request.query_params.get("destination")

        def run(conn: Any) -> dict[str, Any]:
            # through the event's inbox rows: the outbox has no index on message_id
            condition, times = by_message_id(db.dialect)
            sql = f"SELECT * FROM outbox WHERE inbox_id IN (SELECT id FROM inbox WHERE {condition})"
            params: list[Any] = [message_id] * times
            if dest:
                sql += " AND destination = ?"
                params.append(dest)
            out = []
            for r in conn.execute(sql + " ORDER BY id", params).fetchall():
                item = {k: r[k] for k in r.keys() if k not in ("request", "lease_owner")}
                item["next_at"] = item.get("next_at") or None  # 0: no retry scheduled
                item["request"] = _dec.decode(r["request"]) if r["request"] else None
                item["attempts_log"] = [dict(a) for a in conn.execute(
                    "SELECT attempt, outcome, http_status, latency_ms, error, at FROM attempts"
                    " WHERE outbox_id = ? ORDER BY id", (r["id"],))]
                out.append(item)
            return {"message_id": message_id, "deliveries": out}

        return _json(await db.read(run))

    async def dead_letters(request: Request) -> Response:
        sql, params = where(request, {"destination": "destination"}, "since")
        sql += " AND state = 'dead'"
        if not request.query_params.get("destination"):
            clause, names = await db.read(outbox.every_destination)
            sql += clause
            params.extend(names)
        if "since" in request.query_params:  # failed at or after, as for retry and discard
            try:
                since = parse_time(request.query_params["since"], "since")
            except ValueError as exc:
                raise BadRequest(str(exc)) from None
            sql += " AND updated_at >= ?"
            params.append(since)

        def row(r: Any) -> dict[str, Any]:
            return {k: r[k] for k in ("id", "destination", "message_id", "user_key", "kind",
                                      "attempts", "last_status", "last_error", "response_body",
                                      "created_at", "updated_at")}

        return _json(await paged(f"SELECT * FROM outbox{sql}", params, request, row))

    async def dead_letter_action(request: Request) -> Response:
        action = request.path_params["action"]
        if action not in ("retry", "discard"):
            return _error(404, f"unknown action {action!r}: use retry or discard")
        _no_query(request)
        try:
            body = msgspec.convert(await _body(request), DeadLetterRequest)
            destination, since, ids = dead_letter_filter(
                action, body.destination, body.since, body.ids, body.every)
        except (ValueError, TypeError, msgspec.ValidationError) as exc:
            return _error(400, str(exc))
        refusal = retry_refusal(destination, rt.destinations) if action == "retry" else None
        if refusal is not None:
            return _error(400, refusal)
        names = list(rt.destinations)
        answer: dict[str, Any] = {"action": action}
        retry = action == "retry"  # only configured destinations: no worker delivers the others'
        found = await db.read(lambda c: dlq.dead_ids(
            c, destination, since, ids, configured=names if retry else None))
        count = 0
        for write in dlq.dead_letter_writes(action, found):  # ingest goes on between them
            count += await db.write(write)
        answer["count"] = count
        if retry:
            left = await db.read(lambda c: dlq.dead_elsewhere(c, names, since, ids))
            if left:  # matched, but of destinations no longer in the config: not retried
                answer["left_dead"] = left
        if rt.engine is not None:
            rt.engine.wake_all()
        return _json(answer)

    async def preview(request: Request) -> Response:
        dest = rt.destinations.get(request.path_params["name"])
        if dest is None:
            return _error(404, f"no destination named {request.path_params['name']!r}")
        try:
            _query(request, "source")
            raw = await _body(request)
            source = request.query_params.get("source") or None  # empty: not given
            return _json(preview_event(rt, dest, raw, source))
        except (ValueError, msgspec.ValidationError) as exc:
            return _error(400, f"not a valid Segment event: {exc}")

    async def replay_endpoint(request: Request) -> Response:
        _no_query(request)
        try:
            raw = await _body(request)
            if not isinstance(raw.get("source"), str):
                return _error(400, "invalid replay request: source (a source name) is required")
            body = msgspec.convert(raw, ReplayRequest)
            if body.source not in rt.sources:
                return _error(404, f"no source named {body.source!r}")
            replay_start(body.since, body.every)
            started = time.time()
            done = await replay(rt, body.source, body.destination, body.since, body.until)
        except ConfigError as exc:
            return _error(404, str(exc))
        except (KeyError, ValueError, TypeError, msgspec.ValidationError) as exc:
            return _error(400, f"invalid replay request: {exc}")
        # logged too: a long replay outlives a client or proxy that stopped waiting for it
        log.info("replay of source %s%s since %s until %s: %s", body.source,
                 f" to {body.destination}" if body.destination else "", body.since or "the start",
                 body.until or "it began", done.summary())
        if rt.engine is not None:
            rt.engine.wake_all()
        return _json({"events": done.events, "deliveries": done.deliveries,
                      "filtered": done.filtered, "failed": done.failed,
                      "seconds": round(time.time() - started, 3)})

    return [
        Route("/api/logs", logs, methods=["GET"]),
        Route("/api/events", events, methods=["GET"]),
        Route("/api/deliveries", deliveries, methods=["GET"]),
        Route("/api/dead-letters", dead_letters, methods=["GET"]),
        Route("/api/dead-letters/{action:str}", dead_letter_action, methods=["POST"]),
        Route("/api/destinations/{name}/preview", preview, methods=["POST"]),
        Route("/api/replay", replay_endpoint, methods=["POST"]),
    ]


__all__ = ["routes", "JSONResponse"]
