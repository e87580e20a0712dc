"""Schema versions: a database newer than this hookyard stops start-up (a downgrade would
misread it), and the operator commands never upgrade a database that an old server may still
be running on (an outside audit found both storing duplicate events)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlite_utils
from click.testing import CliRunner
from hookyard.cli import main
from hookyard.errors import SchemaMismatch
from hookyard.profiles.schema import PROFILES_VERSION
from hookyard.profiles.store import ProfileStore
from hookyard.schema import MIGRATIONS, migrate
from hookyard.storage import known_version, schema_version
from storage_kit import make_runtime


def _set_version(conn: Any, version: int) -> None:
    if getattr(conn, "dialect", "") == "postgresql" or hasattr(conn, "raw"):
        conn.raw.execute("INSERT INTO schema_version (version) VALUES (%s)", (version,))
    else:
        conn.execute(f"PRAGMA user_version={version}")


def test_a_database_newer_than_this_hookyard_stops_start_up(
        storage_settings: dict[str, str], tmp_path: Path) -> None:
    shared = storage_settings or {"url": f"sqlite:///{tmp_path / 'shared.db'}"}
    rt = make_runtime(shared, tmp_path / "a")
    newer = rt.db.read_sync(known_version) + 1
    rt.db.write_sync(lambda conn: _set_version(conn, newer))
    rt.close()
    with pytest.raises(SchemaMismatch, match=f"schema is version {newer}, newer than hookyard"):
        make_runtime(shared, tmp_path / "b")


def test_operator_commands_refuse_an_older_database_and_leave_it_as_it_is(tmp_path: Path) -> None:
    data = tmp_path / "data"
    rt = make_runtime({}, data)
    older = rt.db.read_sync(known_version) - 1
    rt.db.write_sync(lambda conn: _set_version(conn, older))
    rt.close()
    (data / "write_key").write_text("test-write-key-0001\n")
    for args in (["dlq", "list"], ["replay", "--source", "default", "--since", "2000-01-01"]):
        result = CliRunner().invoke(main, [*args, "--data-dir", str(data)])
        assert result.exit_code == 1, result.output
        assert f"schema is version {older}, older than this hookyard's" in result.output
        assert "hookyard serve" in result.output
    with sqlite3.connect(data / "hookyard.db") as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == older


def test_an_upgrade_is_logged_and_a_new_database_is_not(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A migration may hold start-up for a while on a large inbox: the operator is told."""
    with caplog.at_level("WARNING", logger="hookyard"):
        make_runtime({}, tmp_path / "new").close()
    assert "database upgraded" not in caplog.text
    old = tmp_path / "old"
    old.mkdir()
    with sqlite3.connect(old / "hookyard.db", isolation_level=None) as conn:
        for number, migration in enumerate(MIGRATIONS[:-1], start=1):  # as the last release left it
            migration(sqlite_utils.Database(conn))
            conn.execute(f"PRAGMA user_version={number}")
    with caplog.at_level("WARNING", logger="hookyard"):
        rt = make_runtime({}, old)
    assert rt.db.read_sync(schema_version) == len(MIGRATIONS)
    assert f"database upgraded from schema version {len(MIGRATIONS) - 1} to {len(MIGRATIONS)}" in caplog.text
    rt.close()


def test_the_upgrade_to_schema_4_clears_the_requests_still_to_send(tmp_path: Path) -> None:
    """Rows from before outbox rows named their plugin may have been made by another plugin
    than the one configured after the upgrade (an upgrade and a plugin change in one restart
    sent Novu triggers to Segment; upgrade re-check): their requests are made again."""
    with sqlite3.connect(tmp_path / "hookyard.db", isolation_level=None) as conn:
        for number, migration in enumerate(MIGRATIONS[:3], start=1):
            migration(sqlite_utils.Database(conn))
            conn.execute(f"PRAGMA user_version={number}")
        for state in ("pending", "inflight", "dead", "done"):
            conn.execute("INSERT INTO outbox (destination, state, request, created_at)"
                         " VALUES ('crm', ?, x'7b7d', 0)", (state,))
        migrate(conn)
        rows = dict(conn.execute("SELECT state, request FROM outbox").fetchall())
        assert rows == {"pending": None, "inflight": None, "dead": None, "done": b"{}"}
        assert conn.execute("SELECT plugin FROM outbox").fetchall() == [(None,)] * 4


def test_a_profiles_db_newer_than_this_hookyard_stops_start_up(tmp_path: Path) -> None:
    path = tmp_path / "profiles.db"
    ProfileStore.sqlite(path).close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == PROFILES_VERSION
        conn.execute(f"PRAGMA user_version={PROFILES_VERSION + 1}")
    with pytest.raises(SchemaMismatch, match="newer than hookyard"):
        ProfileStore.sqlite(path)


def test_a_new_database_file_is_private(tmp_path: Path) -> None:
    """It holds people's data: owner-only, and so are the WAL and shared-memory files SQLite
    makes beside it (they copy its mode). A file that exists keeps the mode it has."""
    from hookyard.database import connect

    conn = connect(tmp_path / "new.db")
    conn.execute("CREATE TABLE t (x)")
    for name in ("new.db", "new.db-wal", "new.db-shm"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o600, name
    conn.close()
    shared = tmp_path / "shared.db"
    sqlite3.connect(shared).close()
    shared.chmod(0o640)
    connect(shared).close()
    assert shared.stat().st_mode & 0o777 == 0o640


def test_stop_closes_every_threads_read_connection(tmp_path: Path) -> None:
    """Python 3.13 warns of a connection left to the garbage collector; a thread that reads
    after stop() gets a new one."""
    import threading

    from hookyard.database import Database

    db = Database(tmp_path / "r.db")
    seen: list[sqlite3.Connection] = []
    worker = threading.Thread(target=lambda: seen.append(db.reader()))
    worker.start()
    worker.join()
    mine = db.reader()
    db.stop()
    for conn in (mine, seen[0]):
        with pytest.raises(sqlite3.ProgrammingError, match="closed"):
            conn.execute("SELECT 1")
    assert db.read_sync(lambda c: c.execute("SELECT 1").fetchone()[0]) == 1
    db.stop()


def test_profile_tables_newer_than_this_hookyard_stop_start_up_on_postgresql() -> None:
    """Left from the PostgreSQL audit: the profile tables there had no version, so a newer
    hookyard's changes to them could not be told from an old schema."""
    from hookyard.testing.postgres import pg_unavailable, pg_url, temp_schema

    if pg_unavailable():
        pytest.skip(str(pg_unavailable()))
    import psycopg

    with temp_schema() as settings, psycopg.connect(pg_url(), autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{settings["schema"]}"')  # as hookyard's migration does
        ProfileStore.postgres(settings["url"], settings["schema"]).close()
        table = f'"{settings["schema"]}".profile_version'
        assert conn.execute(f"SELECT version FROM {table}").fetchall() == [(PROFILES_VERSION,)]
        ProfileStore.postgres(settings["url"], settings["schema"]).close()  # opened again
        assert conn.execute(f"SELECT count(*) FROM {table}").fetchone() == (1,)
        conn.execute(f"UPDATE {table} SET version = {PROFILES_VERSION + 1}")
        with pytest.raises(SchemaMismatch, match="newer than hookyard"):
            ProfileStore.postgres(settings["url"], settings["schema"])
