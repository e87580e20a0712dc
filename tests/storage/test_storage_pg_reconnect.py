"""PostgreSQL connections lost (a restart, a pooler's idle timeout): the node reconnects, and a
read or write that found a dead connection runs again on a new one."""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
import pytest
from hookyard.errors import StorageUnavailable
from hookyard.inbox import event_rows, insert_events
from hookyard.runtime import Runtime
from hookyard.storage.postgres import refused_for_good
from hookyard.testing import sample_track
from hookyard.times import now_iso
from psycopg.conninfo import conninfo_to_dict
from storage_kit import log_entry, make_runtime, parsed


def kill_connections(rt: Runtime) -> int:
    """Terminate this runtime's server sessions (they are named after its schema)."""
    settings = rt.config.storage
    with psycopg.connect(settings.url or "", autocommit=True) as admin:
        rows = admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
            (f"hookyard {settings.schema}"[:63],),
        ).fetchall()
    return len(rows)


def test_lost_connections_are_replaced(runtime: Runtime) -> None:
    if runtime.db.dialect != "postgresql":
        pytest.skip("PostgreSQL connections only")
    rows = event_rows("web", [parsed(sample_track(messageId="a"))], now_iso())
    runtime.db.write_sync(lambda c: insert_events(c, rows, log_entry(1)))
    runtime.db.read_sync(lambda c: c.execute("SELECT 1").fetchone())
    assert kill_connections(runtime) >= 2  # the writer and this thread's reader

    def count() -> int:
        return int(runtime.db.read_sync(lambda c: c.execute("SELECT count(*) FROM inbox").fetchone()[0]))

    # found by an outside audit: the first read and write after a lost connection were 503s
    # (behind a pooler's idle timeout, the first request after every lull); nothing had run on
    # the dead connection, so both go to a new one
    assert count() == 1
    more = event_rows("web", [parsed(sample_track(messageId="b"))], now_iso())
    assert runtime.db.write_sync(lambda c: insert_events(c, more, log_entry(1))) == 1
    assert count() == 2
    assert kill_connections(runtime) >= 2
    assert runtime.db.write_sync(lambda c: insert_events(
        c, event_rows("web", [parsed(sample_track(messageId="c"))], now_iso()), log_entry(1))) == 1
    assert count() == 3


def test_a_write_that_changes_nothing_does_not_end_an_outage(runtime: Runtime) -> None:
    """Found by an outside audit: on a read-only PostgreSQL every /readyz probe (SELECT 1)
    ended the outage and the next insert began one again: 42 log lines in 20 s, and /readyz
    said ready every 10 s. As on SQLite, only a group that changed a row ends it."""
    db = runtime.db
    db._went_down("storage unavailable: test outage")
    assert db._outage is not None
    db.write_sync(lambda c: c.execute("SELECT 1").fetchone())
    assert db._outage is not None
    db.last_unavailable = (db.last_unavailable or (0.0, ""))[0] - 60, "storage unavailable: old"
    assert db.recent_failure(10) == "storage unavailable: old"  # still out: /readyz says so
    rows = event_rows("web", [parsed(sample_track(messageId="after"))], now_iso())
    db.write_sync(lambda c: insert_events(c, rows, log_entry(1)))
    assert db._outage is None
    assert db.recent_failure(10) is None  # /readyz is ready at once, not 10 s later


def moved(url: str, port: int | None = None, path: str | None = None) -> str:
    """``url`` (postgresql://...) sent to 127.0.0.1:``port`` or to database ``path``."""
    parts = urlsplit(url)
    if port is not None:
        user = parts.netloc.rpartition("@")[0]
        parts = parts._replace(netloc=f"{user}@127.0.0.1:{port}" if user else f"127.0.0.1:{port}")
    return urlunsplit(parts._replace(path=path) if path is not None else parts)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def forward_later(port: int, target: tuple[str, int], delay: float, stop: threading.Event) -> None:
    """After ``delay`` s, accept on ``port`` and pass every connection on to ``target``: a
    PostgreSQL server that comes up while hookyard waits for it."""
    time.sleep(delay)
    with socket.create_server(("127.0.0.1", port)) as server:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            upstream = socket.create_connection(target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pipe, args=(a, b), daemon=True).start()


def pipe(a: socket.socket, b: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := a.recv(65536):
            b.sendall(data)
    with contextlib.suppress(OSError):
        b.shutdown(socket.SHUT_WR)


def test_start_up_waits_for_a_server_not_up_yet(storage_settings: dict[str, str], tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """A database container started beside hookyard's takes a few seconds to take connections:
    serve and worker wait for it ([storage] connect_wait_seconds) instead of exiting at once."""
    if not storage_settings:
        pytest.skip("PostgreSQL only")
    caplog.set_level(logging.INFO, "hookyard.database")
    real = conninfo_to_dict(storage_settings["url"])
    port, stop = free_port(), threading.Event()
    later = threading.Thread(target=forward_later, daemon=True, args=(
        port, (str(real.get("host", "127.0.0.1")), int(real.get("port", 5432))), 0.8, stop))
    later.start()
    try:
        url = moved(storage_settings["url"], port=port)
        rt = make_runtime({**storage_settings, "url": url, "connect_wait_seconds": 20},
                          tmp_path / "node")
        try:
            assert rt.db.read_sync(lambda c: c.execute("SELECT 1").fetchone()[0]) == 1
        finally:
            rt.close()
    finally:
        stop.set()
    assert "waiting for it up to" in caplog.text and "PostgreSQL answered after" in caplog.text


def test_start_up_gives_up_after_its_wait(storage_settings: dict[str, str], tmp_path: Path) -> None:
    if not storage_settings:
        pytest.skip("PostgreSQL only")
    url = moved(storage_settings["url"], port=free_port())
    began = time.monotonic()
    with pytest.raises(StorageUnavailable, match=r"(?s)Connection refused.*waited 1 s"):
        make_runtime({**storage_settings, "url": url, "connect_wait_seconds": 1.2}, tmp_path / "n")
    assert 1.1 < time.monotonic() - began < 5


def test_start_up_does_not_wait_for_a_refusal_for_good(storage_settings: dict[str, str],
                                                       tmp_path: Path) -> None:
    """A wrong database name (or password, or role) will not mend by waiting: exit at once."""
    if not storage_settings:
        pytest.skip("PostgreSQL only")
    url = moved(storage_settings["url"], path="/hookyard_no_such_database")
    began = time.monotonic()
    with pytest.raises(StorageUnavailable, match="does not exist"):
        make_runtime({**storage_settings, "url": url, "connect_wait_seconds": 30}, tmp_path / "n")
    assert time.monotonic() - began < 5


@pytest.mark.parametrize(("text", "for_good"), [
    ('connection to server at "db", port 5432 failed: Connection refused', False),
    ('connection to server at "db" failed: FATAL:  the database system is starting up', False),
    ('connection to server at "db" failed: FATAL:  sorry, too many clients already', False),
    ('connection to server at "db" failed: FATAL:  password authentication failed for user "x"', True),
    ('connection to server at "db" failed: FATAL:  role "x" does not exist', True),
])
def test_which_refusals_are_waited_for(text: str, for_good: bool) -> None:
    assert refused_for_good(StorageUnavailable(text)) is for_good
