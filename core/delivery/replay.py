"""Replay: run map + deliver again for stored inbox events.

This is how mapping or filter changes reach past events: ``hookyard replay --source web
--since 2026-11-01`` re-maps every stored event of that source received in the window and
queues the deliveries behind any pending ones (per-user order holds). Destinations that accept
idempotency keys (the profile store, Novu's transactionId) do not duplicate anything.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError
from ..operator_input import operator_time, window
from . import outbox, router

if TYPE_CHECKING:
    from ..runtime import Runtime


Time = str | float | None
"""``since`` / ``until``: ISO-8601 (UTC when no zone is given) or Unix seconds."""


@dataclass
class Replayed:
    """What a replay did: events read, and the outbox rows their mapping made."""

    events: int = 0
    deliveries: int = 0  # queued (pending)
    filtered: int = 0  # the filter, trigger or map_event skipped them (reason recorded)
    failed: int = 0  # map_event raised, or the event could not be decoded: dead letters

    def add(self, rows: list[tuple[Any, ...]]) -> None:
        for row in rows:
            state = row[6]
            if state == "pending":
                self.deliveries += 1
            elif state == "filtered":
                self.filtered += 1
            else:
                self.failed += 1

    def summary(self) -> str:
        text = (f"replayed {self.events} events: {self.deliveries} deliveries queued,"
                f" {self.filtered} filtered")
        if self.failed:
            text += (f", {self.failed} failed to map (dead letters, with the error:"
                     " hookyard dlq list)")
        return text


def open_end(since: Time, until: Time) -> Time:
    """``until``; when it is not given, now, as the replay starts. Events that arrive while
    it runs are routed anyway: taking them in too sent them twice, and a replay that ingest
    outpaces would never end (an outside audit). A ``since`` in the future: an empty window."""
    if until is not None:
        return until
    start = operator_time(since, "since")
    now = time.time()
    return now if start is None else max(now, start.timestamp())


async def routed_until(rt: Runtime) -> int:
    """The bound of a replay starting now (:func:`hookyard.delivery.router.routed_until`)."""
    return await rt.db.read(router.routed_until)


async def count_events(rt: Runtime, source: str, since: Time, until: Time, upto: int) -> int:
    """How many events a replay with the same window and bound ``upto`` goes through."""
    sql = "SELECT count(*) FROM inbox WHERE source = ? AND id <= ?"
    params: list[Any] = [source, upto]
    for op, val in zip((">=", "<"), window(since, until), strict=True):
        if val:
            sql += f" AND received_at {op} ?"
            params.append(val)
    return int((await rt.db.read(lambda c: c.execute(sql, params).fetchone()))[0])


async def replay(
    rt: Runtime,
    source: str,
    destination: str | None = None,
    since: Time = None,
    until: Time = None,
    progress: Callable[[int], None] | None = None,
    upto: int | None = None,
) -> Replayed:
    """Queue deliveries again for ``source``'s events in [since, until) (``until``: now, when
    not given, see :func:`open_end`); returns what it did. A bad time or a window that ends
    before it starts raises ValueError."""
    if source not in rt.sources:
        raise ConfigError(f"no source named {source!r}")
    connected = {d.name for d in rt.destinations_for(source)}
    if destination is not None:
        if destination not in rt.destinations:
            raise ConfigError(f"no destination named {destination!r}")
        if destination not in connected:
            raise ConfigError(f"destination {destination!r} is not connected to source {source!r}")
        only = {destination}
    else:
        only = connected
    lo, hi = window(since, open_end(since, until))
    bound = await routed_until(rt) if upto is None else upto
    start = await rt.db.read(lambda c: router.replay_start(c, source, lo))
    done = Replayed()
    if start is None:
        return done
    after = start
    while True:
        rows = await rt.db.read(
            lambda c: router.replay_rows(rt, c, source, lo, hi, only, after,  # noqa: B023
                                         upto=bound)
        )
        if not rows:
            return done
        new = router.map_rows(rt, rows, only)
        await rt.db.write(lambda c: outbox.insert_rows(c, new))  # noqa: B023
        after = rows[-1][0]
        done.events += len(rows)
        done.add(new)
        if progress is not None:
            progress(len(rows))
