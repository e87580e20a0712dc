"""Which event stopped the map process: found one event at a time, never mapped in the worker.

When the map process dies or is stopped (:data:`~.map_process.ANSWER_TIMEOUT`) while mapping,
a ``map_event`` hook may have looped, blocked or ended its process on one of the events it
had. The router used to map those events in its own process next, where the same hook then
held the server's event loop for good (ingest and ``/healthz`` with it) or ended the server.
Instead, :class:`Suspects` has the restarted child map the rows it had one at a time, up to
the last of the next two batches (the child maps one batch ahead). An event that stops the
child again is the culprit. It is then mapped once more for each of its destinations alone:
the destination whose plugin stops the child a third time gets a dead letter naming the plugin
(``hookyard dlq retry`` maps it again once the plugin is fixed), the others their deliveries as
usual. Every other event is routed as usual.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

from ..inbox import decode_row
from .map_process import ANSWER_TIMEOUT, Batch, MapProcess

if TYPE_CHECKING:
    from ..runtime import Runtime

log = logging.getLogger("hookyard.router")

STOPPED = (f"map_event did not finish: the map process was stopped (no answer within"
           f" {ANSWER_TIMEOUT:g} s) or ended while mapping this event, twice; a map_event hook"
           " loops, blocks or ends its process on it")


class Suspects:
    """The rows a map process had when it stopped, mapped again one by one."""

    def __init__(self, rt: Runtime, mapper: MapProcess) -> None:
        self.rt = rt
        self.mapper = mapper
        self.until: int | None = None  # the last suspect row's inbox id; None: none left

    async def found(self, after: int | None, limit: int) -> None:
        """The child stopped mapping the rows after ``after`` (None: the stored cursor)."""
        from .router import read_batch

        _, rows = await self.rt.db.read(lambda conn: read_batch(conn, after, 2 * limit))
        if not rows:
            return
        self.until = rows[-1][0]
        log.warning("the map process stopped while mapping inbox events %s to %s: they are"
                    " mapped again in a new map process, one at a time, to find the one that"
                    " stops it", rows[0][0], self.until)
        self.mapper.restart_now()

    async def next(self, after: int | None) -> Batch:
        """The next suspect row's outbox rows, or its dead letters if it stops the child
        again; an empty batch while the child starts."""
        from .router import read_batch

        mapper = self.mapper
        nothing: Batch = (after or 0, 0, after or 0, [])
        if not mapper.ready:
            mapper.start()
            await asyncio.sleep(0.2)
            return nothing
        batch = await mapper.map(after, 1)
        if batch is None and not mapper.lost:  # an error answer (the database is locked)
            await asyncio.sleep(0.2)
            return nothing
        if batch is None:  # stopped again: this row is the culprit
            mapper.restart_now()
            cursor, rows = await self.rt.db.read(lambda conn: read_batch(conn, after, 1))
            if not rows:
                return nothing
            batch = (cursor, 1, rows[0][0], await self._each_alone(after, rows[0]))
        if not batch[1] or batch[2] >= (self.until or 0):
            self.until = None
            log.info("the suspect events are routed; the map process maps whole batches again")
        return batch

    async def _each_alone(self, after: int | None, row: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        """The outbox rows of the culprit ``row``, mapped for one destination at a time: a
        dead letter for each destination whose plugin stops the child, the deliveries of the
        others (a hung plugin had every destination's copy of the event dead-lettered)."""
        out: list[tuple[Any, ...]] = []
        for dest in self.rt.destinations_for(row[1]):
            batch = await self._alone(after, dest.name)
            if batch is None:
                out += self._dead(row, dest.name, dest.config.plugin)
            else:
                out += batch[3]
        return out

    async def _alone(self, after: int | None, name: str) -> Batch | None:
        """The culprit row mapped for destination ``name`` alone; None when that stops the
        child (or no child could be had)."""
        mapper = self.mapper
        deadline = time.monotonic() + 2 * ANSWER_TIMEOUT
        while time.monotonic() < deadline:
            if not mapper.ready:
                mapper.start()
                await asyncio.sleep(0.2)
                continue
            batch = await mapper.map(after, 1, (name,))
            if batch is not None:
                return batch
            if mapper.lost:
                mapper.restart_now()
                return None
            await asyncio.sleep(0.2)  # an error answer (the database is locked): again
        return None

    def _dead(self, row: tuple[Any, ...], name: str, plugin: str) -> list[tuple[Any, ...]]:
        """The dead letter of inbox ``row`` for destination ``name``."""
        from .router import user_of

        try:
            user = user_of(decode_row(row))
        except Exception:  # noqa: BLE001 - its user is only a label here
            user = ""
        now = time.time()
        log.error("inbox event %s (messageId %s) stopped the map process in the map_event of"
                  " destination %s (plugin %r): a dead letter for it", row[0], row[2], name, plugin)
        reason = f"{STOPPED} (destination {name}, plugin {plugin!r})"
        return [(name, row[0], row[2], user, "", None, "dead", now, now, reason, plugin)]
