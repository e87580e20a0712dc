"""The router on both backends: every committed event becomes outbox rows exactly once, with
several routers (nodes) at work, and (PostgreSQL) whatever order the ids commit in."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import psycopg
from hookyard.delivery import router
from hookyard.inbox import event_rows, insert_events
from hookyard.runtime import Runtime
from hookyard.testing import sample_track
from hookyard.times import now_iso
from storage_kit import log_entry, parsed


def ingest(rt: Runtime, count: int, prefix: str = "m") -> None:
    raws = [sample_track(messageId=f"{prefix}{i}", userId=f"u{i % 5}") for i in range(count)]
    rows = event_rows("web", [parsed(r) for r in raws], now_iso())
    rt.db.write_sync(lambda c: insert_events(c, rows, log_entry(len(rows))))


def routed(rt: Runtime) -> list[str]:
    return rt.db.read_sync(lambda c: [r[0] for r in c.execute(
        "SELECT message_id FROM outbox ORDER BY id").fetchall()])


def test_events_are_routed_once(runtime: Runtime) -> None:
    ingest(runtime, 25)
    count, touched = asyncio.run(router.route_batch(runtime, limit=10))
    assert (count, touched) == (10, {"seg"})
    while asyncio.run(router.route_batch(runtime, limit=10))[0]:
        pass
    assert routed(runtime) == [f"m{i}" for i in range(25)]
    assert asyncio.run(router.route_batch(runtime)) == (0, set())
    rows = runtime.db.read_sync(lambda c: c.execute(
        "SELECT destination, inbox_id, user_key, state FROM outbox ORDER BY id").fetchall())
    assert rows[6]["user_key"] == "u1" and {r["state"] for r in rows} == {"pending"}


def test_several_routers_route_every_event_exactly_once(runtime_factory: Any) -> None:
    nodes = [runtime_factory() for _ in range(3)]

    async def run() -> None:
        for batch in range(4):
            ingest(nodes[batch % 3], 30, prefix=f"b{batch}-")
            for _ in range(20):
                counts = await asyncio.gather(*(router.route_batch(n, limit=7) for n in nodes))
                if not any(c for c, _ in counts):
                    break

    asyncio.run(run())
    ids = routed(nodes[0])
    assert len(ids) == 120 and len(set(ids)) == 120


def test_an_id_that_commits_late_is_not_skipped(runtime: Runtime) -> None:
    """Two ingests on two nodes: the smaller id commits after the larger one was routed."""
    if runtime.db.dialect != "postgresql":
        return  # one SQLite writer: ids commit in order
    settings = runtime.config.storage
    raw = sample_track(messageId="late")
    [row] = event_rows("web", [parsed(raw)], now_iso())
    with psycopg.connect(settings.url or "", autocommit=False) as other:
        other.execute(f'SET search_path TO "{settings.schema}"')
        other.execute(
            "INSERT INTO inbox (source, message_id, type, user_id, anonymous_id, event, received_at,"
            " raw, filtered) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)", row)
        ingest(runtime, 1, prefix="early")  # a larger id, committed first
        assert asyncio.run(router.route_batch(runtime))[0] == 1
        other.commit()
    assert asyncio.run(router.route_batch(runtime))[0] == 1
    assert routed(runtime) == ["early0", "late"]
    ids = runtime.db.read_sync(lambda c: [r[0] for r in c.execute(
        "SELECT inbox_id FROM outbox ORDER BY id")])
    assert ids[0] > ids[1]


def drain(r: router.Router) -> list[int]:
    """Step the engine's router until it has nothing to commit; the counts it handed over."""

    async def run() -> list[int]:
        counts = []
        while True:
            count, _ = await r.step()
            counts.append(count)
            if not count and not r.busy:
                return counts

    return asyncio.run(run())


def test_the_engine_router_routes_every_event_once_while_the_last_batch_commits(
    runtime: Runtime,
) -> None:
    ingest(runtime, 25)
    r = router.Router(runtime, limit=10)
    counts = drain(r)
    assert sum(counts) == 25 and max(counts) == 10
    assert routed(runtime) == [f"m{i}" for i in range(25)]
    ingest(runtime, 3, prefix="late")  # and it goes on from there
    assert sum(drain(r)) == 3
    assert routed(runtime)[-3:] == ["late0", "late1", "late2"]


def test_the_engine_router_starts_again_from_the_stored_cursor_when_a_batch_is_refused(
    runtime: Runtime,
) -> None:
    """Another process routes the events the pipelined batch was mapping: that batch is refused
    when it commits, and nothing is routed twice."""
    if runtime.db.dialect == "postgresql":
        return  # PostgreSQL routes one batch at a time (a routed flag per row, no cursor)
    ingest(runtime, 20)
    r = router.Router(runtime, limit=10)

    async def run() -> None:
        assert await r.step() == (0, set())  # batch 1 (ids 1-10) read, mapped, committing
        assert r.busy
        while await runtime.db.read(router.cursor) < 10:  # batch 1 is stored
            await asyncio.sleep(0.01)
        assert (await router.route_batch(runtime, limit=10))[0] == 10  # "another process": 11-20
        assert (await r.step())[0] == 10  # hands batch 1 over; maps 11-20 again, from memory
        assert (await r.step())[0] == 0  # that batch is refused: the stored cursor moved on
        assert not r.busy

    asyncio.run(run())
    drain(r)
    ids = routed(runtime)
    assert sorted(ids) == sorted(f"m{i}" for i in range(20)) and len(ids) == 20


def test_a_replay_without_until_ends_when_it_starts(runtime: Runtime) -> None:
    """Events that arrive while a replay runs are routed as usual; taking them in too sent
    them twice (an outside audit: 150,000 events twice, the replay chasing ingest for 35 s)."""
    from hookyard.delivery.replay import replay

    ingest(runtime, 5)
    time.sleep(0.01)  # received_at has milliseconds: not in the millisecond the replay starts
    arrived: list[int] = []

    def meanwhile(count: int) -> None:  # the replay's progress callback, after each page
        if not arrived:
            time.sleep(0.01)
            ingest(runtime, 3, prefix="late")
        arrived.append(count)

    asyncio.run(router.route_batch(runtime))
    done = asyncio.run(replay(runtime, "web", since="2020-01-01", progress=meanwhile))
    assert done.events == 5 and arrived == [5]
    asyncio.run(router.route_batch(runtime))
    done = asyncio.run(replay(runtime, "web", since="2020-01-01", until=time.time() + 60))
    assert done.events == 8  # an explicit end still reaches past now
    ingest(runtime, 2, prefix="unrouted")
    done = asyncio.run(replay(runtime, "web", since="2020-01-01", until=time.time() + 60))
    assert done.events == 8  # not those the router has yet to reach: it maps them itself


def test_a_replay_leaves_what_the_router_routes_meanwhile_to_it(runtime: Runtime) -> None:
    """The bound is taken once, as the replay starts: events the router routed between two of
    its pages were replayed as well, and so sent twice (a review of the first fix)."""
    import threading

    from hookyard.delivery.replay import replay

    ingest(runtime, 1200)
    asyncio.run(router.route_batch(runtime, limit=600))
    caught_up: list[int] = []

    def meanwhile(count: int) -> None:  # after the first page: the router routes the rest
        if not caught_up:
            worker = threading.Thread(
                target=lambda: caught_up.append(asyncio.run(router.route_batch(runtime, 1000))[0]))
            worker.start()
            worker.join()

    done = asyncio.run(replay(runtime, "web", since="2020-01-01", progress=meanwhile))
    assert caught_up == [600] and done.events == 600
    def rows_of(message_id: str) -> int:
        return int(runtime.db.read_sync(lambda c: c.execute(
            "SELECT count(*) FROM outbox WHERE message_id = ?", (message_id,)).fetchone()[0]))

    assert rows_of("m100") == 2 * rows_of("m900") > 0  # routed and replayed; routed only
