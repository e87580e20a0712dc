"""Leases: a graceful stop gives in-flight deliveries back, a dead owner's leases are recovered,
and ``hookyard worker`` alone delivers what ``hookyard serve --no-workers`` ingested."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from delivery_kit import FAST, PLUGIN, items, recorder, send, states, trace, track, wait_until
from hookyard import retention
from hookyard.delivery import outbox, router
from hookyard.delivery.engine import Engine
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer, basic_auth, free_port, wait_until_up

Start = Callable[..., HookyardServer]


def ingest_only(hookyard_server: Start, fake: FakeServer, **dest: Any) -> HookyardServer:
    """A server that stores events but runs no router or workers (the tests drive an Engine)."""
    return hookyard_server({"server": {"workers": False},
                            "destinations": [recorder(fake.url, **dest)]}, plugins=[PLUGIN])


async def until(check: Callable[[], Any], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def leases(server: HookyardServer) -> list[tuple[Any, ...]]:
    return server.runtime.db.read_sync(lambda c: [tuple(r) for r in c.execute(
        "SELECT message_id, state, attempts, lease_owner, lease_until FROM outbox ORDER BY id")])


def test_graceful_stop_releases_in_flight_deliveries(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    fake.hang(30, times=3)  # the peer takes the requests and never answers them
    server = ingest_only(hookyard_server, fake, per_item=True,
                         delivery={"batch_size": 1, "total_timeout_seconds": 20})
    events = [track(u, 1) for u in ("x", "y", "z")]
    assert send(server, "/v1/batch", {"batch": events}).status_code == 200
    rt = server.runtime

    async def run_and_stop() -> float:
        engine = Engine(rt)
        await engine.start()
        await until(lambda: len(fake.requests) == 3 and states(server) == {"inflight": 3})
        started = time.monotonic()
        await engine.stop(grace=0.2)
        return time.monotonic() - started

    assert asyncio.run(run_and_stop()) < 3
    assert [(m, s, a, o) for m, s, a, o, _ in leases(server)] == [
        (f"{u}-1", "pending", 0, None) for u in ("x", "y", "z")]
    assert all(not trace(server, f"{u}-1")[0]["attempts_log"] for u in "xyz")  # none counted

    async def deliver_again() -> None:  # the next process delivers them
        engine = Engine(rt)
        await engine.start()
        await until(lambda: states(server) == {"done": 3})
        await engine.stop()

    asyncio.run(deliver_again())
    for u in "xyz":
        [row] = trace(server, f"{u}-1")
        assert row["attempts"] == 1 and [a["outcome"] for a in row["attempts_log"]] == ["ok"]
    assert len(fake.requests) == 6  # in flight at the stop: sent again (at least once)
    rt.engine = None


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_leases_of_a_dead_owner_or_expired_are_recovered(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    server = ingest_only(hookyard_server, fake)
    events = [track(u, 1) for u in ("dead", "expired", "restarted", "alive")]
    assert send(server, "/v1/batch", {"batch": events}).status_code == 200
    rt = server.runtime
    asyncio.run(router.route_batch(rt))
    host, now = socket.gethostname(), time.time()
    owners = {  # message -> (lease owner, lease expiry)
        "dead-1": (f"{host}:{dead_pid()}:abcd", now + 3600),  # kill -9'd process on this host
        "expired-1": ("elsewhere:1:abcd", now - 1),  # another host, lease ran out
        # an earlier incarnation with our pid (a container's pid 1 restarted), older format
        "restarted-1": (f"{host}:{os.getpid()}", now + 3600),
        "alive-1": (f"{host}:{os.getppid()}:abcd", now + 3600),  # a live process owns it
    }
    rt.db.write_sync(lambda c: c.executemany(
        "UPDATE outbox SET state = 'inflight', lease_owner = ?, lease_until = ? WHERE message_id = ?",
        [(o, u, m) for m, (o, u) in owners.items()]))

    async def run() -> None:
        engine = Engine(rt)
        await engine.start()
        await until(lambda: states(server) == {"done": 3, "inflight": 1})
        await asyncio.sleep(0.2)
        await engine.stop()

    asyncio.run(run())
    rt.engine = None
    delivered = sorted(it["messageId"] for r in fake.requests for it in r.json()["items"])
    assert delivered == ["dead-1", "expired-1", "restarted-1"]
    assert [(m, s) for m, s, *_ in leases(server)] == [
        ("dead-1", "done"), ("expired-1", "done"), ("restarted-1", "done"), ("alive-1", "inflight")]


def test_maintenance_purges_finished_rows_past_retention_only(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    fake.set_handler(lambda req: (400, None) if items(req)[0]["user"] == "bad" else (200, None))
    server = hookyard_server({"server": {"workers": False}, "storage": {"retention_days": 1},
                              "destinations": [recorder(fake.url, per_item=True,
                                                        delivery={"batch_size": 1})]},
                             plugins=[PLUGIN])
    events = [track(f"old{i}", 1) for i in range(5)] + [
        track("new", 1), track("bad", 1), {"type": "page", "anonymousId": "anon", "messageId": "skip"}]
    assert send(server, "/v1/batch", {"batch": events}).status_code == 200
    rt = server.runtime

    async def run() -> tuple[int, int]:
        engine = Engine(rt)
        await engine.start()
        await until(lambda: states(server) == {"done": 6, "dead": 1, "filtered": 1})
        week_ago = time.time() - 7 * 86400  # everything but "new-1" finished a week ago
        rt.db.write_sync(lambda c: c.execute(
            "UPDATE outbox SET updated_at = ? WHERE message_id != 'new-1'", (week_ago,)))
        step = rt.db.write_sync(lambda c: retention.purge_outbox(c, time.time() - 86400, ["rec"], limit=2))
        rt.db.write_sync(lambda c: c.execute(  # a destination since removed from the config
            "INSERT INTO outbox (destination, state, attempts, created_at, updated_at)"
            " VALUES ('gone', 'discarded', 1, ?, ?)", (week_ago, week_ago)))
        purged = await engine.maintain()
        await engine.stop()
        return step, purged

    step, purged = asyncio.run(run())
    rt.engine = None
    assert step == 2  # at most `limit` rows in all, every destination and state together
    assert purged == 5 + 1 - 2 + 1  # the rest of the old done rows, the filtered one and the
    # removed destination's discarded one, in later rounds
    left = rt.db.read_sync(lambda c: [tuple(r) for r in c.execute(
        "SELECT message_id, state FROM outbox ORDER BY id")])
    assert left == [("new-1", "done"), ("bad-1", "dead")]  # dead letters are never purged
    orphans = rt.db.read_sync(lambda c: c.execute(
        "SELECT count(*) FROM attempts WHERE outbox_id NOT IN (SELECT id FROM outbox)").fetchone()[0])
    assert orphans == 0


def test_worker_alone_delivers_what_serve_no_workers_ingested(
    tmp_path: Path, fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    fake.respond(200, {"success": True})
    policy = "\n".join(f"{k} = {v}" for k, v in FAST.items())
    config = tmp_path / "hookyard.toml"
    config.write_text(f"""
[server]
admin_token = "worker-test-admin"

[[sources]]
name = "web"
plugin = "segment"
write_key = "worker-test-key"

[[destinations]]
name = "segment-out"
plugin = "segment"
sources = ["web"]
[destinations.settings]
write_key = "downstream-key"
base_url = "{fake.url}"
[destinations.delivery]
{policy}
""")
    port, data = free_port(), tmp_path / "data"
    base = [sys.executable, "-m", "hookyard"]
    common = ["--config", str(config), "--data-dir", str(data)]
    log = open(tmp_path / "procs.log", "ab")  # noqa: SIM115 - closed below
    serve = subprocess.Popen([*base, "serve", *common, "--host", "127.0.0.1", "--port", str(port),
                              "--no-workers"], stdout=log, stderr=subprocess.STDOUT)
    worker: subprocess.Popen[bytes] | None = None
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until_up(url, timeout=30)
        events = [track(f"w{i % 2}", i) for i in range(6)]
        r = httpx.post(f"{url}/v1/batch", json={"batch": events},
                       headers=basic_auth("worker-test-key"), timeout=10)
        assert r.status_code == 200
        admin = {"Authorization": "Bearer worker-test-admin"}
        time.sleep(0.5)
        assert fake.requests == []  # no workers in `serve --no-workers`
        r = httpx.get(f"{url}/api/deliveries", params={"message_id": "w0-0"}, headers=admin)
        assert r.json()["deliveries"] == []  # not even routed

        worker = subprocess.Popen([*base, "worker", *common], stdout=log, stderr=subprocess.STDOUT)
        fake.wait_for(1, timeout=20)

        def all_done() -> bool:
            for e in events:
                rows = httpx.get(f"{url}/api/deliveries", params={"message_id": e["messageId"]},
                                 headers=admin).json()["deliveries"]
                if not rows or rows[0]["state"] != "done":
                    return False
            return True

        wait_until(all_done, timeout=20, what="the worker to deliver every event")
        sent = [e for r in fake.requests for e in r.json()["batch"]]
        assert sorted(e["messageId"] for e in sent) == sorted(e["messageId"] for e in events)
        assert all(r.headers["authorization"] == basic_auth("downstream-key")["Authorization"]
                   for r in fake.requests)
        worker.send_signal(signal.SIGTERM)  # graceful, then it ends by SIGTERM as serve does
        assert worker.wait(timeout=15) == -signal.SIGTERM  # systemd: a clean stop
    finally:
        for proc in (worker, serve):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        log.close()


def test_deliveries_claimed_ahead_are_given_back_when_they_wait_too_long(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The engine claims a batch ahead of its free slots. One that has waited more than a
    quarter of its lease is given back instead of being sent (its lease must outlast the
    request), then claimed again: every event still arrives once, in order, one attempt each."""
    fake = fake_destination()
    caplog.set_level(logging.DEBUG, logger="hookyard.delivery")
    fake.hang(0.4, times=2)  # the first two requests take 0.4 s: the batch claimed ahead goes stale
    server = hookyard_server({"destinations": [recorder(
        fake.url, per_item=True,
        delivery={"batch_size": 1, "concurrency": 1, "lease_seconds": 0.8,
                                                "total_timeout_seconds": 0.7})]}, plugins=[PLUGIN])
    events = [track(u, s) for s in (1, 2) for u in ("a", "b", "c")]
    assert send(server, "/v1/batch", {"batch": events}).status_code == 200
    wait_until(lambda: states(server) == {"done": 6}, what="6 deliveries")
    got = [it["messageId"] for req in fake.requests for it in items(req)]
    assert sorted(got) == sorted(e["messageId"] for e in events)  # each once
    for user in "abc":
        assert [m for m in got if m.startswith(user)] == [f"{user}-1", f"{user}-2"]
    attempts = server.runtime.db.read_sync(lambda c: [r[0] for r in c.execute(
        "SELECT attempts FROM outbox")])
    assert attempts == [1] * 6  # giving a claim back is not an attempt
    assert "claimed ahead that waited too long" in caplog.text


def test_a_replay_leaves_unrouted_events_to_the_router(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    """With the router behind (serve --no-workers, the worker not started yet), a replay
    mapped the unrouted events and the router then mapped them again: every event was sent
    twice, the replayed copies after the user's newer events (an outside delivery audit)."""
    from hookyard.delivery.replay import replay

    fake = fake_destination()
    server = ingest_only(hookyard_server, fake)
    assert send(server, "/v1/batch", {"batch": [track("r", n) for n in range(5)]}).status_code == 200
    rt = server.runtime
    done = asyncio.run(replay(rt, "web"))
    assert done.events == 0 and states(server) == {}  # nothing routed yet: nothing replayed

    async def route_then_replay() -> int:
        engine = Engine(rt)
        await engine.start()
        try:
            await until(lambda: sum(len(items(r)) for r in fake.requests) >= 5)
        finally:
            await engine.stop()
        return (await replay(rt, "web")).events

    assert asyncio.run(route_then_replay()) == 5  # routed now: replayed
    assert [d["messageId"] for r in fake.requests for d in items(r)] == [f"r-{n}" for n in range(5)]


def test_deliveries_of_a_destination_no_longer_configured_are_reported_at_start(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Removed or renamed while its deliveries waited, they stayed pending with no word
    anywhere but a metric (an outside delivery audit): start-up now says so."""
    fake = fake_destination()
    server = ingest_only(hookyard_server, fake)
    rt = server.runtime
    now = time.time()
    rt.db.write_sync(lambda c: outbox.insert_rows(c, [
        ("old-crm", None, f"m{n}", "u1", "event", b"{}", "pending", now, now, None, "webhook")
        for n in range(3)]))

    async def start_and_stop() -> None:
        engine = Engine(rt)
        await engine.start()
        await engine.stop()

    with caplog.at_level(logging.WARNING, logger="hookyard.delivery"):
        asyncio.run(start_and_stop())
    [line] = [r.getMessage() for r in caplog.records if "no longer configured" in r.getMessage()]
    assert "'old-crm'" in line and "3 of its deliveries are waiting" in line


def test_a_destination_given_another_plugin_maps_its_waiting_deliveries_again(
    hookyard_server: Callable[..., HookyardServer], fake_destination: Callable[[], FakeServer],
    tmp_path: Path,
) -> None:
    """A destination kept its name and got another plugin: the new connector sent the old
    one's stored requests (Novu triggers to Segment's /v1/batch, answered 200, counted
    delivered, lost; delivery adversity audit). They are mapped again by the new plugin."""
    old, new = fake_destination(), fake_destination()
    old.fail(503)
    first = hookyard_server({"destinations": [recorder(old.url, name="out")]},
                            plugins=[PLUGIN], data_dir=tmp_path / "data")
    for user in ("u1", "u2"):
        assert send(first, "/v1/track", track(user, 1)).status_code == 200
    wait_until(lambda: all(trace(first, f"{u}-1") and trace(first, f"{u}-1")[0]["attempts"] >= 1
                           for u in ("u1", "u2")), what="the first failed attempts")
    first.stop()
    second = hookyard_server({"destinations": [{
        "name": "out", "plugin": "segment", "sources": ["web"],
        "settings": {"write_key": "downstream-key-123", "base_url": new.url}}]},
        plugins=[PLUGIN], data_dir=tmp_path / "data")
    wait_until(lambda: len({e["messageId"] for r in new.requests for e in r.json()["batch"]}) == 2,
               timeout=20, what="the deliveries mapped again and sent by the segment plugin")
    for r in new.requests:
        assert r.path == "/v1/batch"
        for e in r.json()["batch"]:  # Segment events, not the recorder's stored bodies
            assert e["type"] == "track" and e["event"] == "Step" and "seq" not in e
    assert {t["state"] for u in ("u1", "u2") for t in trace(second, f"{u}-1")} == {"done"}
