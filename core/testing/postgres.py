"""A throw-away PostgreSQL schema for tests and benchmarks.

The server is ``$HOOKYARD_TEST_PG_URL`` (default ``postgresql://postgres@127.0.0.1:5432/test``,
the one this project's machines run). Every use gets its own schema, dropped afterwards, so
test runs never see each other's tables::

    with temp_schema() as storage:            # {"url": ..., "schema": "hy_test_1a2b3c4d"}
        config["storage"] = storage
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/test"


def pg_url() -> str:
    return os.environ.get("HOOKYARD_TEST_PG_URL", DEFAULT_URL)


def pg_unavailable() -> str | None:
    """Why PostgreSQL cannot be used here, or None when a server answers."""
    try:
        import psycopg
    except ImportError as exc:  # pragma: no cover - psycopg is a dependency
        return f"psycopg is not installed: {exc}"
    try:
        with psycopg.connect(pg_url(), connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"no PostgreSQL server reachable at {pg_url()}: {str(exc).strip().splitlines()[0]}"
    return None


def drop_schema(schema: str) -> None:
    import psycopg
    from psycopg import sql

    with psycopg.connect(pg_url(), autocommit=True, connect_timeout=5) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextmanager
def temp_schema(prefix: str = "hy_test") -> Iterator[dict[str, str]]:
    """``[storage]`` settings of a new empty schema, dropped on exit."""
    schema = f"{prefix}_{uuid.uuid4().hex[:8]}"
    try:
        yield {"url": pg_url(), "schema": schema}
    finally:
        drop_schema(schema)
