"""Which of a destination's pending outbox rows its worker may start next.

A dispatch round of :class:`~.worker.DestinationWorker` asks :meth:`Scan.find` for the first
pending rows of each user that may start: a user with a delivery in flight, leased by another
process or waiting for its retry is blocked, and so are their later rows (per-user order). What
a scan found is remembered, so that the router's wake-ups read only the rows added since
(:meth:`Scan.idle`); anything that changes what is startable (a result, a claim, a release)
calls for a full scan again (:attr:`Scan.rescan`). :func:`pack` fills the batches.
"""

from __future__ import annotations

import time
from collections.abc import Collection
from typing import TYPE_CHECKING, NamedTuple

from . import outbox
from .dead_letters import retry_serial

if TYPE_CHECKING:
    from ..storage import Storage
    from .breaker import Breaker

IDLE_POLL = 1.0
MAX_SCAN_PAGES = 40  # rows waiting for a retry are skipped over, this many pages at most
DEEP_SCAN_SECONDS = 5.0  # how often a scan goes on past a page of blocked users only
MAX_SKIPPED_USERS = 1000  # blocked users whose rows a scan leaves out in SQL, at most


def pack(
    collected: dict[str, list[int]], batches: int, size: int
) -> tuple[list[list[int]], dict[int, str]]:
    """Fill at most ``batches`` batches of at most ``size`` rows, one after the other, with
    whole users: in the order they were found, each user's rows together and in order (the
    first ones when the batch has less room left; the rest wait for a later round).

    Returns (batches of outbox ids, the user of each id). Filling row by row in scan order,
    as before, put a row of every user of a 50-user backlog into the first batch, and no
    other batch could start (per-user order allows one batch per user in flight)."""
    out: list[list[int]] = []
    key_of: dict[int, str] = {}
    for key, ids in collected.items():
        if not out or len(out[-1]) >= size:
            if len(out) >= batches:
                break
            out.append([])
        batch = out[-1]
        taken = ids[: size - len(batch)]
        batch.extend(taken)
        for i in taken:
            key_of[i] = key
    return out, key_of


class Found(NamedTuple):
    """What one :meth:`Scan.find` found: the batches to claim (outbox ids) with each id's
    user, and where the scan stopped, for :meth:`Scan.idle` when there is nothing to claim."""

    batches: list[list[int]]
    key_of: dict[int, str]
    now: float  # (wall clock) when the scan began
    after: int  # the last row id read
    blocked: set[str]  # users whose rows may not start now
    next_due: float  # (wall clock) when the first of the rows found waiting is due
    incremental: bool  # it read on from the last scan's position only
    cut_short: bool  # it stopped at a page that showed nothing new
    changed: bool  # something changed since the last scan (it read from the first row)


class Scan:
    """What a worker remembers between its scans: an idle scan (nothing startable) is kept so
    that the router's wake-ups only look at new rows."""

    def __init__(self) -> None:
        self.rescan = True  # something changed: the next scan reads from the first row
        # rows scanned up to this id, users found blocked, valid until this (wall clock) time
        self.after = 0
        self.blocked: set[str] = set()
        self.due = 0.0
        self.deep_due = 0.0  # (monotonic) the next scan that may look past a fruitless page
        self.skip_until: dict[str, float] = {}  # the last deep scan's skipped users: retry due
        # how far incremental scans got, seeing only blocked users, since anything last changed
        # (a result, a claim): a rescan on the timer alone goes on from there, with the users
        # they found blocked on the way (their later rows must still wait)
        self.walked_to = 0
        self.walked_blocked: set[str] = set()
        self.retries = 0  # the dead-letter retry serial the last scan saw (:func:`retry_serial`)

    def from_start(self) -> None:
        """The next scan reads every row from the first, deep, no user skipped."""
        self.skip_until.clear()
        self.rescan, self.deep_due = True, 0.0

    async def find(
        self, db: Storage, name: str, *, free: int, size: int, inflight: Collection[str],
        breaker: Breaker, probing: bool, retry_max_seconds: float,
    ) -> Found:
        """Up to ``free`` batches of at most ``size`` rows that may start now: the first
        pending rows of each user not in ``inflight`` (this worker's) nor leased elsewhere
        (``probing``: the breaker's probe, one user it did not try yet, due or not)."""
        # twice the rows the free slots can take, at least 64: each row read here costs ~0.5 us
        # of the event loop's time, and most dispatches start one or two batches
        page_size = max(64, free * size * 2)
        now = time.time()
        changed = self.rescan
        incremental = not changed and now < self.due
        self.rescan = False
        if changed:
            self.walked_to = 0
            self.walked_blocked = set()
        after = self.after if incremental else 0
        deep = time.monotonic() >= self.deep_due
        if deep:
            self.deep_due = time.monotonic() + DEEP_SCAN_SECONDS
        # users the last deep scan found waiting for a retry, with long backlogs: their rows
        # are left out in SQL (see below) until the retry is due; a deep scan finds them anew
        skip: list[str] = [] if deep else [
            key for key, due in self.skip_until.items() if due > now][:MAX_SKIPPED_USERS]
        # the leased keys and the first page in one trip to a reader thread (each trip waits
        # for the busy event loop's GIL: about half a millisecond under load)
        retries, leased, page = await db.read(
            lambda conn: (retry_serial(conn), outbox.inflight_keys(conn, name),
                          outbox.pending(conn, name, page_size, after, skip_keys=skip))
        )
        if retries != self.retries:  # dead letters were retried, maybe by another process:
            # pending again below `after`, they go before their users' later rows (an
            # incremental scan passed over them: reviewer), so this scan is a full one
            self.retries, changed = retries, True
            self.walked_to, self.walked_blocked = 0, set()
            if incremental:
                incremental, after = False, 0
                page = await db.read(
                    lambda conn: outbox.pending(conn, name, page_size, 0, skip_keys=skip))
        blocked = set(inflight) | leased | set(skip)
        next_due = now + IDLE_POLL
        due_by = float("inf") if probing else now  # a probe takes the oldest row, due or not
        # no retry waits longer than retry_max_seconds (Retry-After is capped at it): a row due
        # later than that was scheduled before the clock went back, and is due now (a step back
        # of an hour held every retrying user for the hour; resources audit)
        horizon = now + retry_max_seconds + 1.0
        if skip:
            next_due = min(next_due, min(self.skip_until[key] for key in skip))
        if incremental:
            blocked |= self.blocked
            next_due = min(next_due, self.due)
        # the first pending rows of each user that may start (at most `size` each: a user's
        # rows go into one batch, in order), until a new user is found when there are rows
        # enough for every free batch (rows of users already found are still taken: they let
        # pack fill the batches)
        collected: dict[str, list[int]] = {}
        capacity, total = free * size, 0
        enough = cut_short = False
        waiting: dict[str, float] = {}  # users seen waiting for a retry, and until when
        for scanned in range(MAX_SCAN_PAGES):
            if scanned:
                page = await db.read(
                    lambda conn: outbox.pending(conn, name, page_size, after,  # noqa: B023
                                                skip_keys=skip)
                )
            # a page that adds no row and shows no new user ends the scan (the rest is most
            # likely more rows of the same blocked users), except in a deep scan, at most every
            # DEEP_SCAN_SECONDS, which looks further for a user stuck behind a busy one. Deep
            # scans every round made 50 busy users with 100,000 rows deliver 200 events/s
            before = (total, len(blocked))
            for c in page:
                key = c.user_key
                if key in blocked or (probing and key in breaker.probed):
                    continue
                if probing and breaker.fresh_first and c.next_at > 0 and key not in collected:
                    blocked.add(key)  # a probe tries a user whose next delivery never failed
                    continue  # first: a retrying user's event may be the one that fails
                if due_by < c.next_at <= horizon:
                    blocked.add(key)
                    waiting.setdefault(key, c.next_at)
                    next_due = min(next_due, c.next_at)
                    continue
                ids = collected.get(key)
                if ids is None:
                    if total >= capacity:
                        enough = True
                        break
                    collected[key] = [c.id]
                elif len(ids) < size:
                    ids.append(c.id)
                else:  # its later rows wait for a later round
                    blocked.add(key)
                    continue
                total += 1
            if page:
                after = page[-1].id
            if enough or len(page) < page_size:
                break
            if before == (total, len(blocked)) and not deep:
                cut_short = True
                break
            if deep and total == before[0]:
                # a page of blocked users' rows only: the deep scan reads on past those users'
                # rows in SQL (a user behind blocked users' long backlogs was never found:
                # every page the scan may read was theirs)
                new = list(dict.fromkeys(c.user_key for c in page if c.user_key not in skip))
                skip.extend(new[:MAX_SKIPPED_USERS - len(skip)])
        if deep:  # the users waiting for a retry among them: the next scans skip them too
            self.skip_until = {key: waiting[key] for key in skip if key in waiting}
        batches, key_of = pack(collected, free, size)
        return Found(batches, key_of, now, after, blocked, next_due, incremental, cut_short,
                     changed)

    def idle(self, found: Found) -> float:
        """Nothing was claimed after ``found``: remember where the scan got; return how long
        the worker may sleep before the first row it saw waiting is due."""
        after, blocked = found.after, found.blocked
        if found.incremental:  # every row up to here: a blocked user's
            self.walked_to, self.walked_blocked = after, set(blocked)
        elif found.cut_short and not found.changed and self.walked_to > after:
            # a rescan on the timer alone (no result, no claim since the last one) found the
            # same blocked users: the incremental scans go on from where they got, not through
            # the backlog again (a stuck destination re-read all of it every second, a page per
            # routing wake); the deep scan still looks at every row. The users blocked in the
            # rows it skips stay blocked: one waiting for its retry there would otherwise have
            # its later rows started first
            after = self.walked_to
            blocked |= self.walked_blocked
        self.after, self.blocked, self.due = after, blocked, found.next_due
        return max(0.01, found.next_due - found.now)
