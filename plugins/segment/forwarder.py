"""The Segment forwarder destination: events go on to Segment's tracking API, ``/v1/batch``.

Each stored event becomes one delivery whose body is the event in Segment's own format (see
:func:`forwarded_event`: unknown fields and ``messageId`` kept, Segment dedupes on it). ``deliver``
packs the deliveries it gets (at most the connector's ``batch_size``, 100) into
``POST {base_url}/v1/batch`` requests of ``{"batch": [...], "sentAt": <now>}`` under Segment's
500 KB per request, with ``Authorization: Basic base64(<write key>:)``; each delivery's outcome
is the HTTP answer of its request. An event over Segment's 32 KB per call is never sent: it
fails permanently (dead letter) with a reason.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import re
from collections.abc import Mapping
from typing import Annotated, Any

import msgspec
from hookyard import hookimpl
from hookyard.connectors import DestinationContext
from hookyard.deliveries import Delivery, DeliveryResult, MapResult
from hookyard.events import Event, event_type
from hookyard.http import HttpClient
from hookyard.times import event_time, now_iso

BATCH_PATH = "/v1/batch"
MAX_EVENT_BYTES = 32 * 1024
"""Segment takes events of 32 KB or less (its own libraries drop anything over 32,768 bytes)."""
MAX_REQUEST_BYTES = 500_000
"""Segment's 500 KB per batch request, read the strict way (500,000 bytes, not 512,000): a batch
over the limit is refused whole with 400, which would dead-letter up to 100 good events. Segment's
own libraries stay lower still (analytics-python 475,000 bytes)."""
OVERSIZE_ERROR = "event is larger than Segment's 32 KB limit"
HELD_BACK = "not sent: an earlier batch request of this call failed and will be retried"
SPLIT_ON = (400, 413)
"""A batch request refused with one of these (an event the API will not take: invalid, or over
a size limit it counts differently) is sent again one event per request, so that only the
refused event becomes a dead letter, not the up to 99 good ones beside it."""
NOT_FORWARDED = ("writeKey", "sentAt", "receivedAt")
"""Never forwarded: a ``writeKey`` is a hookyard source's secret; an event's own ``sentAt`` is
the original client's clock, which Segment would set against the ``timestamp`` at the time of
forwarding (a relayed or replayed event would be dated to the moment it was forwarded); and
``receivedAt`` is always set by Segment itself (hookyard's is used for ``timestamp``)."""

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


ID_FIELDS = ("userId", "anonymousId", "groupId", "previousId", "messageId")


def forwarded_event(raw: Mapping[str, Any]) -> dict[str, Any]:
    """The event as it is sent to Segment: the stored event (unknown fields, ``messageId``,
    ``context``... kept) without ``writeKey``, ``sentAt`` and ``receivedAt``, numeric ids as
    text, with
    ``timestamp`` fixed to when it happened (:func:`hookyard.times.event_time`: corrected for
    the client's clock, in UTC with milliseconds, as every destination gets it), so a batch sent
    hours later, after retries or by a replay, keeps its events at their own time, in a form
    Segment reads (not a client's week date or ``+05:30``). Pure: no clock."""
    event = {key: value for key, value in raw.items() if key not in NOT_FORWARDED}
    for key in ID_FIELDS:  # a number (Segment's Node libraries pass one through) as text,
        value = event.get(key)  # as Segment's spec types it and its Python library sends it
        if isinstance(value, int | float) and not isinstance(value, bool):
            event[key] = str(value)
    message_id = event.get("messageId")
    if isinstance(message_id, str) and len(message_id) >= MAX_MESSAGE_ID:
        event["messageId"] = long_id(message_id)
    timestamp = event_time(raw)
    if timestamp is not None:
        event["timestamp"] = timestamp
    return event


MAX_MESSAGE_ID = 100
"""Segment drops an event whose ``messageId`` has 100 characters or more, still answering 200
(its HTTP API's "Errors"; hookyard accepts up to 256)."""


def long_id(message_id: str) -> str:
    """A ``messageId`` too long for Segment as a stable shorter one (``hy-`` and 64 hex
    digits of its SHA-256): the same event always gets the same, so Segment still dedupes a
    retry or a replay."""
    return "hy-" + hashlib.sha256(message_id.encode("utf-8", "surrogatepass")).hexdigest()


def invalid_write_key(result: DeliveryResult) -> bool:
    """Whether a refusal says the write key is wrong (``Invalid write key``, ``Invalid
    writeKey``, ``invalid_write_key``; in a JSON reason or a plain-text body)."""
    if result.outcome != "permanent":
        return False
    text = f"{result.error or ''} {result.response_body or ''}".lower()
    return "writekey" in re.sub(r"[\s_\-]", "", text)


@functools.lru_cache(maxsize=64)  # one per configured destination, built once
def request_target(base_url: str, write_key: str) -> tuple[str, dict[str, str]]:
    """The ``/v1/batch`` URL and headers of a destination (made once, not per request)."""
    return (base_url.rstrip("/") + BATCH_PATH,
            {"Authorization": basic_auth(write_key), "Content-Type": "application/json"})


def basic_auth(write_key: str) -> str:
    """Segment's ``Authorization`` value: Basic base64(write key + ":")."""
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode("ascii")


def sent_at() -> str:
    """Now, as Segment's libraries write ``sentAt`` (UTC, milliseconds)."""
    return now_iso()


def batch_body(events: list[bytes], sent: str) -> bytes:
    """The encoded ``{"batch": [...], "sentAt": ...}`` of already encoded events."""
    return b'{"batch":[' + b",".join(events) + b'],"sentAt":' + _encoder.encode(sent) + b"}"


def pack(
    sizes: list[tuple[int, int]], sent: str, limit: int = MAX_REQUEST_BYTES
) -> list[list[int]]:
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
    """Every event is forwarded (:func:`forwarded_event`); an oversize one fails in ``deliver``."""
    return MapResult.send(
        Delivery(kind=event_type(event), path=BATCH_PATH, body=forwarded_event(raw))
    )


@hookimpl
async def deliver(
    destination: DestinationContext, deliveries: list[Delivery], client: HttpClient
) -> list[DeliveryResult]:
    """Send the deliveries as few ``/v1/batch`` requests as the 500 KB limit allows, in order.
    Once a request fails with a retryable error (429, 5xx, timeout), the later batches of the
    call are not sent (retryable too, same ``Retry-After``): no hammering a rate-limited API.
    A request of several events answered 400 or 413 is sent again one event at a time
    (:data:`SPLIT_ON`), unless the answer says the write key is invalid: then every event of
    the call fails with it."""
    settings: SegmentForwarderSettings = destination.settings
    results: list[DeliveryResult | None] = [None] * len(deliveries)
    encoded: dict[int, bytes] = {}
    for i, delivery in enumerate(deliveries):
        data = _encoder.encode(delivery.body)
        if len(data) > MAX_EVENT_BYTES:
            results[i] = DeliveryResult.permanent(f"{OVERSIZE_ERROR} ({len(data)} bytes encoded)")
        else:
            encoded[i] = data
    sent = sent_at()
    url, headers = request_target(settings.base_url, settings.write_key)

    async def post(group: list[int]) -> DeliveryResult:
        body = batch_body([encoded[i] for i in group], sent)
        return (await client.send("POST", url, data=body, headers=headers))[0]

    failed: DeliveryResult | None = None
    groups = pack([(i, len(data)) for i, data in encoded.items()], sent)
    while groups:
        group = groups.pop(0)
        if failed is not None:
            for i in group:
                results[i] = DeliveryResult.not_sent(HELD_BACK, retry_after=failed.retry_after)
            continue
        result = await post(group)
        if invalid_write_key(result):
            # the key is wrong, not an event: every event of the call fails alike (split, a
            # batch of 100 was 101 requests answered the same; vendor audit)
            for i in [*group, *(i for g in groups for i in g)]:
                results[i] = msgspec.structs.replace(result)
            break
        if result.http_status in SPLIT_ON and len(group) > 1:
            groups[:0] = [[i] for i in group]  # one event at a time: only a bad one fails
            continue
        for i in group:
            results[i] = msgspec.structs.replace(result)
        if result.outcome == "retryable":
            failed = result
    return [r if r is not None else DeliveryResult.not_sent("not sent") for r in results]
