"""The profile store's tables: its own SQLite file (``profiles.db`` in the data dir), or, when
hookyard's storage is PostgreSQL, tables in that database, shared by every node.

Applying deliveries is idempotent, so a redelivery or a replay never duplicates anything:
properties merge, channels are a set per user that only grows, events and workflow runs are
unique by messageId. On PostgreSQL two nodes never write one user at the same time: the outbox
hands a user's deliveries out one batch at a time.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

from ..database import connect
from ..deliveries import Delivery
from .notes import Notes
from .schema import PrefixedConnection, migrate, migrate_pg

log = logging.getLogger("hookyard.profiles")
_enc = msgspec.json.Encoder()
_dec = msgspec.json.Decoder(dict[str, Any])


MAX_PROPERTIES = 1000
"""Properties one subscriber may have: an identify's new keys past it are not kept (with a
note). Without a limit, a client sending new trait names in every identify grew one record
to megabytes, which every later identify decoded and wrote again."""
MAX_PROPERTIES_BYTES = 1024 * 1024
"""Encoded size of one subscriber's properties: an identify that would make them larger
changes none of them (with a note)."""
MAX_QUERY = 1000
"""Characters of a subscriber search (``q``): a user id, an email or a phone number is far
shorter, and a search of 50,000 failed in SQLite (a 500; API contract audit)."""
MAX_CHANNEL_VALUES = 50
"""Values one subscriber may have in one channel (they are appended, never replaced): the
newest past it are not kept (with a note)."""

def _like_escape(text: str) -> str:
    """``text`` for a LIKE pattern with ``ESCAPE '\\'``: its wildcards taken literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class ProfileStore:
    """Subscribers, channels, preferences, events and workflow runs of profile destinations.

    Open it with :meth:`sqlite` or :meth:`postgres`; the SQL is the same but for the few
    ``_sql_*`` differences set there.
    """

    def __init__(self, opener: Callable[[], Any], *, postgres: bool = False) -> None:
        self._open = opener
        self._postgres = postgres
        self._begin = "BEGIN" if postgres else "BEGIN IMMEDIATE"
        self._sql_channel_order = "added_at, seq" if postgres else "added_at, rowid"
        self._sql_like = "ILIKE" if postgres else "LIKE"  # SQLite's LIKE ignores ASCII case
        self._write_lock = threading.Lock()
        self.notes = Notes()  # values not kept, logged without flooding the log
        self._local = threading.local()
        self._readers: list[Any] = []  # every thread's read connection, closed by close()
        self._readers_lock = threading.Lock()
        self._write: Any = opener()
        with self._write_lock:
            self._write.execute(self._begin)
            try:
                (migrate_pg if postgres else migrate)(self._write)
                self._write.execute("COMMIT")
            except BaseException:
                self._write.close()
                raise

    @classmethod
    def sqlite(cls, path: str | Path) -> ProfileStore:
        """The store in its own SQLite file."""
        return cls(lambda: connect(Path(path)))

    @classmethod
    def postgres(cls, url: str, schema: str) -> ProfileStore:
        """The store in hookyard's PostgreSQL database (``schema``), shared by every node."""
        from ..storage.postgres import connect as pg_connect

        return cls(lambda: PrefixedConnection(pg_connect(url, schema)), postgres=True)

    def close(self) -> None:
        """Close the write connection and every thread's read connection."""
        self._write.close()
        with self._readers_lock:
            readers, self._readers = self._readers, []
        for conn in readers:
            try:
                conn.close()
            except Exception:  # noqa: BLE001 - closing what is already broken
                pass

    def _reader(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(conn, "closed", False):  # a PostgreSQL connection that broke
            conn = self._open()
            if not self._postgres:
                conn.row_factory = sqlite3.Row
            self._local.conn = conn
            with self._readers_lock:
                self._readers.append(conn)
        return conn

    # -- writes ------------------------------------------------------------------------------
    def apply(self, destination: str, deliveries: list[Delivery]) -> None:
        """Apply identify/track deliveries in one transaction (idempotent)."""
        with self._write_lock:
            if getattr(self._write, "closed", False):  # PostgreSQL restarted: connect again
                self._write = self._open()
            conn = self._write
            conn.execute(self._begin)
            try:
                for d in deliveries:
                    if d.kind == "identify":
                        self._identify(conn, destination, d.body)
                    elif d.kind == "track":
                        self._track(conn, destination, d.body)
                conn.execute("COMMIT")
            except BaseException:
                try:
                    conn.execute("ROLLBACK")
                except Exception:  # noqa: BLE001 - the connection is gone; reopened next time
                    conn.close()
                raise

    def _identify(self, conn: Any, dest: str, body: dict[str, Any]) -> None:
        """Merge an identify into the profile. An identify older than the one that last set
        the profile (a replay of a past window) only fills in what the profile lacks: its
        properties and preferences never roll newer values back; channels are added either way."""
        now = time.time()
        uid = body["distinct_id"]
        at = body.get("at")
        for note in body.get("notes") or ():
            self.notes.note(dest, uid, note)
        row = conn.execute(
            "SELECT properties, identified_at FROM subscribers WHERE destination = ? AND distinct_id = ?",
            (dest, uid),
        ).fetchone()
        props = _dec.decode(row[0]) if row and row[0] else {}
        # (a delivery routed before identified_at existed has no "at": applied as before)
        older = row is not None and row[1] is not None and at is not None and at < row[1]
        new = body.get("properties") or {}
        if len(props) + len(new) > MAX_PROPERTIES:
            new = _within_limit(uid, props, new)
        merged = {**new, **props} if older else {**props, **new}
        encoded = _enc.encode(merged)
        if len(encoded) > MAX_PROPERTIES_BYTES and row is not None and row[0]:
            log.info("profile %s: properties not changed: they would be %d bytes, over the"
                     " limit of %d", uid, len(encoded), MAX_PROPERTIES_BYTES)
            encoded = row[0].encode() if isinstance(row[0], str) else bytes(row[0])
        prefs = body.get("preferences") or {}
        # an older identify's preferences only fill a preference that is not set
        first, second = ("subscribers", "excluded") if older else ("excluded", "subscribers")
        conn.execute(
            "INSERT INTO subscribers (destination, distinct_id, properties, locale, timezone,"
            " created_at, updated_at, identified_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT(destination, distinct_id) DO UPDATE SET properties = excluded.properties,"
            f" locale = COALESCE({first}.locale, {second}.locale),"
            f" timezone = COALESCE({first}.timezone, {second}.timezone),"
            f" identified_at = COALESCE({first}.identified_at, {second}.identified_at),"
            " updated_at = excluded.updated_at",
            (dest, uid, encoded.decode(), prefs.get("$locale"), prefs.get("$timezone"),
             now, now, at),
        )
        channels = body.get("channels")
        if channels:
            conn.executemany(
                "INSERT OR IGNORE INTO channels (destination, distinct_id, channel, value,"
                " added_at) VALUES (?, ?, ?, ?, ?)",
                [(dest, uid, ch, v, now) for ch, v in _channel_room(conn, dest, uid, channels)],
            )

    def _track(self, conn: Any, dest: str, body: dict[str, Any]) -> None:
        now = time.time()
        uid = body["distinct_id"]
        conn.execute(
            "INSERT INTO subscribers (destination, distinct_id, properties, created_at, updated_at)"
            " VALUES (?, ?, '{}', ?, ?) ON CONFLICT DO NOTHING",
            (dest, uid, now, now),
        )
        props = _enc.encode(body.get("properties") or {}).decode()
        # a replay stores the event as the mapping now makes it (a new prefix, say)
        conn.execute(
            "INSERT INTO events (destination, distinct_id, message_id, event, properties,"
            " timestamp, received_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (destination, message_id) DO UPDATE SET event = excluded.event,"
            " properties = excluded.properties, timestamp = excluded.timestamp",
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
            f" ORDER BY {self._sql_channel_order}", (dest, distinct_id),
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

    def empty(self) -> bool:
        """True when no destination has a subscriber here."""
        return self._reader().execute("SELECT 1 FROM subscribers LIMIT 1").fetchone() is None

    def subscribers(
        self, dest: str, *, query: str | None, after: str | None, limit: int
    ) -> tuple[list[dict[str, Any]], str | None]:
        conn = self._reader()
        sql = "SELECT distinct_id, properties, locale, timezone, updated_at FROM subscribers s" \
              " WHERE destination = ?"
        params: list[Any] = [dest]
        if query:
            if len(query) > MAX_QUERY:  # (SQLite refuses LIKE patterns of 50,000 bytes)
                raise ValueError(f"q is {len(query):,} characters long: at most {MAX_QUERY:,}")
            like = self._sql_like
            # the text as typed: % and _ match themselves, not any text / any character
            sql += (f" AND (distinct_id {like} ? ESCAPE '\\' OR EXISTS (SELECT 1 FROM channels c"
                    " WHERE c.destination = s.destination AND c.distinct_id = s.distinct_id"
                    f" AND c.value {like} ? ESCAPE '\\'))")
            pattern = "%" + _like_escape(query) + "%"
            params += [pattern, pattern]
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
        """The user's events, the last received first (not by their own ``timestamp``)."""
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


def _within_limit(uid: str, props: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """``new`` without the keys that would take the profile past :data:`MAX_PROPERTIES`
    (existing keys are still updated), with a note when some are left out."""
    room = max(0, MAX_PROPERTIES - len(props))
    kept: dict[str, Any] = {}
    dropped = 0
    for key, value in new.items():
        if key in props:
            kept[key] = value
        elif room:
            kept[key] = value
            room -= 1
        else:
            dropped += 1
    if dropped and _first_time(("properties", uid)):
        log.info("profile %s: %d new properties not kept: a profile has at most %d (noted"
                 " once per profile)", uid, dropped, MAX_PROPERTIES)
    return kept


_NOTED: dict[tuple[str, ...], None] = {}
_NOTED_MAX = 10_000


def _first_time(key: tuple[str, ...]) -> bool:
    """Whether a limit reached for ``key`` is noted for the first time in this process (the
    most recent :data:`_NOTED_MAX` keys are remembered): a client sending a new address with
    every identify logged a line for each."""
    if key in _NOTED:
        return False
    if len(_NOTED) >= _NOTED_MAX:
        del _NOTED[next(iter(_NOTED))]
    _NOTED[key] = None
    return True


def _channel_room(conn: Any, dest: str, uid: str,
                  channels: dict[str, list[str]]) -> list[tuple[str, str]]:
    """The ``(channel, value)`` pairs to insert: every value while the channel has room for
    :data:`MAX_CHANNEL_VALUES`, with a note for those left out (a value it has already is
    ignored by the insert)."""
    have: dict[str, set[str]] = {}
    for ch, value in conn.execute(
        "SELECT channel, value FROM channels WHERE destination = ? AND distinct_id = ?",
        (dest, uid),
    ).fetchall():
        have.setdefault(ch, set()).add(value)
    out: list[tuple[str, str]] = []
    for ch, values in channels.items():
        known = have.setdefault(ch, set())
        for v in values:
            if v in known:
                continue
            if len(known) >= MAX_CHANNEL_VALUES:
                if _first_time((dest, uid, ch)):
                    log.info("profile %s: %s value not kept: a channel has at most %d values"
                             " (noted once per channel)", uid, ch, MAX_CHANNEL_VALUES)
                continue
            known.add(v)
            out.append((ch, v))
    return out
