"""The profile store's own SQLite database (``profiles.db`` in the data dir).

Applying deliveries is idempotent, so a redelivery or a replay never duplicates anything:
properties merge, channels are a set per user that only grows, events and workflow runs are
unique by messageId.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import msgspec
import sqlite_utils

from ..database import connect
from ..deliveries import Delivery

log = logging.getLogger("hookyard.profiles")
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(dict[str, Any])


def _migrate(conn: sqlite3.Connection) -> None:
    db = sqlite_utils.Database(conn)
    if "subscribers" in db.table_names():
        return
    db["subscribers"].create(  # type: ignore[union-attr]
        {"destination": str, "distinct_id": str, "properties": str, "locale": str,
         "timezone": str, "created_at": float, "updated_at": float},
        pk=("destination", "distinct_id"),
    )
    db["channels"].create(  # type: ignore[union-attr]
        {"destination": str, "distinct_id": str, "channel": str, "value": str, "added_at": float},
        pk=("destination", "distinct_id", "channel", "value"),
    )
    db["events"].create(  # type: ignore[union-attr]
        {"id": int, "destination": str, "distinct_id": str, "message_id": str, "event": str,
         "properties": str, "timestamp": str, "received_at": str},
        pk="id",
    )
    db["events"].create_index(["destination", "message_id"], unique=True)  # type: ignore[union-attr]
    db["events"].create_index(["destination", "distinct_id", "id"])  # type: ignore[union-attr]
    db["workflow_runs"].create(  # type: ignore[union-attr]
        {"id": int, "destination": str, "workflow": str, "distinct_id": str, "event": str,
         "message_id": str, "payload": str, "created_at": float},
        pk="id",
    )
    db["workflow_runs"].create_index(  # type: ignore[union-attr]
        ["destination", "workflow", "message_id"], unique=True
    )
    # an email search must not scan every profile
    db["channels"].create_index(["destination", "value"])  # type: ignore[union-attr]


class ProfileStore:
    """Subscribers, channels, preferences, events and workflow runs of profile destinations."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._write = connect(self.path)
        self._write_lock = threading.Lock()
        self._local = threading.local()
        with self._write_lock:
            self._write.execute("BEGIN IMMEDIATE")
            _migrate(self._write)
            self._write.execute("COMMIT")

    def close(self) -> None:
        self._write.close()

    def _reader(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.path)
            conn.row_factory = sqlite3.Row
            self._local.conn = conn
        return conn

    # -- writes ------------------------------------------------------------------------------
    def apply(self, destination: str, deliveries: list[Delivery]) -> None:
        """Apply identify/track deliveries in one transaction (idempotent)."""
        with self._write_lock:
            conn = self._write
            conn.execute("BEGIN IMMEDIATE")
            try:
                for d in deliveries:
                    if d.kind == "identify":
                        self._identify(conn, destination, d.body)
                    elif d.kind == "track":
                        self._track(conn, destination, d.body)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def _identify(self, conn: sqlite3.Connection, dest: str, body: dict[str, Any]) -> None:
        now = time.time()
        uid = body["distinct_id"]
        for note in body.get("notes") or ():
            log.info("profile %s: %s", uid, note)
        row = conn.execute(
            "SELECT properties FROM subscribers WHERE destination = ? AND distinct_id = ?",
            (dest, uid),
        ).fetchone()
        props = _dec.decode(row[0]) if row and row[0] else {}
        props.update(body.get("properties") or {})
        prefs = body.get("preferences") or {}
        conn.execute(
            "INSERT INTO subscribers (destination, distinct_id, properties, locale, timezone,"
            " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(destination, distinct_id) DO UPDATE SET properties = excluded.properties,"
            " locale = COALESCE(excluded.locale, locale),"
            " timezone = COALESCE(excluded.timezone, timezone), updated_at = excluded.updated_at",
            (dest, uid, _enc.encode(props).decode(), prefs.get("$locale"), prefs.get("$timezone"),
             now, now),
        )
        conn.executemany(
            "INSERT OR IGNORE INTO channels (destination, distinct_id, channel, value, added_at)"
            " VALUES (?, ?, ?, ?, ?)",
            [(dest, uid, ch, v, now) for ch, values in (body.get("channels") or {}).items()
             for v in values],
        )

    def _track(self, conn: sqlite3.Connection, dest: str, body: dict[str, Any]) -> None:
        now = time.time()
        uid = body["distinct_id"]
        conn.execute(
            "INSERT INTO subscribers (destination, distinct_id, properties, created_at, updated_at)"
            " VALUES (?, ?, '{}', ?, ?) ON CONFLICT DO NOTHING",
            (dest, uid, now, now),
        )
        props = _enc.encode(body.get("properties") or {}).decode()
        conn.execute(
            "INSERT OR IGNORE INTO events (destination, distinct_id, message_id, event, properties,"
            " timestamp, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (dest, uid, body.get("message_id"), body["event"], props, body.get("timestamp"),
             body.get("received_at")),
        )
        conn.executemany(
            "INSERT OR IGNORE INTO workflow_runs (destination, workflow, distinct_id, event,"
            " message_id, payload, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(dest, wf, uid, body["event"], body.get("message_id"), props, now)
             for wf in body.get("workflows") or ()],
        )

    # -- reads -------------------------------------------------------------------------------
    def subscriber(self, dest: str, distinct_id: str) -> dict[str, Any] | None:
        conn = self._reader()
        row = conn.execute(
            "SELECT * FROM subscribers WHERE destination = ? AND distinct_id = ?", (dest, distinct_id)
        ).fetchone()
        if row is None:
            return None
        channels: dict[str, list[str]] = {}
        for ch in conn.execute(
            "SELECT channel, value FROM channels WHERE destination = ? AND distinct_id = ?"
            " ORDER BY added_at, rowid", (dest, distinct_id),
        ):
            channels.setdefault(ch["channel"], []).append(ch["value"])
        return {
            "distinct_id": row["distinct_id"],
            "properties": _dec.decode(row["properties"] or "{}"),
            "channels": channels,
            "preferences": {"$locale": row["locale"], "$timezone": row["timezone"]},
            "created_at": row["created_at"],
            "updated_at": row["updated_at"],
        }

    def subscribers(
        self, dest: str, *, query: str | None, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        conn = self._reader()
        sql = "SELECT distinct_id, properties, locale, timezone, updated_at FROM subscribers s" \
              " WHERE destination = ?"
        params: list[Any] = [dest]
        if query:
            sql += (" AND (distinct_id LIKE ? OR EXISTS (SELECT 1 FROM channels c WHERE"
                    " c.destination = s.destination AND c.distinct_id = s.distinct_id AND c.value LIKE ?))")
            params += [f"%{query}%", f"%{query}%"]
        if after:
            sql += " AND distinct_id > ?"
            params.append(after)
        sql += " ORDER BY distinct_id LIMIT ?"
        params.append(limit + 1)
        rows = conn.execute(sql, params).fetchall()
        items = [
            {"distinct_id": r["distinct_id"], "properties": _dec.decode(r["properties"] or "{}"),
             "preferences": {"$locale": r["locale"], "$timezone": r["timezone"]},
             "updated_at": r["updated_at"]}
            for r in rows[:limit]
        ]
        nxt = items[-1]["distinct_id"] if len(rows) > limit else None
        return items, nxt

    def events(
        self, dest: str, distinct_id: str, *, before: int | None, limit: int
    ) -> tuple[list[dict[str, Any]], int | None]:
        """The user's events, newest first."""
        sql = "SELECT * FROM events WHERE destination = ? AND distinct_id = ?"
        params: list[Any] = [dest, distinct_id]
        if before is not None:
            sql += " AND id < ?"
            params.append(before)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit + 1)
        rows = self._reader().execute(sql, params).fetchall()
        items = [
            {"event": r["event"], "properties": _dec.decode(r["properties"] or "{}"),
             "timestamp": r["timestamp"], "receivedAt": r["received_at"],
             "messageId": r["message_id"]}
            for r in rows[:limit]
        ]
        return items, (rows[limit - 1]["id"] if len(rows) > limit else None)

    def workflow_runs(
        self, dest: str, *, distinct_id: str | None, workflow: str | None,
        before: int | None, limit: int,
    ) -> tuple[list[dict[str, Any]], int | None]:
        sql = "SELECT * FROM workflow_runs WHERE destination = ?"
        params: list[Any] = [dest]
        for col, val in (("distinct_id", distinct_id), ("workflow", workflow)):
            if val:
                sql += f" AND {col} = ?"
                params.append(val)
        if before is not None:
            sql += " AND id < ?"
            params.append(before)
        sql += " ORDER BY id DESC LIMIT ?"
        params.append(limit + 1)
        rows = self._reader().execute(sql, params).fetchall()
        items = [
            {"id": r["id"], "workflow": r["workflow"], "distinct_id": r["distinct_id"],
             "event": r["event"], "messageId": r["message_id"],
             "payload": _dec.decode(r["payload"] or "{}"), "created_at": r["created_at"]}
            for r in rows[:limit]
        ]
        return items, (rows[limit - 1]["id"] if len(rows) > limit else None)
