"""Replay: run map + deliver again for stored inbox events.

This is how mapping or filter changes reach past events: ``hookyard replay --source web
--since 2026-11-01`` re-maps every stored event of that source received in the window and
queues the deliveries behind any pending ones (per-user order holds). Destinations that accept
idempotency keys (the profile store, Novu's transactionId) do not duplicate anything.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from ..errors import ConfigError
from ..operator_input import window
from . import outbox, router

if TYPE_CHECKING:
    from ..runtime import Runtime


Time = str | float | None
"""``since`` / ``until``: ISO-8601 (UTC when no zone is given) or Unix seconds."""


async def count_events(rt: Runtime, source: str, since: Time, until: Time) -> int:
    sql = "SELECT count(*) FROM inbox WHERE source = ?"
    params: list[str] = [source]
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
) -> int:
    """Queue deliveries again for ``source``'s events in [since, until); returns the count.
    A bad time or a window that ends before it starts raises ValueError."""
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
    lo, hi = window(since, until)
    after, total = 0, 0
    while True:
        rows = await rt.db.read(
            lambda c: router.replay_rows(rt, c, source, lo, hi, only, after)  # noqa: B023
        )
        if not rows:
            return total
        new = router.map_rows(rt, rows, only)
        await rt.db.write(lambda c: outbox.insert_rows(c, new))  # noqa: B023
        after = rows[-1][0]
        total += len(rows)
        if progress is not None:
            progress(len(rows))
