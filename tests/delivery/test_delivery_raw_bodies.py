"""``Connector.raw_bodies``: the deliver hook gets each body as the stored JSON (msgspec.Raw)
instead of the parsed value, and what it sends is the same either way."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
from delivery_kit import send, states, track, wait_until
from hookyard import hookimpl
from hookyard.connectors import Connector, DestinationContext
from hookyard.deliveries import Delivery, DeliveryResult, MapResult
from hookyard.events import Event
from hookyard.testing.server import HookyardServer


class BodyTypes:
    """Two destinations mapping the same body; one declares ``raw_bodies``."""

    def __init__(self) -> None:
        self.seen: dict[str, list[Any]] = {"parsed": [], "raw": []}

    @hookimpl
    def register_connectors(self) -> list[Connector]:
        return [Connector(name="parsed", kind="destination"),
                Connector(name="raw", kind="destination", raw_bodies=True)]

    @hookimpl
    def map_event(self, destination: DestinationContext, event: Event,
                  raw: dict[str, Any]) -> MapResult:
        return MapResult.send(Delivery(kind="t", body={"id": raw["messageId"], "n": [1, 2.5]}))

    @hookimpl
    def deliver(self, destination: DestinationContext,
                deliveries: list[Delivery]) -> list[DeliveryResult]:
        self.seen[destination.plugin].extend(d.body for d in deliveries)
        return [DeliveryResult.ok() for _ in deliveries]


def test_a_connector_with_raw_bodies_gets_the_stored_json(
    hookyard_server: Callable[..., HookyardServer],
) -> None:
    plugin = BodyTypes()
    server = hookyard_server({"destinations": [
        {"name": n, "plugin": n, "sources": ["web"]} for n in ("parsed", "raw")]},
        plugins=[plugin])
    assert send(server, "/v1/track", track("u", 1)).status_code == 200
    wait_until(lambda: states(server) == {"done": 2}, what="both delivered")
    [parsed], [raw] = plugin.seen["parsed"], plugin.seen["raw"]
    assert parsed == {"id": "u-1", "n": [1, 2.5]}
    assert isinstance(raw, msgspec.Raw)
    assert msgspec.json.decode(raw) == parsed
    assert msgspec.json.encode({"body": raw}) == msgspec.json.encode({"body": parsed})
