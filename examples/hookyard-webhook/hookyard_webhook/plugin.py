"""The ``webhook`` destination: events go to any URL as JSON batches signed with HMAC-SHA256.

Each stored event becomes one delivery; the host hands ``deliver`` up to ``BATCH_SIZE`` of them
(``[destinations.delivery] batch_size`` overrides it) and they go out as **one** request::

    POST <url>
    Content-Type: application/json
    Webhook-Timestamp: 1767225600
    Webhook-Signature: v1=<hex HMAC-SHA256(secret, "1767225600." + body)>

    {"batch":[{"type":"identify","messageId":"...",...},{"type":"track",...}]}

The signature covers the timestamp and the exact body bytes sent: the whole batch, not one
element of it. A receiver recomputes it over the raw body it read (before any JSON parsing),
compares in constant time, and refuses a timestamp more than 5 minutes from its clock, so a
captured request cannot be replayed later (:func:`verify` does all three). Inside that window a
receiver dedupes on each event's ``messageId``, which also covers the host's retries: a batch
that failed with a retryable answer is sent again, with a new timestamp and signature.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from typing import Annotated, Any

import msgspec
from hookyard import hookimpl
from hookyard.connectors import Connector, DestinationContext
from hookyard.deliveries import Delivery, DeliveryResult, MapResult
from hookyard.events import Event, event_type
from hookyard.http import HttpClient

BATCH_SIZE = 50
TIMESTAMP_HEADER = "Webhook-Timestamp"
SIGNATURE_HEADER = "Webhook-Signature"
TOLERANCE_SECONDS = 300

_encoder = msgspec.json.Encoder()


class WebhookSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Destination ``webhook``.

    url:    where batches are POSTed (``http://`` or ``https://``).
    secret: the HMAC key shared with the receiver, at least 16 characters
            (e.g. ``openssl rand -hex 32``; write ``"env:WEBHOOK_SECRET"`` in the config).
    """

    url: Annotated[str, msgspec.Meta(pattern=r"^https?://[^\s/]+")]
    secret: Annotated[str, msgspec.Meta(min_length=16)]


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """The ``Webhook-Signature`` value: ``v1=`` + hex HMAC-SHA256 of ``"<timestamp>." + body``."""
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return "v1=" + mac.hexdigest()


def verify(
    secret: str,
    body: bytes,
    timestamp: str,
    signature: str,
    *,
    tolerance: float = TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """For receivers: is ``signature`` valid for ``body`` and ``timestamp`` fresh?"""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


@hookimpl
def register_connectors() -> list[Connector]:
    return [
        Connector(
            name="webhook",
            kind="destination",
            settings=WebhookSettings,
            batch_size=BATCH_SIZE,
            deliver_anywhere=True,  # deliver needs only its settings and the HTTP client
            description="Any URL: events as JSON batches signed with HMAC-SHA256",
        )
    ]


@hookimpl
def map_event(destination: DestinationContext, event: Event, raw: dict[str, Any]) -> MapResult:
    """Every event is sent as it was stored (unknown fields and ``messageId`` kept)."""
    return MapResult.send(Delivery(kind=event_type(event), body=raw))


@hookimpl
async def deliver(
    destination: DestinationContext, deliveries: list[Delivery], client: HttpClient
) -> list[DeliveryResult]:
    """One signed POST for the whole batch; every delivery gets that request's outcome."""
    settings: WebhookSettings = destination.settings
    body = _encoder.encode({"batch": [d.body for d in deliveries]})
    timestamp = int(time.time())
    headers = {
        "Content-Type": "application/json",
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: sign(settings.secret, timestamp, body),
    }
    result, _ = await client.send("POST", settings.url, data=body, headers=headers)
    return [msgspec.structs.replace(result) for _ in deliveries]
