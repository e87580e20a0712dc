"""The ingest fast paths found by bench/ingest.py keep their contracts: group-commit futures
(cancelled waiters, failing jobs), multi-row inbox inserts, server-made messageIds, the cached
``now_iso`` and the batch ``sentAt`` splice."""

from __future__ import annotations

import asyncio
import re
import sqlite3
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hookyard.database import Database
from hookyard.inbox import (
    INSERT_CHUNK,
    LogEntry,
    event_rows,
    insert_events,
    new_message_ids,
)
from hookyard.schema import migrate
from hookyard.testing import sample_track
from hookyard.times import now_iso
from hookyard.tracking_api import parse_call


@pytest.fixture
def db(tmp_path: Path) -> Any:
    database = Database(tmp_path / "t.db", "normal")
    database.start()
    database.write_sync(migrate)
    yield database
    database.stop()


def _log() -> LogEntry:
    return LogEntry(now_iso(), "web", "POST", "/v1/batch", 200, 0, None, 1.0)


def test_new_message_ids_are_distinct_uuid4_strings() -> None:
    ids = new_message_ids(500)
    assert len(set(ids)) == 500
    for value in ids:
        parsed = uuid.UUID(value)
        assert str(parsed) == value
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122


def test_now_iso_is_segment_utc_milliseconds() -> None:
    before = datetime.now(UTC)
    value = now_iso()
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", value)
    when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert before.replace(microsecond=before.microsecond // 1000 * 1000) <= when <= after


def test_multi_row_insert_stores_every_new_event_and_ignores_repeats(db: Database) -> None:
    raws = [sample_track(messageId=f"m-{i}") for i in range(INSERT_CHUNK * 2 + 17)]
    raws.append(sample_track(messageId="m-3"))  # a repeat inside the same request
    raws.append(sample_track(messageId=None))  # no messageId: the server makes one
    body = msgspec.json.encode({"batch": raws})
    rows = event_rows("web", parse_call("batch", body), now_iso())
    stored = db.write_sync(lambda c: insert_events(c, rows, _log()))
    assert stored == len(raws) - 1
    again = db.write_sync(lambda c: insert_events(c, rows, _log()))
    assert again == 0
    count, logs = db.read_sync(
        lambda c: (c.execute("SELECT count(*) FROM inbox").fetchone()[0],
                   c.execute("SELECT count(*) FROM api_log").fetchone()[0])
    )
    assert (count, logs) == (len(raws) - 1, 2)
    made = db.read_sync(lambda c: c.execute(
        "SELECT message_id FROM inbox WHERE message_id NOT LIKE 'm-%'").fetchall())
    assert len(made) == 1 and uuid.UUID(made[0][0]).version == 4


def test_async_writes_resolve_after_commit_and_failures_stay_per_job(db: Database) -> None:
    def boom(conn: sqlite3.Connection) -> None:
        conn.execute("INSERT INTO router_state (name, last_inbox_id) VALUES ('x', 1)")
        raise ValueError("job failed")

    def stop_iteration(conn: sqlite3.Connection) -> None:
        raise StopIteration

    async def run() -> list[Any]:
        return await asyncio.gather(
            db.write(lambda c: c.execute("INSERT INTO router_state VALUES ('a', 1)").rowcount),
            db.write(boom),
            db.write(stop_iteration),
            db.write(lambda c: c.execute("INSERT INTO router_state VALUES ('b', 2)").rowcount),
            return_exceptions=True,
        )

    first, failed, stopped, last = asyncio.run(run())
    assert (first, last) == (1, 1)
    assert isinstance(failed, ValueError)
    assert isinstance(stopped, RuntimeError)
    names = db.read_sync(lambda c: [r[0] for r in c.execute("SELECT name FROM router_state")])
    assert sorted(names) == ["a", "b"]  # the failed job's own insert was rolled back


def test_a_cancelled_waiter_does_not_stop_the_writer(db: Database) -> None:
    async def run() -> int:
        blocker = asyncio.ensure_future(db.write(lambda c: time.sleep(0.2)))
        waiter = asyncio.ensure_future(db.write(lambda c: 1))
        await asyncio.sleep(0.05)  # both queued; the writer is busy with the first
        waiter.cancel()
        await blocker
        return await asyncio.wait_for(db.write(lambda c: 7), timeout=5)

    assert asyncio.run(run()) == 7
    db.submit(lambda c: time.sleep(0.2))
    future = db.submit(lambda c: 1)
    assert future.cancel()  # a thread-side waiter giving up before its commit
    assert db.write_sync(lambda c: 8) == 8


def test_batch_sent_at_is_spliced_into_events_without_one() -> None:
    own = sample_track(messageId="own", sentAt="2026-02-02T00:00:00.000Z")
    plain = sample_track(messageId="plain")
    body = msgspec.json.encode({"batch": [plain, own], "sentAt": "2026-03-03T00:00:00.000Z"})
    first, second = (msgspec.json.decode(p.raw) for p in parse_call("batch", body))
    assert first == {**plain, "sentAt": "2026-03-03T00:00:00.000Z"}
    assert second == own


def test_batch_context_still_merges_with_sent_at() -> None:
    plain = sample_track(messageId="plain", context={"ip": "192.0.2.9"})
    body = msgspec.json.encode({"batch": [plain], "context": {"ip": "192.0.2.1", "locale": "de"},
                                "sentAt": "2026-03-03T00:00:00.000Z"})
    [parsed] = parse_call("batch", body)
    raw = msgspec.json.decode(parsed.raw)
    assert raw["context"] == {"ip": "192.0.2.9", "locale": "de"}
    assert raw["sentAt"] == "2026-03-03T00:00:00.000Z"


def test_gzip_bodies_of_several_members_and_trailing_data() -> None:
    """RFC 1952 allows several gzip members in a row (all decoded, the limit counting them
    all); anything else after the body is refused, never silently dropped."""
    import gzip
    import zlib

    from hookyard.errors import BadRequest, PayloadTooLarge
    from hookyard.request_body import decode_content

    assert decode_content(gzip.compress(b'{"a":') + gzip.compress(b"1}"), "gzip", 100) == b'{"a":1}'
    with pytest.raises(PayloadTooLarge):
        decode_content(gzip.compress(b"x" * 60) + gzip.compress(b"y" * 60), "gzip", 100)
    for body, encoding in ((gzip.compress(b"{}") + b"junk", "gzip"),
                           (zlib.compress(b"{}") + b"x", "deflate")):
        with pytest.raises(BadRequest, match=f"unexpected data after the {encoding} body"):
            decode_content(body, encoding, 100)
    # fuzz audit: a raw deflate stream (no zlib header, as some clients send) was refused
    raw = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    assert decode_content(raw.compress(b'{"a":1}') + raw.flush(), "deflate", 100) == b'{"a":1}'
    assert decode_content(zlib.compress(b'{"a":1}'), "deflate", 100) == b'{"a":1}'


def test_a_request_cut_off_by_shutdown_is_answered_503(tmp_path: Path) -> None:
    """uvicorn cancels requests still running when its shutdown grace runs out (a body still
    trickling in): the client gets 503 + Retry-After instead of a logged traceback."""
    from hookyard.config import default_config
    from hookyard.ingest import IngestEndpoint
    from hookyard.runtime import Runtime

    endpoint = IngestEndpoint(Runtime.build(default_config(tmp_path)))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        await asyncio.sleep(3600)  # the body never completes
        raise AssertionError("not reached")

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def main() -> None:
        scope = {"type": "http", "method": "POST", "path": "/v1/track", "headers": [],
                 "query_string": b""}
        task = asyncio.create_task(endpoint.asgi(scope, receive, send))
        await asyncio.sleep(0.05)
        task.cancel()  # what uvicorn does when timeout_graceful_shutdown runs out
        await task

    asyncio.run(main())
    assert sent[0]["status"] == 503 and (b"retry-after", b"5") in sent[0]["headers"]
    assert b"shutting down" in sent[1]["body"]


def test_the_body_watch_follows_the_running_loop_and_thread() -> None:
    """``hookyard.loops`` remembers the loop a thread ran last (no getpid() per request), yet
    always answers with the task and loop running now."""
    from hookyard import body_deadline, loops

    async def probe() -> bool:
        task, watch = body_deadline.watch_current_task()
        loop = asyncio.get_running_loop()
        return (task is asyncio.current_task() and watch.loop is loop
                and loops.running_loop() is loop)

    assert asyncio.run(probe())
    assert asyncio.run(probe())  # a new loop in the same thread: not the remembered one
    other: list[bool] = []
    busy, done = threading.Event(), threading.Event()

    async def hold() -> bool:  # a task of another loop, running meanwhile in another thread
        busy.set()
        await asyncio.get_running_loop().run_in_executor(None, done.wait, 5)
        return await probe()

    thread = threading.Thread(target=lambda: other.append(asyncio.run(hold())))
    thread.start()
    assert busy.wait(5)
    assert asyncio.run(probe())
    done.set()
    thread.join(5)
    assert other == [True]
