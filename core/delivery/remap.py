"""Mapping claimed outbox rows again, from their inbox events (:func:`remap`).

The worker hands it the rows it claimed without a request (a failed ``map_event``'s dead
letter queued again by ``dlq retry``; requests cleared by the schema's migration 4) or with a
request another plugin made (the destination's plugin was changed: :mod:`.plugin_changes`).
"""

from __future__ import annotations

import logging
import sqlite3
import time
from typing import TYPE_CHECKING, Any

from . import outbox
from .router import map_rows

if TYPE_CHECKING:
    from ..runtime import DestinationRuntime, Runtime

log = logging.getLogger("hookyard.router")


SELECT_REMAP = (
    "SELECT o.id, i.id, i.source, i.message_id, i.type, i.received_at, i.raw, i.filtered"
    " FROM outbox o LEFT JOIN inbox i ON i.id = o.inbox_id WHERE o.id IN ({})"
)
SELECT_STALE = (
    "SELECT id, state FROM outbox WHERE inbox_id = ? AND destination = ?"
    " AND state IN ('pending', 'inflight', 'dead')"
    " AND (request IS NULL OR plugin IS NULL OR plugin <> ?) ORDER BY id"
)
"""The deliveries of one event to a destination still to send whose request is missing or
was made by another plugin (mapped again together: the event is mapped once)."""
_REMAPPED_SET = (
    "UPDATE outbox SET message_id = COALESCE(NULLIF(?, ''), message_id),"
    " user_key = COALESCE(NULLIF(?, ''), user_key), kind = ?, request = ?, state = ?,"
    " next_at = 0, lease_until = NULL, lease_owner = NULL, updated_at = ?, last_error = ?,"
    " plugin = ?, last_status = NULL, response_body = NULL WHERE id = ? AND state = ?"
)
UPDATE_DEAD_REQUEST = (
    "UPDATE outbox SET message_id = COALESCE(NULLIF(?, ''), message_id),"
    " user_key = COALESCE(NULLIF(?, ''), user_key), kind = ?, request = ?, plugin = ?"
    " WHERE id = ? AND state = 'dead'"
)
REPLACED = "not made by the {plugin} plugin, which makes fewer deliveries of this event"


async def remap(rt: Runtime, dest: DestinationRuntime, ids: list[int]) -> None:
    """Map leased outbox rows again, from their inbox event: rows without a stored request
    (dead letters of a ``map_event`` that raised, or of an event that could not be decoded,
    queued again by ``dlq retry``; requests cleared by the schema's migration 4) and rows whose
    request another plugin made (the destination's plugin was changed: plugin_changes).

    Each event is mapped once, and its new deliveries take the places of its deliveries still
    to send that need it, in order (the claimed ones become ``pending``, ``filtered`` or
    ``dead`` again with the new error; a waiting one gets the new request; a dead letter keeps
    being one, with the new request for ``dlq retry``); extra new deliveries are added as new
    rows, and old ones left over are ``filtered``. Mapping each row on its own made every row
    of an event with several deliveries into all of them (the session's review).
    """
    mine = set(ids)
    marks = ",".join("?" * len(ids))
    plugin = dest.config.plugin

    def read(c: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], dict[int, list[tuple[Any, ...]]]]:
        found = [tuple(r) for r in c.execute(SELECT_REMAP.format(marks), ids).fetchall()]
        siblings = {}
        for event_id in {row[1] for row in found if row[1] is not None}:
            siblings[event_id] = [tuple(r) for r in c.execute(
                SELECT_STALE, (event_id, dest.name, plugin)).fetchall()]
        return found, siblings

    found, siblings = await rt.db.read(read)
    now = time.time()
    updates: list[tuple[int, str, tuple[Any, ...]]] = []  # (row id, its state, new row)
    inserts: list[tuple[Any, ...]] = []
    done_events: set[int] = set()
    for oid, *event in found:
        if event[0] is None:
            updates.append((oid, "inflight", (
                dest.name, None, "", "", "", None, "dead", now, now,
                "the stored event is gone from the inbox (deleted or not restored):"
                " cannot map it again", plugin)))
            continue
        if event[0] in done_events:
            continue
        done_events.add(event[0])
        new = map_rows(rt, [tuple(event)], {dest.name})
        if not new:
            why = event[6] or f"destination no longer receives source {event[1]!r}"
            new = [(dest.name, event[0], event[2], "", "", None, "filtered", now, now, why,
                    plugin)]
        # its rows to map again: those claimed here, and those waiting (not another's lease)
        places = [(sid, state) for sid, state in siblings.get(event[0], [])
                  if state != "inflight" or sid in mine]
        if not any(sid == oid for sid, _ in places):
            places.insert(0, (oid, "inflight"))  # (its request is there: made by this plugin)
        for (sid, state), row in zip(places, new):
            updates.append((sid, state, row))
        for sid, state in places[len(new):]:
            updates.append((sid, state, (dest.name, event[0], event[2], "", "", None, "filtered",
                                         now, now, REPLACED.format(plugin=plugin), plugin)))
        inserts.extend(new[len(places):])

    dead = [row for _, _, row in updates if row[6] == "dead"]
    if dead:  # logged as every other dead letter is (a remap's were not: upgrade re-check)
        log.warning("destination %s: %d deliveries mapped again are dead letters (%s)",
                    dest.name, len(dead), dead[0][9], extra={"destination": dest.name})

    def apply(conn: sqlite3.Connection) -> None:
        for sid, state, row in updates:
            if state == "dead" and row[6] == "pending":  # a dead letter stays one, for dlq retry
                conn.execute(UPDATE_DEAD_REQUEST, (row[2], row[3], row[4], row[5], row[10], sid))
            else:
                conn.execute(_REMAPPED_SET, (row[2], row[3], row[4], row[5], row[6], now, row[9],
                                             row[10], sid, state))
        outbox.insert_rows(conn, inserts)

    await rt.db.write(apply)
