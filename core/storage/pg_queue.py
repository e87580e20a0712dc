"""The outbox and router statements that differ on PostgreSQL, where several nodes share work.

Delivery (called by :mod:`hookyard.delivery.outbox` when the connection is PostgreSQL):

* an inflight row whose lease has expired is as good as pending: any node may claim it again
  (that is how the rows of a node killed mid-delivery are delivered by the others);
* :func:`claim` locks the wanted rows with ``FOR UPDATE SKIP LOCKED`` (two nodes never wait
  for, nor both take, the same row) and takes a row only if no earlier row of the same
  destination and ordering key is still pending or inflight outside this claim, so a user's
  deliveries stay in order and one at a time across nodes;
* :func:`record` and :func:`release` touch only rows this process still leases.

Routing (called by :mod:`hookyard.delivery.router`): instead of an id cursor, the router reads
the oldest unrouted inbox events, maps them, then in one transaction locks them ``NOWAIT``,
checks they are still unrouted, marks them routed and inserts their outbox rows. A node that
loses the race to another one rolls back and tries again with the next events, so every event
is routed exactly once and, as one node's routing commits before the next one reads, a user's
events keep their order.
"""

from __future__ import annotations

import random
import socket
import time
from typing import TYPE_CHECKING, Any

import psycopg

from ..delivery import outbox
from ..delivery.outbox import OWNER, Candidate, Outcome

if TYPE_CHECKING:
    from ..runtime import Runtime

LIVE = "(state = 'pending' OR (state = 'inflight' AND lease_until < ?))"


def pending(conn: Any, destination: str, limit: int, after_id: int = 0) -> list[Candidate]:
    """Pending rows (and inflight ones whose lease expired) of a destination, in id order."""
    cur = conn.execute(
        f"SELECT id, user_key, next_at FROM outbox WHERE destination = ? AND id > ? AND {LIVE}"
        " ORDER BY id LIMIT ?",
        (destination, after_id, time.time(), limit),
    )
    return [Candidate(r[0], r[1] or "", r[2] or 0.0) for r in cur]


def inflight_keys(conn: Any, destination: str) -> set[str]:
    """Ordering keys with a row leased (lease not expired) by any node."""
    cur = conn.execute(
        "SELECT DISTINCT user_key FROM outbox WHERE destination = ? AND state = 'inflight'"
        " AND lease_until >= ?",
        (destination, time.time()),
    )
    return {r[0] or "" for r in cur}


CLAIM = f"""
WITH cand AS (
    SELECT id FROM outbox WHERE id = ANY(?) AND {LIVE}
    ORDER BY id FOR UPDATE SKIP LOCKED
)
UPDATE outbox o SET state = 'inflight', lease_until = ?, lease_owner = ?, updated_at = ?
FROM cand
WHERE o.id = cand.id AND NOT EXISTS (
    SELECT 1 FROM outbox e
    WHERE e.destination = o.destination AND e.user_key = o.user_key AND e.id < o.id
      AND e.state IN ('pending', 'inflight') AND e.id NOT IN (SELECT id FROM cand)
)
RETURNING o.id, o.request, o.attempts, o.created_at
"""


def claim(conn: Any, ids: list[int], lease_seconds: float) -> list[tuple[int, bytes, int, float]]:
    """Lease those of ``ids`` that are free and first in line for their user (see module doc)."""
    if not ids:
        return []
    now = time.time()
    rows = conn.execute(CLAIM, (list(ids), now, now + lease_seconds, OWNER, now)).fetchall()
    return sorted((r[0], r[1], r[2], r[3]) for r in rows)


def record(conn: Any, outcomes: list[Outcome]) -> None:
    """Store attempt results; a row whose lease this process lost keeps its new owner's state."""
    now = time.time()
    conn.executemany(
        "UPDATE outbox SET state = ?, attempts = ?, next_at = ?, lease_until = NULL,"
        " lease_owner = NULL, updated_at = ?, last_status = ?, last_error = ?, response_body = ?"
        " WHERE id = ? AND state = 'inflight' AND lease_owner = ?",
        [
            (o.state, o.attempt, o.next_at, now, o.http_status, o.error, o.response_body,
             o.outbox_id, OWNER)
            for o in outcomes
        ],
    )
    conn.executemany(
        "INSERT INTO attempts (outbox_id, destination, message_id, attempt, outcome, http_status,"
        " latency_ms, error, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            (o.outbox_id, o.destination, o.message_id, o.attempt, o.outcome, o.http_status,
             o.latency_ms, o.error, now)
            for o in outcomes
        ],
    )


def release(conn: Any, ids: list[int]) -> None:
    """Give this process's leased rows back without counting an attempt."""
    if ids:
        conn.execute(
            "UPDATE outbox SET state = 'pending', lease_until = NULL, lease_owner = NULL"
            " WHERE id = ANY(?) AND state = 'inflight' AND lease_owner = ?",
            (list(ids), OWNER),
        )


def recover_leases(conn: Any) -> int:
    """Return to pending the rows whose lease expired or whose owner process on this host is
    gone; rows another node is working on right now (locked) are left alone."""
    before = conn.total_changes
    conn.execute(
        "UPDATE outbox SET state = 'pending', lease_until = NULL, lease_owner = NULL WHERE id IN"
        " (SELECT id FROM outbox WHERE state = 'inflight' AND lease_until < ?"
        " FOR UPDATE SKIP LOCKED)",
        (time.time(),),
    )
    host = socket.gethostname()
    owners = [r[0] for r in conn.execute(
        "SELECT DISTINCT lease_owner FROM outbox WHERE state = 'inflight'"
    )]
    for owner in owners:
        if not owner or owner == OWNER:
            continue
        owner_host, _, pid = owner.rpartition(":")
        if owner_host == host and pid.isdigit() and not outbox._alive(int(pid)):
            conn.execute(
                "UPDATE outbox SET state = 'pending', lease_until = NULL, lease_owner = NULL"
                " WHERE id IN (SELECT id FROM outbox WHERE state = 'inflight' AND lease_owner = ?"
                " FOR UPDATE SKIP LOCKED)",
                (owner,),
            )
    return conn.total_changes - before


# -- routing -----------------------------------------------------------------------------------
SELECT_UNROUTED = (
    "SELECT id, source, message_id, type, received_at, raw, filtered FROM inbox"
    " WHERE NOT routed ORDER BY id LIMIT ?"
)


class LostRace(Exception):
    """Another node routed (or is routing) some of these events: nothing was stored."""


def store_routed(conn: Any, ids: list[int], rows: list[tuple[Any, ...]]) -> None:
    """Mark ``ids`` routed and insert their outbox rows, or raise :class:`LostRace`."""
    try:
        locked = conn.execute(
            "SELECT id FROM inbox WHERE id = ANY(?) AND NOT routed ORDER BY id FOR UPDATE NOWAIT",
            (ids,),
        ).fetchall()
    except psycopg.errors.LockNotAvailable:
        raise LostRace from None
    if len(locked) != len(ids):
        raise LostRace
    conn.execute("UPDATE inbox SET routed = true WHERE id = ANY(?)", (ids,))
    outbox.insert_rows(conn, rows)


async def route_batch(rt: Runtime, limit: int = 1000) -> tuple[int, set[str]]:
    """Route the next ``limit`` unrouted events; returns (events routed, destinations touched)."""
    from ..delivery.router import map_rows

    rows = await rt.db.read(
        lambda conn: [tuple(r) for r in conn.execute(SELECT_UNROUTED, (limit,)).fetchall()]
    )
    if not rows:
        return 0, set()
    new_rows = map_rows(rt, rows)
    ids = [r[0] for r in rows]
    try:
        await rt.db.write(lambda conn: store_routed(conn, ids, new_rows))
    except LostRace:
        # another node is ahead on the same events: let it finish before reading again
        await _pause()
        return 0, set()
    return len(rows), {r[0] for r in new_rows if r[6] == "pending"}


async def _pause() -> None:
    import asyncio

    await asyncio.sleep(random.uniform(0.005, 0.05))


def unrouted(conn: Any) -> int:
    """How many inbox events wait for the router."""
    return int(conn.execute("SELECT count(*) FROM inbox WHERE NOT routed").fetchone()[0])
