"""Hook-level tests of the webhook destination: the hooks are called directly through
``hookyard.testing`` (no hookyard server); ``deliver`` talks to a real loopback fake."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable
from typing import Any

import msgspec
import pytest
from hookyard.deliveries import Delivery
from hookyard.testing import (
    ANY,
    assert_requests,
    deliver_with,
    destination_context,
    map_with,
    registry,
    sample_group,
    sample_identify,
    sample_page,
    sample_track,
)
from hookyard.testing.fake_server import FakeServer
from hookyard_webhook.plugin import BATCH_SIZE, WebhookSettings, sign, verify

SECRET = "whsec-0123456789abcdef"


def settings(url: str = "https://example.com/hook", **extra: Any) -> dict[str, Any]:
    return {"url": url, "secret": SECRET, **extra}


def expected_signature(timestamp: str, body: bytes) -> str:
    """The documented scheme, recomputed here independently of the plugin."""
    message = timestamp.encode() + b"." + body
    return "v1=" + hmac.new(SECRET.encode(), message, hashlib.sha256).hexdigest()


def test_registered_through_the_entry_point() -> None:
    [(connector, plugin)] = [(c, p) for c, p in registry().all() if c.name == "webhook"]
    assert (connector.kind, plugin, connector.batch_size) == ("destination", "webhook", BATCH_SIZE)
    assert connector.settings is WebhookSettings


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"url": "https://example.com/hook"},
        settings(secret="short"),
        settings(url="ftp://x/y"),
        settings(url="example.com/hook"),
        settings(extra_field=1),
    ],
)
def test_settings_are_validated(bad: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        destination_context("webhook", bad)


@pytest.mark.parametrize("sample", [sample_identify, sample_track, sample_group, sample_page])
def test_every_event_is_sent_as_stored(sample: Callable[..., dict[str, Any]]) -> None:
    raw = sample(unknownField={"kept": True})
    [delivery] = map_with(destination_context("webhook", settings()), raw).deliveries
    assert (delivery.kind, delivery.body) == (raw["type"], raw)
    assert SECRET not in msgspec.json.encode(delivery).decode()  # the outbox never holds it


def test_sign_and_verify() -> None:
    body, now = b'{"batch":[{"type":"track"}]}', 1_767_225_600
    signature = sign(SECRET, now, body)
    assert signature == expected_signature(str(now), body)
    assert verify(SECRET, body, str(now), signature, now=now + 299)
    assert not verify(SECRET, body + b" ", str(now), signature, now=now)  # other bytes
    assert not verify("another-secret-of-16", body, str(now), signature, now=now)
    assert not verify(SECRET, body, str(now + 1), signature, now=now)  # timestamp is signed
    assert not verify(SECRET, body, str(now), signature, now=now + 301)  # replayed too late
    assert not verify(SECRET, body, "yesterday", signature, now=now)


def test_a_batch_is_one_post_signed_over_the_whole_body(
    fake_destination: Callable[[], FakeServer],
) -> None:
    fake = fake_destination()
    raws = [sample_identify(), sample_track(), sample_page()]
    deliveries = [Delivery(kind=r["type"], body=r) for r in raws]
    before = int(time.time())
    results = deliver_with(destination_context("webhook", settings(fake.url + "/hook")), deliveries)
    assert [(r.outcome, r.http_status) for r in results] == [("ok", 200)] * 3
    [req] = assert_requests(
        fake,
        1,
        path="/hook",
        method="POST",
        json={"batch": raws},
        headers={
            "content-type": "application/json",
            "webhook-timestamp": ANY,
            "webhook-signature": ANY,
        },
    )
    timestamp = req.headers["webhook-timestamp"]
    assert before <= int(timestamp) <= time.time()
    assert req.headers["webhook-signature"] == expected_signature(timestamp, req.body)
    assert verify(SECRET, req.body, timestamp, req.headers["webhook-signature"])


@pytest.mark.parametrize(
    "status, outcome",
    [(503, "retryable"), (429, "retryable"), (400, "permanent"), (404, "permanent")],
)
def test_every_delivery_gets_the_batch_outcome(
    fake_destination: Callable[[], FakeServer], status: int, outcome: str
) -> None:
    fake = fake_destination()
    fake.fail(status)
    deliveries = [Delivery(kind="track", body=sample_track()) for _ in range(2)]
    results = deliver_with(destination_context("webhook", settings(fake.url)), deliveries)
    assert [(r.outcome, r.http_status) for r in results] == [(outcome, status)] * 2


def test_an_unreachable_url_is_retryable(fake_destination: Callable[[], FakeServer]) -> None:
    fake = fake_destination()
    fake.down()  # nothing listens on its port any more
    results = deliver_with(
        destination_context("webhook", settings(fake.url)),
        [Delivery(kind="track", body=sample_track())],
    )
    assert results[0].outcome == "retryable" and "connection error" in (results[0].error or "")
