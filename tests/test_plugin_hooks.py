"""One test per hookspec (``test_<hookname>``, checked by tests/test_docs.py), each exercising the
hook through a small plugin registered in the test, plus the dispatch rules of
docs/plugin-hooks.md: a connector's step hooks reach only the plugin that registered it, while
wrappers (``@hookimpl(wrapper=True)``) see every connector's calls.

The step hooks are called directly through the registry (no server); ``register_routes``,
``startup`` and ``shutdown`` run in a real hookyard server (``hookyard.testing``). The
``relay`` plugin below is the example of docs/plugin-hooks.md.
"""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from hookyard import hookimpl
from hookyard.config import parse_config
from hookyard.connectors import (
    AuthResult,
    Connector,
    DestinationContext,
    IngestRequest,
    ParsedEvent,
    SourceContext,
)
from hookyard.deliveries import HELD_BACK, Delivery, DeliveryResult, MapResult, send_in_order
from hookyard.errors import BadRequest, ConfigError
from hookyard.events import Event
from hookyard.http import HttpClient
from hookyard.runtime import Runtime
from hookyard.testing import (
    authenticate_with,
    deliver_with,
    destination_context,
    ingest_request,
    map_with,
    parse_with,
    registry,
    sample_identify,
    sample_page,
    sample_track,
    source_context,
)
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer
from hookyard.tracking_api import parse_webhook
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import BaseRoute, Route

Start = Callable[..., HookyardServer]
KEY = "test-write-key"


# -- the example plugin of docs/plugin-hooks.md ------------------------------------------------
class RelaySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Destination ``relay``: POST every event's JSON to ``url``.

    url:    where to send.
    types:  event types to send (empty: every type).
    secret: sent as ``X-Relay-Secret``; use ``"env:RELAY_SECRET"``.
    """

    url: str
    types: list[str] = []
    secret: str | None = None


class RelayPlugin:
    """Source ``relay`` (``POST /relay/{name}``, key in ``X-Relay-Key``) and destination
    ``relay`` (one POST per event)."""

    @hookimpl
    def register_connectors(self) -> list[Connector]:
        return [
            Connector(
                name="relay",
                kind="source",
                paths=("/relay/{name}",),
                description="Segment events POSTed to /relay/<source name>",
            ),
            Connector(
                name="relay",
                kind="destination",
                settings=RelaySettings,
                batch_size=10,
                description="POSTs each event's JSON to a URL",
            ),
        ]

    @hookimpl
    def authenticate(self, source: SourceContext, request: IngestRequest) -> AuthResult:
        given = request.headers.get("x-relay-key")
        if given is None:
            return AuthResult.refuse("missing X-Relay-Key header")
        key_ok = hmac.compare_digest(given.encode(), source.write_key.encode())
        if not key_ok or request.path_params.get("name") != source.name:
            return AuthResult.refuse("invalid write key")
        return AuthResult.accept()

    @hookimpl
    def parse_events(self, source: SourceContext, request: IngestRequest) -> list[ParsedEvent]:
        return parse_webhook(request.body)  # one event or a JSON array; BadRequest if invalid

    @hookimpl
    def map_event(
        self, destination: DestinationContext, event: Event, raw: dict[str, Any]
    ) -> MapResult:
        settings: RelaySettings = destination.settings
        if settings.types and raw["type"] not in settings.types:
            return MapResult.skip(f"type {raw['type']!r} is not in types")
        return MapResult.send(Delivery(kind=raw["type"], body=raw))

    @hookimpl
    async def deliver(
        self, destination: DestinationContext, deliveries: list[Delivery], client: HttpClient
    ) -> list[DeliveryResult]:
        settings: RelaySettings = destination.settings
        headers = {"X-Relay-Secret": settings.secret} if settings.secret else {}

        async def send(d: Delivery) -> DeliveryResult:
            result, _response = await client.send(
                "POST", settings.url, json=d.body, headers=headers
            )
            return result

        # each user's in order, users concurrently; a user's later deliveries are not sent
        # after one of theirs failed retryable
        return await send_in_order(deliveries, send)


def relay_source(name: str = "in") -> SourceContext:
    return source_context("relay", KEY, name=name, reg=registry([RelayPlugin()]))


def relay_request(body: Any, key: str | None = KEY, name: str = "in") -> IngestRequest:
    headers = {"X-Relay-Key": key} if key is not None else {}
    return ingest_request(f"/relay/{name}", body, headers, path_params={"name": name})


# -- one test per hook ---------------------------------------------------------------------------
def test_register_connectors(tmp_path: Path) -> None:
    plugin = RelayPlugin()
    reg = registry([plugin])
    dest = reg.get("destination", "relay")
    assert dest.settings is RelaySettings and dest.batch_size == 10
    assert reg.get("source", "relay").paths == ("/relay/{name}",)
    names = {(c.kind, c.name): p for c, p in reg.all()}
    assert names[("destination", "relay")] == reg.pm.get_name(plugin)
    assert ("destination", "profiles") in names  # built-ins come from the same entry-point group

    # the settings Struct validates [destinations.settings] at start-up
    def build(settings: dict[str, Any]) -> Runtime:
        config = parse_config(
            {
                "server": {"data_dir": str(tmp_path), "admin_token": "test-admin-token"},
                "sources": [{"name": "in", "plugin": "relay", "write_key": KEY}],
                "destinations": [
                    {"name": "out", "plugin": "relay", "sources": ["in"], "settings": settings}
                ],
            }
        )
        return Runtime.build(config, [RelayPlugin()])

    rt = build({"url": "http://127.0.0.1:9/hook", "types": ["track"]})
    assert rt.destinations["out"].context.settings == RelaySettings(
        url="http://127.0.0.1:9/hook", types=["track"]
    )
    with pytest.raises(ConfigError, match=r"destinations\[out\]\.settings: unknown setting 'urll'"
                       r" \(did you mean 'url'\?\); the settings are: url, types"):
        build({"urll": "http://127.0.0.1:9/hook"})

    # two plugins declaring the same (name, kind) stop start-up
    class Copy:
        @hookimpl
        def register_connectors(self) -> list[Connector]:
            return [Connector(name="relay", kind="destination")]

    with pytest.raises(ConfigError, match="destination connector 'relay' is registered by both"):
        registry([RelayPlugin(), Copy()])


def test_authenticate() -> None:
    reg = registry([RelayPlugin()])
    source = relay_source()

    def auth(request: IngestRequest) -> AuthResult:
        return authenticate_with(source, request, reg)  # reg.call("authenticate", ...)

    assert auth(relay_request(sample_track())) == AuthResult.accept()
    assert auth(relay_request(sample_track(), key="wrong-key")) == AuthResult.refuse(
        "invalid write key"
    )
    assert auth(relay_request(sample_track(), key=None)).reason == "missing X-Relay-Key header"
    assert not auth(relay_request(sample_track(), name="other")).accepted


def test_parse_events() -> None:
    reg = registry([RelayPlugin()])
    source = relay_source()

    def parse(body: Any) -> list[ParsedEvent]:
        return parse_with(source, relay_request(body), reg)

    track, identify = sample_track(), sample_identify()
    [one] = parse(track)
    assert msgspec.json.decode(one.raw) == track and one.event.messageId == track["messageId"]
    assert [p.event.messageId for p in parse([track, identify])] == [
        track["messageId"],
        identify["messageId"],
    ]
    with pytest.raises(BadRequest, match="malformed JSON"):
        parse(b'{"type": "track",')
    with pytest.raises(BadRequest, match="not a valid Segment event"):
        parse({"type": "nonsense", "userId": "u1"})


def test_map_event() -> None:
    reg = registry([RelayPlugin()])
    ctx = destination_context(
        "relay", {"url": "http://127.0.0.1:9/hook", "types": ["track", "identify"]}, reg=reg
    )
    track = sample_track()
    result = map_with(ctx, track, reg)
    assert result.filtered is None
    assert [(d.kind, d.method, d.body) for d in result.deliveries] == [("track", "POST", track)]
    skipped = map_with(ctx, sample_page(), reg)
    assert skipped == MapResult.skip("type 'page' is not in types")


def test_deliver() -> None:
    reg = registry([RelayPlugin()])
    with FakeServer() as fake:
        ctx = destination_context(
            "relay", {"url": fake.url + "/hook", "secret": "s3cret-value"}, reg=reg
        )
        events = [sample_track(userId=f"u{i}") for i in range(3)]
        events.insert(2, sample_identify(userId="u1"))  # u0, u1, u1, u2
        deliveries = [d for e in events for d in map_with(ctx, e, reg).deliveries]
        fake.respond(400, {"error": "bad event"}, times=1, path="/hook")
        [first] = deliver_with(ctx, deliveries[:1], reg)
        assert first.outcome == "permanent" and first.http_status == 400  # 4xx: dead letter

        def answer(request: Any) -> tuple[int, Any, dict[str, str]]:  # u1's first fails
            if request.json()["messageId"] == events[1]["messageId"]:
                return 503, {"error": "busy"}, {"Retry-After": "7"}
            return 200, {"ok": True}, {}

        fake.set_handler(answer, path="/hook")
        results = deliver_with(ctx, deliveries, reg)
        assert [r.outcome for r in results] == ["ok", "retryable", "retryable", "ok"]
        assert results[1].http_status == 503 and results[1].retry_after == 7.0
        # u1's identify is held back, not sent after its failed track: no overtaking
        assert (results[2].error, results[2].retry_after) == (HELD_BACK, 7.0)
        requests = fake.requests_to("/hook")
        assert sorted(r.json()["userId"] for r in requests) == ["u0", "u0", "u1", "u2"]
        assert {r.headers["x-relay-secret"] for r in requests} == {"s3cret-value"}


class RoutesPlugin:
    """A public route and an operator route under /api/ (the host demands the admin token)."""

    @hookimpl
    def register_routes(self, runtime: Runtime) -> list[BaseRoute]:
        async def hello(request: Request) -> JSONResponse:
            return JSONResponse({"hello": "world"})

        async def stats(request: Request) -> JSONResponse:
            count = await runtime.db.read(
                lambda conn: conn.execute("SELECT count(*) FROM inbox").fetchone()[0]
            )
            return JSONResponse({"events": count})

        return [
            Route("/hello", hello, methods=["GET"]),
            Route("/api/stats", stats, methods=["GET"]),
        ]


def test_register_routes(hookyard_server: Start) -> None:
    server = hookyard_server({}, plugins=[RoutesPlugin()])
    assert httpx.get(f"{server.url}/hello").json() == {"hello": "world"}
    assert httpx.get(f"{server.url}/api/stats").status_code == 401
    assert server.post("/v1/track", sample_track()).status_code == 200
    assert server.api("/api/stats").json() == {"events": 1}


class LifecyclePlugin:
    """Records what the host does around ``startup`` (async) and ``shutdown`` (sync)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @hookimpl
    async def startup(self, runtime: Runtime) -> None:
        version = await runtime.db.read(lambda c: c.execute("PRAGMA user_version").fetchone()[0])
        self.calls.append(("startup", version >= 1))  # the database is open and migrated
        runtime.destinations["out"].context.state["resource"] = "opened"

    @hookimpl
    def shutdown(self, runtime: Runtime) -> None:
        self.calls.append(("shutdown", runtime.engine.stopping))  # workers already stopped
        runtime.destinations["out"].context.state.pop("resource")


LIFECYCLE_CONFIG = {
    "sources": [{"name": "in", "plugin": "relay", "write_key": KEY}],
    "destinations": [
        {
            "name": "out",
            "plugin": "relay",
            "sources": ["in"],
            "settings": {"url": "http://127.0.0.1:9/unused", "types": ["identify"]},
        }
    ],
}


def test_startup(hookyard_server: Start) -> None:
    plugin = LifecyclePlugin()
    server = hookyard_server(LIFECYCLE_CONFIG, plugins=[RelayPlugin(), plugin])
    assert plugin.calls == [("startup", True)]  # awaited before the server answered /healthz
    assert server.runtime.destinations["out"].context.state == {"resource": "opened"}


def test_shutdown(hookyard_server: Start) -> None:
    plugin = LifecyclePlugin()
    server = hookyard_server(LIFECYCLE_CONFIG, plugins=[RelayPlugin(), plugin])
    server.stop()
    assert plugin.calls == [("startup", True), ("shutdown", True)]
    assert server.runtime.destinations["out"].context.state == {}


def test_a_failing_shutdown_does_not_keep_the_others_open(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """``serve`` and ``worker`` share Runtime.run_shutdown_hooks: each plugin's ``shutdown``
    runs on its own, the last registered first (the worker used to stop at the first failure)."""
    closed: list[str] = []

    class Closes:
        def __init__(self, name: str, fails: bool = False) -> None:
            self.name, self.fails = name, fails

        @hookimpl
        async def shutdown(self, runtime: Runtime) -> None:
            closed.append(self.name)
            if self.fails:
                raise RuntimeError("socket already closed")

    config = parse_config({"server": {"data_dir": str(tmp_path)}})
    rt = Runtime.build(config, plugins=[Closes("first"), Closes("second", fails=True)])
    asyncio.run(rt.run_shutdown_hooks())
    assert closed == ["second", "first"]
    assert "shutdown hook of plugin" in caplog.text and "socket already closed" in caplog.text


# -- dispatch rules --------------------------------------------------------------------------------
class Owner:
    """Owns destination ``name``; its map_event answers with a delivery of kind ``name``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.called: list[str] = []

    @hookimpl
    def register_connectors(self) -> list[Connector]:
        return [Connector(name=self.name, kind="destination")]

    @hookimpl
    def map_event(self, destination: DestinationContext) -> MapResult:  # a subset of the args
        self.called.append(destination.plugin)
        return MapResult.send(Delivery(kind=self.name))


class Audit:
    """A wrapper: sees every connector's map_event (and could change its result)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int]] = []

    @hookimpl(wrapper=True)
    def map_event(self, destination: DestinationContext) -> Generator[None, MapResult, MapResult]:
        result = yield  # the owner's answer (an exception from it is raised here)
        self.seen.append((destination.plugin, len(result.deliveries)))
        return result


BUILTIN_SETTINGS: dict[str, dict[str, Any]] = {
    "profiles": {},
    "pushwoosh": {"api_key": "pw-test-key", "application": "ABCDE-12345"},
    "segment": {"write_key": "segment-test-key"},
    "novu": {"api_key": "novu-test-key"},
}


def test_wrapper_sees_every_connector() -> None:
    audit, alpha, beta = Audit(), Owner("alpha"), Owner("beta")
    reg = registry([audit, alpha, beta])
    connectors = ["alpha", "beta", *BUILTIN_SETTINGS]
    for name in connectors:
        ctx = destination_context(name, BUILTIN_SETTINGS.get(name), reg=reg)
        map_with(ctx, sample_identify(), reg)
    assert [plugin for plugin, _ in audit.seen] == connectors
    assert all(count == 1 for _, count in audit.seen)  # each owner answered with one delivery
    assert (alpha.called, beta.called) == (["alpha"], ["beta"])


def test_non_owner_is_not_called() -> None:
    audit, alpha, beta = Audit(), Owner("alpha"), Owner("beta")
    reg = registry([alpha, beta, audit])
    result = map_with(destination_context("alpha", reg=reg), sample_track(), reg)
    assert [d.kind for d in result.deliveries] == ["alpha"]
    assert (alpha.called, beta.called) == (["alpha"], [])
    result = map_with(destination_context("beta", reg=reg), sample_track(), reg)
    assert [d.kind for d in result.deliveries] == ["beta"]
    profiles = map_with(destination_context("profiles", reg=reg), sample_track(), reg)
    assert [d.kind for d in profiles.deliveries] == ["track"]  # the profile store answered
    assert (alpha.called, beta.called) == (["alpha"], ["beta"])
    assert [p for p, _ in audit.seen] == ["alpha", "beta", "profiles"]


def test_step_hook_not_implemented_is_a_clear_error() -> None:
    class SourceOnly:
        @hookimpl
        def register_connectors(self) -> list[Connector]:
            return [Connector(name="lonely", kind="destination")]

    reg = registry([SourceOnly(), Owner("alpha")])
    with pytest.raises(ConfigError, match="'lonely' does not implement hook 'map_event'"):
        map_with(destination_context("lonely", reg=reg), sample_track(), reg)


def test_step_hook_returning_none_says_so() -> None:
    """A forgotten ``return`` is not reported as a hook that is not implemented (the text a
    dead letter shows: ``map_event failed: TypeError: ...``), with or without wrappers."""

    class Forgetful:
        @hookimpl
        def register_connectors(self) -> list[Connector]:
            return [Connector(name="forgetful", kind="destination")]

        @hookimpl
        def map_event(self, destination: DestinationContext) -> MapResult:
            MapResult.send(Delivery(kind="track"))  # its `return` forgotten

    class PassThrough:
        @hookimpl(wrapper=True)
        def map_event(self) -> Generator[None, MapResult, MapResult]:
            return (yield)

    expected = (
        r"^map_event of plugin 'Forgetful' object \(destination connector 'forgetful'\) "
        r"returned None, not a MapResult \(a missing return\?{}\)$"
    )
    for plugins, wrapped in (([Forgetful()], ""),  # direct call, then through pluggy
                             ([Forgetful(), PassThrough()],
                              ", or a wrapper of it did: plugin 'PassThrough' object")):
        reg = registry(plugins)
        with pytest.raises(TypeError, match=expected.format(wrapped)):
            map_with(destination_context("forgetful", reg=reg), sample_track(), reg)


def test_map_event_returning_a_list_says_what_it_must_return() -> None:
    """Not ``AttributeError: 'list' object has no attribute 'deliveries'`` (an outside audit)."""

    class Listy:
        @hookimpl
        def register_connectors(self) -> list[Connector]:
            return [Connector(name="listy", kind="destination")]

        @hookimpl
        def map_event(self, destination: DestinationContext) -> Any:
            return [Delivery(kind="track")]

    reg = registry([Listy()])
    with pytest.raises(TypeError, match=r"returned list, not a MapResult \(MapResult.send"):
        map_with(destination_context("listy", reg=reg), sample_track(), reg)


# -- the example plugin through the real host --------------------------------------------------
def test_relay_plugin_end_to_end(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    audit = Audit()
    server = hookyard_server(
        {
            "sources": [{"name": "in", "plugin": "relay", "write_key": KEY}],
            "destinations": [
                {
                    "name": "out",
                    "plugin": "relay",
                    "sources": ["in"],
                    "settings": {"url": fake.url + "/hook", "types": ["track"]},
                }
            ],
        },
        plugins=[RelayPlugin(), audit],
    )
    url = f"{server.url}/relay/in"
    track, page = sample_track(), sample_page()
    assert httpx.post(url, json=[track, page], headers={"X-Relay-Key": KEY}).json() == {
        "success": True
    }
    refused = httpx.post(url, json=track, headers={"X-Relay-Key": "wrong-key"})
    assert refused.status_code == 401 and refused.json()["error"] == "invalid write key"
    assert httpx.post(url, content=b"[", headers={"X-Relay-Key": KEY}).status_code == 400
    [request] = fake.wait_for(1, path="/hook")
    server.wait_idle()
    assert request.json()["messageId"] == track["messageId"]
    assert sorted(audit.seen) == [("relay", 0), ("relay", 1)]  # the wrapper ran in the router
    rows = server.api(f"/api/deliveries?message_id={page['messageId']}").json()["deliveries"]
    assert [(r["state"], r["last_error"]) for r in rows] == [
        ("filtered", "type 'page' is not in types")
    ]


def test_unknown_settings_stop_boot_even_without_forbid_unknown_fields(tmp_path: Path) -> None:
    """A plugin Struct without ``forbid_unknown_fields`` would drop a misspelt key silently."""

    class LaxSettings(msgspec.Struct, kw_only=True):
        url: str = ""

    class Lax:
        @hookimpl
        def register_connectors(self) -> list[Connector]:
            return [Connector(name="lax", kind="destination", settings=LaxSettings)]

        @hookimpl
        def map_event(self, destination: Any, event: Any, raw: Any) -> MapResult:
            return MapResult.skip("no")

        @hookimpl
        def deliver(self, destination: Any, deliveries: Any, client: Any) -> list[Any]:
            return []

    config = parse_config({
        "server": {"data_dir": str(tmp_path)},
        "sources": [{"name": "web", "plugin": "segment", "write_key": "test-write-key"}],
        "destinations": [{"name": "out", "plugin": "lax", "sources": ["web"],
                          "settings": {"ulr": "http://127.0.0.1:9"}}],
    })
    with pytest.raises(ConfigError, match=r"destinations\[out\]\.settings: unknown setting 'ulr'"
                       r" \(did you mean 'url'\?\); the settings are: url"):
        Runtime.build(config, [Lax()], prepare=False)
