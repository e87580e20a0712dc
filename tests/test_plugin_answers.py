"""Plugin mistakes an outside audit found reported late or as a server error: a source hook
answering the wrong type (a bool, dicts, a raw that is not bytes) is a refused request (503 to
retry for a failed authenticate or parse_events, the plugin's error logged), never a 500 nor a 503 that blames storage; an ``async def``
where hookyard does not await, a misspelt connector kind, settings that are not a Struct and a
destination without ``deliver`` stop start-up with one line."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
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
    IngestRequest,
    ParsedEvent,
    RefusedEvent,
    Reply,
    SourceContext,
)
from hookyard.errors import BadRequest, ConfigError
from hookyard.runtime import Runtime
from hookyard.testing import registry, sample_track
from hookyard.testing.server import HookyardServer
from hookyard.tracking_api import parse_webhook

KEY = "odd-source-key"


def source_plugin(authenticate: Callable[..., Any], parse: Callable[..., Any]) -> object:
    class Odd:
        @hookimpl
        def register_connectors(self) -> list[Connector]:
            return [Connector(name="odd", kind="source", paths=("/connector/odd",))]

    Odd.authenticate = hookimpl(authenticate)  # type: ignore[attr-defined]
    Odd.parse_events = hookimpl(parse)  # type: ignore[attr-defined]
    return Odd()


def accept(self: Any, source: SourceContext, request: IngestRequest) -> AuthResult:
    return AuthResult.accept()


async def accept_async(self: Any, source: SourceContext, request: IngestRequest) -> AuthResult:
    return AuthResult.accept()


def accept_bool(self: Any, source: SourceContext, request: IngestRequest) -> bool:
    return True


def raise_in_auth(self: Any, source: SourceContext, request: IngestRequest) -> AuthResult:
    raise IndexError("a signature header without ','")


def refuse(self: Any, source: SourceContext, request: IngestRequest) -> AuthResult:
    return AuthResult.refuse("bad signature", 'Signature realm="odd"')


def parse(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    return parse_webhook(request.body)


async def parse_async(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    return parse_webhook(request.body)


def parse_dicts(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    return [{"type": "track"}]


def parse_one(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    return parse_webhook(request.body)[0]


def parse_dict_raw(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    [parsed] = parse_webhook(request.body)
    assert isinstance(parsed, ParsedEvent)
    return [ParsedEvent(raw={"type": "track"}, event=parsed.event)]  # type: ignore[arg-type]


def parse_invalid_raw(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    """Found by the plugin-author audit: acknowledged, then 'stored event cannot be decoded'."""
    [parsed] = parse_webhook(request.body)
    assert isinstance(parsed, ParsedEvent)
    return [ParsedEvent(raw=b'{"type":"track", oops}', event=parsed.event)]


def parse_id_only_in_raw(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    """Found by the plugin-author audit: the typed event made before raw got its messageId,
    so every resend was stored again under a new UUID."""
    from hookyard.events import event_from_dict

    data = msgspec.json.decode(request.body)
    data.pop("messageId", None)
    event = event_from_dict(data)
    data["messageId"] = "vendor-42"
    return [ParsedEvent(raw=msgspec.json.encode(data), event=event)]


def parse_id_disagrees(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    from hookyard.events import event_from_dict

    data = msgspec.json.decode(request.body)
    event = event_from_dict({**data, "userId": "USER-1"})
    return [ParsedEvent(raw=msgspec.json.encode({**data, "userId": "user-1"}), event=event)]


def parse_type_mismatch(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    from hookyard.events import event_from_dict

    event = event_from_dict({"type": "identify", "userId": "u1"})
    return [ParsedEvent(raw=request.body, event=event)]


def parse_string_raw(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    [parsed] = parse_webhook(request.body)
    assert isinstance(parsed, ParsedEvent)
    return [ParsedEvent(raw=b' "just a string" ', event=parsed.event)]


def parse_array_raw(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    [parsed] = parse_webhook(request.body)
    assert isinstance(parsed, ParsedEvent)
    return [ParsedEvent(raw=b"[1, 2, 3]", event=parsed.event)]


def parse_refused_none(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    return [*parse_webhook(request.body), RefusedEvent(None)]  # type: ignore[arg-type]


def parse_filtered_int(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    [parsed] = parse_webhook(request.body)
    assert isinstance(parsed, ParsedEvent)
    return [ParsedEvent(raw=parsed.raw, event=parsed.event, filtered=123)]  # type: ignore[arg-type]


def parse_long_reason(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    raise BadRequest("x" * 100_000)


@pytest.mark.parametrize(
    ("auth", "parser", "status", "logged"),
    [
        (accept_bool, parse, 503, "authenticate hook of source in returned bool, not an AuthResult"),
        (raise_in_auth, parse, 503, "authenticate hook of source in failed"),
        (accept, parse_string_raw, 503, "whose raw is not a JSON object"),
        (accept, parse_array_raw, 503, "whose raw is not a JSON object"),
        (accept, parse_refused_none, 503, "RefusedEvent at [1] whose reason is None"),
        (accept, parse_filtered_int, 503, "whose filtered is int (must be None or the reason)"),
        (accept, parse_dicts, 503, "returned a dict at [0]"),
        (accept, parse_one, 503, "parse_events returned ParsedEvent, not a list"),
        (accept, parse_dict_raw, 503, "whose raw is dict (must be bytes"),
        (accept, parse_invalid_raw, 503, "whose raw is not valid JSON"),
        (accept, parse_id_only_in_raw, 503, "whose raw has a messageId that its event lacks"),
        (accept, parse_id_disagrees, 503, "whose raw has a userId other than its event's"),
        (accept, parse_type_mismatch, 503, "whose raw is a 'track' event but whose event is a 'identify'"),
    ],
)
def test_a_source_hook_of_the_wrong_type_refuses_the_request(
    hookyard_server: Callable[..., HookyardServer], caplog: pytest.LogCaptureFixture,
    auth: Any, parser: Any, status: int, logged: str,
) -> None:
    config = {"sources": [{"name": "in", "plugin": "odd", "write_key": KEY}]}
    server = hookyard_server(config, plugins=[source_plugin(auth, parser)])
    r = server.client.post(f"{server.url}/connector/odd", json=sample_track(),
                           headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == status, r.text
    assert logged in caplog.text
    deadline = time.monotonic() + 10  # a refusal's log line is written after the answer
    while not (logs := server.api("/api/logs").json()["items"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [log["status"] for log in logs] == [status]


def test_an_allow_list_wrapper_sees_the_clients_address(
    hookyard_server: Callable[..., HookyardServer],
) -> None:
    """A wrapper of authenticate for every source: it yields first, then refuses."""
    from collections.abc import Generator

    class AllowList:
        @hookimpl(wrapper=True)
        def authenticate(self, request: IngestRequest) -> Generator[None, AuthResult, AuthResult]:
            result = yield
            if request.client != "127.0.0.1":
                return AuthResult.refuse(f"address {request.client} not allowed")
            return result

    _, r = odd_server(hookyard_server, accept, parse, AllowList())
    assert r.status_code == 200, r.text


def odd_server(hookyard_server: Callable[..., HookyardServer], auth: Any, parser: Any,
               *more: object) -> tuple[HookyardServer, httpx.Response]:
    """A server with one ``odd`` source, and its answer to a track posted without a key."""
    config = {"sources": [{"name": "in", "plugin": "odd", "write_key": KEY}]}
    server = hookyard_server(config, plugins=[source_plugin(auth, parser), *more])
    return server, server.client.post(f"{server.url}/connector/odd", json=sample_track())


def test_a_long_refusal_is_clipped_in_the_answer(
    hookyard_server: Callable[..., HookyardServer],
) -> None:
    _, r = odd_server(hookyard_server, accept, parse_long_reason)
    assert r.status_code == 400 and r.json()["error"] == "x" * 1000 + "…"


def test_a_failed_authenticate_is_a_503_to_retry_not_a_401(
    hookyard_server: Callable[..., HookyardServer],
) -> None:
    """A client takes a 401 as final and drops its events; the plugin's bug must not lose
    them. Without a write key in the picture the reason is not "invalid write key"."""
    _, r = odd_server(hookyard_server, raise_in_auth, parse)
    assert r.status_code == 503 and r.headers["retry-after"] == "5"
    assert "its plugin failed: see the server log" in r.json()["error"]
    assert "www-authenticate" not in r.headers


def test_a_refusal_by_the_paths_only_source_is_logged_as_its_own(
    hookyard_server: Callable[..., HookyardServer],
) -> None:
    server, r = odd_server(hookyard_server, refuse, parse)
    assert r.status_code == 401 and r.json()["error"] == "bad signature"
    assert r.headers["www-authenticate"] == 'Signature realm="odd"'  # the source's own scheme
    deadline = time.monotonic() + 10  # a refusal's log line is written after the answer
    while not (logs := server.api("/api/logs?source=in").json()["items"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [(log["source"], log["status"]) for log in logs] == [("in", 401)]


def test_a_stored_event_that_is_not_an_object_is_listed_with_an_error(
    hookyard_server: Callable[..., HookyardServer],
) -> None:
    """Stored before ingest checked a plugin's raw, it made GET /api/events answer 500 for
    every source; the router dead-letters it."""
    config = {"sources": [{"name": "in", "plugin": "odd", "write_key": KEY}]}
    server = hookyard_server(config, plugins=[source_plugin(accept, parse)])
    server.runtime.db.write_sync(lambda conn: conn.execute(
        "INSERT INTO inbox (source, message_id, type, received_at, raw) VALUES"
        " ('in', 'm-str', 'track', '2026-01-01T00:00:00.000Z', ?)", (b'"just a string"',)))
    r = server.api("/api/events")
    assert r.status_code == 200, r.text
    [item] = r.json()["items"]
    assert item["event"]["messageId"] == "m-str"
    assert item["event"]["error"].startswith("the stored event is not a JSON object")


def test_an_async_def_of_a_hook_that_is_not_awaited_stops_start_up() -> None:
    for plugin in (source_plugin(accept_async, parse), source_plugin(accept, parse_async)):
        with pytest.raises(ConfigError, match="is an async def, but hookyard calls it without"
                                              " awaiting: make it a plain def"):
            registry([plugin])


class Settings(msgspec.Struct):
    url: str = ""


@dataclasses.dataclass
class NotAStruct:
    url: str = ""


@pytest.mark.parametrize(
    ("connector", "message"),
    [
        (Connector(name="acme", kind="destinaton"),  # type: ignore[arg-type]
         "kind 'destinaton': use 'source' or 'destination'"),
        (Connector(name="acme", kind="destination", settings=NotAStruct),  # type: ignore[arg-type]
         "settings must be a msgspec.Struct class"),
        (Connector(name="acme", kind="destination", integration_names="Acme"),  # type: ignore[arg-type]
         "integration_names must be a tuple of names"),
        (Connector(name="acme", kind="source"), "source connector 'acme' has no paths"),
        (Connector(name="acme", kind="source", paths=("connector/acme",)),
         "path 'connector/acme' must be a string starting with '/'"),
        (Connector(name="acme", kind="source", paths=("/ui/login",)),
         r"path '/ui/login' is hookyard's own \(/ui\)"),
        (Connector(name="acme", kind="source", paths=("/api/acme",)),
         r"path '/api/acme' is hookyard's own \(/api\)"),
        (Connector(name="acme", kind="source", paths=("/ui{rest:path}",)),
         r"path '/ui\{rest:path\}' is hookyard's own \(/ui\)"),
        (Connector(name="acme", kind="source", paths=("/{a}/login",)),
         r"path '/\{a\}/login' is hookyard's own \(/ui/login\)"),
        (Connector(name="acme", kind="source", paths=("/{rest:path}",)), "is hookyard's own"),
        (Connector(name="acme", kind="source", paths=("/in/{x:nope}",)),
         "is not a valid route pattern: Unknown path convertor 'nope'"),
    ],
)
def test_a_connector_declared_wrong_stops_start_up(connector: Connector, message: str) -> None:
    class Declares:
        @hookimpl
        def register_connectors(self) -> list[Connector]:
            return [connector]

    with pytest.raises(ConfigError, match=message):
        registry([Declares()])


def test_a_configured_destination_without_deliver_stops_start_up(tmp_path: Path) -> None:
    class NoDeliver:
        @hookimpl
        def register_connectors(self) -> list[Connector]:
            return [Connector(name="nodeliver", kind="destination", settings=Settings)]

        def map_event(self) -> None:  # no @hookimpl: not registered
            ...

    config = parse_config({
        "server": {"data_dir": str(tmp_path)},
        "sources": [{"name": "web", "plugin": "segment", "write_key": KEY}],
        "destinations": [{"name": "d", "plugin": "nodeliver", "sources": ["web"]}],
    })
    with pytest.raises(ConfigError, match="does not implement 'map_event' or 'deliver'"
                                          r" \(a missing @hookimpl\?\)"):
        Runtime.build(config, [NoDeliver()])


def test_a_settings_check_that_raises_something_else_is_a_config_error() -> None:
    """Only ValueError (and TypeError) became a config error; a bad regex compiled in
    __post_init__ (re.error) was a traceback at check-config and serve."""
    import re

    class Strict(msgspec.Struct, forbid_unknown_fields=True):
        pattern: str = ".*"

        def __post_init__(self) -> None:
            re.compile(self.pattern)

    class Declares:
        @hookimpl
        def register_connectors(self) -> list[Connector]:
            return [Connector(name="strict", kind="destination", settings=Strict)]

        @hookimpl
        def map_event(self, destination: Any, event: Any) -> Any:
            return []

        @hookimpl
        async def deliver(self, destination: Any, deliveries: Any, client: Any) -> Any:
            return []

    data = {"destinations": [{"name": "s", "plugin": "strict", "settings": {"pattern": "(oops"}}]}
    with pytest.raises(ConfigError, match=r"destinations\[s\]\.settings: the strict plugin's check"
                                          r" of its settings failed: error: missing \)"):
        Runtime.build(parse_config(data), plugins=[Declares()])


def parse_with_handshake(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    body = json.loads(request.body)
    if body.get("type") == "url_verification":  # Slack's: echo the challenge
        raise Reply(200, {"challenge": body["challenge"]}, headers={"X-Seen": "yes"})
    if body.get("type") == "ping":
        raise Reply(204)
    if body.get("type") == "hello":
        raise Reply(202, "accepted, thanks")
    return parse_webhook(request.body)


def test_a_source_can_answer_a_request_itself(
    hookyard_server: Callable[..., HookyardServer],
) -> None:
    """A vendor's handshake or ping: answered as the plugin says, nothing stored, logged."""
    config = {"sources": [{"name": "in", "plugin": "odd", "write_key": KEY}]}
    server = hookyard_server(config, plugins=[source_plugin(accept, parse_with_handshake)])
    url = f"{server.url}/connector/odd"
    r = server.client.post(url, json={"type": "url_verification", "challenge": "3eZbrw1a"})
    assert (r.status_code, r.json(), r.headers["x-seen"]) == (200, {"challenge": "3eZbrw1a"}, "yes")
    assert r.headers["content-type"] == "application/json"
    r = server.client.post(url, json={"type": "ping"})
    assert (r.status_code, r.content) == (204, b"")
    r = server.client.post(url, json={"type": "hello"})
    assert (r.status_code, r.text) == (202, "accepted, thanks")
    assert r.headers["content-type"] == "text/plain; charset=utf-8"
    assert server.api("/api/events").json()["items"] == []
    deadline = time.monotonic() + 10  # written after the answer
    while len(logs := server.api("/api/logs").json()["items"]) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted((log["source"], log["status"], log["events"], log["error"]) for log in logs) == [
        ("in", 200, 0, None), ("in", 202, 0, None), ("in", 204, 0, None)]


@pytest.mark.parametrize(("args", "kwargs", "message"), [
    ((100,), {}, "status must be an int from 200 to 599"),
    ((200, 3.5), {}, "body must be a dict, list, str, bytes or None, not float"),
    ((200,), {"headers": {"X": 1}}, "headers must be a dict of str to str"),
    ((200,), {"headers": {"X": "a\r\nSet-Cookie: s=1"}}, "holds a control character"),
    ((200, "x"), {"content_type": "text/plain\nX: y"}, "holds a control character"),
    ((200,), {"headers": {"X-Mark": "é✓"}}, "is not Latin-1 text"),
    ((200,), {"headers": {"X-Bell": "a\x07b"}}, "holds a control character"),
    ((200,), {"headers": {"X-Space": " padded"}}, "begins or ends with white space"),
    ((200,), {"headers": {"": "v"}}, "is not an HTTP token"),
    ((200,), {"headers": {"Content-Length": "1"}}, "may not set Content-Length"),
])
def test_a_reply_is_checked_when_it_is_made(args: Any, kwargs: Any, message: str) -> None:
    with pytest.raises((TypeError, ValueError), match=message):
        Reply(*args, **kwargs)


def signed_source() -> object:
    """A source that checks a signature, not a write key (Connector.write_key = False)."""
    class Signed:
        @hookimpl
        def register_connectors(self) -> list[Connector]:
            return [Connector(name="signed", kind="source", paths=("/connector/signed",),
                              write_key=False)]

        @hookimpl
        def authenticate(self, source: SourceContext, request: IngestRequest) -> AuthResult:
            ok = request.headers.get("signature") == "good" and source.write_key == ""
            return AuthResult.accept() if ok else AuthResult.refuse("bad signature")

        @hookimpl
        def parse_events(self, source: SourceContext, request: IngestRequest) -> Any:
            return parse_webhook(request.body)

    return Signed()


def test_a_source_that_checks_no_write_key_needs_none(
    hookyard_server: Callable[..., HookyardServer],
) -> None:
    """Its authors had to invent a unique 8-character key nobody sends, shown in the banner
    and the dashboard as the source's key."""
    config = {"sources": [{"name": "a", "plugin": "signed"}, {"name": "b", "plugin": "signed"}]}
    server = hookyard_server(config, plugins=[signed_source()])
    url = f"{server.url}/connector/signed"
    assert server.client.post(url, json=sample_track(), headers={"Signature": "good"}).status_code == 200
    r = server.client.post(url, json=sample_track(), headers={"Authorization": "Bearer x"})
    assert r.status_code == 401
    spec = server.client.get(f"{server.url}/openapi.json").json()
    assert spec["paths"]["/connector/signed"]["post"]["security"] == []


def test_a_source_whose_plugin_checks_the_write_key_still_needs_one() -> None:
    data = {"sources": [{"name": "web", "plugin": "segment"}]}
    with pytest.raises(ConfigError, match="source 'web' has no write_key: the segment plugin"
                                          " authenticates requests with it"):
        Runtime.build(parse_config(data))


@pytest.mark.parametrize("challenge", ["", "  ", 'Bearer realm="x"\r\nSet-Cookie: a=b', "Bearer \u2603",
                                       'Basic realm="a\x01"', "\x7fBearer", "Bearer\x0b",
                                       ' Bearer realm="x"'])
def test_an_auth_challenge_a_header_cannot_carry_is_refused_when_made(challenge: str) -> None:
    """The 401's WWW-Authenticate comes from the plugin: response splitting or a header
    uvicorn cannot encode is the plugin's error, raised in its own tests."""
    with pytest.raises(ValueError, match="AuthResult challenge"):
        AuthResult.refuse("no", challenge)


def parse_decoding_itself(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    """As the docs' url_verification example does: the hook decodes the body itself."""
    body = msgspec.json.decode(request.body)
    assert isinstance(body, dict)
    return parse_webhook(request.body)


def test_a_body_the_hook_cannot_decode_is_the_clients_400(
    hookyard_server: Callable[..., HookyardServer],
) -> None:
    """Found by the re-check: with a plugin's failures answered 503, the docs' own example
    source answered 503 to a malformed or empty body, which clients then retried for good."""
    config = {"sources": [{"name": "in", "plugin": "odd", "write_key": KEY}]}
    server = hookyard_server(config, plugins=[source_plugin(accept, parse_decoding_itself)])
    for body in (b'{"type": "track", oops', b"", b"not json", b"\xff\xfe{}"):
        r = server.client.post(f"{server.url}/connector/odd", content=body,
                               headers={"Authorization": f"Bearer {KEY}",
                                        "Content-Type": "application/json"})
        assert r.status_code == 400 and "malformed JSON" in r.text, (body, r.text)


def parse_vendor_body(self: Any, source: SourceContext, request: IngestRequest) -> Any:
    """A vendor's own body (a list of objects) made into track events, each keeping what it
    carries: as a plugin source does, without hookyard's parsers."""
    from hookyard.events import event_from_dict

    out = []
    for i, item in enumerate(msgspec.json.decode(request.body)):
        data = {"type": "track", "event": "vendor.thing", "userId": "u1",
                "messageId": f"vendor-{i}", "properties": item}
        out.append(ParsedEvent(raw=msgspec.json.encode(data), event=event_from_dict(data)))
    return out


def test_a_plugin_sources_events_are_held_to_the_nesting_limit(
    hookyard_server: Callable[..., HookyardServer],
) -> None:
    """Plugin-author audit: the 100 levels of hookyard.nesting were applied by hookyard's own
    parsers only; a plugin source stored 200 levels, and at ~1,000 its decoder's
    RecursionError was a 503 that the vendor retried for ever."""
    config = {"sources": [{"name": "in", "plugin": "odd", "write_key": KEY}]}
    server = hookyard_server(config, plugins=[source_plugin(accept, parse_vendor_body)])

    def nested(levels: int) -> Any:
        value: Any = 1
        for _ in range(levels):
            value = {"a": value}
        return value

    def post(body: bytes) -> httpx.Response:
        return server.client.post(f"{server.url}/connector/odd", content=body,
                                  headers={"Authorization": f"Bearer {KEY}"})

    deep = msgspec.json.encode(nested(200))
    r = post(b"[" + deep + b"]")
    assert r.status_code == 400 and "nested too deeply" in r.text, r.text
    r = post(b'[{"ok": 1}, ' + deep + b"]")  # refused alone in a list
    assert r.status_code == 200 and r.json()["refused"][0]["index"] == 1, r.text
    r = post(b"[" + b'{"a":' * 1500 + b"1" + b"}" * 1500 + b"]")
    assert r.status_code == 400 and "nested too deeply" in r.text, r.text
