"""A psycopg 3 connection that takes the SQL hookyard writes for SQLite.

:class:`PgConnection` wraps a psycopg connection so that the storage code shared by both
backends runs unchanged:

* ``?`` placeholders become ``%s`` (and a literal ``%`` becomes ``%%``), outside quotes only;
* ``INSERT OR IGNORE INTO ...`` becomes ``INSERT INTO ... ON CONFLICT DO NOTHING``: a
  repeated key is skipped by the unique constraint, as in SQLite;
* rows are :class:`Row` tuples that also answer ``row["column"]``, ``row.keys()`` and
  ``dict(row)``, like ``sqlite3.Row``;
* ``total_changes`` counts the rows changed by INSERT/UPDATE/DELETE on this connection;
* a NUL character in a text parameter (which PostgreSQL text cannot hold, SQLite can) is
  stored as U+FFFD, so an event SQLite accepts is accepted here too (its raw JSON, kept as
  bytes, is untouched).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from functools import lru_cache
from typing import Any

import psycopg
from psycopg.rows import RowMaker

from .base import POSTGRESQL


@lru_cache(maxsize=1024)
def translate(sql: str) -> str:
    """SQLite-flavoured SQL as psycopg wants it (see the module docstring)."""
    out: list[str] = []
    quote: str | None = None
    for ch in sql:
        if quote is not None:
            if ch == quote:
                quote = None
        elif ch in ("'", '"'):
            quote = ch
        elif ch == "?":
            out.append("%s")
            continue
        out.append("%%" if ch == "%" else ch)
    text = "".join(out)
    match = _OR_IGNORE.match(text)
    if match and "ON CONFLICT" not in text.upper():
        text = "INSERT INTO" + text[match.end():].rstrip().rstrip(";") + " ON CONFLICT DO NOTHING"
    return text


_OR_IGNORE = re.compile(r"\s*INSERT\s+OR\s+IGNORE\s+INTO", re.IGNORECASE)


class Row(tuple):  # type: ignore[type-arg]
    """A result row: a tuple that also answers ``row["column"]`` (like ``sqlite3.Row``)."""

    __slots__ = ()
    _index: dict[str, int] = {}
    _names: tuple[str, ...] = ()

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            return tuple.__getitem__(self, self._index[key])
        return tuple.__getitem__(self, key)

    def keys(self) -> list[str]:
        return list(self._names)


@lru_cache(maxsize=512)
def _row_class(names: tuple[str, ...]) -> type[Row]:
    return type("Row", (Row,), {"__slots__": (), "_index": {n: i for i, n in enumerate(names)},
                                "_names": names})


def _row_factory(cursor: psycopg.Cursor[Any]) -> RowMaker[Row]:
    names = tuple(d.name for d in cursor.description or ())
    cls = _row_class(names)
    return cls


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd") if "\x00" in value else value
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _params(params: Sequence[Any] | None) -> tuple[Any, ...]:
    if not params:
        return ()
    return tuple(_clean(v) for v in params)


_CHANGES = ("INSERT", "UPDATE", "DELETE", "MERGE")


class PgConnection:
    """An open PostgreSQL connection that speaks the SQLite-flavoured API (see module doc)."""

    dialect = POSTGRESQL

    def __init__(self, raw: psycopg.Connection[Any], schema: str) -> None:
        self.raw = raw
        self.schema = schema
        self.total_changes = 0
        raw.row_factory = _row_factory  # type: ignore[assignment]

    def execute(self, sql: str, params: Sequence[Any] | None = None) -> psycopg.Cursor[Row]:
        cur: psycopg.Cursor[Row] = self.raw.execute(translate(sql), _params(params))  # type: ignore[assignment]
        self._count(cur)
        return cur

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> psycopg.Cursor[Row]:
        cur: psycopg.Cursor[Row] = self.raw.cursor()  # type: ignore[assignment]
        batch = [_params(r) for r in rows]
        if batch:
            cur.executemany(translate(sql), batch)
            self._count(cur)
        return cur

    def _count(self, cur: psycopg.Cursor[Any]) -> None:
        status = cur.statusmessage or ""
        if status.startswith(_CHANGES) and cur.rowcount > 0:
            self.total_changes += cur.rowcount

    @property
    def closed(self) -> bool:
        return bool(self.raw.closed)

    def close(self) -> None:
        self.raw.close()
