"""The outbox and router statements that differ on PostgreSQL, where several nodes share work.

Delivery (called by :mod:`hookyard.delivery.outbox` when the connection is PostgreSQL):

* an inflight row whose lease has expired is as good as pending: any node may claim it again
  (that is how the rows of a node killed mid-delivery are delivered by the others);
* :func:`claim` locks the wanted rows with ``FOR UPDATE SKIP LOCKED`` (two nodes never wait
  for, nor both take, the same row) and takes a row only if no earlier row of the same
  destination and ordering key is still pending or inflight outside this claim (so a user's
  deliveries stay in order, and one at a time, across nodes);
* :func:`record` and :func:`release` touch only rows this process still leases.

Routing (called by :mod:`hookyard.delivery.router`): instead of an id cursor, the router reads
the oldest unrouted inbox events, maps them, then in one transaction locks them ``NOWAIT``,
checks they are still unrouted, marks them routed and inserts their outbox rows. A node that
loses the race to another one rolls back and tries again with the next events, so every event
is routed exactly once and, as one node's routing commits before the next one reads, a user's
events keep their order. So that nodes do not all map the same events only for one of them to
store them, the node that stored last holds a short lease (``router_lease``, renewed by every
store, :data:`ROUTER_LEASE` seconds): while it is valid the others leave routing to it; when its
holder stops or dies, the next node to find events takes over.
"""

from __future__ import annotations

import os
import random
import socket
import time
from collections.abc import Collection
from typing import TYPE_CHECKING, Any

import psycopg

from ..delivery import outbox
from ..delivery.outbox import OWNER, Candidate, Outcome, skip_users

if TYPE_CHECKING:
    from ..runtime import Runtime

LIVE = "(state = 'pending' OR (state = 'inflight' AND lease_until < ?))"


SKIP_LEASED = (
    " AND COALESCE(user_key, '') NOT IN (SELECT COALESCE(user_key, '') FROM outbox"
    " WHERE destination = ? AND state = 'inflight' AND lease_until >= ?)"
)


def pending(
    conn: Any, destination: str, limit: int, after_id: int = 0, skip_leased: bool = False,
    skip_keys: Collection[str] = (),
) -> list[Candidate]:
    """Pending rows (and inflight ones whose lease expired) of a destination, in id order;
    with ``skip_leased``, not those of users with a row under a valid lease; nor those of the
    users ``skip_keys``."""
    now = time.time()
    params: tuple[Any, ...] = (destination, after_id, now, limit)
    if skip_leased:
        params = (destination, after_id, now, destination, now, limit)
    cur = conn.execute(
        f"SELECT id, user_key, next_at FROM outbox WHERE destination = ? AND id > ? AND {LIVE}"
        f"{SKIP_LEASED if skip_leased else ''}{skip_users(skip_keys)} ORDER BY id LIMIT ?",
        (*params[:-1], *skip_keys, params[-1]),
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


LOCK_FREE = f"""
SELECT id, destination, user_key FROM outbox WHERE id = ANY(?) AND {LIVE}
ORDER BY id FOR UPDATE SKIP LOCKED
"""
FIRST_OTHER = """
SELECT k.user_key, (
    SELECT e.id FROM outbox e
    WHERE e.destination = ? AND e.user_key = k.user_key AND e.state IN ('pending', 'inflight')
      AND NOT (e.id = ANY(?))
    ORDER BY e.id LIMIT 1
) FROM unnest(?::text[]) AS k(user_key)
"""
TAKE = """
UPDATE outbox SET state = 'inflight', lease_until = ?, lease_owner = ?, updated_at = ?
WHERE id = ANY(?) RETURNING id, request, attempts, created_at, plugin
"""


def claim(conn: Any, ids: list[int], lease_seconds: float) -> list[Any]:
    """Lease those of ``ids`` that are free and first in line for their user (see module doc).

    Three statements in the caller's transaction: lock the free rows (``SKIP LOCKED``: rows
    another node is claiming are passed over, not waited for); for each ordering key, find its
    earliest live row outside this claim; keep only the locked rows before it; lease them.
    """
    if not ids:
        return []
    now = time.time()
    locked = conn.execute(LOCK_FREE, (list(ids), now)).fetchall()
    if not locked:
        return []
    locked_ids = [r[0] for r in locked]
    take: list[int] = []
    for destination in {r[1] for r in locked}:
        rows = [r for r in locked if r[1] == destination]
        keys = sorted({r[2] for r in rows if r[2] is not None})
        first_other = dict(conn.execute(FIRST_OTHER, (destination, locked_ids, keys)).fetchall())
        for oid, _, key in rows:
            blocker = first_other.get(key) if key is not None else None
            if blocker is None or oid < blocker:
                take.append(oid)
    if not take:
        return []
    rows = conn.execute(TAKE, (now + lease_seconds, OWNER, now, take)).fetchall()
    return sorted((r[0], r[1], r[2], r[3], r[4]) for r in rows)


RECORD = """
UPDATE outbox o SET state = v.state, attempts = v.attempts, next_at = v.next_at,
    lease_until = NULL, lease_owner = NULL, updated_at = ?, last_status = v.last_status,
    last_error = v.last_error, response_body = v.response_body
FROM unnest(?::bigint[], ?::text[], ?::integer[], ?::float8[], ?::integer[], ?::text[], ?::text[])
    AS v(id, state, attempts, next_at, last_status, last_error, response_body)
WHERE o.id = v.id AND o.state = 'inflight' AND o.lease_owner = ?
"""
RECORD_ATTEMPTS = """
INSERT INTO attempts (outbox_id, destination, message_id, attempt, outcome, http_status,
    latency_ms, error, at)
SELECT v.*, ? FROM unnest(?::bigint[], ?::text[], ?::text[], ?::integer[], ?::text[],
    ?::integer[], ?::float8[], ?::text[]) AS v(outbox_id, destination, message_id, attempt)
WHERE NOT EXISTS (SELECT 1 FROM attempts a WHERE a.outbox_id = v.outbox_id
                  AND a.attempt = v.attempt)
"""
"""The attempts, but one already recorded: a commit whose outcome the writer never saw (the
connection lost after COMMIT, a group given up that committed later) is stored again by
:class:`hookyard.delivery.results.ResultWriter`, and each such row had two ``ok`` attempts."""


def record(conn: Any, outcomes: list[Outcome]) -> None:
    """Store attempt results (two statements for the whole batch) and wake every node; a row
    whose lease this process lost keeps its new owner's state."""
    if not outcomes:
        return
    now = time.time()
    conn.execute(RECORD, (
        now, [o.outbox_id for o in outcomes], [o.state for o in outcomes],
        [o.counted for o in outcomes], [float(o.next_at) for o in outcomes],
        [o.http_status for o in outcomes], [o.error for o in outcomes],
        [o.response_body for o in outcomes], OWNER,
    ))
    sent = [o for o in outcomes if o.sent]  # a delivery not sent is no attempt
    conn.execute(RECORD_ATTEMPTS, (
        now, [o.outbox_id for o in sent], [o.destination for o in sent],
        [o.message_id for o in sent], [o.attempt for o in sent],
        [o.outcome for o in sent], [o.http_status for o in sent],
        [float(o.latency_ms) for o in sent], [o.error for o in sent],
    ))
    # the users of these rows are free again: every node may take their next rows, not only
    # this one (whose own worker wakes at once and would otherwise keep them all)
    wake_nodes(conn)


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
    host, me = socket.gethostname(), os.getpid()
    owners = [r[0] for r in conn.execute(
        "SELECT DISTINCT lease_owner FROM outbox WHERE state = 'inflight'"
    )]
    for owner in owners:
        if not owner or owner == OWNER:
            continue
        owner_host, pid = outbox._parse_owner(owner)
        if owner_host == host and pid is not None and (pid == me or not outbox._alive(pid)):
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


ROUTER_LEASE = 2.0


def routing_elsewhere(conn: Any) -> bool:
    """True while another process holds the routing lease."""
    row = conn.execute("SELECT owner, lease_until FROM router_lease WHERE name = 'main'").fetchone()
    return row is not None and row[0] not in (None, OWNER) and row[1] >= time.time()


def store_routed(conn: Any, ids: list[int], rows: list[tuple[Any, ...]]) -> None:
    """Take or renew the routing lease, mark ``ids`` routed and insert their outbox rows, or
    raise :class:`LostRace` (nothing stored)."""
    now = time.time()
    try:
        lease = conn.execute("SELECT owner, lease_until FROM router_lease WHERE name = 'main'"
                             " FOR UPDATE NOWAIT").fetchone()
    except psycopg.errors.LockNotAvailable:
        raise LostRace from None
    if lease is not None and lease[0] not in (None, OWNER) and lease[1] >= now:
        raise LostRace
    conn.execute("UPDATE router_lease SET owner = ?, lease_until = ? WHERE name = 'main'",
                 (OWNER, now + ROUTER_LEASE))
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
    if any(r[6] == "pending" for r in rows):
        wake_nodes(conn)  # every node's workers share the new deliveries


def wake_nodes(conn: Any) -> None:
    """NOTIFY every node of this schema (delivered when the transaction commits)."""
    conn.execute("SELECT pg_notify('hookyard', ?)", (conn.schema,))


async def route_batch(rt: Runtime, limit: int = 1000) -> tuple[int, set[str]]:
    """Route the next ``limit`` unrouted events; returns (events routed, destinations touched)."""
    from ..delivery.router import map_rows

    def read(conn: Any) -> list[tuple[Any, ...]]:
        if routing_elsewhere(conn):
            if conn.execute("SELECT 1 FROM inbox WHERE NOT routed LIMIT 1").fetchone():
                wake_nodes(conn)  # the routing node may be idle, waiting for its own ingest
            return []
        return [tuple(r) for r in conn.execute(SELECT_UNROUTED, (limit,)).fetchall()]

    rows = await rt.db.read(read)
    if not rows:
        return 0, set()
    new_rows = map_rows(rt, rows)
    ids = [r[0] for r in rows]
    try:
        await rt.db.write(lambda conn: store_routed(conn, ids, new_rows), durable=False)
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
