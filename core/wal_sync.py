"""Pipelined group commit for SQLite: the WAL is fsynced by a thread of its own.

With ``synchronous = FULL`` SQLite fsyncs the WAL inside COMMIT, and the writer thread can do
nothing else meanwhile. Instead the writer commits with ``synchronous = NORMAL`` (the frames are
written, not yet synced), hands the group's results to :class:`WalSyncer` and goes on with the
next group. The syncer fsyncs the WAL file (one fsync for every group committed meanwhile)
and only then answers the groups' waiters. A waiter is answered exactly when ``FULL`` would
have answered it: after its commit is on disk. What ``FULL`` also promised, that no other
connection saw the commit before it was synced, no longer holds: the router may map and
deliver an event whose ingest request is still waiting for the fsync (after a power cut that
event may be gone while the client, never answered, sends it again; at least once still holds).

Checkpoints stay safe: in WAL mode with ``NORMAL`` SQLite itself fsyncs the WAL before it
copies frames into the database file.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable
from typing import Any

from .errors import StorageUnavailable

log = logging.getLogger("hookyard.database")

_fsync_fd = os.fsync  # a module attribute, so tests can watch it

Results = list[tuple[Any, bool, Any]]
"""A committed group's ``(job, ok, value)`` triples, as the writer delivers them."""


class WalSyncer:
    """Answers committed groups once an fsync of ``wal_path`` made after their commit returned."""

    def __init__(self, wal_path: str, deliver: Callable[..., None],
                 fail_for_good: Callable[[str], None] = lambda reason: None) -> None:
        self.wal_path = wal_path
        self._deliver = deliver
        self._fail_for_good = fail_for_good
        self._queue: queue.SimpleQueue[tuple[Results, bool] | None] = queue.SimpleQueue()
        self._fd: int | None = None
        self._inode: int | None = None
        self._failed: StorageUnavailable | None = None  # an fsync failed: nothing is answered ok
        self._thread = threading.Thread(target=self._run, name="hookyard-db-fsync", daemon=True)
        self._thread.start()

    def submit(self, results: Results, wrote: bool = True) -> None:
        """A group that has just committed (``synchronous = NORMAL``): answer it after a sync
        (``wrote``: it changed rows, for :meth:`GroupCommitWriter._deliver`)."""
        self._queue.put((results, wrote))

    def stop(self) -> None:
        """Sync and answer what is queued, then end (call after the writer's last commit)."""
        self._queue.put(None)
        self._thread.join(timeout=30)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            groups = [] if first is None else [first]
            stop = first is None
            while not stop:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                else:
                    groups.append(more)
            if groups:
                self._sync_and_answer(groups)
            if stop:
                return

    def _sync_and_answer(self, groups: list[tuple[Results, bool]]) -> None:
        if self._failed is not None:  # committed after the failed fsync: behind dropped frames
            for results, _ in groups:
                self._deliver([(job, False, self._failed) for job, _, _ in results])
            return
        try:
            self._fsync()
        except OSError as exc:
            # After a failed fsync Linux may mark the unwritten pages clean: a later fsync that
            # succeeds does not mean those commits, or the ones after them, are on disk. So no
            # later commit is acknowledged either, until a restart reopens the database.
            log.error("could not sync the WAL (%s): %d commits unanswered as 503", exc, len(groups))
            reason = f"storage unavailable: fsync of the WAL failed: {exc}"
            self._fail_for_good(f"{reason}: writes are refused from now on (the kernel may have"
                                " dropped what it could not write): check the disk, then restart"
                                " hookyard")
            err = self._failed = StorageUnavailable(reason)
            for results, _ in groups:
                self._deliver([(job, False, err) for job, _, _ in results])
            return
        for results, wrote in groups:
            self._deliver(results, wrote=wrote)

    def _fsync(self) -> None:
        """fsync the WAL file as it is now (reopened if SQLite made a new one)."""
        inode = os.stat(self.wal_path).st_ino
        if self._fd is None or inode != self._inode:
            if self._fd is not None:
                os.close(self._fd)
            self._fd = os.open(self.wal_path, os.O_RDONLY)
            self._inode = os.fstat(self._fd).st_ino
        _fsync_fd(self._fd)
