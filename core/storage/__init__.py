"""Storage backends: SQLite (embedded, the default) and PostgreSQL (several nodes).

``[storage] url`` chooses: unset (or ``sqlite:///path``) is a SQLite file, by default
``hookyard.db`` in the data dir; ``postgresql://user:pass@host:5432/db`` is PostgreSQL, with
hookyard's tables in ``[storage] schema``. Both backends offer the same API
(:class:`hookyard.storage.base.Storage`), so everything above storage runs unchanged.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..config import StorageSettings
from ..errors import ConfigError, SchemaMismatch
from .base import POSTGRESQL, SQLITE, Storage, is_postgres

__all__ = ["POSTGRESQL", "SQLITE", "Storage", "check_schema", "check_url", "describe", "is_postgres", "migrate",
           "open_database", "refuse_newer", "schema_version"]


def backend(settings: StorageSettings) -> str:
    """``"sqlite"`` or ``"postgresql"``, from ``[storage] url``."""
    url = settings.url or ""
    if not url or url.startswith("sqlite:"):
        return SQLITE
    if url.startswith(("postgresql://", "postgres://")):
        return POSTGRESQL
    start = url.split(":", 1)[0]
    if "=" in start or " " in start:  # libpq's "host=... password=...": not echoed
        raise ConfigError("storage.url must be a URL (postgresql://user:password@host:5432/dbname"
                          " or sqlite:path), not a key=value connection string")
    raise ConfigError(
        f"storage.url must start with postgresql:// or sqlite:, not {start[:40]!r}"
    )


_SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
_PG_NAME_BYTES = 63  # PostgreSQL cuts longer identifiers (NAMEDATALEN - 1)


def check_url(settings: StorageSettings) -> None:
    """:class:`ConfigError` for a ``[storage]`` that cannot work, found without connecting (as
    ``check-config`` must): a scheme other than sqlite/postgresql, a PostgreSQL URL that libpq
    would refuse (its syntax, a port that is not 1-65535, an unknown ``sslmode``) or a schema
    name PostgreSQL would cut short. The password never appears in the message."""
    if backend(settings) != POSTGRESQL:
        return
    import psycopg
    from psycopg.conninfo import conninfo_to_dict

    url = settings.url or ""
    try:
        info = conninfo_to_dict(url)
    except psycopg.Error as exc:
        reason = str(exc).strip()
        userinfo = url.split("://", 1)[-1].split("/", 1)[0].rpartition("@")[0]
        secrets = {userinfo.partition(":")[2], *re.findall(r"[?&]password=([^&]*)", url)}
        for secret in sorted(secrets - {""}, key=len, reverse=True):
            reason = reason.replace(secret, "***")
        raise ConfigError(f"storage.url is not a PostgreSQL URL libpq accepts: {reason}") from None
    for port in str(info.get("port") or "").split(","):
        if port and not (port.isdigit() and 1 <= int(port) <= 65535):
            raise ConfigError(f"storage.url: port {port!r} is not a number from 1 to 65535")
    sslmode = info.get("sslmode")
    if sslmode is not None and sslmode not in _SSLMODES:
        raise ConfigError(f"storage.url: sslmode {sslmode!r} is not one of {', '.join(_SSLMODES)}")
    schema_bytes = len(settings.schema.encode())
    if schema_bytes > _PG_NAME_BYTES:
        raise ConfigError(f"storage.schema is {schema_bytes} bytes long:"
                          f" PostgreSQL names hold at most {_PG_NAME_BYTES} (a longer one is cut"
                          " short, and two long names would share one schema)")


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


def _schema_module(conn: Any) -> Any:
    """The schema module of ``conn``'s backend: :mod:`hookyard.schema` (SQLite) or
    :mod:`hookyard.storage.pg_schema`, each with ``migrate``, ``version_of`` and
    ``SCHEMA_VERSION``."""
    if is_postgres(conn):
        from . import pg_schema

        return pg_schema
    from .. import schema

    return schema


def migrate(conn: Any) -> int:
    """Create or upgrade the schema of either backend, in the writer's transaction."""
    return int(_schema_module(conn).migrate(conn))


def schema_version(conn: Any) -> int:
    """The schema version of the database behind ``conn`` (0: no hookyard tables yet)."""
    return int(_schema_module(conn).version_of(conn))


def known_version(conn: Any) -> int:
    """The schema version this hookyard writes, for ``conn``'s backend."""
    return int(_schema_module(conn).SCHEMA_VERSION)


def refuse_newer(found: int, known: int, what: str = "the database's schema") -> None:
    """:class:`SchemaMismatch` when ``what`` (the database's schema, the profile store's) of
    version ``found`` is newer than the ``known`` one: a newer hookyard upgraded it, and this
    one would misread it (an older build once stored duplicates on a database whose messageId
    index had moved)."""
    if found > known:
        from .. import __version__

        raise SchemaMismatch(
            f"{what} is version {found}, newer than hookyard {__version__} knows"
            f" ({known}): a newer hookyard has upgraded it. Downgrading is not supported: run"
            " the newer hookyard, or restore the copy of the data made before the upgrade"
        )


def check_schema(conn: Any) -> int:
    """For commands that must not upgrade the database (``replay``, ``dlq``, ``preview``: the
    old server may still be running on it): its schema version, or :class:`SchemaMismatch`
    when it is not the one this hookyard knows."""
    found, known = schema_version(conn), known_version(conn)
    refuse_newer(found, known)
    if found == 0:
        raise SchemaMismatch("the database has no hookyard tables yet: start `hookyard serve`"
                             " on it first")
    if found < known:
        raise SchemaMismatch(
            f"the database's schema is version {found}, older than this hookyard's"
            f" ({known}): upgrade it by starting `hookyard serve` (or `hookyard worker`)"
            " of this version, once the old one is stopped. This command does not upgrade it: a"
            " hookyard of the old version may still be running on it"
        )
    return found
