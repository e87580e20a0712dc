"""A source plugin's hooks answering the wrong type (an ``async def``, a bool, dicts, a raw
that is not bytes): the request is refused (401 or 400, the plugin's error logged), never a
500 nor a 503 that blames storage (found by an outside audit)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from hookyard import hookimpl
from hookyard.connectors import AuthResult, Connector, IngestRequest, ParsedEvent, SourceContext
from hookyard.testing import sample_track
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


@pytest.mark.parametrize(
    ("auth", "parser", "status", "logged"),
    [
        (accept_async, parse, 401, "authenticate hook of source in is async"),
        (accept_bool, parse, 401, "authenticate hook of source in returned bool, not an AuthResult"),
        (accept, parse_async, 400, "parse_events is async"),
        (accept, parse_dicts, 400, "returned a dict at [0]"),
        (accept, parse_one, 400, "parse_events returned ParsedEvent, not a list"),
        (accept, parse_dict_raw, 400, "whose raw is dict (must be bytes"),
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
