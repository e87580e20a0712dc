"""hookyard's tables in PostgreSQL, and their migrations.

The same tables as the SQLite schema (:mod:`hookyard.schema`), in the configured schema
(``[storage] schema``, created if missing), with what several nodes need:

* ``inbox.routed``: the router marks the events it has mapped instead of keeping an id cursor
  (ids from a sequence commit out of order across nodes: a cursor would skip an event whose id
  was taken by a transaction that committed later); a partial index keeps the unrouted
  events cheap to find; ``router_lease`` says which node routes at the moment;
* partial indexes over the live outbox rows (pending / inflight) that the delivery workers
  scan and claim with ``FOR UPDATE SKIP LOCKED``.

Migrations are numbered lists of statements; ``schema_version`` records the last one applied.
They run at start-up under a transaction-level advisory lock, so nodes starting together
migrate once.
"""

from __future__ import annotations

from typing import Any

from psycopg import sql as pgsql

from . import refuse_newer

M1_INITIAL = [
    """CREATE TABLE inbox (
        id bigserial PRIMARY KEY,
        source text NOT NULL,
        message_id text NOT NULL,
        type text NOT NULL,
        user_id text,
        anonymous_id text,
        event text,
        received_at text NOT NULL,
        raw bytea NOT NULL,
        filtered text,
        routed boolean NOT NULL DEFAULT false
    )""",
    "CREATE UNIQUE INDEX inbox_source_message_id ON inbox (source, message_id)",
    "CREATE INDEX inbox_source_received_at ON inbox (source, received_at)",
    "CREATE INDEX inbox_unrouted ON inbox (id) WHERE NOT routed",
    """CREATE TABLE api_log (
        id bigserial PRIMARY KEY,
        at text,
        source text,
        method text,
        path text,
        status integer,
        events integer,
        error text,
        duration_ms double precision
    )""",
    "CREATE TABLE router_state (name text PRIMARY KEY, last_inbox_id bigint)",
    "CREATE TABLE router_lease (name text PRIMARY KEY, owner text, lease_until double precision)",
    "INSERT INTO router_lease (name, owner, lease_until) VALUES ('main', NULL, 0)",
    """CREATE TABLE outbox (
        id bigserial PRIMARY KEY,
        destination text NOT NULL,
        inbox_id bigint,
        message_id text,
        user_key text,
        kind text,
        request bytea,
        state text NOT NULL,
        attempts integer NOT NULL DEFAULT 0,
        next_at double precision NOT NULL DEFAULT 0,
        lease_until double precision,
        lease_owner text,
        created_at double precision NOT NULL,
        updated_at double precision,
        last_status integer,
        last_error text,
        response_body text
    )""",
    "CREATE INDEX outbox_dead ON outbox (destination, id) WHERE state = 'dead'",
    "CREATE INDEX outbox_live ON outbox (destination, id) WHERE state IN ('pending', 'inflight')",
    "CREATE INDEX outbox_live_user ON outbox (destination, user_key, id)"
    " WHERE state IN ('pending', 'inflight')",
    "CREATE INDEX outbox_message_id ON outbox (message_id)",
    "CREATE INDEX outbox_inbox_id ON outbox (inbox_id)",
    """CREATE TABLE attempts (
        id bigserial PRIMARY KEY,
        outbox_id bigint,
        destination text,
        message_id text,
        attempt integer,
        outcome text,
        http_status integer,
        latency_ms double precision,
        error text,
        at double precision
    )""",
    "CREATE INDEX attempts_message_id ON attempts (message_id)",
    "CREATE INDEX attempts_outbox_id ON attempts (outbox_id)",
]

# Deliveries and attempts are found by messageId through the inbox (as on SQLite): their own
# indexes on random messageIds cost a page write per row and served no query any more.
M2_DROP_RANDOM_MESSAGE_ID_INDEXES = [
    "DROP INDEX IF EXISTS outbox_message_id",
    "DROP INDEX IF EXISTS attempts_message_id",
]

# The users with a delivery under lease (``pg_queue.inflight_keys`` and ``SKIP_LEASED``, every
# dispatch round): without it each round read every pending row of the destination, which with
# a backlog of 170,000 rows took ~0.2 s per round and held delivery under 200 events/s (an
# outside audit); with it, the few inflight rows only (0.03 ms).
M3_INFLIGHT_INDEX = [
    "CREATE INDEX IF NOT EXISTS outbox_inflight ON outbox (destination, user_key)"
    " WHERE state = 'inflight'",
]

# The plugin that made each outbox row's request (hookyard.delivery.plugin_changes); the
# requests of the rows still to send from before are made again when claimed.
M4_OUTBOX_PLUGIN = [
    "ALTER TABLE outbox ADD COLUMN IF NOT EXISTS plugin text",
    "UPDATE outbox SET request = NULL WHERE state IN ('pending', 'inflight', 'dead')"
    " AND request IS NOT NULL",
]

# The deliveries waiting for a retry (pending after a failed attempt): the retry depth of
# /metrics and the dashboard, and when a destination's failures began, read from them alone
# (a scrape read every pending row of a backlog: 1.3 s with 1.77 M; scale audit). A delivery
# that goes out at its first try never enters it.
M5_RETRYING_INDEX = [
    "CREATE INDEX IF NOT EXISTS outbox_retrying ON outbox (destination, updated_at)"
    " WHERE state = 'pending' AND attempts > 0",
]

# A serial that every dead-letter retry bumps: a retried row is pending again with its old id,
# below where a worker's scans of new rows begin, so a worker that sees it change reads its
# outbox from the first row (hookyard.delivery.scan).
M6_DEAD_LETTER_RETRIES = [
    "CREATE TABLE IF NOT EXISTS dead_letter_retries (id integer PRIMARY KEY CHECK (id = 1),"
    " serial bigint NOT NULL)",
]

MIGRATIONS: list[list[str]] = [
    M1_INITIAL, M2_DROP_RANDOM_MESSAGE_ID_INDEXES, M3_INFLIGHT_INDEX, M4_OUTBOX_PLUGIN,
    M5_RETRYING_INDEX, M6_DEAD_LETTER_RETRIES,
]


SCHEMA_VERSION = len(MIGRATIONS)


def version_of(conn: Any) -> int:
    """The schema version of hookyard's tables in ``conn.schema`` (0: none yet)."""
    if conn.raw.execute("SELECT to_regclass('schema_version')").fetchone()[0] is None:
        return 0
    row = conn.raw.execute("SELECT max(version) FROM schema_version").fetchone()
    return int(row[0] or 0) if row else 0


def migrate(conn: Any) -> int:
    """Create the schema and apply pending migrations inside the caller's transaction;
    return the schema version. ``conn`` is a :class:`~hookyard.storage.pg_conn.PgConnection`."""
    raw = conn.raw
    raw.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"hookyard.migrate.{conn.schema}",))
    raw.execute(pgsql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(pgsql.Identifier(conn.schema)))
    raw.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
    version = version_of(conn)
    refuse_newer(version, SCHEMA_VERSION)
    for number, statements in enumerate(MIGRATIONS, start=1):
        if number > version:
            for statement in statements:
                raw.execute(statement)
            raw.execute("INSERT INTO schema_version (version) VALUES (%s)", (number,))
            version = number
    return version
