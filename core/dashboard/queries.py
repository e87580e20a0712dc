"""What the dashboard reads: the operator API called in-process, plus two queries of its own.

:class:`LocalApi` calls the ``/api/*`` handlers of :mod:`hookyard.admin_api` directly (no
network, no HTTP auth: the dashboard authenticated the operator already), so the pages show
exactly what the JSON API answers. The API has no per-event delivery status and no destination
summary, so :func:`events_page` and :func:`destination_health` add those read queries.
"""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import msgspec
from starlette.routing import Router

from .. import admin_api
from ..delivery import outbox
from ..errors import RequestError
from ..sizes import SizeCounter
from .auth import Refused

if TYPE_CHECKING:
    from ..runtime import Runtime

_dec = msgspec.json.Decoder()

# delivery status of an event, from the states of its outbox rows (worst first)
STATUSES = ("failed", "pending", "delivered", "discarded", "filtered", "stored")
STATUS_HELP = {
    "failed": "a delivery is a dead letter",
    "pending": "a delivery is queued or being retried",
    "delivered": "every delivery succeeded",
    "discarded": "a dead letter was discarded",
    "filtered": "the source or every destination skipped it",
    "stored": "stored; no delivery (yet, or none connected)",
}


class LocalApi:
    """The operator API's own handlers, called in-process."""

    def __init__(self, rt: Runtime) -> None:
        self.router = Router(routes=admin_api.routes(rt))

    async def call(self, method: str, path: str, params: dict[str, Any] | None = None,
                   body: Any = None) -> tuple[int, Any]:
        """``(status, decoded JSON)`` of one request to ``path``."""
        query = urlencode({k: v for k, v in (params or {}).items() if v not in (None, "")})
        payload = msgspec.json.encode(body) if body is not None else b""
        scope: dict[str, Any] = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
            "root_path": "", "query_string": query.encode(), "client": ("127.0.0.1", 0),
            "server": ("127.0.0.1", 0), "headers": [(b"content-type", b"application/json")],
        }
        sent = False
        status = 500
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                return {"type": "http.disconnect"}
            sent = True
            return {"type": "http.request", "body": payload, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        try:
            await self.router(scope, receive, send)  # type: ignore[arg-type]
        except RequestError as exc:
            return exc.status, {"error": exc.reason}
        raw = b"".join(chunks)
        return status, (_dec.decode(raw) if raw else None)

    async def get(self, path: str, **params: Any) -> Any:
        """The JSON of a GET that must succeed (else Refused with the API's status and error)."""
        status, data = await self.call("GET", path, params)
        if status != 200:
            raise Refused(status, (data or {}).get("error", f"HTTP {status}"))
        return data


# -- events with their delivery status -----------------------------------------------------
def _exists(states: tuple[str, ...]) -> str:
    """The event has a delivery in one of ``states``, counting only each destination's newest
    row: a replay's row replaces the one before it (the badge, :func:`status_of`, shows that
    one; a replayed dead letter now delivered was listed under "failed"; operator audit)."""
    marks = ", ".join(f"'{s}'" for s in states)
    return (f"EXISTS (SELECT 1 FROM outbox o WHERE o.inbox_id = i.id AND o.state IN ({marks})"
            " AND NOT EXISTS (SELECT 1 FROM outbox n WHERE n.inbox_id = o.inbox_id"
            " AND n.destination = o.destination AND n.id > o.id))")


_ACTIVE = ("dead", "pending", "inflight")
_ANY = ("dead", "pending", "inflight", "done", "discarded", "filtered")
STATUS_SQL = {
    "failed": f"i.filtered IS NULL AND {_exists(('dead',))}",
    "pending": f"i.filtered IS NULL AND NOT {_exists(('dead',))}"
               f" AND {_exists(('pending', 'inflight'))}",
    "delivered": f"i.filtered IS NULL AND NOT {_exists((*_ACTIVE, 'discarded'))}"
                 f" AND {_exists(('done',))}",
    "discarded": f"i.filtered IS NULL AND NOT {_exists(_ACTIVE)} AND {_exists(('discarded',))}",
    "filtered": f"(i.filtered IS NOT NULL OR (NOT {_exists((*_ACTIVE, 'done', 'discarded'))}"
                f" AND {_exists(('filtered',))}))",
    "stored": f"i.filtered IS NULL AND NOT {_exists(_ANY)}",
}


RARE_STATES = {"failed": ("dead",), "pending": ("pending", "inflight"),
               "discarded": ("discarded",)}
"""The statuses an event has only with a row in one of these states: few events, found from
the outbox's side."""


def status_of(inbox_filtered: str | None, states: set[str]) -> str:
    """The event's status from its outbox row states (same rules as ``STATUS_SQL``)."""
    if inbox_filtered:
        return "filtered"
    if not states:
        return "stored"
    if "dead" in states:
        return "failed"
    if states & {"pending", "inflight"}:
        return "pending"
    if "discarded" in states:  # delivered elsewhere or not, one of its deliveries never will be
        return "discarded"
    if "done" in states:
        return "delivered"
    return "filtered"


@dataclass
class EventRow:
    id: int
    source: str
    message_id: str
    type: str
    user_id: str | None
    anonymous_id: str | None
    name: str | None
    received_at: str
    filtered: str | None
    status: str = "stored"
    destinations: dict[str, str] = field(default_factory=dict)  # name -> outbox state


def events_page(
    conn: sqlite3.Connection, *, source: str | None = None, type: str | None = None,
    status: str | None = None, user_id: str | None = None, cursor: int | None = None,
    limit: int = 50,
) -> tuple[list[EventRow], int | None]:
    """Inbox events newest first with their delivery status; ``(rows, next cursor)``."""
    sql = ("SELECT i.id, i.source, i.message_id, i.type, i.user_id, i.anonymous_id, i.event,"
           " i.received_at, i.filtered FROM inbox i WHERE 1=1")
    params: list[Any] = []
    for column, value in (("source", source), ("type", type)):
        if value:
            sql += f" AND i.{column} = ?"
            params.append(value)
    if user_id:  # the user the page shows: an anonymous event's anonymousId
        sql += " AND (i.user_id = ? OR (i.user_id IS NULL AND i.anonymous_id = ?))"
        params += [user_id, user_id]
    if status:
        sql += f" AND {STATUS_SQL[status]}"
        if status in RARE_STATES:  # the few events with such a row, through the outbox's
            # (destination, state, id) index: the conditions alone were checked on every
            # inbox row, newest first, until 50 matched (12 s with 3.2 M events; scale audit)
            names = outbox.destinations_in(conn)
            marks = ", ".join(f"'{s}'" for s in RARE_STATES[status])
            sql += (" AND i.id IN (SELECT inbox_id FROM outbox WHERE destination IN"
                    f" ({', '.join('?' * len(names)) or 'NULL'}) AND state IN ({marks}))")
            params += names
    if cursor is not None:
        sql += " AND i.id < ?"
        params.append(cursor)
    sql += " ORDER BY i.id DESC LIMIT ?"
    params.append(limit + 1)
    found = conn.execute(sql, params).fetchall()
    rows = [EventRow(*r) for r in found[:limit]]
    if rows:
        marks = ",".join("?" * len(rows))
        states: dict[int, dict[str, str]] = {}
        for inbox_id, dest, state in conn.execute(
            f"SELECT inbox_id, destination, state FROM outbox WHERE inbox_id IN ({marks})"
            " ORDER BY id", [r.id for r in rows],
        ):
            states.setdefault(inbox_id, {})[dest] = state
        for r in rows:
            r.destinations = states.get(r.id, {})
            r.status = status_of(r.filtered, set(r.destinations.values()))
    return rows, (rows[-1].id if len(found) > limit else None)


# -- destination health ----------------------------------------------------------------------
WINDOW_ROWS = 20_000  # the newest attempts of every destination together (one scan: ~10 ms)
WINDOW_SECONDS = 24 * 3600


@dataclass
class Health:
    name: str
    states: dict[str, int] = field(default_factory=dict)
    retrying: int = 0
    attempts: int = 0
    ok: int = 0
    last_outcome: str | None = None
    last_at: float | None = None
    last_error: str | None = None
    last_error_status: int | None = None
    last_error_at: float | None = None

    @property
    def queue_depth(self) -> int:
        return self.states.get("pending", 0) + self.states.get("inflight", 0)

    @property
    def success_rate(self) -> float | None:
        return self.ok / self.attempts if self.attempts else None

    def health(self, enabled: bool = True) -> str:
        if not enabled:
            return "disabled"
        if not self.attempts:  # none among the newest attempts of all destinations
            return "failing" if self.retrying else "idle"  # retrying: its last attempt failed
        if self.last_outcome != "ok":
            return "failing"
        rate = self.success_rate or 0.0
        return "healthy" if rate >= 0.95 else "degraded"


def destination_health(
    conn: sqlite3.Connection, names: list[str], sizes: SizeCounter | None = None
) -> dict[str, Health]:
    """Outbox counts by state, and per destination its success rate, last outcome and last
    error over its attempts among the newest ``WINDOW_ROWS`` of all destinations (within
    ``WINDOW_SECONDS``); without any there, its newest dead letter's error."""
    out = {n: Health(n) for n in names}

    def get(name: str) -> Health:
        return out.setdefault(name, Health(name))

    if sizes is None:
        states, retrying = outbox.counts(conn, names)
    else:  # the runtime's counter: finished rows reused a while once slow (sizes.py)
        _, states, retrying = sizes.read(conn, names)
    for dest, state, count in states:
        get(dest).states[state] = count
    for dest, count in retrying.items():
        get(dest).retrying = count
    since = time.time() - WINDOW_SECONDS
    newest = conn.execute("SELECT coalesce(max(id), 0) FROM attempts").fetchone()[0]
    # one pass over an id range (no index beyond the primary key: an index on destination
    # cost every attempt's insert 5 us), each destination's rows counted whole
    found = conn.execute(
        "SELECT destination, count(*), sum(CASE WHEN outcome = 'ok' THEN 1 ELSE 0 END),"
        " max(id), max(CASE WHEN outcome <> 'ok' THEN id END) FROM attempts"
        " WHERE id > ? AND at >= ? GROUP BY destination", (newest - WINDOW_ROWS, since),
    ).fetchall()
    for dest, attempts, ok, last_id, error_id in found:
        h = get(dest)
        h.attempts, h.ok = int(attempts), int(ok or 0)
        h.last_outcome, h.last_at = conn.execute(
            "SELECT outcome, at FROM attempts WHERE id = ?", (last_id,)).fetchone()
        if error_id is not None:
            h.last_error, h.last_error_status, h.last_error_at = conn.execute(
                "SELECT error, http_status, at FROM attempts WHERE id = ?", (error_id,)).fetchone()
    for h in out.values():
        if h.last_error is None:  # older than the window: the newest row of the destination
            # that failed says why, a delivery waiting to be retried or a dead letter
            rows = [conn.execute(
                f"SELECT last_error, last_status, updated_at FROM {table} WHERE destination = ?"
                f" AND state = '{state}'{more} ORDER BY {order} DESC LIMIT 1", (h.name,),
            ).fetchone() for table, state, more, order in (
                (outbox.retrying(conn), "pending", " AND attempts > 0", "updated_at"),
                ("outbox", "dead", "", "id"))]
            found = [r for r in rows if r is not None]
            if found:
                row = max(found, key=lambda r: r[2] or 0)
                h.last_error, h.last_error_status, h.last_error_at = row[0], row[1], row[2]
    return out
