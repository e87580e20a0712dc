"""What a destination's worker does with the batches a dead deliver process had.

When the deliver process ends by itself (a plugin's ``deliver`` crashing it, an out-of-memory
kill, ``kill -9``) while it holds batches, each of their deliveries is retried (it may have
been sent), but never from the worker's own process: a plugin that ended its process on one of
them ended the server there, ingest with it (source-author audit). They are *suspects*, sent
again by the new deliver process, which runs one batch at a time, whoever's, meanwhile
(:attr:`.deliver_process.DeliverProcess.probation`); this destination's batches are halved each
time one ends it alone. A delivery that ends it alone, after having been in a batch that did,
is the culprit: a dead letter naming the plugin (``hookyard dlq retry`` once it is fixed).
Not when the process was killed with signal 9 (``kill -9``, the OOM killer): that is nobody's
doing, and its deliveries are only retried (two kills in a row made dead letters of delivered
events: chaos audit).
"""

from __future__ import annotations

import time
from typing import Literal

SUSPECT_SECONDS = 120.0
"""How long after the deliver process last ended with deliveries of a destination its
batches still go one at a time, at most (a suspect may leave the queue another way: a dead
letter on time, a discard)."""


class LostBatches:
    """One destination's suspects: outbox rows a dead deliver process had."""

    def __init__(self) -> None:
        self.rows: set[int] = set()
        self.until = 0.0  # (monotonic) when they are no longer sent one batch at a time
        self.halvings = 0  # suspect batches that ended the process alone: batch_size >> this

    def __bool__(self) -> bool:
        return bool(self.rows)

    def expire(self) -> bool:
        """Forget the suspects once :data:`SUSPECT_SECONDS` passed since the last loss;
        whether any are left."""
        if self.rows and time.monotonic() > self.until:
            self.rows.clear()
        return self.clear(())

    def batch_size(self, size: int) -> int:
        """The size of the next batch while there are suspects."""
        return max(1, size >> self.halvings)

    def lost(self, ids: list[int], alone: bool, killed: bool,
             ) -> Literal["culprit", "first", "again", "killed"]:
        """A batch of ``ids`` was in the deliver process when it ended (``alone``: its only
        batch; ``killed``: by signal 9). "culprit": the delivery to dead-letter; "killed": no
        suspects made (nobody's doing; one batch at a time after it starved the others behind
        a slow peer: chaos re-check); otherwise the rows are suspects ("first": the first loss
        since there were none)."""
        if killed:
            return "killed"
        if alone and len(ids) == 1 and ids[0] in self.rows:
            self.clear(ids)
            return "culprit"
        first = not self.rows
        if alone and not first:  # a batch of suspects ended it alone: halve the next ones
            self.halvings += 1
        self.rows.update(ids)
        self.until = time.monotonic() + SUSPECT_SECONDS
        return "first" if first else "again"

    def clear(self, ids: tuple[int, ...] | list[int]) -> bool:
        """``ids`` were delivered or decided: no longer suspects; whether any are left."""
        self.rows.difference_update(ids)
        if not self.rows:
            self.halvings = 0
        return bool(self.rows)
