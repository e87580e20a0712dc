"""A ``map_event`` answer the router cannot store: a Delivery whose body msgspec cannot encode.

It is a plugin bug like a raising ``map_event``, and handled the same way: a dead letter
``map_event failed: TypeError: ...`` for that (event, destination) only, carrying the event's
user, while every other destination keeps receiving every event. The same holds for replays,
for ``dlq retry`` (the dead letter is mapped again) and for previews (the API and the CLI
report the failure in ``reason``, like a raising hook).

The ``opaque`` destination below is a real connector plugin. The CLI tests install it the way
a third-party plugin is installed: a distribution with a ``hookyard`` entry point on sys.path.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner
from delivery_kit import (
    FAST,
    PLUGIN,
    Peer,
    admin,
    dead_letters,
    preview,
    recorder,
    send,
    states,
    trace,
    track,
    wait_until,
)
from hookyard import hookimpl
from hookyard.cli import main
from hookyard.connectors import Connector, DestinationContext
from hookyard.deliveries import Delivery, DeliveryResult, MapResult
from hookyard.events import Event
from hookyard.http import HttpClient
from hookyard.inbox import INSERT_EVENT
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer

Start = Callable[..., HookyardServer]
ERROR = "map_event failed: TypeError: Encoding objects of type Opaque is unsupported"


class Opaque:
    """Not JSON: msgspec cannot encode it."""


class OpaqueSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Destination ``opaque`` (tests only)."""

    base_url: str
    broken: bool = True  # the body holds an Opaque (false: the plugin is fixed)
    good_first: bool = False  # a good delivery comes first, then the broken one


class OpaquePlugin:
    @hookimpl
    def register_connectors(self) -> list[Connector]:
        return [Connector(name="opaque", kind="destination", settings=OpaqueSettings,
                          description="test destination with an unencodable body")]

    @hookimpl
    def map_event(self, destination: DestinationContext, event: Event,
                  raw: dict[str, Any]) -> MapResult:
        settings: OpaqueSettings = destination.settings
        good = Delivery(kind="good", path="/item", body={"messageId": raw["messageId"]})
        bad = Delivery(kind="x", path="/item", body={"obj": Opaque()})
        if not settings.broken:
            return MapResult.send(good)
        return MapResult.send(good, bad) if settings.good_first else MapResult.send(bad)

    @hookimpl
    async def deliver(self, destination: DestinationContext, deliveries: list[Delivery],
                      client: HttpClient) -> list[DeliveryResult]:
        settings: OpaqueSettings = destination.settings
        results = []
        for d in deliveries:
            result, _ = await client.send("POST", settings.base_url.rstrip("/") + d.path,
                                          json=d.body)
            results.append(result)
        return results


OPAQUE = OpaquePlugin()


def opaque(url: str, name: str = "bad", **settings: Any) -> dict[str, Any]:
    return {"name": name, "plugin": "opaque", "sources": ["web"],
            "settings": {"base_url": url, **settings}, "delivery": FAST}


EVENTS = [
    track("u1", 1),
    {"type": "identify", "userId": "u2", "messageId": "u2-1", "traits": {}},
    {"type": "track", "anonymousId": "anon-3", "event": "Step", "messageId": "a3-1"},
    track("u1", 2),
]
USERS = {"u1-1": "u1", "u2-1": "u2", "a3-1": "anon-3", "u1-2": "u1"}


def dead_by_message(server: HookyardServer, destination: str, count: int) -> dict[str, Any]:
    """The dead letters of ``destination`` by messageId, once there are ``count``."""
    def check() -> dict[str, Any] | None:
        found = dead_letters(server, destination=destination)
        return {d["message_id"]: d for d in found} if len(found) == count else None

    result: dict[str, Any] = wait_until(check, what=f"{count} dead letters of {destination}")
    return result


def settled(server: HookyardServer) -> dict[str, int]:
    """The outbox states once nothing is pending or leased."""
    def check() -> dict[str, int] | None:
        now = states(server)
        return now if not now.get("pending") and not now.get("inflight") else None

    result: dict[str, int] = wait_until(check, what="an idle outbox")
    return result


def test_an_unencodable_delivery_is_a_dead_letter_of_its_destination_only(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    server = hookyard_server({"destinations": [
        recorder(fake.url, name="rec", required=[]),
        opaque(fake.url, name="bad"),
        opaque(fake.url, name="half", good_first=True),
    ]}, plugins=[PLUGIN, OPAQUE])

    assert send(server, "/v1/batch", {"batch": EVENTS}).status_code == 200
    wait_until(lambda: sorted(peer.accepted_ids()) == sorted(USERS), what="rec's deliveries")
    for name in ("bad", "half"):
        dead = dead_by_message(server, name, len(USERS))
        assert {m: (d["last_error"], d["user_key"]) for m, d in dead.items()} == {
            m: (ERROR, user) for m, user in USERS.items()}
    # nothing of "half" is sent: the event's mapping failed as a whole, like a raising hook
    assert settled(server) == {"done": 4, "dead": 8}
    assert {r["destination"]: r["state"] for r in trace(server, "u1-1")} == {
        "rec": "done", "bad": "dead", "half": "dead"}

    # the router goes on with later events
    assert send(server, "/v1/track", track("u4", 1)).status_code == 200
    wait_until(lambda: "u4-1" in peer.accepted_ids(), what="a later event")
    assert dead_by_message(server, "bad", 5)["u4-1"]["user_key"] == "u4"

    # a replay maps them again: the good destination gets them again, the bad one new dead letters
    r = admin(server, "/api/replay", "POST", json={"source": "web", "all": True})
    assert r.status_code == 200 and r.json()["events"] == 5, r.text
    wait_until(lambda: len(peer.accepted_ids()) == 10, what="the replayed deliveries")
    assert set(dead_by_message(server, "bad", 10)) == {*USERS, "u4-1"}
    assert settled(server) == {"done": 10, "dead": 20}
    assert fake.requests and all(req.path == "/batch" for req in fake.requests)  # rec's only


def test_retry_maps_the_dead_letter_again(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer], tmp_path: Path
) -> None:
    """``dlq retry`` of a dead letter whose delivery still cannot be encoded: it is dead again
    with the same error (not given back and retried forever); fixed, it is sent."""
    fake, data = fake_destination(), tmp_path / "data"
    server = hookyard_server({"destinations": [opaque(fake.url)]}, plugins=[OPAQUE],
                             data_dir=data)
    assert send(server, "/v1/track", track("m", 1)).status_code == 200
    first = dead_by_message(server, "bad", 1)["m-1"]
    assert (first["last_error"], first["user_key"]) == (ERROR, "m")
    assert admin(server, "/api/dead-letters/retry", "POST", json={}).json()["count"] == 1
    assert settled(server) == {"dead": 1}
    again = dead_by_message(server, "bad", 1)["m-1"]
    assert (again["id"], again["last_error"], again["user_key"]) == (first["id"], ERROR, "m")
    assert again["updated_at"] > first["updated_at"]
    server.stop()

    fixed = hookyard_server({"destinations": [opaque(fake.url, broken=False)]}, plugins=[OPAQUE],
                            data_dir=data)
    assert admin(fixed, "/api/dead-letters/retry", "POST", json={}).json()["count"] == 1
    assert settled(fixed) == {"done": 1}
    [row] = trace(fixed, "m-1")
    assert (row["kind"], row["user_key"], row["request"]["body"]) == ("good", "m", {"messageId": "m-1"})
    assert [req.json() for req in fake.requests] == [{"messageId": "m-1"}]


def test_a_stored_event_that_cannot_be_decoded_keeps_its_user(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    """An inbox row the current event types refuse (as an older version may have stored it):
    a dead letter per destination, with the raw event's user; later events still go out."""
    fake, peer = fake_destination(), Peer()
    fake.set_handler(peer)
    server = hookyard_server({"destinations": [recorder(fake.url, name="rec", required=[])]},
                             plugins=[PLUGIN])
    stored = [("web", "old-1", "track", "u9", None, None, "2026-01-01T00:00:00.000Z",
               b'{"userId":"u9","event":5}', None),
              ("web", "old-2", "track", None, "anon-9", None, "2026-01-01T00:00:00.000Z",
               b'{"anonymousId":"anon-9","event":[]}', None)]
    server.runtime.db.write_sync(lambda c: c.executemany(INSERT_EVENT, stored))
    assert send(server, "/v1/track", track("u9", 1)).status_code == 200  # wakes the router
    wait_until(lambda: peer.accepted_ids() == ["u9-1"], what="the later event")
    dead = dead_by_message(server, "rec", 2)
    assert {m: d["user_key"] for m, d in dead.items()} == {"old-1": "u9", "old-2": "anon-9"}
    assert all(d["last_error"].startswith("stored event cannot be decoded: ValidationError")
               for d in dead.values()), dead


def test_preview_reports_an_unencodable_delivery_like_a_raising_hook(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer]
) -> None:
    fake = fake_destination()
    server = hookyard_server({"destinations": [
        opaque(fake.url, name="bad"), opaque(fake.url, name="half", good_first=True),
        recorder(fake.url, name="boom", explode=True),
    ]}, plugins=[PLUGIN, OPAQUE])
    for name in ("bad", "half"):
        answer = preview(server, name, track("p", 1))
        assert (answer["passes"], answer["sent"]) == (True, False)
        assert answer["reason"] == answer["filtered"] == ERROR
        assert answer["requests"] == answer["deliveries"] == []
    boom = preview(server, "boom", track("p", 1))  # the same shape as a raising map_event
    assert boom["reason"] == "map_event failed: RuntimeError: recorder exploded"
    assert set(boom) == set(answer)
    assert fake.requests == [] and states(server) == {}


@pytest.fixture()
def installed_opaque(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The opaque plugin installed as a distribution with a ``hookyard`` entry point, so
    the CLI (which loads installed plugins only) finds it."""
    site = tmp_path / "site"
    info = site / "hookyard_opaque_test-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: hookyard-opaque-test\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[hookyard]\nopaque-test = {__name__}:OPAQUE\n")
    assert sys.modules[__name__].OPAQUE is OPAQUE
    monkeypatch.syspath_prepend(str(site))


TOML = """
[server]
admin_token = "map-failures-admin"

[[sources]]
name = "web"
plugin = "segment"
write_key = "test-write-key"

[[destinations]]
name = "bad"
plugin = "opaque"
sources = ["web"]
[destinations.settings]
base_url = "{url}"

[[destinations]]
name = "seg"
plugin = "segment"
sources = ["web"]
[destinations.settings]
write_key = "downstream"
base_url = "{url}"
"""


def run_cli(*args: str, stdin: str | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), input=stdin)
    return result.exit_code, result.output


def test_cli_preview_replay_and_dlq_list(
    installed_opaque: None, hookyard_server: Start, fake_destination: Callable[[], FakeServer],
    tmp_path: Path,
) -> None:
    fake = fake_destination()
    text = TOML.format(url=fake.url)
    config, data = tmp_path / "hookyard.toml", tmp_path / "data"
    config.write_text(text)
    opts = ["--config", str(config), "--data-dir", str(data)]
    event = track("c", 1)

    code, out = run_cli("preview", *opts, "--destination", "bad", stdin=json.dumps(event))
    assert code == 0, out
    answer = json.loads(out)  # the API's answer, as for a raising map_event
    assert (answer["sent"], answer["reason"], answer["requests"]) == (False, ERROR, [])

    server = hookyard_server({"destinations": [
        opaque(fake.url, name="bad"),
        {"name": "seg", "plugin": "segment", "sources": ["web"],
         "settings": {"write_key": "downstream", "base_url": fake.url}, "delivery": FAST},
    ]}, data_dir=data)
    assert preview(server, "bad", event) == answer
    assert send(server, "/v1/track", event).status_code == 200
    dead_by_message(server, "bad", 1)
    settled(server)

    code, out = run_cli("replay", "--source", "web", "--all", *opts)
    assert code == 1, out  # a dead letter was made: scripts notice
    assert ("replayed 1 events: 1 deliveries queued, 0 filtered, 1 failed to map (dead letters,"
            " with the error: hookyard dlq list)") in out, out
    dead_by_message(server, "bad", 2)
    settled(server)
    forwarded = [e["messageId"] for req in fake.requests for e in req.json()["batch"]]
    assert forwarded == ["c-1", "c-1"]  # seg got the event and its replay

    code, out = run_cli("dlq", "list", *opts)
    lines = out.strip().splitlines()
    assert code == 0 and len(lines) == 2, out
    assert all(" bad " in line and "user=c " in line and line.endswith(ERROR) for line in lines), out


class LeakySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    api_key: str


class LeakyPlugin:
    """A ``map_event`` whose exception quotes its settings, secret included."""

    @hookimpl
    def register_connectors(self) -> list[Connector]:
        return [Connector(name="leaky", kind="destination", settings=LeakySettings)]

    @hookimpl
    def map_event(self, destination: DestinationContext, event: Event,
                  raw: dict[str, Any]) -> MapResult:
        raise ValueError(f"cannot map with {destination.settings!r}")

    @hookimpl
    def deliver(self, destination: DestinationContext, deliveries: list[Delivery],
                client: HttpClient) -> list[DeliveryResult]:
        return [DeliveryResult.ok() for _ in deliveries]


def test_a_map_failure_quoting_a_secret_is_stored_without_it(tmp_path: Path) -> None:
    """...and is shown without it by a preview (``POST /api/destinations/D/preview``)."""
    from hookyard.config import parse_config
    from hookyard.delivery.preview import preview_event
    from hookyard.delivery.router import map_rows
    from hookyard.runtime import Runtime

    secret = "leaky-api-key-0123456789"
    rt = Runtime.build(parse_config({
        "server": {"data_dir": str(tmp_path)},
        "sources": [{"name": "web", "plugin": "segment", "write_key": "test-write-key"}],
        "destinations": [{"name": "leaky", "plugin": "leaky", "sources": ["web"],
                          "settings": {"api_key": secret}}],
    }), [LeakyPlugin()], prepare=False)
    raw = {"type": "track", "event": "E", "userId": "u1", "messageId": "m1",
           "receivedAt": "2026-01-01T00:00:00.000Z"}
    row = (1, "web", "m1", "track", raw["receivedAt"], msgspec.json.encode(raw), None)
    (out,) = map_rows(rt, [row])
    assert out[6] == "dead"
    expected = "map_event failed: ValueError: cannot map with LeakySettings(api_key='[redacted]')"
    assert out[9] == expected
    assert preview_event(rt, rt.destinations["leaky"], raw)["reason"] == expected


RAISING_WRAPPER = '''
from hookyard import hookimpl


@hookimpl(wrapper=True)
def map_event(destination, event, raw):
    if raw.get("userId") == "u2":
        raise RuntimeError("enrichment service down")
    return (yield)
'''


def test_a_map_failure_names_the_wrapper_that_raised(
    hookyard_server: Start, fake_destination: Callable[[], FakeServer], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Source-author audit: a map_event wrapper of another plugin that raised made a dead
    letter saying only "map_event failed: RuntimeError: ...", and an operator blamed the
    destination's connector."""
    import importlib

    (tmp_path / "raising_wrapper_test.py").write_text(RAISING_WRAPPER)
    monkeypatch.syspath_prepend(str(tmp_path))
    wrapper = importlib.import_module("raising_wrapper_test")
    fake = fake_destination()
    server = hookyard_server({"destinations": [recorder(fake.url, name="rec", required=[])]},
                             plugins=[PLUGIN, wrapper])
    assert send(server, "/v1/batch", {"batch": EVENTS}).status_code == 200
    dead = dead_by_message(server, "rec", 1)
    [error] = [d["last_error"] for d in dead.values()]
    assert error == ("map_event failed (raised in plugin 'raising_wrapper_test'): RuntimeError:"
                     " enrichment service down")
