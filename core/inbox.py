"""The durable inbox and the API log: the SQL that ingest runs inside a group commit."""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .connectors import ParsedEvent
from .events import Track, event_type, raw_dict_decoder

INSERT_EVENT = (
    "INSERT OR IGNORE INTO inbox (source, message_id, type, user_id, anonymous_id, event,"
    " received_at, raw, filtered) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
INSERT_LOG = (
    "INSERT INTO api_log (at, source, method, path, status, events, error, duration_ms)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def now_iso() -> str:
    """The current UTC time as Segment writes it: ``2026-01-01T00:00:00.000Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event_rows(source: str, events: Iterable[ParsedEvent], received_at: str) -> list[tuple[Any, ...]]:
    """Inbox rows for parsed events; events without a messageId get a new UUID."""
    rows = []
    for parsed in events:
        ev = parsed.event
        rows.append(
            (
                source,
                ev.messageId or str(uuid.uuid4()),
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

    def row(self) -> tuple[Any, ...]:
        return (
            self.at,
            self.source,
            self.method,
            self.path,
            self.status,
            self.events,
            self.error,
            self.duration_ms,
        )


def insert_events(conn: sqlite3.Connection, rows: list[tuple[Any, ...]], log: LogEntry) -> int:
    """Store events (a repeated (source, messageId) is ignored) and the API log line.

    Returns how many events were new.
    """
    before = conn.total_changes
    conn.executemany(INSERT_EVENT, rows)
    stored = conn.total_changes - before
    conn.execute(INSERT_LOG, log.row())
    return stored


def insert_log(conn: sqlite3.Connection, log: LogEntry) -> None:
    conn.execute(INSERT_LOG, log.row())


def decode_row(row: sqlite3.Row | tuple[Any, ...]) -> dict[str, Any]:
    """The full event JSON of an inbox row (id, source, message_id, type, received_at, raw)."""
    named = hasattr(row, "keys")  # sqlite3.Row or a PostgreSQL row (SELECT * order differs)
    r: Any = row
    raw = raw_dict_decoder.decode(r["raw"] if named else row[5])
    if named:
        raw["type"], raw["messageId"], raw["receivedAt"] = r["type"], r["message_id"], r["received_at"]
    else:
        raw["type"], raw["messageId"], raw["receivedAt"] = row[3], row[2], row[4]
    return raw
