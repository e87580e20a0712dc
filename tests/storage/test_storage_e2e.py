"""A real server on each backend: ingest, dedupe, delivery with a retry, the operator API."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
from hookyard.testing import sample_identify, sample_track
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer


def start(hookyard_server: Callable[..., HookyardServer], fake: FakeServer,
          storage: dict[str, str]) -> HookyardServer:
    return hookyard_server({
        "storage": storage,
        "destinations": [{
            "name": "seg", "plugin": "segment", "sources": ["web"],
            "settings": {"write_key": "wk", "base_url": fake.url},
            "delivery": {"retry_initial_seconds": 0.05, "retry_max_seconds": 0.1,
                         "max_attempts": 2, "batch_size": 10},
        }],
    })


def sent_ids(fake: FakeServer) -> list[str]:
    return [e["messageId"] for body in fake.json_bodies() for e in body["batch"]]


def test_ingest_deliver_and_operate(
    storage_settings: dict[str, str], hookyard_server: Callable[..., HookyardServer],
    fake_destination: Callable[[], FakeServer],
) -> None:  # storage first: its schema is dropped after the server stopped
    fake = fake_destination()
    server = start(hookyard_server, fake, storage_settings)
    fake.fail(500, times=1)
    batch = [sample_track(messageId=f"m{i}", userId=f"u{i % 3}") for i in range(12)]
    assert server.post("/v1/batch", {"batch": batch}).status_code == 200
    assert server.post("/v1/identify", sample_identify(messageId="m0")).status_code == 200  # dup
    server.wait_idle()
    ids = sent_ids(fake)
    assert sorted(set(ids)) == sorted(f"m{i}" for i in range(12))
    for user in ("u0", "u1", "u2"):  # each user's events in order, retried ones included
        mine = [int(i[1:]) for i in dict.fromkeys(ids) if int(i[1:]) % 3 == int(user[1:])]
        assert mine == sorted(mine)

    events = server.api("/api/events?limit=5").json()
    assert len(events["items"]) == 5 and events["items"][0]["event"]["messageId"] == "m11"
    page2 = server.api(f"/api/events?limit=5&cursor={events['next']}").json()
    assert page2["items"][0]["event"]["messageId"] == "m6"
    logs = server.api("/api/logs?status=200").json()["items"]
    assert [x["events"] for x in logs] == [1, 12]
    trace = server.api("/api/deliveries?message_id=m0").json()["deliveries"]
    assert trace[0]["state"] == "done" and trace[0]["attempts_log"][0]["attempt"] >= 1
    metrics = httpx.get(f"{server.url}/metrics").text
    assert "hookyard_inbox_events 12.0" in metrics
    assert httpx.get(f"{server.url}/readyz").status_code == 200


def test_dead_letters_and_bad_filters(
    storage_settings: dict[str, str], hookyard_server: Callable[..., HookyardServer],
    fake_destination: Callable[[], FakeServer],
) -> None:  # storage first: its schema is dropped after the server stopped
    fake = fake_destination()
    server = start(hookyard_server, fake, storage_settings)
    fake.fail(400, times=1)
    assert server.post("/v1/track", sample_track(messageId="bad")).status_code == 200
    server.wait_idle()
    dead = server.api("/api/dead-letters").json()["items"]
    assert [d["message_id"] for d in dead] == ["bad"] and dead[0]["last_status"] == 400
    assert server.api("/api/dead-letters/retry", "POST", json={}).json()["count"] == 1
    server.wait_idle()
    assert sent_ids(fake) == ["bad", "bad"]
    odd: list[tuple[str, Any]] = [("/api/logs?status=2xx", None), ("/api/events?user_id=a%00b", None),
                                  ("/api/deliveries?message_id=%00", None)]
    for path, _ in odd:
        assert server.api(path).status_code < 500, path
    nul = sample_track(messageId="n\u0000ul", userId="u\u0000")
    assert server.post("/v1/track", nul).status_code == 200
