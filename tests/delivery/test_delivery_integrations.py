"""An event's ``integrations`` object turns destinations off for that event, as in Segment
(an outside audit: ``{"All": false}`` and ``{"Novu": false}`` reached every destination)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from delivery_kit import PLUGIN, api, recorder, send, trace, track
from hookyard.integration_flags import switched_off
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer

NAMES = ("novu-eu", "novu")


@pytest.mark.parametrize("flags, expected", [
    (None, None),
    ({}, None),
    ("nope", None),
    ({"All": True}, None),
    ({"Novu": False}, "integrations: Novu is false"),
    ({"novu-EU": False}, "integrations: novu-EU is false"),
    ({"Pushwoosh": False}, None),
    ({"All": False}, "integrations: All is false"),
    ({"all": False, "Novu": True}, None),
    ({"All": False, "Novu": {"any": "options"}}, None),  # options: on
    ({"All": False, "Novu": None}, None),  # named, not false
    ({"All": False, "Segment.io": {"apiHost": "x"}}, "integrations: All is false"),
    ({"All": "false"}, None),  # only the JSON false turns anything off
    ({1: False}, None),
    # the destination's own name wins over its plugin's, whatever the order (an outside audit)
    ({"Novu": True, "novu-eu": False}, "integrations: novu-eu is false"),
    ({"novu-eu": True, "Novu": False}, None),
    ({"Novu": False, "novu-eu": True}, None),
    # two keys for one name: the later, the event's own after a batch's defaults (merged first)
    ({"novu": False, "Novu": True}, None),
    ({"Novu": True, "novu": False}, "integrations: novu is false"),
])
def test_switched_off(flags: Any, expected: str | None) -> None:
    assert switched_off(flags, NAMES, obey_all=True) == expected


def test_all_false_does_not_stop_a_destination_that_forwards_the_object() -> None:
    assert switched_off({"All": False}, ("seg", "segment"), obey_all=False) is None
    assert switched_off({"All": False, "seg": False}, ("seg", "segment"),
                        obey_all=False) == "integrations: seg is false"


def test_integrations_through_the_router(
    hookyard_server: Callable[..., HookyardServer], fake_destination: Callable[[], FakeServer]
) -> None:
    peer, segment = fake_destination(), fake_destination()
    segment.respond(200, {"success": True})
    server = hookyard_server({"destinations": [
        recorder(peer.url),
        {**recorder(peer.url, name="deaf"), "honor_integrations": False},
        {"name": "seg", "plugin": "segment", "sources": ["web"],
         "settings": {"write_key": "downstream-key", "base_url": segment.url}},
    ]}, plugins=[PLUGIN])
    events = {
        "rec-off": {"rec": False},
        "all-off": {"All": False},
        "all-off-recorder-on": {"All": False, "Recorder": True},
        "seg-off": {"SEG": False},
        "seg-io-off": {"Segment.io": False},  # analytics.js's name for Segment (Connector.integration_names)
    }
    batch = [track(name, 1, integrations=flags) for name, flags in events.items()]
    assert send(server, "/v1/batch", {"batch": batch}).status_code == 200
    server.wait_idle()

    def outcome(user: str) -> dict[str, tuple[str, str | None]]:
        return {r["destination"]: (r["state"], r["last_error"]) for r in trace(server, f"{user}-1")}

    assert outcome("rec-off") == {"rec": ("filtered", "integrations: rec is false"),
                                  "deaf": ("done", None), "seg": ("done", None)}
    assert outcome("all-off") == {"rec": ("filtered", "integrations: All is false"),
                                  "deaf": ("done", None), "seg": ("done", None)}
    assert outcome("all-off-recorder-on") == {"rec": ("done", None), "deaf": ("done", None),
                                              "seg": ("done", None)}
    assert outcome("seg-off") == {"rec": ("done", None), "deaf": ("done", None),
                                  "seg": ("filtered", "integrations: SEG is false")}
    assert outcome("seg-io-off")["seg"] == ("filtered", "integrations: Segment.io is false")
    forwarded = [e for r in segment.requests for e in r.json()["batch"]]
    assert sorted(e["messageId"] for e in forwarded) == [
        "all-off-1", "all-off-recorder-on-1", "rec-off-1"]
    assert {e["messageId"]: e["integrations"] for e in forwarded}["all-off-1"] == {"All": False}


def with_relay(hookyard_server: Callable[..., HookyardServer], peer: FakeServer) -> HookyardServer:
    """A server with sources ``web`` and ``relay`` (``honor_integrations = false``) -> ``rec``."""
    return hookyard_server({
        "sources": [{"name": "web", "plugin": "segment", "write_key": "test-write-key"},
                    {"name": "relay", "plugin": "segment", "write_key": "relay-write-key",
                     "honor_integrations": False}],
        "destinations": [recorder(peer.url, sources=("web", "relay"))],
    }, plugins=[PLUGIN])


def test_a_source_that_ignores_integrations(
    hookyard_server: Callable[..., HookyardServer], fake_destination: Callable[[], FakeServer]
) -> None:
    """Events that Segment's Webhooks destination sends on have had their ``integrations``
    applied by Segment already (``{"All": false, "Webhooks": true}`` routes them to
    hookyard): a source with ``honor_integrations = false`` leaves them alone."""
    server = with_relay(hookyard_server, fake_destination())
    flags = {"All": False, "Webhooks": True}
    assert send(server, "/v1/track", track("direct", 1, integrations=flags)).status_code == 200
    relayed = api(server).post("/connector/segment/", json=track("relayed", 1, integrations=flags),
                               headers={"Authorization": "Bearer relay-write-key"})
    assert relayed.status_code == 200, relayed.text
    server.wait_idle()
    [direct] = trace(server, "direct-1")
    assert (direct["state"], direct["last_error"]) == ("filtered", "integrations: All is false")
    assert [r["state"] for r in trace(server, "relayed-1")] == ["done"]


def test_preview_says_what_the_integrations_object_does(
    hookyard_server: Callable[..., HookyardServer], fake_destination: Callable[[], FakeServer]
) -> None:
    """Preview agrees with live routing, for a source that ignores the object too (an outside
    audit: preview said skipped where the relay source's events were sent)."""
    server = with_relay(hookyard_server, fake_destination())
    event = track("p", 1, integrations={"All": False})
    url = "/api/destinations/rec/preview"
    off = api(server).post(url, json=event).json()
    assert (off["passes"], off["sent"]) == (False, False)
    assert off["integrations"] == off["reason"] == "integrations: All is false"
    relayed = api(server).post(url, params={"source": "relay"}, json=event).json()
    assert (relayed["passes"], relayed["sent"], relayed["integrations"]) == (True, True, None)
    r = api(server).post(url, params={"source": "nope"}, json=event)
    assert r.status_code == 400 and "no source named 'nope'" in r.json()["error"], r.text
    # an empty value counts as not given (API contract audit: it was a 400)
    assert api(server).post(url, params={"source": ""}, json=event).json() == off
