"""Plugins that misbehave as third-party plugins do, found by an outside audit: ``sys.exit()``
or a ``CancelledError`` of their own in a hook, results with fields of the wrong type, a hook
that changes its input, a ``register_routes`` or ``register_connectors`` returning the wrong
thing, a ``startup`` that raises or a ``shutdown`` that hangs. Each is handled like any other
plugin bug (a dead letter, a retry, one line at start-up), never the end of the server."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hookyard import hookimpl
from hookyard import runtime as runtime_module
from hookyard.app import create_app
from hookyard.config import parse_config
from hookyard.connectors import Connector, DestinationContext
from hookyard.deliveries import Delivery, DeliveryResult, MapResult
from hookyard.delivery.calling import call_deliver, checked
from hookyard.errors import ConfigError, PluginFailed
from hookyard.events import Event
from hookyard.http import HttpClient
from hookyard.runtime import Runtime
from hookyard.testing import destination_context, map_with, registry, sample_track
from hookyard.testing.server import HookyardServer
from starlette.routing import Route

Behaviour = Callable[..., Any]


def destination_plugin(map_event: Behaviour | None = None, deliver: Behaviour | None = None,
                       **hooks: Behaviour) -> object:
    """A destination connector ``odd`` whose hooks do what the test says."""
    class Odd:
        @hookimpl
        def register_connectors(self) -> list[Connector]:
            return [Connector(name="odd", kind="destination")]

        @hookimpl
        def map_event(self, destination: DestinationContext, event: Event,
                      raw: dict[str, Any]) -> MapResult:
            if map_event is not None:
                return map_event()  # type: ignore[no-any-return]
            return MapResult.send(Delivery(kind="x", body={}))

        @hookimpl
        async def deliver(self, destination: DestinationContext, deliveries: list[Delivery],
                          client: HttpClient) -> list[DeliveryResult]:
            if deliver is not None:
                return await deliver(deliveries)  # type: ignore[no-any-return]
            return [DeliveryResult.ok(200) for _ in deliveries]

    for name, fn in hooks.items():
        setattr(Odd, name, hookimpl(fn))
    return Odd()


def odd_context(plugin: object) -> DestinationContext:
    return destination_context("odd", reg=registry([plugin], installed=False))


def exits() -> Any:
    raise SystemExit(7)


# -- map_event ----------------------------------------------------------------------------------
@pytest.mark.parametrize("raised", [SystemExit(7), KeyboardInterrupt(), GeneratorExit(),
                                    asyncio.CancelledError()])
def test_a_map_event_that_raises_what_is_no_exception_is_a_plugin_failure(
        raised: BaseException) -> None:
    """sys.exit() in a map_event ended the server, and again at every restart; a
    GeneratorExit ended the router's task and nothing was routed again."""
    def fail() -> Any:
        raise raised

    ctx = odd_context(destination_plugin(map_event=fail))
    with pytest.raises(PluginFailed, match=f"map_event of .* raised {type(raised).__name__}"):
        map_with(ctx, sample_track())


@pytest.mark.parametrize(("result", "problem"), [
    (MapResult([], KeyError("x")), "whose filtered reason is a KeyError, not a string"),
    (MapResult([Delivery(kind={"a": 1})]), "whose kind is a dict, not a string"),  # type: ignore[arg-type]
    (MapResult([Delivery(kind="x", ordering_key=["u"])]), "whose ordering_key is a list"),  # type: ignore[arg-type]
    (MapResult(["not a delivery"]), "with a str among its deliveries"),  # type: ignore[list-item]
])
def test_a_map_result_the_outbox_cannot_store_is_a_map_failure(result: MapResult,
                                                              problem: str) -> None:
    """Stored as given, it failed the router's whole batch: no destination received anything,
    and the router logged a traceback every second until the plugin changed."""
    ctx = odd_context(destination_plugin(map_event=lambda: result))
    with pytest.raises(TypeError, match=problem):
        map_with(ctx, sample_track())


# -- deliver ------------------------------------------------------------------------------------
def deliver_now(plugin: object, deliveries: list[Delivery]) -> list[DeliveryResult]:
    """``call_deliver`` as the worker calls it, with a runtime of the one ``odd`` destination."""
    config = parse_config({"destinations": [{"name": "odd", "plugin": "odd", "sources": []}],
                           "server": {"admin_token": "admin-token-1"}})
    rt = Runtime.build(config, [plugin], prepare=False)

    async def run() -> list[DeliveryResult]:
        client = HttpClient()
        try:
            return await call_deliver(rt, rt.destinations["odd"], client, deliveries, limit=5)
        finally:
            await client.close()

    return asyncio.run(run())


@pytest.mark.parametrize("raised", [SystemExit(7), KeyboardInterrupt(), GeneratorExit(),
                                    asyncio.CancelledError()])
def test_a_deliver_that_raises_what_is_no_exception_is_retried(raised: BaseException) -> None:
    """sys.exit() in deliver ended the server; a CancelledError of the plugin's own left its
    rows leased forever, never retried nor dead-lettered."""
    async def fail(deliveries: list[Delivery]) -> Any:
        raise raised

    [result] = deliver_now(destination_plugin(deliver=fail), [Delivery(kind="x")])
    assert result.outcome == "retryable"
    assert "raised PluginFailed: deliver of" in (result.error or "")
    assert type(raised).__name__ in (result.error or "")


def test_the_hosts_own_cancellation_of_a_deliver_still_cancels() -> None:
    async def hang(deliveries: list[Delivery]) -> Any:
        await asyncio.sleep(30)

    plugin = destination_plugin(deliver=hang)
    reg = registry([plugin], installed=False)
    ctx = odd_context(plugin)

    async def run() -> None:
        task = asyncio.create_task(reg.call("deliver", "destination", "odd", destination=ctx,
                                            deliveries=[], client=None))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(run())


@pytest.mark.parametrize(("result", "problem"), [
    (DeliveryResult(outcome="success"),  # type: ignore[arg-type]
     "outcome 'success' (not ok, retryable or permanent)"),
    (DeliveryResult.retryable(12345), "error of type int"),  # type: ignore[arg-type]
    (DeliveryResult.retryable("x", retry_after="5"), "retry_after of type str"),
    (DeliveryResult.ok(http_status="200"), "http_status of type str"),  # type: ignore[arg-type]
    (DeliveryResult.ok(http_status=True), "http_status of type bool"),
])
def test_a_delivery_result_with_a_field_of_the_wrong_type_is_retried(
        result: DeliveryResult, problem: str, caplog: pytest.LogCaptureFixture) -> None:
    """outcome="success" was recorded as delivered; an int error failed every write of the
    destination's results, and its rows stayed leased."""
    with caplog.at_level(logging.WARNING):
        fixed = checked(result, "odd")
    assert fixed.outcome == "retryable"
    assert fixed.error == f"deliver hook returned a DeliveryResult with {problem}"
    assert f"destination odd: deliver hook returned a DeliveryResult with {problem}" in caplog.text


def test_text_utf8_cannot_carry_is_stored_with_a_replacement() -> None:
    fixed = checked(DeliveryResult.retryable("bad \ud800 half", response_body="\udfff"), "odd")
    assert fixed.error == "bad ? half" and fixed.response_body == "?"
    msgspec.json.encode(fixed)  # storable
    ok = DeliveryResult.ok(200)
    assert checked(ok, "odd") is ok


def test_a_coroutine_among_deliver_results_is_called_a_missing_await(recwarn: Any) -> None:
    async def send() -> DeliveryResult:
        return DeliveryResult.ok()

    result = checked(send(), "odd")
    assert result.outcome == "retryable"
    assert result.error == "deliver hook returned a coroutine, not a DeliveryResult (a missing await?)"
    assert not [w for w in recwarn if "never awaited" in str(w.message)]


def test_a_deliver_that_empties_its_list_is_answered_for_what_it_was_given() -> None:
    async def empties(deliveries: list[Delivery]) -> Any:
        deliveries.clear()
        return []

    results = deliver_now(destination_plugin(deliver=empties), [Delivery(kind="x")] * 2)
    assert [r.outcome for r in results] == ["retryable"] * 2
    assert "0 results for 2 deliveries" in (results[0].error or "")


# -- start-up hooks -----------------------------------------------------------------------------
def test_register_connectors_returning_a_connector_stops_start_up_in_one_line() -> None:
    class One:
        @hookimpl
        def register_connectors(self) -> Any:
            return Connector(name="odd", kind="destination")

    with pytest.raises(ConfigError, match="register_connectors returned Connector, not a list"):
        registry([One()], installed=False)


def test_register_connectors_calling_sys_exit_stops_start_up_in_one_line() -> None:
    class Exits:
        @hookimpl
        def register_connectors(self) -> Any:
            raise SystemExit(3)

    with pytest.raises(ConfigError, match="register_connectors failed: SystemExit: 3"):
        registry([Exits()], installed=False)


@pytest.mark.parametrize(("routes", "problem"), [
    (["/x"], "returned list with items that are not routes"),
    (Route("/x", lambda r: None), "returned Route, not a list"),
])
def test_register_routes_of_the_wrong_kind_stops_start_up(
        hookyard_server: Callable[..., HookyardServer], routes: Any, problem: str) -> None:
    """A list of strings made every dashboard page a 500; a single Route, a traceback."""
    class Routes:
        @hookimpl
        def register_routes(self, runtime: Runtime) -> Any:
            return routes

    with pytest.raises(ConfigError, match=problem):
        hookyard_server({}, plugins=[Routes()])


def test_a_plugin_route_at_api_itself_needs_the_admin_token(
        hookyard_server: Callable[..., HookyardServer]) -> None:
    async def secret(request: Any) -> Any:
        from starlette.responses import PlainTextResponse
        return PlainTextResponse("secret")

    class Routes:
        @hookimpl
        def register_routes(self, runtime: Runtime) -> Any:
            return [Route("/api", secret)]

    server = hookyard_server({}, plugins=[Routes()])
    assert server.client.get(f"{server.url}/api").status_code == 401
    assert server.api("/api").text == "secret"


def test_a_startup_hook_that_exits_stops_start_up_naming_the_plugin(tmp_path: Any) -> None:
    class Exits:
        @hookimpl
        def startup(self, runtime: Runtime) -> None:
            raise SystemExit(5)

    config = parse_config({"server": {"data_dir": str(tmp_path), "admin_token": "admin-token-1"}})
    rt = Runtime.build(config, [Exits()])
    with pytest.raises(ConfigError, match="startup hook of .* failed: SystemExit: 5"):
        asyncio.run(rt.run_startup_hooks())


def test_a_failed_startup_hook_is_one_log_line_with_the_plugins_traceback(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """serve logged uvicorn's traceback of Starlette's lifespan around the plugin's error;
    now the one-line reason, with only the plugin's own frames, and no traceback after it."""

    class Fails:
        @hookimpl
        def startup(self, runtime: Runtime) -> None:
            raise RuntimeError("cannot reach the license server")

    config = parse_config({"server": {"data_dir": str(tmp_path), "admin_token": "admin-token-1"}})
    app = create_app(Runtime.build(config, [Fails()]), run_workers=False)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "lifespan.startup"}

    async def send(message: Any) -> None:
        sent.append(message)

    with caplog.at_level(logging.ERROR), pytest.raises(ConfigError):
        asyncio.run(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, receive, send))
    assert sent == [{"type": "lifespan.startup.failed", "message": ""}]
    [record] = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.getMessage().startswith("startup hook of ")
    assert "license server" in record.getMessage()
    assert record.exc_info is not None and "starlette" not in logging.Formatter().formatException(
        record.exc_info)


def test_a_cancelled_error_of_a_startup_or_shutdown_hook_is_its_failure(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    """Found by the re-check: a shutdown hook raising CancelledError ended the shutdown
    ("Application shutdown failed") before the other plugins' hooks ran."""
    closed: list[str] = []

    class Cancels:
        @hookimpl
        async def startup(self, runtime: Runtime) -> None:
            raise asyncio.CancelledError()

        @hookimpl
        async def shutdown(self, runtime: Runtime) -> None:
            raise asyncio.CancelledError()

    class Closes:
        @hookimpl
        def shutdown(self, runtime: Runtime) -> None:
            closed.append("closed")

    config = parse_config({"server": {"data_dir": str(tmp_path), "admin_token": "admin-token-1"}})
    rt = Runtime.build(config, [Closes(), Cancels()])
    with pytest.raises(ConfigError, match="startup hook of .* failed: CancelledError"):
        asyncio.run(rt.run_startup_hooks())
    with caplog.at_level(logging.ERROR):
        asyncio.run(rt.run_shutdown_hooks())
    assert closed == ["closed"] and "shutdown hook of plugin" in caplog.text


def test_a_shutdown_hook_that_hangs_is_given_up(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    closed: list[str] = []

    class Hangs:
        @hookimpl
        async def shutdown(self, runtime: Runtime) -> None:
            await asyncio.sleep(30)

    class Closes:
        @hookimpl
        def shutdown(self, runtime: Runtime) -> None:
            closed.append("closed")

    monkeypatch.setattr(runtime_module, "SHUTDOWN_HOOK_SECONDS", 0.1)
    config = parse_config({"server": {"data_dir": str(tmp_path), "admin_token": "admin-token-1"}})
    rt = Runtime.build(config, [Closes(), Hangs()])
    with caplog.at_level(logging.ERROR):
        asyncio.run(rt.run_shutdown_hooks())
    assert closed == ["closed"] and "did not finish within 0.1 s" in caplog.text


# -- end to end ---------------------------------------------------------------------------------
def test_sys_exit_in_map_event_is_a_dead_letter_and_the_server_goes_on(
        hookyard_server: Callable[..., HookyardServer]) -> None:
    server = hookyard_server({
        "sources": [{"name": "web", "plugin": "segment", "write_key": "web-key-123"}],
        "destinations": [{"name": "odd", "plugin": "odd", "sources": ["web"]},
                         {"name": "profiles", "plugin": "profiles", "sources": ["web"]}],
    }, plugins=[destination_plugin(map_event=exits)])
    from hookyard.testing.server import basic_auth

    r = server.client.post(f"{server.url}/v1/track", headers=basic_auth("web-key-123"),
                           json=sample_track(userId="u1", messageId="m1"))
    assert r.status_code == 200
    import time
    deadline = time.monotonic() + 10
    dead: list[Any] = []
    while time.monotonic() < deadline and not dead:
        dead = server.api("/api/dead-letters?destination=odd").json()["items"]
        time.sleep(0.1)
    assert dead and "map_event failed: PluginFailed" in dead[0]["last_error"]
    assert "raised SystemExit: 7" in dead[0]["last_error"]
    assert server.api("/api/subscribers/u1").status_code == 200  # the others got it
    assert server.client.get(f"{server.url}/healthz").status_code == 200


def test_a_plugin_that_changes_the_event_changes_it_for_itself_only(tmp_path: Any) -> None:
    """Found by an outside audit: a plugin's raw.pop() / event.userId = ... reached the other
    destinations of the event (the profile store stored the subscriber 'HACKED')."""
    from hookyard.delivery.router import map_rows
    from hookyard.events import encoder

    seen: list[tuple[Any, Any]] = []

    class Both:
        @hookimpl
        def register_connectors(self) -> list[Connector]:
            return [Connector(name="changer", kind="destination"),
                    Connector(name="reader", kind="destination")]

        @hookimpl
        def map_event(self, destination: DestinationContext, event: Event,
                      raw: dict[str, Any]) -> MapResult:
            if destination.plugin == "changer":
                raw["userId"] = event.userId = "HACKED"
                raw.pop("messageId", None)
            else:
                seen.append((raw.get("userId"), event.userId))
            return MapResult.skip("test")

        @hookimpl
        def deliver(self, destination: DestinationContext, deliveries: list[Delivery],
                    client: HttpClient) -> list[DeliveryResult]:
            return []

    config = parse_config({
        "server": {"data_dir": str(tmp_path), "admin_token": "admin-token-1"},
        "sources": [{"name": "web", "plugin": "segment", "write_key": "web-key-123"}],
        "destinations": [{"name": "a", "plugin": "changer", "sources": ["web"]},
                         {"name": "b", "plugin": "reader", "sources": ["web"]}]})
    rt = Runtime.build(config, [Both()])
    raw = sample_track(userId="u1", messageId="m1")
    row = (1, "web", "m1", "track", "2026-12-05T00:00:00Z", encoder.encode(raw), 0)
    map_rows(rt, [row])
    assert seen == [("u1", "u1")]


class SendsEvery:
    """A destination connector named ``NAME`` that sends every event as one delivery with an
    empty body; each test's subclass gives its ``deliver``."""

    NAME = "sends"

    @hookimpl
    def register_connectors(self) -> list[Connector]:
        return [Connector(name=self.NAME, kind="destination")]

    @hookimpl
    def map_event(self, destination: DestinationContext, event: Event,
                  raw: dict[str, Any]) -> MapResult:
        return MapResult.send(Delivery(kind="track", body={}))


def test_a_blocking_plain_function_deliver_holds_neither_ingest_nor_other_destinations(
        hookyard_server: Callable[..., HookyardServer]) -> None:
    """Left from the misbehaving-plugins audit: a plain ``def deliver`` that blocks (a
    ``requests.post`` to a vendor that does not answer) ran on the event loop and held ingest,
    /healthz and every other destination for as long. It runs on a thread of its destination's
    own now."""
    called, release = threading.Event(), threading.Event()

    class Blocks(SendsEvery):
        NAME = "blocker"

        @hookimpl
        def deliver(self, destination: DestinationContext, deliveries: list[Delivery],
                    client: HttpClient) -> list[DeliveryResult]:
            called.set()
            release.wait(30)  # a blocking call to a vendor that does not answer
            return [DeliveryResult.ok() for _ in deliveries]

    server = hookyard_server({"destinations": [
        {"name": "slow", "plugin": "blocker", "sources": ["web"]},
        {"name": "profiles", "plugin": "profiles", "sources": ["web"]}]}, plugins=[Blocks()])
    try:
        assert server.post("/v1/identify", {"userId": "u1", "traits": {"a": 1}}).status_code == 200
        assert called.wait(15)
        began = time.monotonic()
        assert server.client.get(f"{server.url}/healthz").status_code == 200
        assert server.post("/v1/identify", {"userId": "u2", "traits": {"b": 2}}).status_code == 200
        deadline = time.monotonic() + 15
        while server.api("/api/subscribers/u2").status_code != 200:
            assert time.monotonic() < deadline, "the profile store waited for the blocked plugin"
            time.sleep(0.05)
        assert time.monotonic() - began < 10
    finally:
        release.set()


def test_hook_thread_runs_calls_in_turn_and_hands_back_their_exceptions() -> None:
    from hookyard.delivery.hook_thread import HookThread

    ran: list[int] = []
    thread = HookThread("dest")

    def call(i: int) -> int:
        time.sleep(0.01 * (3 - i))  # the first is the slowest: still first to end
        ran.append(i)
        return i

    def fails() -> None:
        raise ValueError("vendor said no")

    async def main() -> None:
        assert await asyncio.gather(*(thread.run(lambda i=i: call(i)) for i in range(3))) == [0, 1, 2]
        with pytest.raises(ValueError, match="vendor said no"):
            await thread.run(fails)
        with pytest.raises(TimeoutError):  # a call past its limit is given up, not waited for
            async with asyncio.timeout(0.05):
                await thread.run(lambda: time.sleep(0.3))

    asyncio.run(main())
    assert ran == [0, 1, 2]


def test_a_map_event_that_strips_raw_keeps_the_deliveries_message_id() -> None:
    """Found by the plugin-author audit: a hook that popped messageId from raw (its vendor
    refuses unknown fields) left its deliveries without one, the idempotency key."""

    class Strips(SendsEvery):
        NAME = "strips"

        @hookimpl
        def map_event(self, destination: DestinationContext, event: Event,
                      raw: dict[str, Any]) -> MapResult:
            body = {k: raw.pop(k) for k in list(raw) if k in ("event", "properties")}
            raw.clear()
            return MapResult.send(Delivery(kind="track", body=body))

        @hookimpl
        def deliver(self, destination: DestinationContext, deliveries: list[Delivery],
                    client: HttpClient) -> list[DeliveryResult]:
            return [DeliveryResult.ok() for _ in deliveries]

    reg = registry([Strips()])
    [delivery] = map_with(destination_context("strips", reg=reg), sample_track(messageId="m-1"),
                          reg).deliveries
    assert delivery.message_id == "m-1"


def test_hook_thread_does_not_run_a_call_given_up_while_it_waited() -> None:
    """Found by the re-check: calls queued behind a stuck one passed their time limit, were
    answered retryable, and then ran anyway once the thread was free (sent twice)."""
    from hookyard.delivery.hook_thread import HookThread

    ran: list[str] = []
    thread = HookThread("dest")

    async def main() -> None:
        stuck = thread.run(lambda: (time.sleep(0.3), ran.append("stuck")))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await thread.run(lambda: ran.append("late"))
        await stuck
        await thread.run(lambda: ran.append("next"))

    asyncio.run(main())
    assert ran == ["stuck", "next"]


def test_a_plain_function_deliver_that_needs_the_loop_runs_on_it(
        hookyard_server: Callable[..., HookyardServer], caplog: pytest.LogCaptureFixture) -> None:
    """Found by the re-check: a def deliver returning asyncio.gather(...) (the hookspec lets a
    def return an awaitable) failed on its thread with 'no current event loop', every
    delivery dead-lettered. It is called on the loop instead, with a warning."""
    sent: list[str] = []

    class Gathers(SendsEvery):
        NAME = "gathers"

        @hookimpl
        def deliver(self, destination: DestinationContext, deliveries: list[Delivery],
                    client: HttpClient) -> Any:
            async def one(d: Delivery) -> DeliveryResult:
                sent.append(d.message_id)
                return DeliveryResult.ok()

            return asyncio.gather(*(one(d) for d in deliveries))

    server = hookyard_server({"destinations": [
        {"name": "g", "plugin": "gathers", "sources": ["web"]}]}, plugins=[Gathers()])
    with caplog.at_level(logging.WARNING):
        for i in range(3):
            assert server.post("/v1/track", sample_track(messageId=f"m{i}")).status_code == 200
        server.wait_idle()
    assert sorted(sent) == ["m0", "m1", "m2"]
    assert server.api("/api/dead-letters").json()["items"] == []
    assert "its plain-function deliver hook uses the event loop" in caplog.text
