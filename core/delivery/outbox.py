"""The SQL of the durable outbox: claim, record results, dead letters, retention.

Every function takes a sqlite3 connection and runs inside the caller's transaction (the
database writer's group commit), so the engine's bookkeeping is batched like ingest is.

Row states::

    pending ──claim──► inflight ──ok──► done
       ▲                  │ retryable (attempts left) ─► pending (next_at = now + backoff)
       │                  │ permanent / gave up ───────► dead     (a dead letter)
       └── dlq retry ─────┴──────────────────────────────┘
    filtered: the destination's filter/trigger or map hook skipped the event (reason kept)
"""

from __future__ import annotations

import os
import socket
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from ..storage.base import is_postgres

INSERT = (
    "INSERT INTO outbox (destination, inbox_id, message_id, user_key, kind, request, state,"
    " attempts, next_at, created_at, updated_at, last_error)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, ?, ?, ?)"
)
OWNER = f"{socket.gethostname()}:{os.getpid()}"


def pg_queue() -> ModuleType:
    """The PostgreSQL variants of the statements below (several nodes share the outbox)."""
    from ..storage import pg_queue as module

    return module


def insert_rows(conn: sqlite3.Connection, rows: Iterable[tuple[Any, ...]]) -> None:
    conn.executemany(INSERT, rows)


@dataclass
class Candidate:
    id: int
    user_key: str
    next_at: float


def pending(
    conn: sqlite3.Connection, destination: str, limit: int, after_id: int = 0
) -> list[Candidate]:
    """The oldest pending rows of a destination after ``after_id``, due or not (ordering needs
    both: a row waiting for its retry blocks its user's later rows)."""
    if is_postgres(conn):
        return pg_queue().pending(conn, destination, limit, after_id)
    cur = conn.execute(
        "SELECT id, user_key, next_at FROM outbox WHERE destination = ? AND state = 'pending'"
        " AND id > ? ORDER BY id LIMIT ?",
        (destination, after_id, limit),
    )
    return [Candidate(r[0], r[1] or "", r[2] or 0.0) for r in cur]


def inflight_keys(conn: sqlite3.Connection, destination: str) -> set[str]:
    """Ordering keys with a row leased by any worker (another process included)."""
    if is_postgres(conn):
        return pg_queue().inflight_keys(conn, destination)
    cur = conn.execute(
        "SELECT DISTINCT user_key FROM outbox WHERE destination = ? AND state = 'inflight'",
        (destination,),
    )
    return {r[0] or "" for r in cur}


def claim(
    conn: sqlite3.Connection, ids: list[int], lease_seconds: float
) -> list[tuple[int, bytes, int, float]]:
    """Lease ``ids`` that are still pending; return (id, request, attempts, created_at)."""
    if is_postgres(conn):
        return pg_queue().claim(conn, ids, lease_seconds)
    now = time.time()
    claimed = []
    for i in ids:
        cur = conn.execute(
            "UPDATE outbox SET state = 'inflight', lease_until = ?, lease_owner = ?, updated_at = ?"
            " WHERE id = ? AND state = 'pending' RETURNING id, request, attempts, created_at",
            (now + lease_seconds, OWNER, now, i),
        )
        row = cur.fetchone()
        if row is not None:
            claimed.append((row[0], row[1], row[2], row[3]))
    return claimed


@dataclass
class Outcome:
    """What the engine decided for one delivery attempt."""

    outbox_id: int
    destination: str
    message_id: str
    attempt: int
    outcome: str  # ok | retryable | permanent
    state: str  # done | pending | dead
    next_at: float
    http_status: int | None
    error: str | None
    response_body: str | None
    latency_ms: float


def record(conn: sqlite3.Connection, outcomes: list[Outcome]) -> None:
    """Store attempt results and move each row to its next state."""
    if is_postgres(conn):
        return pg_queue().record(conn, outcomes)
    now = time.time()
    conn.executemany(
        "UPDATE outbox SET state = ?, attempts = ?, next_at = ?, lease_until = NULL,"
        " lease_owner = NULL, updated_at = ?, last_status = ?, last_error = ?, response_body = ?"
        " WHERE id = ?",
        [
            (o.state, o.attempt, o.next_at, now, o.http_status, o.error, o.response_body, o.outbox_id)
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


def release(conn: sqlite3.Connection, ids: list[int]) -> None:
    """Give leased rows back (graceful shutdown) without counting an attempt."""
    if is_postgres(conn):
        return pg_queue().release(conn, ids)
    conn.executemany(
        "UPDATE outbox SET state = 'pending', lease_until = NULL, lease_owner = NULL"
        " WHERE id = ? AND state = 'inflight'",
        [(i,) for i in ids],
    )


def recover_leases(conn: sqlite3.Connection) -> int:
    """Return to pending the rows whose lease expired, or whose owner process on this host is
    gone (a kill -9): they are delivered again (at-least-once)."""
    if is_postgres(conn):
        return int(pg_queue().recover_leases(conn))
    now = time.time()
    before = conn.total_changes
    conn.execute(
        "UPDATE outbox SET state = 'pending', lease_until = NULL, lease_owner = NULL"
        " WHERE state = 'inflight' AND lease_until < ?",
        (now,),
    )
    host = socket.gethostname()
    owners = [r[0] for r in conn.execute(
        "SELECT DISTINCT lease_owner FROM outbox WHERE state = 'inflight'"
    )]
    for owner in owners:
        if not owner or owner == OWNER:
            continue
        owner_host, _, pid = owner.rpartition(":")
        if owner_host == host and pid.isdigit() and not _alive(int(pid)):
            conn.execute(
                "UPDATE outbox SET state = 'pending', lease_until = NULL, lease_owner = NULL"
                " WHERE state = 'inflight' AND lease_owner = ?",
                (owner,),
            )
    return conn.total_changes - before


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def retry_dead(
    conn: sqlite3.Connection, destination: str | None = None, since: float | None = None,
    ids: list[int] | None = None,
) -> int:
    """Move dead letters back to pending with a fresh attempt budget."""
    sql = "UPDATE outbox SET state = 'pending', attempts = 0, next_at = 0, created_at = ?," \
          " updated_at = ? WHERE state = 'dead'"
    now = time.time()
    params: list[Any] = [now, now]
    sql, params = _narrow(sql, params, destination, since, ids)
    before = conn.total_changes
    conn.execute(sql, params)
    return conn.total_changes - before


def discard_dead(
    conn: sqlite3.Connection, destination: str | None = None, since: float | None = None,
    ids: list[int] | None = None,
) -> int:
    """Mark dead letters as discarded (kept for the record, never retried)."""
    sql = "UPDATE outbox SET state = 'discarded', updated_at = ? WHERE state = 'dead'"
    params: list[Any] = [time.time()]
    sql, params = _narrow(sql, params, destination, since, ids)
    before = conn.total_changes
    conn.execute(sql, params)
    return conn.total_changes - before


def _narrow(
    sql: str, params: list[Any], destination: str | None, since: float | None,
    ids: list[int] | None,
) -> tuple[str, list[Any]]:
    if destination:
        sql += " AND destination = ?"
        params.append(destination)
    if since is not None:
        sql += " AND updated_at >= ?"
        params.append(since)
    if ids:
        sql += f" AND id IN ({','.join('?' * len(ids))})"
        params.extend(ids)
    return sql, params


def purge(conn: sqlite3.Connection, older_than: float) -> int:
    """Delete finished rows (done/filtered/discarded) and their attempts older than a time."""
    before = conn.total_changes
    conn.execute(
        "DELETE FROM attempts WHERE outbox_id IN (SELECT id FROM outbox WHERE"
        " state IN ('done', 'filtered', 'discarded') AND updated_at < ?)",
        (older_than,),
    )
    conn.execute(
        "DELETE FROM outbox WHERE state IN ('done', 'filtered', 'discarded') AND updated_at < ?",
        (older_than,),
    )
    return conn.total_changes - before
