"""The Segment forwarder destination: events go on to Segment's tracking API, ``/v1/batch``.

Each stored event becomes one delivery whose body is the raw event (Segment format, unknown
fields and ``messageId`` kept: Segment dedupes on it). ``deliver`` packs the deliveries it gets
(at most the connector's ``batch_size``, 100) into ``POST {base_url}/v1/batch`` requests of
``{"batch": [...], "sentAt": <now>}`` under Segment's 500 KB per request, with
``Authorization: Basic base64(<write key>:)``; each delivery's outcome is the HTTP answer of its
request. An event over Segment's 32 KB per call is never sent: it fails permanently (dead
letter) with a reason.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from typing import Annotated, Any

import msgspec
from hookyard import hookimpl
from hookyard.connectors import DestinationContext
from hookyard.deliveries import Delivery, DeliveryResult, MapResult
from hookyard.events import Event, event_type
from hookyard.http import HttpClient

BATCH_PATH = "/v1/batch"
MAX_EVENT_BYTES = 32 * 1024
MAX_REQUEST_BYTES = 500 * 1024
OVERSIZE_ERROR = "event is larger than Segment's 32 KB limit"

_encoder = msgspec.json.Encoder()


class SegmentForwarderSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Destination ``segment``.

    write_key: the write key of the Segment source to forward to (``"env:SEGMENT_WRITE_KEY"``).
    base_url:  Segment's API root (``https://events.eu1.segmentapis.com`` for the EU region).
    """

    write_key: Annotated[str, msgspec.Meta(min_length=1)]
    base_url: Annotated[str, msgspec.Meta(min_length=1)] = "https://api.segment.io"

    def __post_init__(self) -> None:
        if not self.write_key.strip():
            raise ValueError("write_key must not be blank")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, not {self.base_url!r}")


def basic_auth(write_key: str) -> str:
    """Segment's ``Authorization`` value: Basic base64(write key + ":")."""
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode("ascii")


def sent_at() -> str:
    """Now, as Segment's libraries write ``sentAt`` (UTC, milliseconds)."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def batch_body(events: list[bytes], sent: str) -> bytes:
    """The encoded ``{"batch": [...], "sentAt": ...}`` of already encoded events."""
    return b'{"batch":[' + b",".join(events) + b'],"sentAt":' + _encoder.encode(sent) + b"}"


def pack(sizes: list[tuple[int, int]], sent: str, limit: int = MAX_REQUEST_BYTES) -> list[list[int]]:
    """Split ``(index, encoded size)`` pairs, in order, into groups whose batch body stays
    within ``limit`` bytes."""
    overhead = len(batch_body([], sent))
    groups: list[list[int]] = []
    current: list[int] = []
    used = overhead
    for index, size in sizes:
        extra = size + (1 if current else 0)  # the comma between events
        if current and used + extra > limit:
            groups.append(current)
            current, used, extra = [], overhead, size
        current.append(index)
        used += extra
    if current:
        groups.append(current)
    return groups


@hookimpl
def map_event(destination: DestinationContext, event: Event, raw: dict[str, Any]) -> MapResult:
    """Every event is forwarded as it was stored (an oversize one fails in ``deliver``)."""
    return MapResult.send(Delivery(kind=event_type(event), path=BATCH_PATH, body=raw))


@hookimpl
async def deliver(
    destination: DestinationContext, deliveries: list[Delivery], client: HttpClient
) -> list[DeliveryResult]:
    settings: SegmentForwarderSettings = destination.settings
    results: list[DeliveryResult | None] = [None] * len(deliveries)
    encoded: dict[int, bytes] = {}
    for i, delivery in enumerate(deliveries):
        data = _encoder.encode(delivery.body)
        if len(data) > MAX_EVENT_BYTES:
            results[i] = DeliveryResult.permanent(
                f"{OVERSIZE_ERROR} ({len(data)} bytes encoded)"
            )
        else:
            encoded[i] = data
    sent = sent_at()
    url = settings.base_url.rstrip("/") + BATCH_PATH
    headers = {"Authorization": basic_auth(settings.write_key), "Content-Type": "application/json"}
    for group in pack([(i, len(data)) for i, data in encoded.items()], sent):
        body = batch_body([encoded[i] for i in group], sent)
        result, _ = await client.send("POST", url, data=body, headers=headers)
        for i in group:
            results[i] = msgspec.structs.replace(result)
    return [r if r is not None else DeliveryResult.retryable("not sent") for r in results]
