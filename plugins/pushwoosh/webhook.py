"""Pushwoosh's own Webhook integration, taken by the ``pushwoosh`` source on
``POST /connector/pushwoosh/``.

Pushwoosh's Segment export sends to Segment's tracking API host, which no setting of Pushwoosh's
changes (a write key and an events list are all it asks for), so its events reach hookyard only
through a proxy that owns that name. Pushwoosh's *Webhook integration* (Settings > 3rd Party
Integrations > Webhook integration) instead posts each message event (Email Sent, Email
Delivered, Email Bounced, Email Opened, ...) to a URL of your choice, as one JSON object::

    {"event_name": "Email Sent", "message_id": 2000003258, "message_code": "B780-...-0375",
     "campaign_id": 960000, "platform": "Email", "application_code": "3XXXX-XXXX1",
     "hwid": "user@example.com", "user_id": "1500008", "payload": "<the email's subject>"}

It sends no header of its own, so the write key goes in that URL:
``https://hookyard.example.com/connector/pushwoosh/?writeKey=<write key>``. Each object becomes
a Segment track event: ``event_name`` -> ``event``, ``user_id`` -> ``userId`` (``hwid`` ->
``anonymousId`` without one), every field -> ``properties``. Its ``messageId`` is derived from
the body (``pw-`` and a hash), since Pushwoosh gives no id of the event: a body sent twice is
stored once.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import msgspec
from hookyard.connectors import IngestRequest, ParsedEvent, RefusedEvent
from hookyard.errors import BadRequest
from hookyard.events import MAX_ID, event_from_dict, validate_event
from hookyard.nesting import TOO_DEEP, too_deep
from hookyard.tracking_api import WRITE_KEY_NAMES, check_event_count, read_json

WEBHOOK_PATHS = ("/connector/pushwoosh/", "/connector/pushwoosh")
FIELDS = ("event_name", "message_id", "message_code", "campaign_id", "platform",
          "application_code", "hwid", "user_id", "payload")
"""The body's documented fields, all kept as properties (unknown ones too)."""

_object = msgspec.json.Decoder(dict[str, Any] | list[dict[str, Any]])


def parse_webhook(body: bytes) -> list[ParsedEvent | RefusedEvent]:
    """One event per object of the body (an object, or an array of them). The body is read
    as the tracking API reads one (a bare ``NaN`` is ``null``, a lone UTF-16 surrogate is
    U+FFFD)."""
    return read_json(_parse, body, "array")


def _parse(body: bytes) -> list[ParsedEvent | RefusedEvent]:
    try:
        data = _object.decode(body)
    except msgspec.ValidationError as exc:
        raise BadRequest(f"a Pushwoosh webhook body is a JSON object: {exc}") from None
    except RecursionError:
        raise BadRequest(f"malformed JSON: {TOO_DEEP}") from None
    except (msgspec.DecodeError, UnicodeDecodeError, ValueError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from None
    items = data if isinstance(data, list) else [data]
    if not items:
        raise BadRequest("empty array: no Pushwoosh event")
    check_event_count(len(items))
    return [webhook_event(item) for item in items]


def webhook_event(item: dict[str, Any]) -> ParsedEvent | RefusedEvent:
    """The Segment track event of one Pushwoosh webhook object, or why it is refused."""
    name = item.get("event_name")
    if not isinstance(name, str) or not name.strip():
        return RefusedEvent("event_name is required (the Pushwoosh event, e.g. \"Email Sent\")")
    for field in ("user_id", "hwid"):
        value = item.get(field)
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int | float)):
            return RefusedEvent(f"{field} must be text or a number, not {type(value).__name__}")
    user = _text(item.get("user_id"))
    hwid = _text(item.get("hwid"))
    if not user and not hwid:
        return RefusedEvent("user_id or hwid is required: the event names no user")
    for field, value in (("user_id", user), ("hwid", hwid)):
        if value is not None and len(value) > MAX_ID:
            return RefusedEvent(f"{field} is longer than {MAX_ID} characters")
    properties = {k: v for k, v in item.items() if k not in WRITE_KEY_NAMES}
    raw: dict[str, Any] = {
        "type": "track",
        "event": name,
        "properties": properties,
        "messageId": "pw-" + hashlib.sha256(msgspec.json.encode(properties, order="sorted")
                                            ).hexdigest()[:32],
        "context": {"integration": {"name": "pushwoosh-webhook"}},
    }
    if user:
        raw["userId"] = user
    else:
        raw["anonymousId"] = hwid
    try:
        event = event_from_dict(raw)
    except msgspec.ValidationError as exc:  # an id of more than 512 characters, say
        return RefusedEvent(str(exc).replace("`", ""))
    problem = validate_event(event)
    if problem:
        return RefusedEvent(problem)
    encoded = msgspec.json.encode(raw)
    if too_deep(encoded):  # the same limit as the tracking API's (hookyard.nesting)
        return RefusedEvent(f"the event is {TOO_DEEP}")
    return ParsedEvent(raw=encoded, event=event)


def _text(value: Any) -> str | None:
    """An id as text (Pushwoosh's ``user_id`` may come as a number), None when blank or of
    another type."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, float) and math.isfinite(value):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int | str):
        text = str(value).strip()
        return text or None
    return None


def webhook_key(request: IngestRequest) -> str | None:
    """The write key in the webhook URL's ``writeKey`` (or ``write_key``) query parameter."""
    return request.query.get("writeKey") or request.query.get("write_key")


__all__ = ["FIELDS", "WEBHOOK_PATHS", "parse_webhook", "webhook_event", "webhook_key"]
