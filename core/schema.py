"""The hookyard database schema and its migrations (built with sqlite-utils).

Migrations are numbered functions applied in order; ``PRAGMA user_version`` records the last one
applied, so upgrading hookyard upgrades the database at start-up. Inspect a live database with
the ``sqlite-utils`` CLI, e.g. ``sqlite-utils tables hookyard-data/hookyard.db --counts``.

Tables:
    inbox         every accepted event, raw JSON kept verbatim; one row per (source, message_id)
    inbox_ids     (source, message_id) -> inbox id, for the rows up to dedupe_state.merged_id
                  (the newer ones are in the writer's memory; see hookyard.dedupe)
    dedupe_state  merged_id: how far the inbox's keys are in inbox_ids
    api_log       every ingest request, accepted or refused
    router_state  how far the router has mapped the inbox
    outbox        one row per (event, destination): pending / inflight / done / dead / filtered;
                  found by messageId through inbox_id (no index of its own on message_id);
                  ``plugin``: the plugin that made its request
    attempts      every delivery attempt: outcome, HTTP status, latency, error; by outbox_id
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import sqlite_utils


def _m1_initial(db: sqlite_utils.Database) -> None:
    db["inbox"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "source": str,
            "message_id": str,
            "type": str,
            "user_id": str,
            "anonymous_id": str,
            "event": str,
            "received_at": str,
            "raw": bytes,
            "filtered": str,
        },
        pk="id",
        not_null={"source", "message_id", "type", "received_at", "raw"},
    )
    db["inbox"].create_index(["source", "message_id"], unique=True)  # type: ignore[union-attr]
    db["inbox"].create_index(["source", "received_at"])  # type: ignore[union-attr]
    db["api_log"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "at": str,
            "source": str,
            "method": str,
            "path": str,
            "status": int,
            "events": int,
            "error": str,
            "duration_ms": float,
        },
        pk="id",
    )
    db["router_state"].create({"name": str, "last_inbox_id": int}, pk="name")  # type: ignore[union-attr]
    db["outbox"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "destination": str,
            "inbox_id": int,
            "message_id": str,
            "user_key": str,
            "kind": str,
            "request": bytes,
            "state": str,
            "attempts": int,
            "next_at": float,
            "lease_until": float,
            "lease_owner": str,
            "created_at": float,
            "updated_at": float,
            "last_status": int,
            "last_error": str,
            "response_body": str,
        },
        pk="id",
        not_null={"destination", "state", "created_at"},
        defaults={"attempts": 0, "next_at": 0},
    )
    db["outbox"].create_index(["destination", "state", "id"])  # type: ignore[union-attr]
    db["outbox"].create_index(["message_id"])  # type: ignore[union-attr]
    db["outbox"].create_index(["inbox_id"])  # type: ignore[union-attr]
    db["attempts"].create(  # type: ignore[union-attr]
        {
            "id": int,
            "outbox_id": int,
            "destination": str,
            "message_id": str,
            "attempt": int,
            "outcome": str,
            "http_status": int,
            "latency_ms": float,
            "error": str,
            "at": float,
        },
        pk="id",
    )
    db["attempts"].create_index(["message_id"])  # type: ignore[union-attr]
    db["attempts"].create_index(["outbox_id"])  # type: ignore[union-attr]


def _m2_drop_random_message_id_indexes(db: sqlite_utils.Database) -> None:
    """The outbox and attempts rows are found by messageId through the inbox (its unique
    (source, message_id) index, then ``outbox.inbox_id``, then ``attempts.outbox_id``).

    Their own message_id indexes cost more than they gave: messageIds are random, so each
    index dirtied a page of its own for every delivery row and every attempt (about a quarter
    of the engine's write time in bench/delivery.py)."""
    db.execute("DROP INDEX IF EXISTS idx_outbox_message_id")
    db.execute("DROP INDEX IF EXISTS idx_attempts_message_id")


def _m3_dedupe_table(db: sqlite_utils.Database) -> None:
    """Dedupe by messageId through ``inbox_ids`` instead of a unique index on the inbox.

    The index cost every new event a random page write (see :mod:`hookyard.dedupe`); the
    keys now go into ``inbox_ids`` in large sorted merges, and the writer keeps the newest
    ones (after ``dedupe_state.merged_id``) in memory."""
    db.execute(
        "CREATE TABLE inbox_ids (source TEXT NOT NULL, message_id TEXT NOT NULL,"
        " inbox_id INTEGER NOT NULL, PRIMARY KEY (source, message_id)) WITHOUT ROWID"
    )
    db.execute(
        "INSERT INTO inbox_ids (source, message_id, inbox_id)"
        " SELECT source, message_id, id FROM inbox ORDER BY source, message_id"
    )
    db.execute(
        "CREATE TABLE dedupe_state (id INTEGER PRIMARY KEY CHECK (id = 1),"
        " merged_id INTEGER NOT NULL)"
    )
    db.execute("INSERT INTO dedupe_state (id, merged_id) SELECT 1, coalesce(max(id), 0) FROM inbox")
    db.execute("DROP INDEX IF EXISTS idx_inbox_source_message_id")


def _m4_outbox_plugin(db: sqlite_utils.Database) -> None:
    """Each outbox row names the plugin that made its request (:mod:`hookyard.delivery.
    plugin_changes`); the requests of the rows still to send, made before rows said so, are
    cleared, to be made again by the configured plugin when they are claimed."""
    db.execute("ALTER TABLE outbox ADD COLUMN plugin TEXT")
    db.execute(CLEAR_UNLABELLED)


CLEAR_UNLABELLED = (
    "UPDATE outbox SET request = NULL WHERE state IN ('pending', 'inflight', 'dead')"
    " AND request IS NOT NULL"
)


DEAD_LETTER_RETRIES = (
    "CREATE TABLE IF NOT EXISTS dead_letter_retries (id INTEGER PRIMARY KEY CHECK (id = 1),"
    " serial INTEGER NOT NULL)"
)


def _m5_retrying_index(db: sqlite_utils.Database) -> None:
    """The deliveries waiting for a retry (pending after a failed attempt), by destination:
    the retry depth of /metrics and the dashboard and when a destination's failures began
    are read from them alone (a scrape read every pending row of a backlog, 1.3 s with
    1.77 M; scale audit). A delivery that goes out at its first try never enters it."""
    db.execute("CREATE INDEX IF NOT EXISTS idx_outbox_retrying ON outbox (destination,"
               " updated_at) WHERE state = 'pending' AND attempts > 0")


def _m6_dead_letter_retries(db: sqlite_utils.Database) -> None:
    """A serial that every dead-letter retry bumps (:mod:`hookyard.delivery.dead_letters`):
    a retried row becomes pending again with its old id, below where a worker's scans of new
    rows begin, so a worker that sees the serial change reads its outbox from the first row
    (:mod:`hookyard.delivery.scan`). ``hookyard dlq retry`` runs in another process, which
    cannot wake the server's workers: the user's next event was sent before the retried one."""
    db.execute(DEAD_LETTER_RETRIES)


MIGRATIONS: list[Callable[[sqlite_utils.Database], None]] = [
    _m1_initial,
    _m2_drop_random_message_id_indexes,
    _m3_dedupe_table,
    _m4_outbox_plugin,
    _m5_retrying_index,
    _m6_dead_letter_retries,
]


SCHEMA_VERSION = len(MIGRATIONS)


def version_of(conn: sqlite3.Connection) -> int:
    """The schema version of the database (0: no hookyard tables yet)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection) -> int:
    """Apply pending migrations inside the caller's transaction; return the schema version.
    A database newer than :data:`SCHEMA_VERSION` is refused
    (:func:`hookyard.storage.refuse_newer`)."""
    from .storage import refuse_newer

    version = version_of(conn)
    refuse_newer(version, SCHEMA_VERSION)
    db = sqlite_utils.Database(conn)
    for number, migration in enumerate(MIGRATIONS, start=1):
        if number > version:
            migration(db)
            conn.execute(f"PRAGMA user_version={number}")
            version = number
    # written even when it is unchanged: a database that cannot take writes (a read-only file)
    # stops start-up here, with its error, rather than at the first write after the banner
    conn.execute(f"PRAGMA user_version={version}")
    return version
