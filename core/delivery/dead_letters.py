"""The SQL of dead letters: find them, retry them (back to pending with a fresh attempt budget)
or discard them, in chunks of :data:`DEAD_CHUNK` so that ingest's commits go on between them.
``hookyard dlq`` (:mod:`hookyard.dlq_cli`) and ``/api/dead-letters`` (:mod:`hookyard.admin_api`)
run these; a delivery becomes a dead letter in :func:`.outbox.record`."""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any

from .outbox import IDS_PER_STATEMENT, chunks, count_elsewhere, every_destination

DEAD_CHUNK = 5_000
"""Dead letters retried or discarded per transaction (:func:`dead_ids`, then one write of
:func:`retry_dead_ids` or :func:`discard_dead_ids` per chunk): retrying 551,805 in one
transaction held the database for more than 10 s, so ingest answered 503, and took 1.7 GB
(scale audit)."""


def dead_ids(
    conn: sqlite3.Connection, destination: str | None = None, since: float | None = None,
    ids: list[int] | None = None, *, configured: list[str] | None = None,
) -> list[int]:
    """The ids of the dead letters matching the filter; with ``configured``, only those of
    these destinations (a removed destination's would wait for ever: no worker delivers for
    it)."""
    sql, params = _narrow(conn, "SELECT id FROM outbox WHERE state = 'dead'", [],
                          destination, since, ids)
    if configured is not None:
        sql += f" AND destination IN ({','.join('?' * len(configured)) or 'NULL'})"
        params.extend(configured)
    return [row[0] for row in conn.execute(sql, params).fetchall()]


def dead_letter_writes(action: str, found: list[int]) -> Iterator[Callable[[Any], int]]:
    """The writes that ``retry`` or ``discard`` the dead letters ``found``, one transaction
    of :data:`DEAD_CHUNK` each, for the CLI's ``write_sync`` and the API's ``write`` (each
    returns how many rows it changed)."""
    change = retry_dead_ids if action == "retry" else discard_dead_ids
    for chunk in chunks(found, DEAD_CHUNK):
        yield functools.partial(change, ids=chunk)


BUMP_RETRY_SERIAL = (
    "INSERT INTO dead_letter_retries (id, serial) VALUES (1, 1)"
    " ON CONFLICT (id) DO UPDATE SET serial = dead_letter_retries.serial + 1"
)


def retry_dead_ids(conn: sqlite3.Connection, ids: list[int]) -> int:
    """Move the dead letters ``ids`` back to pending with a fresh attempt budget, and bump the
    retry serial (:func:`retry_serial`): workers read their outbox from the first row again,
    in this process or another (``hookyard dlq retry``), and send each retried delivery before
    its user's later ones."""
    now = time.time()
    moved = _update_dead(conn, ids, "state = 'pending', attempts = 0, next_at = 0,"
                         " created_at = ?, updated_at = ?", [now, now])
    if moved:
        conn.execute(BUMP_RETRY_SERIAL)
    return moved


def retry_serial(conn: sqlite3.Connection) -> int:
    """How many retries of dead letters the database has seen (0: none)."""
    row = conn.execute("SELECT serial FROM dead_letter_retries WHERE id = 1").fetchone()
    return int(row[0]) if row is not None else 0


def dead_elsewhere(
    conn: sqlite3.Connection, configured: list[str], since: float | None = None,
    ids: list[int] | None = None,
) -> dict[str, int]:
    """Dead letters matching the filter whose destination is not in ``configured``, by
    destination (what ``retry`` leaves alone); each destination's through the
    (destination, state, id) index ("state = 'dead'" alone reads the whole outbox)."""
    return count_elsewhere(conn, configured, lambda name: _narrow(
        conn, "SELECT count(*) FROM outbox WHERE state = 'dead'", [], name, since, ids))


def discard_dead_ids(conn: sqlite3.Connection, ids: list[int]) -> int:
    """Mark the dead letters ``ids`` as discarded."""
    return _update_dead(conn, ids, "state = 'discarded', updated_at = ?", [time.time()])


def _update_dead(conn: sqlite3.Connection, found: list[int], assignments: str,
                 values: list[Any]) -> int:
    """``SET assignments`` on the dead letters ``found``, by id, :data:`IDS_PER_STATEMENT`
    at a time. One UPDATE with the filter changed ``state`` through the (destination, state,
    id) index it walked, so SQLite first collected every matching row in memory: 529 MB to
    retry 150,000 dead letters, 98 MB this way (backlog audit)."""
    count = 0
    for chunk in chunks(found, IDS_PER_STATEMENT):
        before = conn.total_changes
        conn.execute(f"UPDATE outbox SET {assignments} WHERE state = 'dead' AND id IN"
                     f" ({','.join('?' * len(chunk))})", [*values, *chunk])
        count += conn.total_changes - before
    return count


def _narrow(
    conn: sqlite3.Connection, sql: str, params: list[Any], destination: str | None,
    since: float | None, ids: list[int] | None,
) -> tuple[str, list[Any]]:
    if destination:
        sql += " AND destination = ?"
        params.append(destination)
    elif not ids:  # every destination's dead letters, each through the outbox index
        clause, names = every_destination(conn)
        sql += clause
        params.extend(names)
    if since is not None:
        sql += " AND updated_at >= ?"
        params.append(since)
    if ids:
        sql += f" AND id IN ({','.join('?' * len(ids))})"
        params.extend(ids)
    return sql, params
