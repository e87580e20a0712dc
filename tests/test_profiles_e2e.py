"""The built-in profile store end to end, through a real hookyard server: channels, preferences,
event prefix, workflow runs, the read API (paging, search) and replay after a mapping change
(through ``POST /api/replay`` and the ``hookyard replay`` command)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hookyard.testing import sample_identify, sample_track
from hookyard.testing.server import HookyardServer, basic_auth
from hookyard.times import now_iso

KEY = "test-write-key"
ADMIN = "test-admin-token"
SOURCE = {"name": "web", "plugin": "segment", "write_key": KEY}
WORKFLOWS = [{"name": "welcome", "event": "User Registered"}]
CONFIG = {
    "sources": [SOURCE],
    "destinations": [
        {"name": "profiles", "plugin": "profiles", "sources": ["web"],
         "settings": {"preferences": {"$locale": "language", "$timezone": "timezone"},
                      "workflows": WORKFLOWS}},
        {"name": "prefixed", "plugin": "profiles", "sources": ["web"],
         "settings": {"event_prefix": True, "channels": {}}},
    ],
}
Start = Callable[..., HookyardServer]


@pytest.fixture
def server(hookyard_server: Start) -> HookyardServer:
    return hookyard_server(CONFIG)


def send(server: HookyardServer, *events: dict[str, Any]) -> None:
    """Ingest ``events`` in one /v1/batch and wait until they are delivered."""
    r = server.post("/v1/batch", {"batch": list(events)})
    assert r.status_code == 200, r.text
    server.wait_idle()


def get(server: HookyardServer, path: str, status: int = 200) -> Any:
    r = server.api(path)
    assert r.status_code == status, (path, r.status_code, r.text)
    return r.json()


def identify(uid: str, **traits: Any) -> dict[str, Any]:
    return sample_identify(userId=uid, traits=traits)


# -- channels, preferences, prefix, workflows ----------------------------------------------------
def test_channels_are_appended_across_identifies(server: HookyardServer) -> None:
    send(server, identify("u1", email="old@example.com", phone="+15550000001"))
    send(server, identify("u1", email="new@example.com", phone="+15550000001"))
    user = get(server, "/api/subscribers/u1")
    assert user["distinct_id"] == "u1"
    assert user["channels"] == {"$email": ["old@example.com", "new@example.com"],
                                "$sms": ["+15550000001"]}
    assert user["properties"] == {"email": "new@example.com", "phone": "+15550000001"}
    # channels = {} switches the default mapping off for the other destination
    assert get(server, "/api/subscribers/u1?destination=prefixed")["channels"] == {}


def test_a_number_too_large_where_ingest_does_not_look_is_stored_as_null(
        server: HookyardServer) -> None:
    """Found by an outside check: 1e999 in a field ingest does not read (a track's traits, an
    unknown field) was acknowledged, then every destination dead-lettered the event
    ("Number out of range"), and dlq retry could not mend it. It is read as null, as ingest
    reads a bare Infinity."""
    body = (b'{"batch": [{"type": "identify", "userId": "big", "traits": {"email":'
            b' "big@example.com"}, "extra": 1e999, "properties": {"a": -1e999, "b": 2}}]}')
    r = server.client.post(f"{server.url}/v1/batch", content=body,
                           headers={**basic_auth(KEY), "Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    server.wait_idle()
    assert get(server, "/api/subscribers/big")["channels"] == {"$email": ["big@example.com"]}
    assert get(server, "/api/dead-letters")["items"] == []


def test_a_numeric_id_is_a_64_bit_integer(server: HookyardServer) -> None:
    """Found by an outside check: a 4,000-digit numeric userId or messageId passed the text
    ids' length limits (PostgreSQL's index then refused it, as a 503)."""
    for field in ("userId", "messageId"):
        body = b'{"type": "track", "event": "e", "userId": "u", "' + field.encode() + b'": ' \
            + b"9" * 400 + b"}"
        r = server.client.post(f"{server.url}/v1/track", content=body,
                               headers={**basic_auth(KEY), "Content-Type": "application/json"})
        assert r.status_code == 400 and f"<= 9223372036854775807 - at $.{field}" in r.text


def test_traits_only_in_context_are_the_identifys_traits(server: HookyardServer) -> None:
    """RudderStack's Python library sends an identify's traits only as context.traits: the
    profile stayed empty."""
    event = sample_identify(userId="r1", context={"traits": {"email": "r1@example.com"}})
    event.pop("traits", None)
    send(server, event)
    user = get(server, "/api/subscribers/r1")
    assert user["properties"] == {"email": "r1@example.com"}
    assert user["channels"] == {"$email": ["r1@example.com"]}


def test_context_traits_count_once_against_the_32_kb_limit(server: HookyardServer) -> None:
    """Copying context.traits to traits doubles the stored event: the 32 KB limit is on what
    the client sent, so a 17 KB identify of RudderStack's library is stored, alone or in a
    batch (it was refused as over 32 KB, and silently lost inside a 200 batch)."""
    for uid, path in (("r-big-1", "/v1/identify"), ("r-big-2", "/v1/batch")):
        event = sample_identify(userId=uid, context={"traits": {"bio": "x" * 17_000}})
        event.pop("traits", None)
        body = {"batch": [event], "sentAt": "2026-01-01T00:00:00Z"} if path.endswith("batch") \
            else event
        r = server.post(path, body)
        assert r.status_code == 200 and "refused" not in r.json(), r.text
    server.wait_idle()
    for uid in ("r-big-1", "r-big-2"):
        assert len(get(server, f"/api/subscribers/{uid}")["properties"]["bio"]) == 17_000


def test_an_identify_from_the_future_does_not_freeze_the_profile(server: HookyardServer) -> None:
    """An identify counts as older than another by its time, so that a replay never rolls
    newer traits back; a timestamp in 2099 made every later identify "older", and the
    profile's traits never changed again."""
    send(server, sample_identify(userId="u-future", traits={"plan": "free"},
                                 timestamp="2099-01-01T00:00:00Z"))
    send(server, sample_identify(userId="u-future", traits={"plan": "pro"}, timestamp=None))
    assert get(server, "/api/subscribers/u-future")["properties"]["plan"] == "pro"


def test_invalid_locale_is_ignored(server: HookyardServer) -> None:
    send(server, identify("u1", language="hindi", timezone="Asia/Kolkata"))
    user = get(server, "/api/subscribers/u1")
    assert user["preferences"] == {"$locale": None, "$timezone": "Asia/Kolkata"}
    assert user["properties"]["language"] == "hindi"
    send(server, identify("u1", language="hi"), identify("u1", language="en-US", timezone="IST"))
    user = get(server, "/api/subscribers/u1")
    assert user["preferences"] == {"$locale": "hi", "$timezone": "Asia/Kolkata"}
    assert user["properties"] == {"language": "en-US", "timezone": "IST"}


def test_event_prefix_on_and_off(server: HookyardServer) -> None:
    track = sample_track(userId="u1")
    send(server, track)
    [plain] = get(server, "/api/subscribers/u1/events")["events"]
    [prefixed] = get(server, "/api/subscribers/u1/events?destination=prefixed")["events"]
    assert plain["event"] == "User Registered"
    assert prefixed["event"] == "segment : User Registered"
    for ev in (plain, prefixed):
        assert ev["properties"] == {"plan": "Pro Annual", "accountType": "Facebook"}
        assert ev["messageId"] == track["messageId"]
        assert ev["timestamp"] == track["timestamp"]


def test_workflow_runs(server: HookyardServer) -> None:
    first = sample_track(userId="u1")
    send(server, first, sample_track(userId="u2"), sample_track(userId="u1", event="Other"))
    send(server, first)  # a repeated messageId: stored once, no second run
    runs = get(server, "/api/workflow-runs")["runs"]
    assert sorted((r["workflow"], r["distinct_id"]) for r in runs) == [
        ("welcome", "u1"), ("welcome", "u2")]
    [mine] = get(server, "/api/workflow-runs?distinct_id=u1&workflow=welcome")["runs"]
    assert mine["event"] == "User Registered"
    assert mine["messageId"] == first["messageId"]
    assert mine["payload"] == first["properties"]
    assert get(server, "/api/workflow-runs?workflow=other")["runs"] == []
    assert get(server, "/api/workflow-runs?destination=prefixed")["runs"] == []


# -- read API ------------------------------------------------------------------------------------
def test_subscriber_events_pagination(server: HookyardServer) -> None:
    tracks = [sample_track(userId="u1", event=f"Step {i}", properties={"i": i}) for i in range(5)]
    send(server, *tracks)
    seen: list[str] = []
    pages = []
    cursor = None
    while True:
        path = "/api/subscribers/u1/events?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = get(server, path)
        pages.append(len(page["events"]))
        seen += [e["messageId"] for e in page["events"]]
        cursor = page["next"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
    assert pages == [2, 2, 1]
    assert seen == [t["messageId"] for t in reversed(tracks)]  # newest first, each once
    everything = get(server, "/api/subscribers/u1/events")
    assert everything["next"] is None and len(everything["events"]) == 5
    assert get(server, "/api/subscribers/u1/events?cursor=abc", 400)["error"]


def test_subscribers_paging_and_search(server: HookyardServer) -> None:
    send(server, *[identify(f"user-{i}", email=f"person{i}@example.com") for i in range(5)],
         identify("other", email="someone@elsewhere.org"))
    ids: list[str] = []
    cursor = None
    for _ in range(10):
        path = "/api/subscribers?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = get(server, path)
        assert len(page["subscribers"]) <= 2
        ids += [s["distinct_id"] for s in page["subscribers"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert ids == sorted(["other", *[f"user-{i}" for i in range(5)]])
    [found] = get(server, "/api/subscribers?q=person3@example.com")["subscribers"]
    assert found["distinct_id"] == "user-3"
    assert found["properties"] == {"email": "person3@example.com"}
    assert [s["distinct_id"] for s in get(server, "/api/subscribers?q=elsewhere")["subscribers"]] \
        == ["other"]
    assert len(get(server, "/api/subscribers?q=user-")["subscribers"]) == 5  # by distinct_id
    assert get(server, "/api/subscribers?q=nobody@example.com")["subscribers"] == []
    # LIKE wildcards in the search text match themselves, not everything
    assert get(server, "/api/subscribers?q=%25")["subscribers"] == []
    assert get(server, "/api/subscribers?q=_")["subscribers"] == []
    # a search SQLite cannot run (its LIKE patterns end at 50,000 bytes) is a 400, not a 500
    too_long = get(server, "/api/subscribers?q=" + "_" * 25_000, status=400)
    assert too_long == {"error": "q is 25,000 characters long: at most 1,000"}
    # an empty value counts as not given, as on every /api list (it was a 404: no profile
    # store destination ''; API contract audit)
    assert len(get(server, "/api/subscribers?destination=&q=user-")["subscribers"]) == 5
    assert "runs" in get(server, "/api/workflow-runs?destination=")


def test_an_id_with_a_slash_is_read_when_sent_encoded(server: HookyardServer) -> None:
    send(server, identify("a", email="a@example.com"), identify("a/events", email="b@example.com"),
         sample_track(userId="a", messageId="a-track"))
    assert get(server, "/api/subscribers/a%2Fevents")["distinct_id"] == "a/events"
    assert [e["messageId"] for e in get(server, "/api/subscribers/a/events")["events"]] == ["a-track"]
    assert get(server, "/api/subscribers/a%2Fevents/events")["events"] == []


def test_a_blank_user_id_is_refused_at_ingest(server: HookyardServer) -> None:
    r = server.post("/v1/identify", identify("   ", email="blank@example.com"))
    assert r.status_code == 400 and "userId or anonymousId is required" in r.text
    hook = server.client.post(f"{server.url}/connector/segment/",
                              json=identify(" ", email="blank@example.com"),
                              headers={"Authorization": f"Bearer {KEY}"})
    assert hook.status_code == 400 and "userId is required" in hook.text


def test_page_parameters_out_of_range_are_400_like_every_list(server: HookyardServer) -> None:
    send(server, identify("p1", email="p1@example.com"))
    for path in ("/api/subscribers?limit=0", "/api/subscribers?limit=501",
                 "/api/subscribers/p1/events?limit=-5", "/api/workflow-runs?limit=100000"):
        assert "limit must be 1-500" in get(server, path, 400)["error"], path
    assert get(server, "/api/subscribers/p1/events?cursor=abc", 400)["error"] == (
        "query parameter cursor must be an integer, got 'abc'")
    assert get(server, "/api/subscribers/p1/events?cursor=-1", 400)["error"] == (
        "query parameter cursor must be at least 1, got '-1'")
    assert "configured: profiles, prefixed" in get(
        server, "/api/subscribers?destination=nope", 404)["error"]


def test_unknown_subscriber_is_404(server: HookyardServer) -> None:
    assert "not found" in get(server, "/api/subscribers/nobody", 404)["error"]
    assert "not found" in get(server, "/api/subscribers/nobody/events", 404)["error"]
    assert get(server, "/api/subscribers?destination=nope", 404)["error"]


# -- replay after a mapping change ---------------------------------------------------------------
def profile_config(channels: dict[str, str] | None) -> dict[str, Any]:
    settings: dict[str, Any] = {"workflows": WORKFLOWS}
    if channels is not None:
        settings["channels"] = channels
    return {"sources": [SOURCE],
            "destinations": [{"name": "profiles", "plugin": "profiles", "sources": ["web"],
                              "settings": settings}]}


NEW_CHANNELS = {"$email": "email", "$whatsapp": "whatsapp"}
NEW_CONFIG_TOML = """\
[server]
data_dir = "{data_dir}"
admin_token = "{admin}"

[[sources]]
name = "web"
plugin = "segment"
write_key = "{key}"

[[destinations]]
name = "profiles"
plugin = "profiles"
sources = ["web"]

[destinations.settings]
channels = {{ "$email" = "email", "$whatsapp" = "whatsapp" }}
workflows = [{{ name = "welcome", event = "User Registered" }}]
"""


def test_replay_after_a_mapping_change(hookyard_server: Start, tmp_path: Path) -> None:
    data_dir = tmp_path / "shared-data"
    old = hookyard_server(profile_config(None), data_dir=data_dir)  # defaults: no $whatsapp
    welcome = sample_track(userId="alice")
    send(old, identify("alice", email="alice@example.com", whatsapp="+15550000001"), welcome)
    time.sleep(0.01)
    boundary = now_iso()
    time.sleep(0.01)
    send(old, identify("bob", email="bob@example.com", whatsapp="+15550000002"))
    assert get(old, "/api/subscribers/alice")["channels"] == {"$email": ["alice@example.com"]}
    assert get(old, "/api/subscribers/bob")["channels"] == {"$email": ["bob@example.com"]}
    old.stop()

    new = hookyard_server(profile_config(NEW_CHANNELS), data_dir=data_dir)
    # a mapping change applies to future syncs only ...
    assert get(new, "/api/subscribers/alice")["channels"] == {"$email": ["alice@example.com"]}
    send(new, identify("carol", email="carol@example.com", whatsapp="+15550000003"))
    assert get(new, "/api/subscribers/carol")["channels"] == {
        "$email": ["carol@example.com"], "$whatsapp": ["+15550000003"]}

    # ... and a replay of past syncs brings it to existing users (here: up to the boundary)
    r = new.api("/api/replay", "POST", json={"source": "web", "all": True, "until": boundary})
    assert r.status_code == 200, r.text
    assert r.json()["events"] == 2  # alice's identify and track
    new.wait_idle()
    assert get(new, "/api/subscribers/alice")["channels"] == {
        "$email": ["alice@example.com"], "$whatsapp": ["+15550000001"]}
    assert "$whatsapp" not in get(new, "/api/subscribers/bob")["channels"]
    # replaying is idempotent for events and workflow runs
    assert len(get(new, "/api/subscribers/alice/events")["events"]) == 1
    assert len(get(new, "/api/workflow-runs")["runs"]) == 1

    # the command line does the same, by source and time range, next to the running server
    config_path = tmp_path / "hookyard.toml"
    config_path.write_text(NEW_CONFIG_TOML.format(data_dir=data_dir, admin=ADMIN, key=KEY))
    env = {k: v for k, v in os.environ.items() if k != "HOOKYARD_CONFIG"}
    done = subprocess.run(
        [sys.executable, "-m", "hookyard", "replay", "--config", str(config_path),
         "--source", "web", "--since", boundary],
        capture_output=True, text=True, timeout=60, env=env, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert "replayed 2 events: 2 deliveries queued" in done.stdout  # bob's and carol's identifies
    new.wait_idle()
    assert get(new, "/api/subscribers/bob")["channels"] == {
        "$email": ["bob@example.com"], "$whatsapp": ["+15550000002"]}
    assert get(new, "/api/subscribers/carol")["channels"] == {
        "$email": ["carol@example.com"], "$whatsapp": ["+15550000003"]}
    assert get(new, "/api/subscribers/alice")["channels"]["$whatsapp"] == ["+15550000001"]


def test_replay_rejects_unknown_source_and_bad_time(server: HookyardServer) -> None:
    r = server.api("/api/replay", "POST", json={"source": "nope"})
    assert r.status_code == 404 and "nope" in r.json()["error"]
    r = server.api("/api/replay", "POST", json={"source": "web", "since": "yesterday"})
    assert r.status_code == 400 and "ISO-8601" in r.json()["error"]
    r = server.api("/api/replay", "POST", json={})
    assert r.status_code == 400
    r = server.api("/api/replay", "POST", json={"source": "web"})  # from when? (newcomer audit)
    assert r.status_code == 400 and "say where the replay starts" in r.json()["error"]
    r = server.api("/api/replay", "POST", json={"source": "web", "all": True, "since": "2026-01-01"})
    assert r.status_code == 400 and "cannot be combined" in r.json()["error"]
