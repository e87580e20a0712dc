"""The deliver process (hookyard.delivery.deliver_process): deliver hooks on another core.

It must deliver exactly what the worker would (each event once, each user's in order, the same
outcomes and dead letters), keep to the destination's concurrency, lose nothing when it dies or
hangs (the worker delivers itself meanwhile), give back what it did not start when the worker
stops, and stay out of the way where it cannot or must not work.
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

import msgspec
import pytest
from delivery_kit import (
    FAST,
    PLUGIN,
    children_running,
    forwarded_ids,
    kill_leaves_no_helpers,
    post_batches,
    recorder,
    spawn_hookyard,
    track,
    wait_until,
)
from hookyard.config import parse_config
from hookyard.connectors import Connector
from hookyard.deliveries import Delivery
from hookyard.delivery import deliver_child, deliver_process, engine, helper_processes
from hookyard.delivery.deliver_process import DeliverProcess
from hookyard.http import HttpClient
from hookyard.runtime import Runtime
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer

pytestmark = pytest.mark.skipif(helper_processes.cores() < 2,
                                reason="the deliver process needs 2 cores")


def forwarder(url: str, batch_size: int = 1, **delivery: Any) -> dict[str, Any]:
    return {
        "server": {"deliver_process": True},
        "sources": [{"name": "web", "plugin": "segment", "write_key": "test-write-key"}],
        "destinations": [
            {"name": "fwd", "plugin": "segment", "sources": ["web"],
             "settings": {"write_key": "fwd-key", "base_url": url},
             "delivery": {**FAST, "batch_size": batch_size, **delivery}},
            {"name": "profiles", "plugin": "profiles", "sources": ["web"]},
        ],
    }


def deliverer_of(server: HookyardServer) -> DeliverProcess:
    """The server's deliver process, once it is ready (``serve`` does not wait for it)."""
    deliverer: DeliverProcess | None = server.runtime.engine.deliverer
    assert deliverer is not None
    wait_until(lambda: deliverer.ready, timeout=30, what="the deliver process to be ready")
    return deliverer


def in_order(got: list[str], tag: str, users: int, per_user: int) -> None:
    for u in range(users):
        mine = [m for m in got if m.startswith(f"{tag}-{u}-")]
        assert mine == [f"{tag}-{u}-{seq}" for seq in range(per_user)], u


def test_the_deliver_process_delivers_exactly_as_the_worker(tmp_path: Path) -> None:
    with FakeServer() as peer, HookyardServer(forwarder(peer.url), tmp_path) as server:
        deliverer = deliverer_of(server)
        assert deliverer.ready and deliverer.destinations == ["fwd"]  # not the profile store
        assert deliverer.proc is not None and deliverer.proc.poll() is None
        sent = post_batches(server, users=20, per_user=15, tag="d")
        server.wait_idle(timeout=30)
        got = forwarded_ids(peer)
        assert sorted(got) == sorted(sent)  # each once
        in_order(got, "d", users=20, per_user=15)
        assert "\nhookyard_deliver_process_up 1.0\n" in server.client.get(
            f"{server.url}/metrics").text
        # the attempts carry the messageIds and latencies the child measured
        trace = server.api("/api/deliveries", params={"message_id": "d-3-7", "destination": "fwd"}).json()
        attempts = [a for d in trace["deliveries"] for a in d["attempts_log"]]
        assert [a["outcome"] for a in attempts] == ["ok"]
        assert 0 < attempts[0]["latency_ms"] < 5000
        # the profile store (no deliver_anywhere) delivered in the worker
        assert server.api("/api/subscribers/u3").json()["distinct_id"] == "u3"


def test_outcomes_through_the_deliver_process(tmp_path: Path) -> None:
    """Retries (500), dead letters (400, with the body kept) as in the worker."""
    with FakeServer() as peer, HookyardServer(
            forwarder(peer.url, max_attempts=3), tmp_path) as server:
        peer.fail(500, times=2)
        assert server.post("/v1/track", track("u1", 1, messageId="retried")).status_code == 200
        server.wait_idle(timeout=30)
        assert forwarded_ids(peer) == ["retried"] * 3  # two 500s, then 200
        peer.respond(400, {"error": "bad event"})
        assert server.post("/v1/track", track("u2", 1, messageId="refused")).status_code == 200
        server.wait_idle(timeout=30)
        dead = server.api("/api/dead-letters").json()["items"]
        assert [(d["message_id"], d["last_status"]) for d in dead] == [("refused", 400)]
        assert "bad event" in dead[0]["response_body"]
        trace = server.api("/api/deliveries", params={"message_id": "retried", "destination": "fwd"}).json()
        outcomes = [a["outcome"] for d in trace["deliveries"] for a in d["attempts_log"]]
        assert outcomes == ["retryable", "retryable", "ok"]


def test_the_deliver_process_keeps_to_the_concurrency(tmp_path: Path) -> None:
    """Every claimed batch is handed over at once; the child sends `concurrency` at a time."""
    with FakeServer() as peer, HookyardServer(
            forwarder(peer.url, concurrency=2), tmp_path) as server:
        peer.hang(1.0, times=2)
        sent = post_batches(server, users=30, per_user=1, tag="c")
        peer.wait_for(2)
        time.sleep(0.5)
        assert len(peer.requests) == 2  # the others wait in the child's queue
        server.wait_idle(timeout=30)
        assert sorted(forwarded_ids(peer)) == sorted(sent)


def test_serve_sends_nothing_before_the_deliver_process_is_ready(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`serve` does not wait for the helper, but its workers do before they send: a delivery
    sent from the worker's process meanwhile could end it, ingest with it, as one that ends
    the helper does (re-check: a plugin crashing on an event ended the server at every start
    while such an event waited)."""
    original = DeliverProcess._start

    async def late_start(self: DeliverProcess) -> None:
        await asyncio.sleep(1.0)
        await original(self)

    monkeypatch.setattr(DeliverProcess, "_start", late_start)
    with FakeServer() as peer, HookyardServer(forwarder(peer.url), tmp_path) as server:
        deliverer = server.runtime.engine.deliverer
        sent = post_batches(server, users=10, per_user=1, tag="t")
        time.sleep(0.5)
        assert not deliverer.ready and peer.requests == []
        server.wait_idle(timeout=30)
        assert deliverer.ready and sorted(forwarded_ids(peer)) == sorted(sent)


def test_a_deliver_process_killed_while_it_starts_leaves_nothing_to_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Chaos re-check: a helper killed (signal 9) before it was ready counted as one that could
    not start, and the workers sent from the server's process meanwhile: a poison event stored
    before the start ended the server. Its destinations wait for the next one instead."""
    original = DeliverProcess._start
    starts: list[int] = []

    async def killed_first(self: DeliverProcess) -> None:
        starts.append(1)
        if len(starts) == 1:
            async def kill() -> None:
                while self.proc is None:
                    await asyncio.sleep(0.001)
                os.kill(self.proc.pid, signal.SIGKILL)

            asyncio.get_running_loop().create_task(kill())
        await original(self)

    monkeypatch.setattr(DeliverProcess, "_start", killed_first)
    with FakeServer() as peer, HookyardServer(forwarder(peer.url), tmp_path) as server:
        deliverer = server.runtime.engine.deliverer
        sent = post_batches(server, users=10, per_user=1, tag="s")
        wait_until(lambda: len(starts) == 2, timeout=20, what="a second start")
        assert not deliverer.cannot_start and peer.requests == []  # none sent in-process
        server.wait_idle(timeout=30)
        assert deliverer.ready and sorted(forwarded_ids(peer)) == sorted(sent)


def test_the_concurrency_holds_while_a_deliver_process_that_could_not_start_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A helper that could not start leaves the deliveries to the worker (until a start
    succeeds). The helper takes over only once none of the worker's own requests is waiting,
    so the two never send more than `concurrency` at once between them."""
    original = DeliverProcess._start
    starts: list[float] = []

    async def first_fails(self: DeliverProcess) -> None:
        starts.append(time.monotonic())
        if len(starts) == 1:
            self._could_not_start("could not start: the test says so")
            return
        await asyncio.sleep(0.5)
        await original(self)

    monkeypatch.setattr(DeliverProcess, "_start", first_fails)
    monkeypatch.setattr(deliver_process, "RESTART_AFTER", 1.0)
    monkeypatch.setattr(engine, "HELPER_CHECK_SECONDS", 0.5)  # started again within ~1.5 s
    # the two first requests hang until well after the helper is ready, also on a busy machine
    # (its start takes ~0.4 s of CPU; with a 1.5 s hang a slow start saw them answered first)
    with FakeServer() as peer, HookyardServer(
            forwarder(peer.url, concurrency=2, total_timeout_seconds=10.0, lease_seconds=30.0),
            tmp_path) as server:
        peer.hang(6.0, times=2)  # (under the 10 s HTTP timeout set above)
        deliverer = server.runtime.engine.deliverer
        wait_until(lambda: deliverer.cannot_start, what="the first start to fail")
        sent = post_batches(server, users=30, per_user=1, tag="t")
        peer.wait_for(2)
        assert not deliverer.ready  # these two went out from the worker itself
        wait_until(lambda: deliverer.ready, timeout=30, what="the deliver process")
        time.sleep(0.5)
        assert len(peer.requests) == 2  # the helper waits for them to be answered
        server.wait_idle(timeout=30)
        assert sorted(forwarded_ids(peer)) == sorted(sent)


@pytest.mark.parametrize(("sig", "warning"), [
    (signal.SIGKILL, "deliver process stopped (killed by signal 9)"),
    # stopped: like a plugin blocking its event loop, it must not stall delivery; it cannot
    # say which hook holds it, so no destination is blamed
    (signal.SIGSTOP, "did not answer within 0.5 s of a deliver hook's time limit, killed"),
])
def test_a_killed_or_stuck_deliver_process_loses_nothing(
    sig: int, warning: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hookyard.delivery")
    config = forwarder("", lease_seconds=3)
    with FakeServer() as peer:
        config["destinations"][0]["settings"]["base_url"] = peer.url
        with HookyardServer(config, tmp_path) as server:
            deliverer = deliverer_of(server)
            deliverer.answer_grace = 0.5
            peer.hang(0.3)  # requests in flight when the signal comes
            first = post_batches(server, users=10, per_user=3, tag="a")
            peer.wait_for(1)
            assert deliverer.proc is not None
            os.kill(deliverer.proc.pid, sig)
            peer.reset()
            later = post_batches(server, users=10, per_user=3, tag="b")
            server.wait_idle(timeout=30)
            got = forwarded_ids(peer)
            assert set(got) == set(first + later)  # none lost (in-flight ones may repeat)
            # the batches it had are sent again, one batch at a time, by a new helper
            # (never in the worker's process: a plugin that ended the helper on one of them
            # ended the server; source-author audit)
            assert deliverer.ready and deliverer.proc is not None and not deliverer.blamed
            assert "\nhookyard_deliver_process_up 1.0\n" in server.client.get(
                f"{server.url}/metrics").text
    assert warning in caplog.text
    assert ("its destinations wait for a new one, which takes the deliveries it had one batch"
            " at a time (") in caplog.text
    # a kill -9 makes no suspects (nobody's doing); a helper stuck and killed does
    suspects = "they are sent again one batch at a time in a new deliver process" in caplog.text
    assert suspects == (sig != signal.SIGKILL)
    stopped = [r for r in caplog.records if "deliver process stopped before answering" in
               r.getMessage()]
    assert all("attempt 1" in r.getMessage() for r in stopped)  # retried, with its messageId


def test_kill_9_of_the_deliver_process_twice_makes_no_dead_letter(tmp_path: Path) -> None:
    """Chaos audit: two kill -9s of the helper 1.5 s apart, a peer slow to answer, made dead
    letters of delivered events, blaming the Segment plugin (each destination's lone suspect
    was found guilty); and a second kill while the new helper started held the deliveries for
    30 s. A helper killed from outside finds no delivery guilty, and a failed start is tried
    again within a second."""
    with FakeServer() as peer:
        with HookyardServer(forwarder(peer.url, concurrency=4), tmp_path) as server:
            deliverer = deliverer_of(server)
            peer.hang(1.0)
            sent = post_batches(server, users=12, per_user=2, tag="k")
            peer.wait_for(2)
            for _ in range(2):
                assert deliverer.proc is not None
                os.kill(deliverer.proc.pid, signal.SIGKILL)
                wait_until(lambda: not deliverer.ready, what="the helper's death noticed")
                wait_until(lambda: deliverer.ready, timeout=20, what="a new helper")
                time.sleep(0.3)  # a suspect of the first death in flight, alone
            os.kill(deliverer.proc.pid, signal.SIGKILL)  # and one while it starts again
            wait_until(lambda: not deliverer.ready, what="the third death noticed")
            began = time.monotonic()
            wait_until(lambda: deliverer.ready, timeout=20, what="a new helper")
            assert time.monotonic() - began < 10
            peer.hang(0)
            server.wait_idle(timeout=60)
            assert server.api("/api/dead-letters").json()["items"] == []
            assert set(forwarded_ids(peer)) == set(sent)


def test_the_deliver_process_dying_does_not_pause_a_healthy_destination(tmp_path: Path) -> None:
    """Reviewer: the helper held 60 batches of a slow but healthy peer when it was killed;
    every one came back as a failed request, more than ``pause_after_failures`` of several
    users, and the destination was paused. The helper's death is not the destination's: the
    deliveries are sent again (an attempt each: they may have been sent), the breaker is not
    told."""
    with FakeServer() as peer:
        with HookyardServer(forwarder(peer.url, concurrency=8), tmp_path) as server:
            deliverer = deliverer_of(server)
            peer.hang(2.0)  # slow, not failing: batches queue up in the helper
            events = [track(f"u{u}", 1) for u in range(60)]
            assert server.post("/v1/batch", {"batch": events}).status_code == 200
            peer.wait_for(8)
            time.sleep(0.3)
            assert deliverer.proc is not None
            os.kill(deliverer.proc.pid, signal.SIGKILL)
            worker = server.runtime.engine.workers["fwd"]
            wait_until(lambda: not deliverer.ready, what="the helper's death noticed")
            time.sleep(0.5)
            assert not worker.breaker.paused
            peer.hang(0)
            server.wait_idle(timeout=60)
            assert {m for m in forwarded_ids(peer)} == {e["messageId"] for e in events}


PLUGIN_MODULE = '''
import os
import time

from hookyard import hookimpl
from hookyard.connectors import Connector
from hookyard.deliveries import Delivery, DeliveryResult, MapResult


@hookimpl
def register_connectors():
    return [Connector(name="{name}", kind="destination", deliver_anywhere=True)]


@hookimpl
def map_event(destination, event, raw):
    return MapResult.send(Delivery(kind="track", body={{"id": raw["messageId"]}}))


@hookimpl
async def deliver(destination, deliveries, client):
    {deliver}
    return [DeliveryResult.ok() for _ in deliveries]
'''


def plugin_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str,
                  deliver: str) -> types.ModuleType:
    """A plugin module on the path (the helper processes import it by name) with a destination
    connector ``name`` whose async deliver runs the line ``deliver`` first."""
    import importlib

    module_name = f"{name}_plugin_test"
    (tmp_path / f"{module_name}.py").write_text(PLUGIN_MODULE.format(name=name, deliver=deliver))
    monkeypatch.syspath_prepend(str(tmp_path))
    return importlib.import_module(module_name)


def test_a_hook_that_blocks_the_deliver_process_is_the_only_one_held(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by the re-checks: an async deliver blocking its event loop in the deliver process
    had the helper killed, and then ran on the worker's loop, freezing ingest and /healthz for
    45 s; then every destination with a batch waiting there was blamed, and a healthy one
    delivered nothing for minutes. The child now names the hook that holds it (SIGUSR1): that
    destination waits for a new helper, the others are delivered by the worker meanwhile."""
    # a plugin bug: a blocking call inside async def holds the loop
    module = plugin_module(tmp_path, monkeypatch, "blocky", "time.sleep(8)")
    caplog.set_level(logging.WARNING, logger="hookyard.delivery")
    with FakeServer() as peer:
        config = forwarder(peer.url)
        config["destinations"].append({"name": "blocky", "plugin": "blocky", "sources": ["web"],
                                       "delivery": {**FAST, "lease_seconds": 3}})
        with HookyardServer(config, tmp_path / "server", plugins=[module]) as server:
            deliverer = deliverer_of(server)
            deliverer.answer_grace = 0.5
            sent = post_batches(server, users=5, per_user=2, tag="a")
            wait_until(lambda: "blocky" in deliverer.blamed, timeout=20, what="blocky blamed")
            assert deliverer.blamed == {"blocky"}
            began = time.monotonic()
            assert server.client.get(f"{server.url}/healthz").status_code == 200
            assert time.monotonic() - began < 1
            wait_until(lambda: set(forwarded_ids(peer)) >= set(sent), timeout=20,
                       what="the healthy destination's events")
    assert "destination blocky's (plugin 'blocky') holds its event loop, killed" in caplog.text


@pytest.mark.parametrize("poisons", [3])
def test_a_delivery_that_ends_the_deliver_process_is_a_dead_letter_not_a_dead_server(
    poisons: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Source-author audit: a deliver hook that ended its process on one event had the batch
    retried in the worker's process, which it ended too: ``hookyard serve`` was gone, ingest
    with it, and again at every restart. The deliveries the helper had now go to a new helper
    one at a time; the one that ends it again, alone, is a dead letter naming the plugin.
    Re-check: further poison events killed the server while the new helper started (the
    worker sent in-process meanwhile), and a healthy destination's delivery, alone in the
    helper too, was blamed; a forwarder to a slow peer shares the helper here."""
    module = plugin_module(tmp_path, monkeypatch, "exiting", 'if any(d.body["id"].startswith('
                           '"poison") for d in deliveries): os._exit(7)')
    with FakeServer() as peer:
        config = forwarder(peer.url, concurrency=4)
        config["destinations"].append({"name": "ex", "plugin": "exiting", "sources": ["web"],
                                       "delivery": {**FAST, "batch_size": 1, "concurrency": 4}})
        with HookyardServer(config, tmp_path / "server", plugins=[module]) as server:
            deliverer_of(server)
            peer.hang(0.3)  # the forwarder's batches are in the helper when it ends
            events = [track(f"u{i}", 1) for i in range(12)]
            for i in range(poisons):
                events[3 + 3 * i]["messageId"] = f"poison-{i}"
            assert server.post("/v1/batch", {"batch": events}).status_code == 200
            server.wait_idle(timeout=90)
            assert server.client.get(f"{server.url}/healthz").status_code == 200  # still up
            dead = server.api("/api/dead-letters").json()["items"]
            assert sorted((d["destination"], d["message_id"]) for d in dead) == [
                ("ex", f"poison-{i}") for i in range(poisons)]
            assert all("ends its process on it (plugin 'exiting')" in d["last_error"]
                       for d in dead)
            assert set(forwarded_ids(peer)) == {e["messageId"] for e in events}
            assert server.post("/v1/track", track("u1", 2)).status_code == 200
            server.wait_idle(timeout=30)


def test_a_dead_deliver_process_is_started_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(deliver_process, "RESTART_AFTER", 0.2)
    with FakeServer() as peer, HookyardServer(forwarder(peer.url), tmp_path) as server:
        deliverer = deliverer_of(server)
        first = deliverer.proc
        assert first is not None
        first.kill()
        wait_until(lambda: not deliverer.ready, what="the worker to notice")
        time.sleep(0.3)
        sent = post_batches(server, users=5, per_user=40, tag="r")
        wait_until(lambda: deliverer.ready, timeout=30, what="a new deliver process")
        server.wait_idle(timeout=30)
        assert sorted(forwarded_ids(peer)) == sorted(sent)
        assert deliverer.proc is not None and deliverer.proc.pid != first.pid


class Sent:
    """Stands in for the child's end of the socket: collects the answers."""

    def __init__(self) -> None:
        self.answers: list[Any] = []

    def send(self, payload: bytes) -> None:
        self.answers.append(msgspec.msgpack.decode(payload))


def test_the_child_does_not_start_late_batches_nor_any_once_told_to_stop() -> None:
    """A batch that waited in the child past its start-by time is not sent (its lease may run
    out); after ``stop`` none is. Both are answered as not started: the worker gives their rows
    back without counting an attempt."""
    rt = Runtime.build(parse_config(forwarder("http://127.0.0.1:9")), prepare=False)
    proto = Sent()

    async def scenario() -> None:
        lane = deliver_child.Lane(rt, rt.destinations["fwd"], HttpClient(), proto)  # type: ignore[arg-type]
        now = time.monotonic()
        lane.queue.append((1, now - 1, now + 5, [b"{}"]))
        lane.pump()
        assert proto.answers == [[1, False, 0.0, []]]
        lane.stop()
        lane.queue.append((2, now + 5, now + 5, [b"{}"]))
        lane.pump()
        assert proto.answers[-1] == [2, False, 0.0, []]
        assert lane.running == 0
        await lane.close()

    asyncio.run(scenario())


def test_the_child_cancels_a_hook_past_its_time_limit() -> None:
    """The child gives each call until its deadline: a hung hook is then
    cancelled and answered retryable, with the messageIds, and the lane goes on."""
    config = {"sources": [{"name": "web", "plugin": "segment", "write_key": "test-write-key"}],
              "destinations": [recorder("http://127.0.0.1:9", misbehave="hang")]}
    rt = Runtime.build(parse_config(config), [PLUGIN], prepare=False)
    proto = Sent()
    stored = [msgspec.json.encode(Delivery(kind="track", message_id=f"m{i}")) for i in (1, 2)]

    async def scenario() -> None:
        lane = deliver_child.Lane(rt, rt.destinations["rec"], HttpClient(), proto)  # type: ignore[arg-type]
        now = time.monotonic()
        lane.queue.append((1, now + 5, now + 0.2, stored))
        lane.pump()
        await asyncio.sleep(0.5)
        assert lane.running == 0 and not lane.tasks
        await lane.close()

    asyncio.run(scenario())
    [(req_id, started, latency, sent)] = proto.answers
    assert (req_id, started) == (1, True) and 150 < latency < 450
    assert [m for m, _ in sent] == ["m1", "m2"]
    assert {r["outcome"] for _, r in sent} == {"retryable"}
    assert sent[0][1]["error"].startswith("deliver hook did not answer within")


def test_the_deliver_process_stops_with_the_server(tmp_path: Path) -> None:
    with FakeServer() as peer:
        server = HookyardServer(forwarder(peer.url), tmp_path).start()
        proc = deliverer_of(server).proc
        assert proc is not None
        server.stop()
        assert proc.poll() is not None


def test_a_stopping_worker_gives_back_what_the_child_has_not_started(tmp_path: Path) -> None:
    with FakeServer() as peer:
        server = HookyardServer(forwarder(peer.url, concurrency=1), tmp_path).start()
        try:
            peer.hang(0.5)
            post_batches(server, users=20, per_user=1, tag="s")
            peer.wait_for(1)
        finally:
            server.stop()
        states = server.runtime.db.read_sync(lambda conn: dict(conn.execute(
            "SELECT state, count(*) FROM outbox WHERE destination = 'fwd' GROUP BY state")))
        # the one in flight finished (or was released); the rest went back to pending at once,
        # not sent during the grace period
        assert states.get("inflight", 0) == 0
        assert len(peer.requests) <= 2
        assert states.get("pending", 0) >= 18


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads /proc")
def test_hookyard_worker_waits_for_its_helper_processes(tmp_path: Path) -> None:
    """`hookyard worker` says it delivers once its deliver process and its map process are
    ready (their start-up does not compete with the first deliveries); kill -9 of the worker
    leaves neither behind (see test_map_process for `serve`)."""
    proc, log = spawn_hookyard(tmp_path, "worker", "")
    try:
        wait_until(lambda: b"delivering for fwd" in log.read_bytes(), timeout=30,
                   what="the worker to start")
        text = log.read_text()
        assert children_running(proc.pid, "hookyard.delivery.deliver_child"), text
        assert children_running(proc.pid, "hookyard.delivery.map_process"), text
        assert "events are mapped on another core" in text.partition("delivering for fwd")[0]
        kill_leaves_no_helpers(proc, ["hookyard.delivery.deliver_child",
                                      "hookyard.delivery.map_process"])
    finally:
        if proc.poll() is None:
            proc.kill()


def test_deliver_process_off_or_not_allowed(tmp_path: Path) -> None:
    config = forwarder("http://127.0.0.1:9")
    config["server"]["deliver_process"] = False
    assert DeliverProcess.wanted(Runtime.build(parse_config(config), prepare=False)) is None
    only_profiles = forwarder("http://127.0.0.1:9")
    del only_profiles["destinations"][0]
    assert DeliverProcess.wanted(Runtime.build(parse_config(only_profiles), prepare=False)) is None
    with FakeServer() as peer, HookyardServer(
            {**forwarder(peer.url), "server": {"deliver_process": False}}, tmp_path) as server:
        assert server.runtime.engine.deliverer is None
        assert "hookyard_deliver_process_up" not in server.client.get(
            f"{server.url}/metrics").text
        sent = post_batches(server, users=3, per_user=3, tag="off")
        server.wait_idle(timeout=30)
        assert sorted(forwarded_ids(peer)) == sorted(sent)


def test_plugins_given_as_objects_keep_delivering_in_the_worker(tmp_path: Path) -> None:
    module = types.ModuleType("hookyard_test_not_importable")
    rt = Runtime.build(parse_config(forwarder("http://127.0.0.1:9")), [object(), module],
                       prepare=False)
    assert DeliverProcess.wanted(rt) is None


def test_a_child_that_cannot_start_leaves_delivery_to_the_worker(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="hookyard.delivery")
    config = parse_config({**forwarder("http://127.0.0.1:9"),
                           "server": {"data_dir": str(tmp_path)}})
    rt = Runtime.build(config, prepare=False)
    deliverer = DeliverProcess(rt, ["hookyard_no_such_module"], ["fwd"])

    async def attempt() -> Any:
        await deliverer.start_and_wait()
        answer = await deliverer.deliver("fwd", [b"{}"], time.monotonic() + 5, time.monotonic() + 5)
        await deliverer.close()
        return answer

    assert asyncio.run(attempt()) is None  # the caller delivers in-process
    assert not deliverer.ready
    assert "deliver process could not start: ModuleNotFoundError" in caplog.text


def test_connectors_say_whether_deliver_may_run_anywhere() -> None:
    rt = Runtime.build(parse_config(forwarder("http://127.0.0.1:9")), prepare=False)
    allowed = {c.name for c, _ in rt.registry.all() if c.kind == "destination" and c.deliver_anywhere}
    assert {"segment", "novu", "pushwoosh"} <= allowed
    assert "profiles" not in allowed  # it writes this host's profile database
    assert Connector(name="x", kind="destination").deliver_anywhere is False  # opt-in


def test_a_deliver_wrapper_with_a_startup_keeps_delivering_in_the_worker() -> None:
    """The child runs no startup: a timing wrapper that made its client there failed for the
    destinations sent from the child only (AttributeError, then dead letters)."""
    from collections.abc import Generator

    from hookyard import hookimpl

    class Timed:
        @hookimpl
        def startup(self, runtime: Any) -> None:
            self.clock = time.monotonic

        @hookimpl(wrapper=True)
        def deliver(self) -> Generator[None, Any, Any]:
            return (yield)

    class StartsOnly:
        @hookimpl
        def startup(self, runtime: Any) -> None:
            pass

    config = parse_config(forwarder("http://127.0.0.1:9"))
    timed = Timed()
    rt = Runtime.build(config, [timed, StartsOnly()], prepare=False)
    assert deliver_process.prepared_wrappers(rt) == [rt.pm.get_name(timed)]
    only_starts = Runtime.build(config, [StartsOnly()], prepare=False)
    assert deliver_process.prepared_wrappers(only_starts) == []


def test_lost_batches_find_the_culprit_halving_and_never_blame_a_kill(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hookyard.delivery import lost_batches

    clock = [100.0]
    monkeypatch.setattr(lost_batches.time, "monotonic", lambda: clock[0])
    lost = lost_batches.LostBatches()
    assert lost.lost([1, 2, 3, 4], alone=False, killed=False) == "first"
    assert lost.batch_size(100) == 100
    assert lost.lost([1, 2], alone=True, killed=False) == "again"  # a suspect batch, alone
    assert lost.batch_size(100) == 50
    assert lost.lost([2], alone=True, killed=True) == "killed"  # a kill -9: nobody's doing
    assert lost.lost([9], alone=False, killed=True) == "killed" and 9 not in lost.rows
    assert lost.lost([2], alone=False, killed=False) == "again"  # not alone: not proven
    assert lost.lost([2], alone=True, killed=False) == "culprit"
    assert 2 not in lost.rows and lost.clear([1, 3]) and not lost.clear([4])
    assert lost.halvings == 0 and not lost
    assert lost.lost([7], alone=True, killed=False) == "first"  # alone, but never lost before
    clock[0] += lost_batches.SUSPECT_SECONDS + 1
    assert not lost.expire()
