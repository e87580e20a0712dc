"""The ``pushwoosh`` destination: identify -> ``/json/1.3/setTags``, track ->
``/json/1.3/postEvent``.

Mapping is pure (no I/O, no clock): ``timestampUTC`` is when the event happened, its
``timestamp`` (else ``originalTimestamp``) corrected for the client's clock as Segment does, else
``receivedAt``. Delivery sends one request per delivery with
``Authorization: Token <api_key>``; deliveries of one ordering key (one user) go out one after
the other, different users concurrently. Pushwoosh's JSON API may answer HTTP 200 with an error
in the body (``{"status_code": 210, "status_message": "Argument error"}``): any ``status_code``
other than 200 is a failure, retried for 429, 5xx and rate-limit messages ("Too many
requests", "rate limit", "throttled"), permanent otherwise (bad API token, argument errors).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import msgspec
from hookyard.deliveries import (
    Delivery,
    DeliveryResult,
    MapResult,
    expect_json,
    parse_retry_after,
    send_in_order,
)
from hookyard.events import Event, Identify, Track, event_type
from hookyard.fields import get_path
from hookyard.http import HttpClient, HttpResponse
from hookyard.times import event_time

from .dates import unix_seconds
from .settings import PushwooshSettings
from .tags import INT64_MAX, INT64_MIN, as_text, build_tags

SET_TAGS_PATH = "/json/1.3/setTags"
POST_EVENT_PATH = "/json/1.3/postEvent"
RATE_LIMITED = re.compile(r"too many requests|rate.?limit|throttl|quota", re.IGNORECASE)
"""A ``status_message`` saying the API refused for load, whatever its ``status_code``."""

_dict_decoder = msgspec.json.Decoder(dict[str, Any])

MAX_IN_FLIGHT = 20
"""Requests of one ``deliver`` call in flight at once, whatever ``batch_size`` hands it (the
vendor audit: ``batch_size = 200`` sent 200 requests at once)."""


# -- mapping ----------------------------------------------------------------------------------
def _as_id(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value
    return None


def identity(
    settings: PushwooshSettings, event: Event, raw: Mapping[str, Any]
) -> tuple[str, str] | None:
    """Who the request is about: ``("userId", id)`` from ``user_id_field``, else
    ``("hwid", context.device.id)``, else ``("hwid", anonymousId)`` (Pushwoosh's own Segment
    source sends the HWID as ``anonymousId``); None when there is nothing."""
    user_id = _as_id(get_path(raw, settings.user_id_field))
    if user_id is not None:
        return "userId", user_id
    hwid = _as_id(get_path(raw, "context.device.id")) or event.anonymous_id
    if hwid is not None:
        return "hwid", hwid
    return None


def _no_identity(settings: PushwooshSettings) -> MapResult:
    return MapResult.skip(
        f"no Pushwoosh user: no userId (field {settings.user_id_field}), "
        "no context.device.id (hwid) and no anonymousId"
    )


def _ordering_key(event: Event) -> str:
    return event.user_id or event.anonymous_id or ""


def event_timestamp(raw: Mapping[str, Any]) -> int | None:
    """Unix seconds of when the event happened, as Segment's own destinations get it
    (:func:`hookyard.times.event_time`): its ``timestamp`` (else ``originalTimestamp``)
    corrected for the client's clock by the batch's ``sentAt``, else ``receivedAt``."""
    return unix_seconds(event_time(raw))


def attributes(properties: Mapping[str, Any] | None) -> dict[str, Any]:
    """Event attributes from track properties: flat values as they are, objects as JSON
    strings, list items as strings, integers past 64 bits as text, nulls left out (Pushwoosh
    attributes are flat)."""
    out: dict[str, Any] = {}
    for key, value in (properties or {}).items():
        if value is None:
            continue
        if isinstance(value, Mapping):
            out[key] = as_text(value)
        elif isinstance(value, list | tuple):
            out[key] = [as_text(item) for item in value if item is not None]
        elif isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= INT64_MAX:
            out[key] = str(value)  # past Pushwoosh's 64-bit Integer: as text, as tags are
        else:
            out[key] = value
    return out


def without_traits(traits: Mapping[str, Any], names: list[str]) -> Mapping[str, Any]:
    """``traits`` without the ``names`` (``exclude_traits``): top-level traits, or parts of
    one written with a dot (``"address.city"``, as ``tag_names`` names them)."""
    if not names:
        return traits
    out = dict(traits)
    for name in names:
        first, _, rest = name.partition(".")
        if not rest:
            out.pop(first, None)
        elif isinstance(out.get(first), Mapping):
            out[first] = without_traits(out[first], [rest])
    return out


def map_identify(settings: PushwooshSettings, event: Identify, raw: Mapping[str, Any]) -> MapResult:
    if not settings.create_or_update_user_profile:
        return MapResult.skip("Create or Update User Profile is disabled")
    who = identity(settings, event, raw)
    if who is None:
        return _no_identity(settings)
    traits = without_traits(event.traits or {}, settings.exclude_traits)
    tags, dropped = build_tags(traits, settings.tag_names, settings.tag_types)
    if not tags:
        reason = "no traits to send as Pushwoosh tags"
        if dropped:
            reason += f" (left out: {', '.join(dropped)})"
        return MapResult.skip(reason)
    request: dict[str, Any] = {"application": settings.application, who[0]: who[1], "tags": tags}
    return MapResult.send(
        Delivery(
            kind="setTags",
            path=SET_TAGS_PATH,
            body={"request": request},
            ordering_key=_ordering_key(event),
        )
    )


def map_track(settings: PushwooshSettings, event: Track, raw: Mapping[str, Any]) -> MapResult:
    if not settings.track_events:
        return MapResult.skip("Track Events is disabled")
    who = identity(settings, event, raw)
    if who is None:
        return _no_identity(settings)
    timestamp = event_timestamp(raw)
    if timestamp is None:
        return MapResult.skip("no valid timestamp, originalTimestamp or receivedAt")
    request: dict[str, Any] = {
        "application": settings.application,
        "event": event.event,
        "attributes": attributes(event.properties),
        "timestampUTC": timestamp,
        who[0]: who[1],
    }
    device = _as_id(get_path(raw, "context.device.id"))
    if who[0] == "userId" and device is not None:
        # with the userId, the device too: Pushwoosh enters a user into a Customer Journey
        # only when postEvent names the HWID (its own SDKs always send both)
        request["hwid"] = device
    return MapResult.send(
        Delivery(
            kind="postEvent",
            path=POST_EVENT_PATH,
            body={"request": request},
            ordering_key=_ordering_key(event),
        )
    )


def map_pushwoosh(settings: PushwooshSettings, event: Event, raw: Mapping[str, Any]) -> MapResult:
    """identify -> setTags, track -> postEvent, anything else skipped."""
    if isinstance(event, Identify):
        return map_identify(settings, event, raw)
    if isinstance(event, Track):
        return map_track(settings, event, raw)
    return MapResult.skip(
        f"Pushwoosh takes identify (tags) and track (events) calls, not {event_type(event)}"
    )


# -- delivery ---------------------------------------------------------------------------------
def api_status(body: bytes) -> tuple[int, str] | None:
    """``(status_code, status_message)`` of a Pushwoosh JSON answer, or None."""
    if not body or not body.lstrip().startswith(b"{"):
        return None
    try:
        data = _dict_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    code = data.get("status_code")
    if isinstance(code, str) and code.strip().isdigit():
        code = int(code)
    if not isinstance(code, int) or isinstance(code, bool):
        return None
    message = data.get("status_message")
    return code, message if isinstance(message, str) else ""


def classify(result: DeliveryResult, response: HttpResponse | None) -> DeliveryResult:
    """The HTTP outcome, refined by the ``status_code`` Pushwoosh puts in the body.

    A 2xx answer whose body has a ``status_code`` other than 200 is a failure: retryable for
    429, 5xx or a rate-limit ``status_message`` (honouring ``Retry-After``), permanent for the
    rest (e.g. 210 argument error, 401/403 bad or unauthorised API token).
    """
    if response is None:
        return result
    answer = api_status(response.body)
    if result.outcome != "ok":
        if answer is not None and answer[1]:
            result.error = f"{result.error}: {answer[1]}"
        return result
    if answer is None or answer[0] == 200:
        return result
    code, message = answer
    error = f"Pushwoosh status_code {code}: {message or 'no status_message'}"
    if code == 429 or code >= 500 or RATE_LIMITED.search(message):
        return DeliveryResult.retryable(
            error,
            http_status=response.status,
            response_body=result.response_body,
            retry_after=parse_retry_after(response.headers.get("Retry-After")),
        )
    return DeliveryResult.permanent(
        error, http_status=response.status, response_body=result.response_body
    )


async def send_one(
    settings: PushwooshSettings, delivery: Delivery, client: HttpClient
) -> DeliveryResult:
    url = settings.base_url.rstrip("/") + delivery.path
    headers = {"Authorization": f"Token {settings.api_key}", "Accept": "application/json"}
    result, response = await client.send(delivery.method, url, json=delivery.body, headers=headers)
    if response is not None:
        result = expect_json(result, response.body, "Pushwoosh", "base_url")
    return classify(result, response)


async def deliver_pushwoosh(
    settings: PushwooshSettings, deliveries: list[Delivery], client: HttpClient
) -> list[DeliveryResult]:
    """One request per delivery: ordering keys concurrently, each key's deliveries in order.
    After a retryable failure the key's later deliveries are held back (retryable too), so a
    retry never lands after a newer update of the same user (:func:`send_in_order`)."""

    async def send(delivery: Delivery) -> DeliveryResult:
        return await send_one(settings, delivery, client)

    return await send_in_order(deliveries, send, concurrency=min(len(deliveries), MAX_IN_FLIGHT))
