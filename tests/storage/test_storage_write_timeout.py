"""A database that stops answering: writes give up after ``[storage] write_timeout_seconds``
with "storage unavailable" (503) instead of hanging (an outside audit: PostgreSQL behind a
proxy that swallowed its traffic held every ingest request and /readyz for 150 s)."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hookyard.delivery.router import touch_cursor
from hookyard.errors import StorageUnavailable
from hookyard.runtime import Runtime
from hookyard.testing.postgres import pg_unavailable, pg_url, temp_schema
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from storage_kit import make_runtime


def test_a_stuck_write_fails_its_waiters_and_new_writes_until_it_ends(runtime: Runtime) -> None:
    db = runtime.db
    db.write_timeout = 0.5
    release = threading.Event()
    stuck = db.submit(lambda conn: release.wait(10))  # the writer is held
    time.sleep(0.05)
    queued = db.submit(lambda conn: conn.execute("SELECT 1").fetchone())
    started = time.monotonic()
    with pytest.raises(StorageUnavailable, match="has not finished in 0.5 s"):
        stuck.result(timeout=5)
    with pytest.raises(StorageUnavailable):
        queued.result(timeout=5)  # queued behind it: failed too, never run
    assert time.monotonic() - started < 2
    with pytest.raises(StorageUnavailable):
        db.write_sync(lambda conn: 1)  # at once while the writer is still held
    assert db.recent_failure(10) is not None
    release.set()
    deadline = time.monotonic() + 5
    while True:  # the writer ends the held group, then takes writes again
        try:
            assert db.write_sync(lambda conn: conn.execute("SELECT 2").fetchone()[0]) == 2
            break
        except StorageUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    # /readyz's probe alone does not end it while other writes failed in the last 10 s (on a
    # full disk its one-row update fits where ingest's inserts do not: resources audit)
    db.write_sync(touch_cursor)
    assert db.recent_failure(0.0) is not None
    db.write_sync(lambda conn: touch_cursor(conn))  # any other write that changes a row does
    assert db.recent_failure(0.0) is None


def held_writer(db: Any, write_timeout: float, hold: float) -> threading.Event:
    """The writer held by a job until the returned event is set (at most ``hold`` s), that
    job already failed as storage unavailable after ``write_timeout``."""
    db.write_timeout = write_timeout
    release = threading.Event()
    stuck = db.submit(lambda conn: release.wait(hold))
    with pytest.raises(StorageUnavailable):
        stuck.result(timeout=5)
    return release


def test_stopping_does_not_wait_for_a_stuck_writer(runtime: Runtime) -> None:
    """Found by an outside audit: SIGTERM behind a hung PostgreSQL took 48 s (the writer was
    waited for 30 s), past systemd's 30 s stop timeout."""
    db = runtime.db
    release = held_writer(db, 0.5, 20)
    started = time.monotonic()
    try:
        db.stop()
        assert time.monotonic() - started < 3
    finally:
        release.set()


def test_a_slow_migration_is_not_cut_short(runtime: Runtime) -> None:
    """Migrations run with no time limit (an index on a large outbox may take minutes)."""
    assert runtime.db.write_timeout == runtime.config.storage.write_timeout_seconds == 10


class Proxy:
    """A TCP proxy to PostgreSQL that can swallow the traffic (a hung server or a network
    partition: the connection stays open, nothing answers)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.swallow = threading.Event()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.target)
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        held: list[bytes] = []
        src.settimeout(0.05)  # to pass on what was held once the traffic flows again
        while True:
            try:
                data = src.recv(65536)
                if not data:
                    return
                held.append(data)
            except TimeoutError:
                pass
            except OSError:
                return
            while held and not self.swallow.is_set():
                try:
                    dst.sendall(held.pop(0))
                except OSError:
                    return

    def close(self) -> None:
        self.sock.close()


@contextmanager
def proxied_runtime(tmp_path: Path) -> Iterator[tuple[Runtime, Proxy]]:
    reason = pg_unavailable()
    if reason:
        pytest.skip(reason)
    info = conninfo_to_dict(pg_url())
    proxy = Proxy(str(info.get("host") or "127.0.0.1"), int(info.get("port") or 5432))
    with temp_schema() as settings:
        url = make_conninfo(settings["url"], host="127.0.0.1", port=str(proxy.port))
        rt = make_runtime({**settings, "url": _as_url(url)}, tmp_path)
        try:
            yield rt, proxy
        finally:
            proxy.swallow.clear()
            rt.close()
            proxy.close()


def _as_url(conninfo: str) -> str:
    info: dict[str, Any] = conninfo_to_dict(conninfo)
    user = f"{info.pop('user')}@" if "user" in info else ""
    host, port, db = info.pop("host"), info.pop("port"), info.pop("dbname", "")
    query = "&".join(f"{k}={v}" for k, v in info.items())
    return f"postgresql://{user}{host}:{port}/{db}" + (f"?{query}" if query else "")


def test_postgresql_that_stops_answering_is_503_then_recovers(tmp_path: Path) -> None:
    with proxied_runtime(tmp_path) as (rt, proxy):
        rt.db.write_timeout = 1.0
        write: Callable[[], Any] = lambda: rt.db.write_sync(  # noqa: E731
            lambda conn: conn.execute("SELECT 1").fetchone()[0])
        assert write() == 1
        proxy.swallow.set()
        started = time.monotonic()
        with pytest.raises(StorageUnavailable, match="has not finished in 1 s"):
            write()
        assert time.monotonic() - started < 4
        with pytest.raises(StorageUnavailable):
            write()  # at once
        proxy.swallow.clear()  # the held statement's answer arrives: the writer goes on
        deadline = time.monotonic() + 10
        while True:
            try:
                assert write() == 1
                break
            except StorageUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.1)


def test_an_idle_server_is_ready_again_by_its_probe_once_no_write_failed_lately(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The readiness probe ends an outage only after PROBE_QUIET_SECONDS without another
    failed write: an idle server (no traffic while unready) still becomes ready by itself."""
    from hookyard import group_commit

    monkeypatch.setattr(group_commit, "PROBE_QUIET_SECONDS", 0.4)
    db = runtime.db
    held_writer(db, 0.3, 10).set()
    deadline = time.monotonic() + 5
    while True:  # the writer takes writes again (a read-only job: no outage ends)
        try:
            db.write_sync(lambda conn: conn.execute("SELECT 1").fetchone())
            break
        except StorageUnavailable:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    db.write_sync(touch_cursor)
    assert db.recent_failure(0.0) is not None  # failed 0.4 s ago at most: still unready
    time.sleep(0.45)
    db.write_sync(touch_cursor)
    assert db.recent_failure(0.0) is None
