"""Storage backends: SQLite (embedded, the default) and PostgreSQL (several nodes).

``[storage] url`` chooses: unset (or ``sqlite:///path``) is a SQLite file, by default
``hookyard.db`` in the data dir; ``postgresql://user:pass@host:5432/db`` is PostgreSQL, with
hookyard's tables in ``[storage] schema``. Both backends offer the same API
(:class:`hookyard.storage.base.Storage`), so everything above storage runs unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..config import StorageSettings
from ..errors import ConfigError
from .base import POSTGRESQL, SQLITE, Storage, is_postgres

__all__ = ["POSTGRESQL", "SQLITE", "Storage", "describe", "is_postgres", "migrate", "open_database"]


def backend(settings: StorageSettings) -> str:
    """``"sqlite"`` or ``"postgresql"``, from ``[storage] url``."""
    url = settings.url or ""
    if not url or url.startswith("sqlite:"):
        return SQLITE
    if url.startswith(("postgresql://", "postgres://")):
        return POSTGRESQL
    raise ConfigError(
        f"storage.url must start with postgresql:// or sqlite:, not {url.split(':', 1)[0]!r}"
    )


def sqlite_path(settings: StorageSettings, data_dir: Path) -> Path:
    """The SQLite file: ``sqlite:///abs/path.db``, ``sqlite:relative.db`` or the default."""
    url = settings.url or ""
    if not url:
        return data_dir / "hookyard.db"
    rest = url[len("sqlite:"):]
    if rest.startswith("///"):
        return Path(rest[2:])
    if rest.startswith("//"):
        raise ConfigError("storage.url: write sqlite:///absolute/path.db or sqlite:relative.db")
    return (data_dir / rest).resolve() if rest else data_dir / "hookyard.db"


def open_database(settings: StorageSettings, data_dir: Path) -> Storage:
    """The configured backend, not started yet."""
    if backend(settings) == POSTGRESQL:
        from .postgres import PgDatabase

        return PgDatabase(settings.url or "", settings.schema)
    from ..database import Database

    return Database(sqlite_path(settings, data_dir), settings.synchronous)


def describe(settings: StorageSettings, data_dir: Path) -> str:
    """Where the data is, for the start-up banner (no password)."""
    if backend(settings) == POSTGRESQL:
        from psycopg.conninfo import conninfo_to_dict

        info = conninfo_to_dict(settings.url or "")
        return (f"PostgreSQL {info.get('host', 'localhost')}:{info.get('port', 5432)}"
                f"/{info.get('dbname', '')} schema {settings.schema}")
    return f"SQLite {sqlite_path(settings, data_dir)}"


def migrate(conn: Any) -> int:
    """Create or upgrade the schema of either backend, in the writer's transaction."""
    if is_postgres(conn):
        from .pg_schema import migrate as pg_migrate

        return pg_migrate(conn)
    from ..schema import migrate as sqlite_migrate

    return sqlite_migrate(conn)
