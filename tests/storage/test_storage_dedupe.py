"""The SQLite inbox's messageId dedupe (hookyard.dedupe): exact across merges, restarts, a
failed job, a second process on the same file, and databases migrated from the unique index."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import sqlite_utils
from hookyard import dedupe, retention
from hookyard.database import Database
from hookyard.delivery import router
from hookyard.inbox import InsertEvents, LogEntry, by_message_id
from hookyard.schema import MIGRATIONS, migrate
from hookyard.times import now_iso


def _row(mid: str, source: str = "web", user: object = "u1") -> tuple[object, ...]:
    return (source, mid, "track", user, None, "Clicked", now_iso(), b'{"type":"track"}', None)


def _entry(events: int) -> LogEntry:
    return LogEntry(now_iso(), "web", "POST", "/v1/batch", 200, events, None, 1.0)


def _store(db: Database, *mids: str, source: str = "web") -> int:
    return int(db.write_sync(InsertEvents([_row(m, source) for m in mids], _entry(len(mids)))))


def _open(path: Path) -> Database:
    db = Database(path)
    db.write_sync(migrate)
    return db


def _count(db: Database, table: str = "inbox") -> int:
    db.write_sync(lambda c: None)  # the writer runs a merge step after answering a group
    return int(db.read_sync(lambda c: c.execute(f"SELECT count(*) FROM {table}").fetchone()[0]))


@pytest.fixture
def small_merges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedupe, "MERGE_ROWS", 5)


def test_repeats_are_dropped_before_and_after_a_merge(tmp_path: Path, small_merges: None) -> None:
    db = _open(tmp_path / "h.db")
    try:
        assert _store(db, "a", "b", "a") == 2  # a repeat inside one request
        assert _store(db, "b", "c") == 1  # a repeat of the tail (in memory)
        assert _count(db, "inbox_ids") == 0
        assert _store(db, "d", "e", "f") == 3  # the tail reaches 5 keys: a merge begins
        assert _store(db, "a", "f", "g") == 1  # repeats of keys being merged
        assert _count(db, "inbox_ids") == 6  # the merge's second step moved them (barrier: a third)
        assert _store(db, "a", "f") == 0  # repeats of merged keys
        assert _store(db, "a", source="app") == 1  # dedupe is per source
        assert _count(db) == 8
    finally:
        db.stop()


def test_the_tail_survives_a_restart(tmp_path: Path) -> None:
    db = _open(tmp_path / "h.db")
    assert _store(db, "a", "b") == 2
    db.stop()  # nothing merged: the keys were only in memory
    db = _open(tmp_path / "h.db")
    try:
        assert _store(db, "a", "b", "c") == 1
    finally:
        db.stop()


def test_a_second_process_on_the_same_file_sees_the_first_ones_events(tmp_path: Path) -> None:
    first, second = _open(tmp_path / "h.db"), _open(tmp_path / "h.db")
    try:
        assert _store(first, "a") == 1
        assert _store(second, "x") == 1  # reads "a" into its tail
        assert _store(first, "b") == 1  # reads "x"
        assert _store(second, "a", "b") == 0
        assert _store(first, "x") == 0
        assert _count(first) == 3
    finally:
        first.stop()
        second.stop()


def test_a_failed_job_does_not_keep_its_keys(tmp_path: Path) -> None:
    db = _open(tmp_path / "h.db")
    gate = threading.Event()
    blocker = db.submit(lambda conn: gate.wait(5))  # the next jobs form one group
    failing = db.submit(InsertEvents([_row("k"), _row("bad", user={})], _entry(2)))
    again = db.submit(InsertEvents([_row("k")], _entry(1)))
    gate.set()
    try:
        assert blocker.result(10) is True
        with pytest.raises(sqlite3.Error):
            failing.result(10)
        assert again.result(10) == 1  # "k" was not stored by the failed job
        assert _store(db, "k") == 0
    finally:
        db.stop()


def test_lookup_by_message_id_finds_merged_and_tail_events(tmp_path: Path, small_merges: None) -> None:
    db = _open(tmp_path / "h.db")
    try:
        _store(db, "m1", "m2", "m3", "m4", "m5")  # merged
        _store(db, "t1")  # tail
        condition, times = by_message_id(db.dialect)

        def find(mid: str) -> list[str]:
            return db.read_sync(lambda c: [r[0] for r in c.execute(
                f"SELECT message_id FROM inbox WHERE {condition}", [mid] * times)])

        assert find("m3") == ["m3"] and find("t1") == ["t1"] and find("nope") == []
    finally:
        db.stop()


def test_a_database_with_the_unique_index_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    conn = sqlite3.connect(path)
    old = sqlite_utils.Database(conn)
    for migration in MIGRATIONS[:2]:
        migration(old)
    conn.execute("PRAGMA user_version=2")
    conn.executemany(
        "INSERT INTO inbox (source, message_id, type, received_at, raw) VALUES (?, ?, ?, ?, ?)",
        [("web", f"old{i}", "track", now_iso(), b"{}") for i in range(3)],
    )
    conn.commit()
    conn.close()
    db = _open(path)
    try:
        indexes = db.read_sync(lambda c: [r[0] for r in c.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'inbox'")])
        assert "idx_inbox_source_message_id" not in indexes
        assert _count(db, "inbox_ids") == 3
        assert _store(db, "old1", "new") == 1
    finally:
        db.stop()


def test_a_merge_in_slices_keeps_every_key_known(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dedupe, "MERGE_ROWS", 6)
    monkeypatch.setattr(dedupe, "MERGE_SLICE", 2)  # 3 copy steps + 3 move steps per 6 keys
    db = _open(tmp_path / "h.db")
    try:
        assert _store(db, *[f"k{i}" for i in range(6)]) == 6  # the merge starts after this
        for step in range(8):  # each commit runs one step; every key stays a repeat
            assert _store(db, f"k{step % 6}", f"n{step}") == 1
        assert _count(db, "inbox_ids") >= 6
        merged = db.read_sync(lambda c: c.execute("SELECT merged_id FROM dedupe_state").fetchone()[0])
        assert merged >= 6
        assert _store(db, *[f"k{i}" for i in range(6)], *[f"n{i}" for i in range(8)]) == 0
    finally:
        db.stop()


def _store_old(db: Database, *mids: str) -> None:
    rows = [("web", m, "track", "u1", None, "Clicked", "2020-01-01T00:00:00.000Z", b"{}", None) for m in mids]
    db.write_sync(InsertEvents(rows, _entry(len(rows))))


def _purge(db: Database) -> int:
    def run(conn: sqlite3.Connection) -> int:
        conn.execute("INSERT OR REPLACE INTO router_state (name, last_inbox_id) VALUES (?, ?)",
                     (router.ROUTER, 10**9))  # as if every event was routed
        return retention.purge_inbox(conn, retention.cutoff_iso(1))[0]

    return int(db.write_sync(run))


def test_retention_deletes_only_merged_events(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    db = _open(tmp_path / "h.db")
    try:
        _store_old(db, "a", "b", "c")
        assert _purge(db) == 0  # their keys are only in memory: a merge could not find them
    finally:
        db.stop()
    monkeypatch.setattr(dedupe, "MERGE_SECONDS", 0.0)  # a tail of any age is due
    db = _open(tmp_path / "h.db")
    try:
        _store_old(db, "d")
        _count(db)  # two more commits: the merge's copy and move steps
        _count(db)
        assert _purge(db) == 3  # a, b, c (d, the newest event, always stays)
        assert _count(db, "inbox_ids") == 1
        assert _store(db, "a") == 1  # a deleted event's key may be stored again
        assert _store(db, "d") == 0
    finally:
        db.stop()


def test_concurrent_repeats_across_many_merges_are_stored_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six threads send overlapping messageIds while the tail is merged again and again."""
    import random

    monkeypatch.setattr(dedupe, "MERGE_ROWS", 50)
    monkeypatch.setattr(dedupe, "MERGE_SLICE", 7)
    db = _open(tmp_path / "h.db")
    ids = [f"id{i}" for i in range(600)]
    stored: list[int] = []

    def sender(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(60):
            stored.append(_store(db, *rng.sample(ids, 20)))

    threads = [threading.Thread(target=sender, args=(n,)) for n in range(6)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        rows = db.read_sync(lambda c: [r[0] for r in c.execute("SELECT message_id FROM inbox")])
        assert len(rows) == len(set(rows)) == sum(stored)
        for _ in range(100):  # each commit runs merge steps: they catch up
            if _count(db, "inbox_ids") >= len(rows) - 50:
                break
        assert _count(db, "inbox_ids") >= len(rows) - 50  # all but the last tail merged
    finally:
        db.stop()
