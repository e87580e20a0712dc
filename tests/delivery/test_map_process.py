"""The router's map process (hookyard.delivery.map_process): mapping on another core.

It must route exactly as the worker maps in-process, lose nothing when it dies (the worker maps
again itself), stop with the worker, and stay out of the way where it cannot work.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
import types
from pathlib import Path
from typing import Any

import pytest
from delivery_kit import (
    FAST,
    RecorderPlugin,
    dead_letters,
    forwarded_ids,
    kill_leaves_no_helpers,
    post_batches,
    spawn_hookyard,
    wait_until,
)
from hookyard.config import parse_config
from hookyard.delivery import map_process, router
from hookyard.delivery.map_process import MapProcess, plugin_modules
from hookyard.runtime import Runtime
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer, free_port, wait_until_up

pytestmark = pytest.mark.skipif(map_process.cores() < 2, reason="the map process needs 2 cores")


def forwarder(url: str, **server: Any) -> dict[str, Any]:
    return {
        "server": {"map_process": True, **server},
        "sources": [{"name": "web", "plugin": "segment", "write_key": "test-write-key"}],
        "destinations": [{"name": "fwd", "plugin": "segment", "sources": ["web"],
                          "settings": {"write_key": "fwd-key", "base_url": url},
                          "delivery": {**FAST, "batch_size": 50}}],
    }


def mapper_of(server: HookyardServer) -> MapProcess | None:
    return server.runtime.engine.router.mapper  # type: ignore[no-any-return]


def ready(server: HookyardServer) -> MapProcess:
    mapper = mapper_of(server)
    assert mapper is not None
    wait_until(lambda: mapper.ready, timeout=30, what="the map process to be ready")
    return mapper


def test_map_process_routes_exactly_as_the_worker_maps(tmp_path: Path) -> None:
    with FakeServer() as peer, HookyardServer(forwarder(peer.url), tmp_path) as server:
        mapper = ready(server)
        sent = post_batches(server, users=20, per_user=30, tag="m")
        server.wait_idle(timeout=30)
        got = forwarded_ids(peer)
        assert sorted(got) == sorted(sent)  # each once
        for u in range(20):  # and each user's events in order
            mine = [m for m in got if m.startswith(f"m-{u}-")]
            assert mine == [f"m-{u}-{seq}" for seq in range(30)]
        assert mapper.ready and mapper.proc is not None and mapper.proc.poll() is None
        assert "\nhookyard_map_process_up 1.0\n" in server.client.get(f"{server.url}/metrics").text

        # what the child stored is what the worker's own map_rows makes of the same rows
        rt = server.runtime
        def both(conn: Any) -> tuple[list[Any], list[Any]]:
            rows = [tuple(r) for r in conn.execute(f"{router.SELECT_INBOX} ORDER BY id")]
            stored = [tuple(r) for r in conn.execute(
                "SELECT destination, inbox_id, message_id, user_key, kind, request, state"
                " FROM outbox ORDER BY id")]
            return rows, stored
        rows, stored = rt.db.read_sync(both)
        expected = [r[:6] + ("done",) for r in router.map_rows(rt, rows)]
        assert stored == expected


@pytest.mark.parametrize(("sig", "warning"), [
    (signal.SIGKILL, "map process stopped (killed by signal 9)"),
    # stopped: like a plugin in an endless loop, it must not stall routing
    (signal.SIGSTOP, "map process did not answer within 1 s, killed"),
])
def test_a_killed_or_stuck_map_process_loses_nothing(
    sig: int, warning: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hookyard.router")
    with FakeServer() as peer, HookyardServer(forwarder(peer.url), tmp_path) as server:
        mapper = ready(server)
        mapper.answer_timeout = 1.0
        first = post_batches(server, users=10, per_user=10, tag="a")
        assert mapper.proc is not None
        os.kill(mapper.proc.pid, sig)
        later = post_batches(server, users=10, per_user=20, tag="b")
        server.wait_idle(timeout=30)
        assert sorted(forwarded_ids(peer)) == sorted(first + later)
        assert warning in caplog.text
        if "mapping in the worker process (trying again in 30 s)" in caplog.text:
            # gone before the router asked (killed while idle): the worker maps meanwhile
            assert sig == signal.SIGKILL and not mapper.ready and mapper.proc is None
            assert "\nhookyard_map_process_up 0.0\n" in server.client.get(
                f"{server.url}/metrics").text
        else:  # stopped while mapping: its rows go one by one through a new child, none in
            # the worker (a plugin looping on one of them would hold the server's event loop)
            assert "mapped again in a new map process, one at a time" in caplog.text
            assert "the suspect events are routed" in caplog.text
            assert dead_letters(server) == []


def test_the_map_process_stops_with_the_server(tmp_path: Path) -> None:
    with FakeServer() as peer:
        server = HookyardServer(forwarder(peer.url), tmp_path).start()
        proc = ready(server).proc
        assert proc is not None
        server.stop()
        assert proc.poll() is not None


def test_a_hookyard_directory_in_the_working_directory_does_not_shadow_the_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``python -m`` puts the working directory first on the path: served from a directory
    holding a checkout named hookyard, the helper imported that and failed at every start."""
    (tmp_path / "hookyard" / "delivery").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    with FakeServer() as peer:
        server = HookyardServer(forwarder(peer.url), tmp_path / "data").start()
        try:
            assert ready(server).proc is not None
        finally:
            server.stop()


def test_a_server_stopped_while_its_map_process_starts_says_nothing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="hookyard.router")
    with FakeServer() as peer:
        server = HookyardServer(forwarder(peer.url), tmp_path).start()
        mapper = mapper_of(server)
        assert mapper is not None
        wait_until(lambda: mapper.proc is not None, what="the map process to start")
        server.stop()
        assert mapper.proc is None and not mapper.ready
    assert "map process" not in caplog.text


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_the_helper_processes_exit_when_serve_is_killed(tmp_path: Path) -> None:
    """kill -9 of `hookyard serve` leaves no map process and no deliver process behind: their
    input closes."""
    port = free_port()
    proc, log = spawn_hookyard(tmp_path, "serve", f"port = {port}\n")
    try:
        wait_until_up(f"http://127.0.0.1:{port}", proc=proc, log=log)
        kill_leaves_no_helpers(
            proc, ["hookyard.delivery.map_process", "hookyard.delivery.deliver_child"])
    finally:
        if proc.poll() is None:
            proc.kill()


def test_map_process_off_maps_in_the_worker(tmp_path: Path) -> None:
    with FakeServer() as peer, HookyardServer(
            forwarder(peer.url, map_process=False), tmp_path) as server:
        assert mapper_of(server) is None
        assert "hookyard_map_process_up" not in server.client.get(f"{server.url}/metrics").text
        sent = post_batches(server, users=3, per_user=3, tag="off")
        server.wait_idle(timeout=30)
        assert sorted(forwarded_ids(peer)) == sorted(sent)


def test_plugins_given_as_objects_keep_mapping_in_the_worker(tmp_path: Path) -> None:
    config = parse_config({**forwarder("http://127.0.0.1:9"),
                           "server": {"data_dir": str(tmp_path)}})
    assert plugin_modules(Runtime.build(config, prepare=False)) == []
    assert plugin_modules(Runtime.build(config, [RecorderPlugin()], prepare=False)) is None
    module = types.ModuleType("hookyard_test_empty_plugin")
    assert plugin_modules(Runtime.build(config, [module], prepare=False)) == [module.__name__]
    assert MapProcess.wanted(Runtime.build(config, [RecorderPlugin()], prepare=False)) is None


def test_a_child_that_cannot_start_leaves_mapping_to_the_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A plugin module the child cannot import (here: one that exists only in the parent)."""
    caplog.set_level(logging.WARNING, logger="hookyard.router")
    config = parse_config({**forwarder("http://127.0.0.1:9"), "server": {"data_dir": str(tmp_path)}})
    rt = Runtime.build(config)
    rt.open()
    try:
        mapper = MapProcess(rt, ["hookyard_no_such_module_here"])

        async def go() -> tuple[bool, Any]:
            mapper.start()
            assert mapper._starting is not None
            await asyncio.wait([mapper._starting], timeout=30)
            answer = await mapper.map(None, 10)
            await mapper.close()
            return mapper.ready, answer

        assert asyncio.run(go()) == (False, None)
        assert "map process could not start: ModuleNotFoundError" in caplog.text
        started = time.monotonic()
        mapper.start()  # not again right away
        assert mapper.proc is None and time.monotonic() - started < 1
    finally:
        rt.close()


def test_cores_counts_a_container_cpu_quota(tmp_path: Path) -> None:
    cpu_max = tmp_path / "cpu.max"
    everything = map_process.cores(str(tmp_path / "missing"))
    cpu_max.write_text("max 100000\n")
    assert map_process.cores(str(cpu_max)) == everything
    cpu_max.write_text("100000 100000\n")  # docker run --cpus 1
    assert map_process.cores(str(cpu_max)) == 1
    cpu_max.write_text("150000 100000\n")  # --cpus 1.5: two cores, partly
    assert map_process.cores(str(cpu_max)) == min(2, everything)
    cpu_max.write_text("garbage\n")
    assert map_process.cores(str(cpu_max)) == everything


def test_a_plugin_with_a_startup_hook_keeps_mapping_in_the_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its map_event may read what startup put into destination.state; the helper runs no
    startup, so mapping there could answer differently."""
    from hookyard import hookimpl

    module = types.ModuleType("hookyard_test_startup_plugin")

    @hookimpl
    def startup(runtime: Any) -> None:
        for dest in runtime.destinations.values():
            dest.context.state["tag"] = "prepared"

    module.startup = startup  # type: ignore[attr-defined]
    caplog.set_level(logging.INFO, logger="hookyard.router")
    config = parse_config({**forwarder("http://127.0.0.1:9"), "server": {"data_dir": str(tmp_path)}})
    rt = Runtime.build(config, [module], prepare=False)
    assert map_process.startup_plugins(rt) == ["hookyard_test_startup_plugin"]
    assert MapProcess.wanted(rt) is None
    assert "plugin 'hookyard_test_startup_plugin' implements startup" in caplog.text
    assert map_process.startup_plugins(Runtime.build(config, prepare=False)) == []  # built-ins


POISON_PLUGIN = '''
from hookyard import hookimpl
from hookyard.connectors import Connector
from hookyard.deliveries import Delivery, DeliveryResult, MapResult


@hookimpl
def register_connectors():
    return [Connector(name="poison", kind="destination")]


@hookimpl
def map_event(destination, event, raw):
    if raw.get("event") == "Poison":
        while True:  # a plugin bug: an endless loop on one event
            pass
    return MapResult.skip("not for this test")


@hookimpl
def deliver(destination, deliveries, client):
    return [DeliveryResult.ok() for _ in deliveries]
'''


def test_an_event_that_stops_the_map_process_is_found_and_dead_lettered(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an outside audit: a map_event looping on one event had the map process
    killed after 15 s, and then the worker mapped the same batch itself: the server's event
    loop was held for good (ingest, /healthz and SIGTERM with it), again at every restart.
    The rows go one at a time through a new child instead; the one that stops it again is
    mapped for each destination alone (the plugin-author audit: every destination's copy was
    dead-lettered): a dead letter for the plugin that stops it, the others' deliveries sent,
    and every other event is routed."""
    import importlib

    (tmp_path / "poison_plugin_test.py").write_text(POISON_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("poison_plugin_test")
    caplog.set_level(logging.INFO, logger="hookyard.router")
    config = forwarder("")
    with FakeServer() as peer:
        config = forwarder(peer.url)
        config["destinations"].append({"name": "bad", "plugin": "poison", "sources": ["web"],
                                       "delivery": FAST})
        with HookyardServer(config, tmp_path / "server", plugins=[module]) as server:
            mapper = ready(server)
            mapper.answer_timeout = 1.0
            before = post_batches(server, users=5, per_user=4, tag="a")
            poison = {"type": "track", "userId": "u0", "event": "Poison", "messageId": "poison"}
            assert server.post("/v1/track", poison).status_code == 200
            after = post_batches(server, users=5, per_user=4, tag="b")
            wait_until(lambda: len(forwarded_ids(peer)) >= 41, timeout=60,
                       what="the other events forwarded")
            assert sorted(forwarded_ids(peer)) == sorted([*before, "poison", *after])
            [dead] = wait_until(lambda: (d if len(d := dead_letters(server)) == 1 else None),
                                timeout=30, what="the poison event's dead letter")
            assert (dead["destination"], dead["message_id"]) == ("bad", "poison")
            assert "map_event did not finish" in dead["last_error"]
            assert "(destination bad, plugin 'poison')" in dead["last_error"]
            assert server.client.get(f"{server.url}/healthz").status_code == 200
    assert "in the map_event of destination bad (plugin 'poison')" in caplog.text
