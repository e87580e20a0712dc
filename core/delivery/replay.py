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
from ..times import iso_utc, parse_iso
from . import outbox, router

if TYPE_CHECKING:
    from ..runtime import Runtime


def normalize_time(value: str | None) -> str | None:
    """An ISO-8601 date or time as the inbox's ``received_at`` format (UTC, ms, ``Z``)."""
    if not value:
        return None
    when = parse_iso(value)  # the operator's time parser everywhere: no offset means UTC
    if when is None:
        raise ValueError(f"{value!r} is not an ISO-8601 date or time")
    return iso_utc(when)


async def count_events(rt: Runtime, source: str, since: str | None, until: str | None) -> int:
    sql = "SELECT count(*) FROM inbox WHERE source = ?"
    params: list[str] = [source]
    for op, val in ((">=", normalize_time(since)), ("<", normalize_time(until))):
        if val:
            sql += f" AND received_at {op} ?"
            params.append(val)
    return int((await rt.db.read(lambda c: c.execute(sql, params).fetchone()))[0])


async def replay(
    rt: Runtime,
    source: str,
    destination: str | None = None,
    since: str | None = None,
    until: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Queue deliveries again for ``source``'s events in [since, until); returns the count."""
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
    lo, hi = normalize_time(since), normalize_time(until)
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
