"""Duplicate storm: the same messageId sent 1,000 times at once is stored once and delivered
once. Every copy is acknowledged 200 (as Segment does: a retry of a delivered event is not an
error); dedupe is per source, so another source's event with the same id is its own event."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import aiohttp
import httpx
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer, basic_auth
from reliability_kit import EventCounter, forwarder, record_figures, track

COPIES = 1000
CONCURRENCY = 100
WEB_KEY, APP_KEY = "storm-web-key", "storm-app-key"


async def _storm(url: str, message_id: str) -> list[int]:
    """COPIES posts of one messageId, CONCURRENCY connections at a time (aiohttp: httpx's
    AsyncClient slows to a crawl with a hundred connections in one pool)."""
    connector = aiohttp.TCPConnector(limit=CONCURRENCY)
    async with aiohttp.ClientSession(url, headers=basic_auth(WEB_KEY), connector=connector,
                                     timeout=aiohttp.ClientTimeout(total=30)) as http:
        async def one(i: int) -> int:
            ev = track("storm-user", i, message_id=message_id)  # same id, different bodies
            if i % 4 == 0:  # some copies inside a batch, among other events
                body: dict[str, object] = {"batch": [track("storm-user", -1), ev]}
                path = "/v1/batch"
            else:
                body, path = ev, "/v1/track"
            async with http.post(path, json=body) as r:
                await r.read()
                return r.status

        return list(await asyncio.gather(*(one(i) for i in range(COPIES))))


def test_same_message_id_1000_times_concurrently_is_stored_once(
    hookyard_server: Callable[..., HookyardServer], fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    counter = EventCounter(fake)
    server = hookyard_server({
        "sources": [{"name": "web", "plugin": "segment", "write_key": WEB_KEY},
                    {"name": "app", "plugin": "segment", "write_key": APP_KEY}],
        "destinations": [forwarder("segment-out", fake.url, ["web", "app"])],
    })
    message_id = str(uuid.uuid4())
    started = time.monotonic()
    statuses = asyncio.run(_storm(server.url, message_id))
    seconds = time.monotonic() - started
    assert statuses == [200] * COPIES
    # the same id from another source is a different event
    r = httpx.post(f"{server.url}/v1/track", headers=basic_auth(APP_KEY), timeout=10,
                   json=track("app-user", 0, message_id=message_id))
    assert r.status_code == 200
    server.wait_idle(timeout=20)

    rows = server.runtime.db.read_sync(lambda c: c.execute(
        "SELECT source, count(*) FROM inbox WHERE message_id = ? GROUP BY source",
        (message_id,)).fetchall())
    assert {r[0]: r[1] for r in rows} == {"web": 1, "app": 1}
    page = server.api("/api/events", params={"message_id": message_id}).json()
    assert len(page["items"]) == 2
    delivered = [e for e in counter.accepted if e["messageId"] == message_id]
    assert sorted(e["userId"] for e in delivered) == ["app-user", "storm-user"]
    logged = server.runtime.db.read_sync(lambda c: c.execute(
        "SELECT count(*) FROM api_log WHERE source = 'web' AND status = 200").fetchone()[0])
    assert logged == COPIES
    record_figures("duplicate storm", copies=COPIES, concurrency=CONCURRENCY, stored=1,
                   delivered=1, seconds=round(seconds, 2))
