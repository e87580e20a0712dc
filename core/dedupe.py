"""The SQLite inbox's messageId dedupe, without one random index write per event.

A unique ``(source, message_id)`` index on the inbox costs every new event one random page of a
B-tree: one 4 KiB WAL frame per event in every commit, written again by the checkpoint. That was
most of the SQLite writer's time, and it grows as the index outgrows the page cache (measured in
isolation: 41k events/s with a 400k-row inbox, 26k with 2M rows). Instead, as a log-structured
store would:

* ``inbox_ids`` (``source, message_id -> inbox_id``, a WITHOUT ROWID table) holds the keys of
  every inbox row up to ``dedupe_state.merged_id``;
* the keys of the newer rows (the *tail*) are kept in memory by the writer thread;
* every :data:`MERGE_ROWS` new events the tail goes into ``inbox_ids`` in sorted order: each
  page it touches is written once for many events. The merge is cut into slices of
  :data:`MERGE_SLICE` keys, one short transaction after each group commit, so ingest never
  waits for a whole merge (a merge of 100,000 keys in one go took 150-500 ms).

It is exact, like the unique index: an event is new if and only if its key is neither in
``inbox_ids`` nor in the tail. The tail is rebuilt from the inbox whenever the inbox's newest id
is not the one this writer saw last (at start-up, after a crash, or when another process on the
same file stored events): the check runs inside the write transaction, which holds SQLite's
write lock, so nobody can insert in between. Used by the SQLite writer only; PostgreSQL keeps
its unique index (several nodes insert at once there).
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable
from typing import Any

from .delivery.outbox import chunks

MERGE_ROWS = 100_000
"""Tail size at which the writer merges it into ``inbox_ids`` (memory: ~120 bytes per key)."""
MERGE_SECONDS = 3600.0
"""A tail older than this is merged whatever its size, so that retention, which deletes only
merged events (see :func:`hookyard.retention.purge_inbox`), is not held up on a quiet server."""
MERGE_SLICE = 10_000
"""Keys per merge transaction (in key order: the slices touch different pages)."""

_LOOKUP_CHUNK = 900  # ids per SELECT, under SQLite's oldest variable limit (999)

Key = tuple[str, str]


class InboxDedupe:
    """The writer thread's view of which ``(source, message_id)`` keys the inbox holds.

    The writer calls :meth:`start_group` before a group's jobs, :meth:`start_job` /
    :meth:`job_failed` around each job, :meth:`before_commit` and then :meth:`committed` or
    :meth:`rolled_back`. Insert code calls :meth:`admit` with the rows it is about to store.
    """

    def __init__(self, merge_rows: int | None = None) -> None:
        self.merge_rows = MERGE_ROWS if merge_rows is None else merge_rows
        self.tail: set[Key] = set()
        self.merging: set[Key] = set()  # the keys of a merge in progress (not all in inbox_ids)
        self._merge_to = 0  # the newest inbox id of the merge in progress (0: none)
        self._fill_from = 0  # inbox rows after this id are not in temp.merge_batch yet
        self._moved_to: Key | None = None  # keys up to this one are in inbox_ids
        self.last_seen: int | None = None  # the inbox's newest id when the tail was complete
        self._pending: set[Key] = set()  # admitted in the open transaction
        self._job: list[Key] = []  # admitted by the running job
        self._checked: set[Key] = set()  # looked up in inbox_ids during this group
        self._found: set[Key] = set()  # ... and found there
        self._forget: list[Key] = []  # deleted in the open transaction (retention)
        self._forget_mark = 0  # where the running job's deletions start in _forget
        self._synced = False  # tail checked against the inbox in this transaction
        self._inserted = False
        self._merge_after = 0.0  # monotonic time: no merge before (after a failed one)
        self._tail_since: float | None = None  # when the writer first saw a non-empty tail

    # -- the writer's side -------------------------------------------------------------------
    def start_group(self, conn: sqlite3.Connection, keys: Iterable[Key]) -> None:
        """A new transaction: look the group's known keys up in one go."""
        self._pending.clear()
        self._forget.clear()
        self._checked.clear()
        self._found.clear()
        self._synced = False
        self._inserted = False
        self._lookup(conn, keys)

    def start_job(self) -> None:
        self._job = []
        self._forget_mark = len(self._forget)

    def job_failed(self) -> None:
        """The running job was rolled back: its keys were not stored (nor deleted)."""
        self._pending.difference_update(self._job)
        self._job = []
        del self._forget[self._forget_mark:]

    def before_commit(self, conn: sqlite3.Connection) -> None:
        if self._inserted:
            self.last_seen = _newest_id(conn)

    def committed(self) -> None:
        if self._forget:
            self.tail.difference_update(self._forget)
            self.merging.difference_update(self._forget)
        self.tail |= self._pending
        self._pending.clear()
        self._forget.clear()

    def rolled_back(self) -> None:
        self._pending.clear()
        self._forget.clear()
        if self._inserted:
            self.last_seen = None  # resync with the inbox at the next insert
            self.tail.clear()

    def reset(self) -> None:
        """Forget what is known: the tail is read back from the inbox at the next insert, and a
        merge in progress starts over (after a failure the writer cannot reason about)."""
        self._pending.clear()
        self._forget.clear()
        self.tail.clear()
        self.merging.clear()
        self.last_seen = None
        self._merge_to = 0
        self._fill_from = 0
        self._moved_to = None

    def merge_steps_due(self) -> int:
        """How many merge steps the writer should run after this commit: one while a merge is
        in progress, four when a whole new tail has piled up meanwhile (groups so large that
        one step per group falls behind), none otherwise."""
        if not self.merge_due():
            return 0
        return 4 if self._merge_to and len(self.tail) >= self.merge_rows else 1

    def merge_due(self) -> bool:
        """Whether the writer should run a merge step after this commit."""
        if self._merge_to:
            return True
        if not self.tail:
            return False
        now = time.monotonic()
        if self._tail_since is None:
            self._tail_since = now
        return now >= self._merge_after and (
            len(self.tail) >= self.merge_rows or now - self._tail_since >= MERGE_SECONDS)

    def merge_step(self, conn: sqlite3.Connection) -> int:
        """One step of the merge, inside a write transaction of its own. The tail's keys are
        first copied, :data:`MERGE_SLICE` inbox rows a step, into a temporary table in key
        order, then moved from there into ``inbox_ids``, :data:`MERGE_SLICE` keys a step; the
        last step also advances ``merged_id``. Returns the number of keys the step handled."""
        if not self._merge_to:
            self._merge_to = _newest_id(conn)
            self._fill_from = _merged_id(conn)
            self._moved_to = None
            conn.execute("DROP TABLE IF EXISTS temp.merge_batch")
            conn.execute(
                "CREATE TEMP TABLE merge_batch (source TEXT, message_id TEXT, inbox_id INTEGER,"
                " PRIMARY KEY (source, message_id)) WITHOUT ROWID")
            self.merging |= self.tail
            self.tail = set()
            self._tail_since = None
        if self._fill_from < self._merge_to:
            upto = min(self._fill_from + MERGE_SLICE, self._merge_to)
            count = conn.execute(
                "INSERT OR IGNORE INTO temp.merge_batch SELECT source, message_id, id FROM inbox"
                " WHERE id > ? AND id <= ?", (self._fill_from, upto)).rowcount
            self._fill_from = upto
            return int(count)
        after = self._moved_to or ("", "")
        bound = conn.execute(
            "SELECT source, message_id FROM temp.merge_batch WHERE (source, message_id) > (?, ?)"
            " ORDER BY source, message_id LIMIT 1 OFFSET ?", (*after, MERGE_SLICE - 1)).fetchone()
        # no event of the batch can have been deleted meanwhile: retention deletes only events
        # up to merged_id, and the batch is the events after it
        moved = conn.execute(
            "INSERT OR IGNORE INTO inbox_ids (source, message_id, inbox_id)"
            " SELECT m.source, m.message_id, m.inbox_id FROM temp.merge_batch m"
            " WHERE (m.source, m.message_id) > (?, ?)"
            + (" AND (m.source, m.message_id) <= (?, ?)" if bound else "")
            + " ORDER BY m.source, m.message_id", (*after, *(bound or ()))).rowcount
        self._moved_to = (bound[0], bound[1]) if bound else None
        if bound is None:
            conn.execute("UPDATE dedupe_state SET merged_id = max(merged_id, ?)", (self._merge_to,))
            conn.execute("DROP TABLE temp.merge_batch")
            self._merge_to = 0
        return int(moved)

    def merge_committed(self) -> None:
        if not self._merge_to:
            self.merging.clear()

    def merge_failed(self) -> None:
        """A merge step's transaction failed (disk full...): the merge starts again later,
        in a minute; the keys it already moved are ignored then."""
        self.tail |= self.merging
        self.merging = set()
        self._merge_to = 0
        self._merge_after = time.monotonic() + 60

    # -- the insert code's side --------------------------------------------------------------
    def admit(
        self, conn: sqlite3.Connection, rows: list[tuple[Any, ...]],
        keys: list[Key] | None = None,
    ) -> list[tuple[Any, ...]]:
        """The rows (``source`` and ``message_id`` first) whose key the inbox does not hold
        yet, first copy only; their keys count as stored from now on in this transaction.

        ``keys``: the rows' keys, when they were given to :meth:`start_group` (already looked
        up in ``inbox_ids``)."""
        if not self._synced:
            self._sync(conn)
        if keys is None:
            keys = [(r[0], r[1]) for r in rows]
            self._lookup(conn, keys)  # only keys the group did not look up
        fresh = []
        pending, tail, found, merging, job = (
            self._pending, self.tail, self._found, self.merging, self._job)
        for row, key in zip(rows, keys):
            if key in pending or key in tail or (found and key in found) or (
                    merging and key in merging):
                continue
            pending.add(key)
            job.append(key)
            fresh.append(row)
        if fresh:
            self._inserted = True
        return fresh

    def unadmit(self, keys: Iterable[Key]) -> None:
        """These admitted keys were not stored after all (their INSERT failed)."""
        self._pending.difference_update(keys)

    def forget(self, keys: Iterable[Key]) -> None:
        """These events are deleted in this transaction (retention): their keys may be
        stored again once it commits."""
        self._forget.extend(keys)

    # -- helpers -----------------------------------------------------------------------------
    def _sync(self, conn: sqlite3.Connection) -> None:
        """Make the tail hold every key stored after ``merged_id`` (rows another process or a
        previous run stored are read back once)."""
        newest = _newest_id(conn)
        if newest != self.last_seen:
            if self.last_seen is None or newest < self.last_seen:  # unknown, or rows went away
                self.tail.clear()
                start = _merged_id(conn)
            else:
                start = self.last_seen
            self.tail.update(conn.execute(
                "SELECT source, message_id FROM inbox WHERE id > ?", (start,)))
            self.last_seen = newest
        self._synced = True

    def _lookup(self, conn: sqlite3.Connection, keys: Iterable[Key]) -> None:
        by_source: dict[str, list[str]] = {}
        for source, message_id in keys:
            if (source, message_id) not in self._checked:
                self._checked.add((source, message_id))
                by_source.setdefault(source, []).append(message_id)
        for source, ids in by_source.items():
            for chunk in chunks(ids, _LOOKUP_CHUNK):
                self._found.update((source, m) for (m,) in conn.execute(
                    "SELECT message_id FROM inbox_ids WHERE source = ? AND message_id IN"
                    f" ({','.join('?' * len(chunk))})", [source, *chunk]))


def _newest_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT coalesce(max(id), 0) FROM inbox").fetchone()[0])


def _merged_id(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT merged_id FROM dedupe_state").fetchone()[0])
