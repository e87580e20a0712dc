"""What every storage backend offers: the ``Database`` API the rest of hookyard uses.

Writes are functions ``fn(conn) -> result`` run by one writer thread in group commits
(:meth:`Storage.write`); reads run ``fn(conn)`` on a per-thread read connection. ``conn`` is an
``sqlite3.Connection`` for SQLite and a :class:`hookyard.storage.pg_conn.PgConnection` for
PostgreSQL; both take ``conn.execute(sql, params)`` with ``?`` placeholders, return rows
addressable by index and by column name, and count changed rows in ``conn.total_changes``.
The few statements that differ between the two are chosen with :func:`is_postgres`.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

SQLITE = "sqlite"
POSTGRESQL = "postgresql"


class Storage(Protocol):
    """The interface of :class:`hookyard.database.Database` and
    :class:`hookyard.storage.postgres.PgDatabase`."""

    dialect: str
    write_timeout: float  # seconds before a write's waiters get StorageUnavailable (0: none)

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def submit(self, fn: Callable[[Any], T], *, durable: bool = True) -> Future[T]: ...

    async def write(self, fn: Callable[[Any], T], *, durable: bool = True) -> T: ...

    def write_sync(self, fn: Callable[[Any], T]) -> T: ...

    def read_sync(self, fn: Callable[[Any], T]) -> T: ...

    async def read(self, fn: Callable[[Any], T]) -> T: ...

    def recent_failure(self, within: float) -> str | None: ...


def is_postgres(conn: Any) -> bool:
    """True for a PostgreSQL connection (an ``sqlite3.Connection`` has no ``dialect``)."""
    return getattr(conn, "dialect", SQLITE) == POSTGRESQL
