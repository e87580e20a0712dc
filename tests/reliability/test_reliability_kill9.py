"""kill -9 under load: nothing acknowledged is lost.

Sender threads post events with unique messageIds to a ``hookyard serve`` subprocess as fast as
they can while it forwards them to a loopback fake Segment API. The server is SIGKILLed mid-
stream and restarted on the same data dir and port while the senders keep going. Every event
answered 2xx must be in the inbox and reach the fake at least once; duplicates (deliveries in
flight at the kill, sent again after the restart) are counted and reported.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardProcess
from reliability_kit import (
    EventCounter,
    LoadSender,
    forwarder,
    inbox_ids,
    record_figures,
    toml_config,
    wait_until,
)

WRITE_KEY = "kill9-write-key"
LOAD_BEFORE_KILL = 1500  # acknowledged events before the kill
DELIVERY_TIMEOUT = 20.0


def test_kill9_under_load_loses_no_acknowledged_event(tmp_path: Path) -> None:
    with FakeServer() as fake:
        counter = EventCounter(fake, delay=0.01)  # a peer taking 10 ms: deliveries in flight
        config = toml_config(
            [{"name": "web", "plugin": "segment", "write_key": WRITE_KEY}],
            [forwarder("segment-out", fake.url, ["web"])],
            server={"admin_token": "kill9-admin-token", "log_level": "warning"},
        )
        proc = HookyardProcess(config, tmp_path / "data")
        proc.start()
        sender = LoadSender(proc.url, WRITE_KEY, threads=4, batch=20).start()
        try:
            assert wait_until(lambda: len(sender.acked) >= LOAD_BEFORE_KILL, 15), sender.statuses
            delivered_before = counter.total
            acked_at_kill = len(sender.acked)
            proc.kill()
            killed_at = time.monotonic()
            proc.start()  # same data dir, same port; senders never stopped
            restart_s = time.monotonic() - killed_at
            acked_at_restart = len(sender.acked)
            assert wait_until(lambda: len(sender.acked) >= acked_at_restart + 500, 15)
        finally:
            sender.stop()
        try:
            acked = set(sender.acked)
            missing = counter.wait_for_ids(acked, DELIVERY_TIMEOUT)
            stored = inbox_ids(proc.data_dir)
        finally:
            proc.terminate()

    assert not (acked - stored), f"{len(acked - stored)} acknowledged events not in the inbox"
    assert not missing, f"{len(missing)} acknowledged events never delivered"
    duplicates = sum(c - 1 for c in counter.counts.values() if c > 1)
    unacked_stored = len(stored - acked)  # committed, but the answer was lost in the kill
    record_figures(
        "kill -9 under load",
        acknowledged=len(acked),
        acked_before_kill=acked_at_kill,
        delivered_before_kill=delivered_before,
        lost=0,
        duplicates_delivered=duplicates,
        stored_without_ack=unacked_stored,
        restart_seconds=round(restart_s, 2),
        client_outcomes=dict(sender.statuses),
    )
    print(f"kill -9: {len(acked)} acked, 0 lost, {duplicates} duplicate deliveries, "
          f"{unacked_stored} stored without an ack, restart {restart_s:.2f} s")


def test_a_retry_after_kill9_is_stored_once(tmp_path: Path) -> None:
    """The SQLite dedupe keeps the newest messageIds in the writer's memory (hookyard.dedupe):
    after a SIGKILL they are read back from the inbox, so a client's retry is still a repeat."""
    import httpx

    config = toml_config([{"name": "web", "plugin": "segment", "write_key": WRITE_KEY}], [],
                         server={"admin_token": "kill9-admin-token", "log_level": "warning"})
    proc = HookyardProcess(config, tmp_path / "data")
    batch = {"batch": [{"type": "track", "userId": f"u{i % 7}", "event": "Clicked",
                        "messageId": f"retry-{i}"} for i in range(300)]}
    try:
        proc.start()
        assert httpx.post(f"{proc.url}/v1/batch", json=batch, auth=(WRITE_KEY, "")).status_code == 200
        proc.kill()
        proc.start()
        for _ in range(2):  # the client retries the whole batch (its answer was lost)
            assert httpx.post(f"{proc.url}/v1/batch", json=batch, auth=(WRITE_KEY, "")).status_code == 200
        conn = sqlite3.connect(f"file:{proc.data_dir / 'hookyard.db'}?mode=ro", uri=True, timeout=10)
        try:
            assert conn.execute("SELECT count(*) FROM inbox").fetchone()[0] == 300
        finally:
            conn.close()
    finally:
        proc.terminate()
