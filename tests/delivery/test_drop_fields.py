"""``drop_fields``: fields a destination's plugin never sees (Segment's destination filters
drop properties), taken out after its filter and trigger, the stored event unchanged."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from delivery_kit import preview, send
from hookyard.config import parse_config
from hookyard.errors import ConfigError
from hookyard.fields import drop_path, without_paths
from hookyard.runtime import Runtime
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer


def test_without_paths_copies_only_what_it_changes() -> None:
    raw = {"traits": {"email": "a@b.co", "plan": "pro", "address": {"city": "X", "zip": "1"}},
           "context": {"ip": "1.2.3.4", "traits": {"email": "a@b.co"}}, "userId": "u"}
    paths = tuple(drop_path(p) for p in ("traits.email", "$.traits.address.city",
                                          "context.traits.email", "properties.nope.deeper"))
    out = without_paths(raw, paths)
    assert out == {"traits": {"plan": "pro", "address": {"zip": "1"}},
                   "context": {"ip": "1.2.3.4", "traits": {}}, "userId": "u"}
    assert raw["traits"]["email"] == "a@b.co" and raw["traits"]["address"]["city"] == "X"
    assert raw["context"]["traits"] == {"email": "a@b.co"}  # the stored event is untouched
    items = {"properties": {"products": [{"sku": "a", "price": 9}, "x", {"price": 1}]}}
    assert without_paths(items, (drop_path("properties.products.price"),)) == {
        "properties": {"products": [{"sku": "a"}, "x", {}]}}  # each object of the list
    assert items["properties"]["products"][0]["price"] == 9


@pytest.mark.parametrize("path", ["userId", "traits", "type", "messageId.x", "traits..email", "",
                                  "traits.email ", "traits. email"])
def test_a_path_outside_properties_traits_context_stops_boot(path: str, tmp_path) -> None:
    config = parse_config({
        "server": {"data_dir": str(tmp_path)},
        "sources": [{"name": "web", "plugin": "segment", "write_key": "wk_12345678"}],
        "destinations": [{"name": "p", "plugin": "profiles", "sources": ["web"],
                          "drop_fields": ["traits.ok", path]}],
    }, "test")
    with pytest.raises(ConfigError) as err:
        Runtime.build(config, prepare=False)
    assert str(err.value).startswith(f"destinations[p].drop_fields: {path!r} ")
    assert "is not a field under properties, traits, context" in str(err.value) \
        or "has spaces around a name" in str(err.value)


def test_one_destination_gets_the_event_without_the_fields(
    hookyard_server: Callable[..., HookyardServer], fake_destination: Callable[[], FakeServer]
) -> None:
    segment = fake_destination()
    segment.respond(200, {"success": True})
    server = hookyard_server({"destinations": [
        {"name": "profiles", "plugin": "profiles", "sources": ["web"]},
        {"name": "seg", "plugin": "segment", "sources": ["web"],
         "filter": 'traits.email = "drop-me@example.com"',  # the filter sees the whole event
         "drop_fields": ["traits.email", "traits.phone", "context.ip"],
         "settings": {"write_key": "downstream-key", "base_url": segment.url}},
    ]})
    event = {"type": "identify", "userId": "u1", "messageId": "m1", "context": {"ip": "1.2.3.4"},
             "traits": {"email": "u1@example.com", "phone": "+1555", "plan": "pro"}}
    dropped = {**event, "userId": "u2", "messageId": "m2",
               "traits": {"email": "drop-me@example.com"}}
    assert send(server, "/v1/batch", {"batch": [event, dropped]}).status_code == 200
    server.wait_idle()
    [forwarded] = [e for r in segment.requests for e in r.json()["batch"]]
    assert forwarded["messageId"] == "m1" and forwarded["traits"] == {"plan": "pro"}
    assert "ip" not in forwarded["context"]
    # the profile store, without drop_fields, got everything
    profile = server.api("/api/subscribers/u1").json()
    assert profile["channels"]["$email"] == ["u1@example.com"]
    assert preview(server, "seg", event)["requests"][0]["body"]["traits"] == {"plan": "pro"}
