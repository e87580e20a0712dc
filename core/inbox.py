"""The durable inbox and the API log: the SQL that ingest runs inside a group commit."""

from __future__ import annotations

import json
import math
import random
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from .connectors import ParsedEvent
from .events import Track, event_type, raw_dict_decoder
from .grouped_writes import API_LOG_INSERT, GroupedWrite

INSERT_EVENT = (
    "INSERT OR IGNORE INTO inbox (source, message_id, type, user_id, anonymous_id, event,"
    " received_at, raw, filtered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
# Rows per multi-row INSERT: one statement step stores many events (each step releases and
# retakes the GIL, which the busy event loop thread may hold for milliseconds); 100 rows x 9
# parameters stays under SQLite's oldest variable limit (999).
INSERT_CHUNK = 100
_insert_sql: dict[int, str] = {}


def _insert_many_sql(n: int) -> str:
    sql = _insert_sql.get(n)
    if sql is None:
        sql = INSERT_EVENT.replace(
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", "VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?)"] * n)
        )
        _insert_sql[n] = sql
    return sql
INSERT_LOG = API_LOG_INSERT + "(?, ?, ?, ?, ?, ?, ?, ?)"


# The inbox's distinct sources, one index seek each (a "loose index scan" of the
# (source, received_at) index, SQLite and PostgreSQL alike): with it, a lookup by messageId
# alone goes through the (source, message_id) index (PostgreSQL) or table (SQLite: inbox_ids)
# instead of reading every row.
INBOX_SOURCES = (
    "WITH RECURSIVE s(v) AS (SELECT min(source) FROM inbox UNION ALL"
    " SELECT (SELECT min(source) FROM inbox WHERE source > s.v) FROM s WHERE s.v IS NOT NULL)"
    " SELECT v FROM s WHERE v IS NOT NULL"
)
_BY_MESSAGE_ID_INDEXED = f"source IN ({INBOX_SOURCES}) AND message_id = ?"
# SQLite has no (source, message_id) index on the inbox (see hookyard.dedupe): the merged
# keys are in inbox_ids, the newer rows (at most dedupe.MERGE_ROWS) are read by id range
_BY_MESSAGE_ID_SQLITE = (
    f"id IN (SELECT inbox_id FROM inbox_ids WHERE source IN ({INBOX_SOURCES}) AND message_id = ?"
    " UNION ALL SELECT id FROM inbox WHERE id > (SELECT merged_id FROM dedupe_state)"
    " AND message_id = ?)"
)


def by_message_id(dialect: str) -> tuple[str, int]:
    """A WHERE condition on the inbox: the events with messageId ``?`` (any source), indexed;
    and how many times the messageId is to be passed as a parameter."""
    if dialect == "sqlite":
        return _BY_MESSAGE_ID_SQLITE, 2
    return _BY_MESSAGE_ID_INDEXED, 1


def new_message_ids(n: int) -> list[str]:
    """``n`` random version-4 UUID strings.

    Not ``uuid.uuid4()``: its ``os.urandom`` releases the GIL, and on a busy server the event
    loop thread then waits for the database writer to hand it back (milliseconds, measured in
    bench/ingest.py). ``random``'s module generator holds the GIL, is seeded from the OS and
    reseeded in forked children, which is all a message ID needs (unique, not secret).
    """
    h = f"{random.getrandbits(128 * n):0{32 * n}x}"
    return [
        f"{h[i:i + 8]}-{h[i + 8:i + 12]}-4{h[i + 13:i + 16]}-"
        f"{_VARIANT[h[i + 16]]}{h[i + 17:i + 20]}-{h[i + 20:i + 32]}"
        for i in range(0, 32 * n, 32)
    ]


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}


def _given_id(given: str | int | None) -> str | None:
    """A client's messageId as the inbox keys it: a number as its text (Segment's Node
    libraries pass one through), None when missing, empty or only white space."""
    if isinstance(given, str):
        return given if given and not given.isspace() else None
    return None if given is None else str(given)


def event_rows(source: str, events: Iterable[ParsedEvent], received_at: str) -> list[tuple[Any, ...]]:
    """Inbox rows for parsed events; events without a messageId get a new UUID, and so do
    those whose messageId is only white space (a client's placeholder: as a key, every such
    event after the first would be dropped as a repeat)."""
    events = list(events)
    given_ids = [_given_id(p.event.messageId) for p in events]
    missing = given_ids.count(None)
    fresh = iter(new_message_ids(missing)) if missing else iter(())
    rows = []
    for parsed, given in zip(events, given_ids, strict=True):
        ev = parsed.event
        rows.append(
            (
                source,
                given if given is not None else next(fresh),
                event_type(ev),
                ev.user_id,
                ev.anonymous_id,
                ev.event if isinstance(ev, Track) else getattr(ev, "name", None),
                received_at,
                parsed.raw,
                parsed.filtered,
            )
        )
    return rows


@dataclass
class LogEntry:
    at: str
    source: str | None
    method: str
    path: str
    status: int
    events: int
    error: str | None
    duration_ms: float
    # time.perf_counter() when the request came: the row stored then counts the duration up
    # to its own write in the commit's transaction (the wait for the writer and for the
    # database's lock included; the operator audit found 2 s behind a held lock logged as
    # 1.86 ms), else ``duration_ms`` as given
    started: float | None = None

    def row(self) -> tuple[Any, ...]:
        duration = self.duration_ms
        if self.started is not None:
            duration = (time.perf_counter() - self.started) * 1000
        return (
            self.at,
            self.source,
            self.method,
            self.path,
            self.status,
            self.events,
            self.error,
            duration,
        )

    def deferred_row(self) -> tuple[Any, ...]:
        """The row with ``started`` after it, for the writer to turn into the duration at
        the moment it stores it (:func:`hookyard.grouped_writes.insert_log_rows`)."""
        return (self.at, self.source, self.method, self.path, self.status, self.events,
                self.error, self.duration_ms, self.started)


def insert_events(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], log: LogEntry) -> int:
    """Store events (a repeated (source, messageId) is ignored) and the API log line.

    Returns how many events were new.
    """
    dedupe = getattr(conn, "dedupe", None)  # the SQLite writer's (PostgreSQL: unique index)
    if dedupe is not None:
        rows = dedupe.admit(conn, rows)
    before = conn.total_changes
    for start in range(0, len(rows), INSERT_CHUNK):
        chunk = rows[start:start + INSERT_CHUNK]
        conn.execute(_insert_many_sql(len(chunk)), [v for row in chunk for v in row])
    stored = conn.total_changes - before
    conn.execute(INSERT_LOG, log.row())
    return stored


class InsertEvents(GroupedWrite):
    """The write job of one ingest request: its events and its API log line.

    Called as ``fn(conn)`` it runs :func:`insert_events` (every backend). The SQLite writer
    instead runs :meth:`statement` without a savepoint when the events fit one INSERT, and
    stores ``log_row`` with the other log lines of its group commit.
    """

    __slots__ = ("rows", "log", "one_statement", "log_row", "dedupe_keys", "_sql", "_params")

    def __init__(self, rows: list[tuple[Any, ...]], log: LogEntry) -> None:
        self.rows = rows
        self.log = log
        self.dedupe_keys = [(row[0], row[1]) for row in rows]
        self.one_statement = 0 < len(rows) <= INSERT_CHUNK
        self.log_row = log.deferred_row()
        # built here, on the caller's thread: the writer thread is the bottleneck
        self._sql = _insert_many_sql(len(rows)) if self.one_statement else ""
        self._params = [v for row in rows for v in row] if self.one_statement else []

    def statement(self, conn: sqlite3.Connection) -> int:
        sql, params = self._sql, self._params
        dedupe = getattr(conn, "dedupe", None)
        if dedupe is not None:  # the writer gave dedupe_keys to start_group
            rows = dedupe.admit(conn, self.rows, self.dedupe_keys)
            if not rows:
                return 0
            if len(rows) < len(self.rows):  # repeats: rebuild the statement without them
                sql, params = _insert_many_sql(len(rows)), [v for row in rows for v in row]
        before = conn.total_changes
        conn.execute(sql, params)
        return conn.total_changes - before

    def shared_rows(self, conn: sqlite3.Connection) -> list[tuple[Any, ...]] | None:
        dedupe = getattr(conn, "dedupe", None)
        if dedupe is None:
            return None
        return dedupe.admit(conn, self.rows, self.dedupe_keys)

    shared_insert = staticmethod(_insert_many_sql)
    SHARED_CHUNK = INSERT_CHUNK

    def __call__(self, conn: sqlite3.Connection) -> int:
        return insert_events(conn, self.rows, self.log)


def insert_log(conn: sqlite3.Connection, log: LogEntry) -> None:
    conn.execute(INSERT_LOG, log.row())


def decode_row(row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    """The full event JSON of an inbox row (id, source, message_id, type, received_at, raw)."""
    named = hasattr(row, "keys")  # sqlite3.Row or a PostgreSQL row (SELECT * order differs)
    r: Any = row
    raw = _raw_dict(r["raw"] if named else row[5])
    if named:
        raw["type"], raw["messageId"], raw["receivedAt"] = r["type"], r["message_id"], r["received_at"]
    else:
        raw["type"], raw["messageId"], raw["receivedAt"] = row[3], row[2], row[4]
    return raw


class UndecodableEvent(ValueError):
    """A stored event that cannot be read back: JSON that is not an object (a source plugin's
    bug, stored before ingest checked for it), or nested deeper than this Python's decoder goes
    (stored before ingest's nesting limit, :mod:`hookyard.nesting`). Listed with an error,
    dead-lettered by the router."""


def _raw_dict(raw: bytes) -> dict[str, Any]:
    try:
        return raw_dict_decoder.decode(raw)
    except msgspec.ValidationError as exc:
        if "Number out of range" not in str(exc):
            raise UndecodableEvent(f"the stored event is not a JSON object: {exc}") from None
        return _with_huge_numbers(raw)
    except msgspec.DecodeError:
        pass
    except RecursionError:
        raise UndecodableEvent("the stored event is nested too deeply to decode") from None
    try:
        # invalid UTF-8 in a field no Struct names, stored before ingest checked every byte
        # (hookyard.tracking_api.json_text): shown with U+FFFD instead of failing the page
        return raw_dict_decoder.decode(bytes(raw).decode("utf-8", "replace").encode())
    except msgspec.DecodeError as exc:
        raise UndecodableEvent(f"the stored event is not a JSON object: {exc}") from None


def _finite(text: str) -> float | None:
    value = float(text)
    return None if math.isinf(value) else value


def _with_huge_numbers(raw: bytes) -> dict[str, Any]:
    """A stored event with a number too large for a float (``1e999``) in a field ingest does
    not read (an unknown field, a track's ``traits``): that number as ``null``, as ingest reads
    a bare ``Infinity``. msgspec refused the whole event, and it became a dead letter that
    ``dlq retry`` could not mend."""
    try:
        value = json.loads(bytes(raw), parse_float=_finite)
    except (ValueError, RecursionError) as exc:
        raise UndecodableEvent(f"the stored event cannot be decoded: {exc}") from None
    if not isinstance(value, dict):
        raise UndecodableEvent("the stored event is not a JSON object")
    return value
