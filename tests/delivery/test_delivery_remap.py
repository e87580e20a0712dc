"""Deliveries mapped again (a destination's plugin changed, requests cleared by the schema's
migration 4, a failed map_event's dead letter retried): each event is mapped once, and a user's
later deliveries wait for the ones mapped again (the session's review found an event with two
deliveries sent four times, and a user's later event sent before the remapped one)."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
from delivery_kit import PLUGIN, Peer, recorder, send, track, wait_until
from hookyard import hookimpl
from hookyard.connectors import Connector, DestinationContext
from hookyard.deliveries import Delivery, DeliveryResult, MapResult
from hookyard.events import Event
from hookyard.http import HttpClient
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer

Start = Callable[..., HookyardServer]


class PartsSettings(msgspec.Struct, kw_only=True):
    base_url: str


class TwoPerEvent:
    """A destination whose map_event makes two deliveries of each event (the hook API allows
    several), registered under two names to model a plugin change."""

    def __init__(self, name: str) -> None:
        self.name = name

    @hookimpl
    def register_connectors(self) -> list[Connector]:
        return [Connector(name=self.name, kind="destination", settings=PartsSettings,
                          batch_size=5, description="test: two deliveries per event")]

    @hookimpl
    def map_event(self, destination: DestinationContext, event: Event,
                  raw: dict[str, Any]) -> MapResult | None:
        if destination.plugin != self.name:
            return None
        return MapResult.send(*[Delivery(kind=k, path="/item", ordering_key=raw["userId"],
                                         body={"messageId": raw["messageId"], "part": k,
                                               "by": self.name}) for k in ("a", "b")])

    @hookimpl
    async def deliver(self, destination: DestinationContext, deliveries: list[Delivery],
                      client: HttpClient) -> list[DeliveryResult] | None:
        if destination.plugin != self.name:
            return None
        out = []
        for d in deliveries:
            result, _ = await client.send("POST", destination.settings.base_url + d.path,
                                          json=d.body)
            out.append(result)
        return out


def parts(name: str, url: str) -> dict[str, Any]:
    return {"name": "out", "plugin": name, "sources": ["web"], "settings": {"base_url": url},
            "delivery": {"retry_initial_seconds": 0.05, "retry_max_seconds": 0.2}}


def test_an_event_with_two_deliveries_is_mapped_once_by_the_new_plugin(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer], tmp_path: Path,
) -> None:
    old, new = fake_destination(), fake_destination()
    old.fail(503)
    plugins = [TwoPerEvent("parts_old"), TwoPerEvent("parts_new")]
    first = hookyard_server({"destinations": [parts("parts_old", old.url)]}, plugins=plugins,
                            data_dir=tmp_path / "d")
    assert send(first, "/v1/track", track("u1", 1)).status_code == 200
    wait_until(lambda: len(old.requests) >= 1, what="a failed attempt")
    first.stop()
    second = hookyard_server({"destinations": [parts("parts_new", new.url)]}, plugins=plugins,
                             data_dir=tmp_path / "d")
    wait_until(lambda: len(new.requests) >= 2, what="the event's deliveries, made again")
    time.sleep(1.0)  # nothing more comes
    assert sorted((r.json()["part"], r.json()["by"]) for r in new.requests) == [
        ("a", "parts_new"), ("b", "parts_new")]
    conn = sqlite3.connect(second.runtime.data_dir / "hookyard.db")
    rows = conn.execute("SELECT state, plugin FROM outbox ORDER BY id").fetchall()
    conn.close()
    assert rows == [("done", "parts_new"), ("done", "parts_new")]


def test_a_users_later_delivery_waits_for_the_one_mapped_again(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer], tmp_path: Path,
) -> None:
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    peer.default = (503, {"error": "down"}, {})
    config = {"destinations": [recorder(fake.url, per_item=True)]}
    first = hookyard_server(config, plugins=[PLUGIN], data_dir=tmp_path / "d")
    assert send(first, "/v1/batch", {"batch": [track("u1", 1), track("u1", 2)]}).status_code == 200
    wait_until(lambda: len(fake.requests) >= 1, what="a failed attempt")
    first.stop()
    conn = sqlite3.connect(tmp_path / "d" / "hookyard.db")
    with conn:  # what migration 4 does to a row queued before the upgrade
        conn.execute("UPDATE outbox SET request = NULL, plugin = NULL WHERE message_id = 'u1-1'")
    conn.close()
    peer.default = (200, {"ok": True}, {})
    hookyard_server(config, plugins=[PLUGIN], data_dir=tmp_path / "d")
    wait_until(lambda: len(peer.accepted_ids()) >= 2, what="both delivered")
    assert peer.accepted_ids() == ["u1-1", "u1-2"]
