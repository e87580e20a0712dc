"""``hookyard.testing``'s direct hook calls answer as the host would: ``map_with`` as the
router's ``map_one`` (a ``FieldMissing`` is a skip, message ids and ordering keys filled in),
``deliver_with`` with timeouts a test can choose."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hookyard import hookimpl
from hookyard.config import parse_config
from hookyard.connectors import Connector, DestinationContext
from hookyard.deliveries import Delivery, DeliveryResult, MapResult
from hookyard.delivery.router import map_one
from hookyard.errors import ConfigError
from hookyard.events import Event, event_type
from hookyard.fields import resolve_fields
from hookyard.http import HttpClient
from hookyard.runtime import Runtime
from hookyard.testing import (
    as_event,
    deliver_with,
    destination_context,
    map_with,
    registry,
    sample_identify,
    sample_track,
)
from hookyard.testing.fake_server import FakeServer

DEFAULTS = {"user": "$.userId", "email": "$.traits.email"}


class FieldsSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    base_url: str = "http://127.0.0.1:9"
    fields: dict[str, str] = {}


class FieldsPlugin:
    """A destination whose mapping needs ``email`` (``resolve_fields`` raises FieldMissing)."""

    @hookimpl
    def register_connectors(self) -> list[Connector]:
        return [Connector(name="needs-email", kind="destination", settings=FieldsSettings)]

    @hookimpl
    def map_event(self, destination: DestinationContext, event: Event,
                  raw: dict[str, Any]) -> MapResult:
        settings: FieldsSettings = destination.settings
        body = resolve_fields(raw, DEFAULTS, settings.fields, required=("email",))
        return MapResult.send(Delivery(kind=event_type(event), path="/people", body=body))

    @hookimpl
    async def deliver(self, destination: DestinationContext, deliveries: list[Delivery],
                      client: HttpClient) -> list[DeliveryResult]:
        settings: FieldsSettings = destination.settings
        return [(await client.send("POST", settings.base_url + d.path, json=d.body))[0]
                for d in deliveries]


def host_map(tmp_path: Path, raw: dict[str, Any], settings: dict[str, Any]) -> MapResult:
    """What the router itself answers for ``raw``."""
    rt = Runtime.build(parse_config({
        "server": {"data_dir": str(tmp_path), "admin_token": "test-admin-token"},
        "sources": [{"name": "web", "plugin": "segment", "write_key": "test-write-key"}],
        "destinations": [{"name": "out", "plugin": "needs-email", "sources": ["web"],
                          "settings": settings}],
    }), [FieldsPlugin()], prepare=False)
    return map_one(rt, rt.destinations["out"], raw, as_event(raw))


def test_map_with_answers_as_the_router(tmp_path: Path) -> None:
    reg = registry([FieldsPlugin()])
    cases: list[tuple[dict[str, Any], dict[str, Any]]] = [
        (sample_track(), {}),  # no traits.email: skipped, not an exception
        (sample_identify(), {}),
        (sample_identify(userId=None, anonymousId="anon-7"), {}),
        (sample_track(), {"fields": {"email": "=ops@example.com"}}),  # a literal override
    ]
    for raw, settings in cases:
        got = map_with(destination_context("needs-email", settings, reg=reg), raw, reg)
        assert got == host_map(tmp_path, raw, settings)
    skipped = map_with(destination_context("needs-email", reg=reg), sample_track(), reg)
    assert skipped == MapResult.skip("skipped: field email missing ($.traits.email)")
    raw = sample_identify(userId=None, anonymousId="anon-7")
    [delivery] = map_with(destination_context("needs-email", reg=reg), raw, reg).deliveries
    assert (delivery.message_id, delivery.ordering_key) == (raw["messageId"], "anon-7")


def test_deliver_with_timeouts(fake_destination: Callable[[], FakeServer]) -> None:
    fake = fake_destination()
    reg = registry([FieldsPlugin()])
    ctx = destination_context("needs-email", {"base_url": fake.url}, reg=reg)
    deliveries = map_with(ctx, sample_identify(), reg).deliveries
    fake.hang(1.5, times=1)
    started = time.monotonic()
    [result] = deliver_with(ctx, deliveries, reg, total_timeout=0.3)
    assert result.outcome == "retryable" and time.monotonic() - started < 1.2
    [result] = deliver_with(ctx, deliveries, reg, connect_timeout=1, total_timeout=3)
    assert result.outcome == "ok"


def test_contexts_refuse_a_misspelt_setting_as_the_server_does() -> None:
    import msgspec
    import pytest
    from hookyard.testing import destination_context

    with pytest.raises(msgspec.ValidationError,
                       match=r"unknown setting 'regoin' \(did you mean 'region'\?\)"):
        destination_context("novu", {"api_key": "novu-key-0123", "regoin": "eu"})


def test_deliver_with_hands_a_raw_bodies_connector_raw_bodies() -> None:
    """As the server's outbox does: ``d.body["x"]`` passing a hook test and failing in
    production was an outside audit's finding."""
    seen: list[Any] = []

    class RawSender:
        @hookimpl
        def register_connectors(self) -> list[Connector]:
            return [Connector(name="rawsender", kind="destination", raw_bodies=True)]

        @hookimpl
        def deliver(self, deliveries: list[Delivery]) -> list[DeliveryResult]:
            seen.extend(d.body for d in deliveries)
            return [DeliveryResult(outcome="ok") for _ in deliveries]

    reg = registry([RawSender()])
    deliver_with(destination_context("rawsender", reg=reg), [Delivery(kind="t", body={"x": 1})], reg)
    assert isinstance(seen[0], msgspec.Raw) and msgspec.json.decode(seen[0]) == {"x": 1}


def test_the_with_helpers_use_the_registry_the_context_was_built_with() -> None:
    """A plugin object that is not installed needed ``reg=`` a second time, and without it
    the error was a bare ``KeyError: ('destination', 'listmap')`` (an outside audit)."""

    class Listmap:
        @hookimpl
        def register_connectors(self) -> list[Connector]:
            return [Connector(name="listmap", kind="destination")]

        @hookimpl
        def map_event(self, event: Event) -> MapResult:
            return MapResult.send(Delivery(kind=event_type(event), body={}))

        @hookimpl
        def deliver(self, deliveries: list[Delivery]) -> list[DeliveryResult]:
            return [DeliveryResult(outcome="ok") for _ in deliveries]

    reg = registry([Listmap()])
    ctx = destination_context("listmap", reg=reg)
    [delivery] = map_with(ctx, sample_track()).deliveries
    assert delivery.kind == "track"
    assert [r.outcome for r in deliver_with(ctx, [delivery])] == ["ok"]
    with pytest.raises(ConfigError, match="no destination plugin named 'listmap' is installed"):
        registry().call("map_event", "destination", "listmap")


def test_contexts_resolve_env_settings_as_the_server_does(monkeypatch: pytest.MonkeyPatch) -> None:
    """A settings value "env:X" failed min_length in a plugin's unit test, where the server
    resolved it and started."""
    from hookyard.testing import destination_context, ingest_request

    monkeypatch.setenv("HY_TEST_PW_KEY", "pushwoosh-api-key-from-env")
    ctx = destination_context("pushwoosh", {"api_key": "env:HY_TEST_PW_KEY", "application": "A-B"})
    assert ctx.settings.api_key == "pushwoosh-api-key-from-env"
    req = ingest_request("/in", b"{}", query={"token": "t"}, method="PUT")
    assert (req.method, req.query) == ("PUT", {"token": "t"})


def test_a_registry_of_the_given_plugins_only() -> None:
    """Installed wrappers (an enrichment of every parse_events) stay out of a unit test."""
    import hookyard_segment.plugin as segment_plugin
    from hookyard.testing import registry

    reg = registry([segment_plugin], installed=False)
    assert {c.name for c, _ in reg.all()} == {"segment"}
    assert "profiles" in {c.name for c, _ in registry().all()}
