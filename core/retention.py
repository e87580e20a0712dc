"""What leaves storage, and when: the API log and the inbox, in bounded steps.

The delivery engine's maintenance calls these every 30 s. Each call looks at no more than
``limit`` rows, oldest first by id, and runs in one write transaction, so ingest commits in
between.

* ``[storage] retention_days`` (default 7): finished outbox rows (delivered, filtered,
  discarded) last updated before that go, with their attempts (:func:`purge_outbox`).

* ``[storage] api_log_retention_days`` (default 7): API log lines older than that go.
* ``[storage] inbox_retention_days`` (default 0, keep forever): an event goes once it is older
  than that, routed, and *no outbox row refers to it any more*, i.e. every delivery of it was
  finished and then purged after ``retention_days``. An event with a dead letter or a pending
  delivery stays, so ``/api/deliveries?message_id=``, dead-letter retries and replay keep
  working for everything still in the outbox. Dedupe by messageId reaches back as far as the
  inbox does.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from .delivery import outbox, router
from .storage.base import is_postgres
from .times import iso_utc

PURGE_LIMIT = 2_000  # rows looked at per call (one write transaction: ingest waits for it)


def cutoff_iso(days: float, now: float | None = None) -> str:
    """The ISO-8601 time ``days`` ago, formatted like ``received_at`` and ``at`` columns."""
    when = (time.time() if now is None else now) - days * 86_400
    return iso_utc(datetime.fromtimestamp(when, UTC))


def purge_api_log(conn: Any, before: str, limit: int = PURGE_LIMIT) -> int:
    """Delete the oldest API log lines written before ``before`` (ISO-8601); returns how many."""
    rows = conn.execute("SELECT id, at FROM api_log ORDER BY id LIMIT ?", (limit,)).fetchall()
    old = [r[0] for r in rows if r[1] < before]
    if old:
        conn.execute("DELETE FROM api_log WHERE id <= ? AND at < ?", (old[-1], before))
    return len(old)


def purge_inbox(conn: Any, before: str, after_id: int = 0, limit: int = PURGE_LIMIT) -> tuple[int, int, bool]:
    """Delete routed inbox events received before ``before`` that no outbox row refers to.

    Looks at the ``limit`` events after ``after_id`` in id order. Returns (events deleted, the
    last id looked at, whether the scan reached an event too recent or not yet routed; the
    caller then starts again from 0 later, since events kept for their outbox rows may go
    once those rows are purged).
    """
    rows = conn.execute(
        "SELECT id, received_at FROM inbox WHERE id > ? ORDER BY id LIMIT ?", (after_id, limit)
    ).fetchall()
    if not rows:
        return 0, after_id, True
    # the newest event always stays: SQLite gives a new row max(id) + 1, and an id used again
    # would fall behind the router's cursor and never be delivered
    newest = conn.execute("SELECT MAX(id) FROM inbox").fetchone()[0]
    # SQLite: the router's cursor, and only events whose dedupe key is merged (hookyard.dedupe:
    # a merge in progress never meets a deleted event); PostgreSQL nodes route out of id order
    # (checked per event below)
    if is_postgres(conn):
        routed_up_to = newest - 1
    else:
        merged = conn.execute("SELECT merged_id FROM dedupe_state").fetchone()[0]
        routed_up_to = min(router.cursor(conn), newest - 1, merged)
    candidates: list[int] = []
    frontier = len(rows) < limit
    for event_id, received_at in rows:
        if received_at >= before or event_id > routed_up_to:
            frontier = True
            break
        candidates.append(event_id)
    if not candidates:
        return 0, after_id, frontier
    last_seen = candidates[-1]
    if is_postgres(conn):  # nodes route out of id order: only events marked routed
        candidates = [r[0] for r in conn.execute(
            "SELECT id FROM inbox WHERE id = ANY(?) AND routed", (candidates,)
        ).fetchall()]
    gone = 0
    for chunk in outbox.chunks(candidates, outbox.IDS_PER_STATEMENT):
        marks = ",".join("?" * len(chunk))
        kept = {r[0] for r in conn.execute(
            f"SELECT DISTINCT inbox_id FROM outbox WHERE inbox_id IN ({marks})", chunk
        ).fetchall()}
        free = [c for c in chunk if c not in kept]
        if free:
            marks = ",".join("?" * len(free))
            if not is_postgres(conn):  # the dedupe keys go with the events (hookyard.dedupe)
                keys = [tuple(k) for k in conn.execute(
                    f"SELECT source, message_id FROM inbox WHERE id IN ({marks})", free)]
                conn.executemany("DELETE FROM inbox_ids WHERE source = ? AND message_id = ?", keys)
                if (dedupe := getattr(conn, "dedupe", None)) is not None:
                    dedupe.forget(keys)
            conn.execute(f"DELETE FROM inbox WHERE id IN ({marks})", free)
            gone += len(free)
    return gone, last_seen, frontier


def _window(conn: Any, dest: str, state: str, after: int, limit: int,
            ) -> list[tuple[int, float | None]]:
    """The ids and update times of ``dest``'s rows in ``state`` after id ``after``, by id."""
    return conn.execute(
        "SELECT id, updated_at FROM outbox WHERE destination = ? AND state = ? AND id > ?"
        " ORDER BY id LIMIT ?", (dest, state, after, limit)).fetchall()


def purge_outbox(
    conn: Any, older_than: float, destinations: Iterable[str],
    limit: int = outbox.PURGE_BATCH, positions: dict[tuple[str, str], int] | None = None,
) -> int:
    """Delete finished rows (done/filtered/discarded) last updated before ``older_than``, with
    their attempts; returns how many outbox rows went.

    Bounded work for the writer thread, whose transaction ingest's commits wait for: ``limit``
    rows in all, every destination and state together (it looked at ``limit`` per destination
    and state, so 4 destinations deleted up to 60,000 rows in one transaction and held ingest
    for seconds). Per destination and state it reads the oldest rows (ids follow time) through
    the (destination, state, id) index. Call it again while it deletes something.

    Ids follow time but for rows finished long after they were made: dead letters retried and
    delivered today. A window of the oldest ids full of such rows held back every older row
    behind it until they too were past retention (reviewer). So when the first window has
    nothing to delete, one more window is read from ``positions`` (kept by the caller between
    calls): after the first window, or where the last such window ended; it moves on through
    the rows, a window per call, and starts again after the first window once it reaches
    the last row or the first window deletes rows again. The first window is read every call,
    so rows passing retention at the front go at once (the re-check: a position alone moved
    past them, and kept moving on a busy destination).
    """
    gone: list[int] = []
    for dest in destinations:
        for state in outbox.FINISHED:
            left = limit - len(gone)
            if left <= 0:
                break
            rows = _window(conn, dest, state, 0, left)
            old = [r[0] for r in rows if (r[1] or 0) < older_than]
            key = (dest, state)
            if positions is not None and old:  # the front moves: so does the next probe
                positions.pop(key, None)
            elif positions is not None and len(rows) == left:
                after = max(positions.get(key, 0), rows[-1][0])
                more = _window(conn, dest, state, after, left)
                old = [r[0] for r in more if (r[1] or 0) < older_than]
                if len(more) < left:  # the last row: the next one starts after the first window
                    positions.pop(key, None)
                else:
                    positions[key] = more[-1][0]
            gone.extend(old)
    for chunk in outbox.chunks(gone, outbox.IDS_PER_STATEMENT):
        marks = ",".join("?" * len(chunk))
        conn.execute(f"DELETE FROM attempts WHERE outbox_id IN ({marks})", chunk)
        conn.execute(f"DELETE FROM outbox WHERE id IN ({marks})", chunk)
    return len(gone)
