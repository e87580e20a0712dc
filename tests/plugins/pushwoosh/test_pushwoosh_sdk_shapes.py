"""hookyard's ``/setTags`` request is the one Pushwoosh's own Python client (``pypushwoosh``)
builds and sends.

pypushwoosh (Pushwoosh's ``pushwoosh-python-lib``) has ``SetTagsCommand(application, hwid,
tags)`` and no ``postEvent`` or ``userId`` form, so the check covers the device (hwid) form of
setTags: (1) the command's own rendering equals hookyard's mapped body; (2) the client itself and
hookyard's deliver hook send to the same loopback fake, and the recorded requests agree on
method, path, content type and JSON body. The one difference is deliberate: the old client sends
no ``Authorization`` (the legacy device API), hookyard sends ``Token <api_key>`` as the current
API reference asks.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import msgspec
import pytest
from hookyard.deliveries import Delivery
from hookyard.testing import deliver_with, destination_context, map_with, registry, sample_identify
from hookyard.testing.fake_server import FakeServer, RecordedRequest

pypushwoosh = pytest.importorskip("pypushwoosh")
from pypushwoosh.client import PushwooshClient  # noqa: E402
from pypushwoosh.command import SetTagsCommand  # noqa: E402

REG = registry()
APP = "AAAAA-BBBBB"
HWID = "8f65b16df378e7a6bece9614e1530fb2"
OK = {"status_code": 200, "status_message": "OK", "response": None}
TRAITS = {
    "logins": 5,
    "plan": "premium",
    "genres": ["rock", "jazz"],
    "createdAt": "2024-05-01T10:30:00+02:00",
    "verified": True,
    "ltv": 19.95,
    "language": "en-US",
}
TAGS = {  # what a Pushwoosh user would hand the client for those traits
    "logins": 5,
    "plan": "premium",
    "genres": ["rock", "jazz"],
    "createdAt": "2024-05-01 08:30",
    "verified": True,
    "ltv": 19.95,
    "Language": "en",
}


def hookyard_delivery(base_url: str | None = None) -> Delivery:
    settings = {"api_key": "pw-token", "application": APP}
    if base_url:
        settings["base_url"] = base_url
    raw = sample_identify(
        userId=None, anonymousId="anon-1", context={"device": {"id": HWID}}, traits=TRAITS
    )
    [delivery] = map_with(destination_context("pushwoosh", settings, reg=REG), raw, REG).deliveries
    return delivery


def test_set_tags_matches_the_clients_command() -> None:
    sdk = SetTagsCommand(APP, HWID, TAGS).render()
    ours = msgspec.json.encode(hookyard_delivery().body).decode()
    assert json.loads(ours) == json.loads(sdk)


@pytest.fixture
def fake() -> Iterator[FakeServer]:
    server = FakeServer().start()
    server.respond(200, OK)
    yield server
    server.stop()


def client_request(fake: FakeServer) -> RecordedRequest:
    client = PushwooshClient(timeout=5)
    client.scheme, client.hostname = "http", f"{fake.host}:{fake.port}"
    answer: Any = client.invoke(SetTagsCommand(APP, HWID, TAGS))
    assert answer == OK
    [request] = fake.requests
    return request


def test_the_client_and_hookyard_send_the_same_request(fake: FakeServer) -> None:
    sdk = client_request(fake)
    ctx = destination_context(
        "pushwoosh", {"api_key": "pw-token", "application": APP, "base_url": fake.url}, reg=REG
    )
    [result] = deliver_with(ctx, [hookyard_delivery(fake.url)], REG)
    assert result.outcome == "ok"
    ours = fake.requests[1]
    assert (ours.method, ours.path, ours.query) == (sdk.method, sdk.path, sdk.query)
    assert (ours.method, ours.path) == ("POST", "/json/1.3/setTags")
    for header in ("content-type", "accept"):
        assert ours.headers[header].split(";")[0] == sdk.headers[header] == "application/json"
    assert json.loads(ours.body) == json.loads(sdk.body)
    assert "authorization" not in sdk.headers
    assert ours.headers["authorization"] == "Token pw-token"
