"""How big the inbox and the outbox are, for ``/metrics`` and the dashboard, at a bounded cost.

The live outbox states (pending, in flight, dead) and the retry queue are counted at every call,
through index ranges that grow with the queue only. The inbox and the finished outbox rows
need a whole index each (~100 ms at 2 million rows): once counting them takes over
:data:`SLOW_COUNT_SECONDS`, a count is reused for :data:`REUSE_FACTOR` times as long as it
took (at least :data:`MIN_REUSE_SECONDS`, at most :data:`FINISHED_COUNTS_SECONDS`), so
counting costs about 1 % of a reader thread (more past 0.6 s, where the minute caps it), and
both readers share that one count (a Prometheus scrape and dashboard page views). A flat
minute left ``done`` far behind while a backlog drained (27,766 of 149,919 reported 38 s after
a restart; chaos audit); 20 times recounted 0.4 s counts at every 15 s scrape (soak audit).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any, NamedTuple

from .delivery import outbox
from .storage.base import is_postgres

SLOW_COUNT_SECONDS = 0.05  # the counts that read whole indexes are reused once this slow...
REUSE_FACTOR = 100  # ...for this many times as long as they took...
MIN_REUSE_SECONDS = 1.0  # ...but at least...
FINISHED_COUNTS_SECONDS = 60.0  # ...and at most this long (below it, every call counts)


class Sizes(NamedTuple):
    inbox: int
    states: list[tuple[str, str, int]]
    """Outbox rows by (destination, state, count)."""
    retrying: dict[str, int]
    """Pending rows that were tried before, by destination (none: left out)."""


class SizeCounter:
    """One per runtime; :meth:`read` runs on any reader thread (a race counts twice, no more)."""

    def __init__(self) -> None:
        # (when counted, inbox events, finished outbox rows, seconds the count took)
        self._finished: tuple[float, int, list[tuple[str, str, int]], float] | None = None

    def read(self, conn: Any, destinations: Iterable[str]) -> Sizes:
        cached = self._finished
        started = time.monotonic()
        stale = (cached is None or cached[3] < SLOW_COUNT_SECONDS
                 or started - cached[0] > reuse_seconds(cached[3]))
        inbox = conn.execute("SELECT count(*) FROM inbox").fetchone()[0] if stale else 0
        counted, retrying = outbox.counts(conn, destinations, finished=stale)
        if stale:
            finished = [c for c in counted if c[1] not in outbox.LIVE]
            self._finished = (started, int(inbox), finished, time.monotonic() - started)
            return Sizes(int(inbox), counted, retrying)
        assert cached is not None
        return Sizes(cached[1], cached[2] + counted, retrying)


def reuse_seconds(took: float) -> float:
    """How long a count of the finished rows that took ``took`` seconds is reused."""
    return min(FINISHED_COUNTS_SECONDS, max(MIN_REUSE_SECONDS, REUSE_FACTOR * took))


def unrouted_events(conn: Any) -> int:
    """Inbox events the router has not mapped yet: grows while routing is stuck (a
    ``map_event`` or the database failing) or behind. SQLite: the newest inbox id past the
    router's cursor (no count: one index seek each); PostgreSQL: the unrouted rows (a
    partial index of exactly those)."""
    if is_postgres(conn):
        return int(conn.execute("SELECT count(*) FROM inbox WHERE NOT routed").fetchone()[0])
    newest = conn.execute("SELECT coalesce(max(id), 0) FROM inbox").fetchone()[0]
    cursor = conn.execute(
        "SELECT coalesce(max(last_inbox_id), 0) FROM router_state WHERE name = 'main'"
    ).fetchone()[0]
    return max(0, int(newest) - int(cursor))
