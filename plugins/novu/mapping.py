"""Segment events -> Novu requests (pure: no I/O, no clock; it also runs for previews and
replays).

* identify -> ``POST /v2/subscribers`` (create or update): ``subscriberId`` = userId, the
  subscriber attributes from traits, every other trait in ``data``.
* track    -> ``POST /v1/events/trigger`` of the mapped workflow, ``to`` the subscriber (with
  the attributes known from ``context.traits``), ``payload`` = properties, ``transactionId`` =
  messageId (Novu refuses a second trigger with the same transactionId, so a redelivery never
  notifies twice). Several queued triggers go out as one bulk trigger (see
  :mod:`hookyard_novu.destination`).
* group    -> ``POST /v2/topics/{groupId}/subscriptions``: the user joins the topic keyed by
  groupId (Novu creates a missing topic).
* page, screen, alias: skipped with a reason.

An identify's trait that is explicitly ``null`` clears the attribute in Novu (``"email":
null``) and stays ``null`` in ``data``; a trigger's payload leaves its top-level ``null``s out.
Integers past 2^53 go as text: Novu reads JSON in JavaScript, where they would be rounded.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection, Mapping
from typing import Any
from urllib.parse import quote

from hookyard.deliveries import Delivery, MapResult
from hookyard.events import Event, Group, Identify, Track, event_type
from hookyard.fields import MISSING, get_path
from hookyard.profiles.mapping import valid_timezone

from .email_check import is_email
from .settings import SUBSCRIBER_FIELDS, NovuSettings

SUBSCRIBERS_PATH = "/v2/subscribers"
TRIGGER_PATH = "/v1/events/trigger"
BULK_TRIGGER_PATH = "/v1/events/trigger/bulk"
TOPIC_SUBSCRIPTIONS_PATH = "/v2/topics/{key}/subscriptions"

KIND_SUBSCRIBER = "subscriber"
KIND_TRIGGER = "trigger"
KIND_TOPIC = "topic_subscription"
KIND_UNMAPPED = "unmapped"

DEFAULT_TRAITS: dict[str, str] = {field: field for field in SUBSCRIBER_FIELDS}
"""Segment's reserved traits have the subscriber attribute's own name (``firstName``,
``email``, ``avatar``, ...)."""

CONTEXT_FALLBACKS = {"locale": "$.context.locale", "timezone": "$.context.timezone"}
"""Where the device tells what the traits do not."""

TOPIC_KEY_RE = re.compile(r"^[A-Za-z0-9_:-]+$")
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
LOCALE_RE = re.compile(r"^[A-Za-z]{2,8}(?:[-_][A-Za-z0-9]{2,8})*$")  # en, en-US, pt_BR, zh-Hant-TW
NO_USER_ID = (
    "userId is required: Novu subscribers are keyed by userId (anonymous events are not sent)"
)


# -- subscriber attributes -----------------------------------------------------------------
def as_text(value: Any) -> str | None:
    """A subscriber attribute value: non-blank strings as they are, numbers as text (a phone
    number sent as ``5551234``); anything else is not usable."""
    if isinstance(value, str):
        return value if value.strip() else None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    return None


def novu_takes(field: str, text: str | None) -> str | None:
    """``text`` as Novu's API takes subscriber attribute ``field``, else None. Novu answers 422
    to the whole request for an email, locale or time zone it cannot read (its validators
    ``IsEmail``, ``IsLocale``, ``IsTimeZone``), and the identify's other attributes were lost
    with it: such a value is left out of the attributes (the next candidate is tried, and the
    trait stays in ``data``). An email loses its surrounding spaces."""
    if text is None:
        return None
    if field == "email":
        text = text.strip()
        return text if is_email(text) else None
    if field == "locale":
        return text if len(text) <= 35 and LOCALE_RE.match(text) else None
    if field == "timezone":
        return valid_timezone(text)
    return text


@functools.lru_cache(maxsize=64)
def _candidates(overrides: tuple[tuple[str, str], ...]) -> dict[str, tuple[str, ...]]:
    """Per subscriber field, the trait paths to try in order: overrides, then the default."""
    out: dict[str, tuple[str, ...]] = {}
    for field in SUBSCRIBER_FIELDS:
        mine = tuple(trait for trait, target in overrides if target == field)
        fallback = (CONTEXT_FALLBACKS[field],) if field in CONTEXT_FALLBACKS else ()
        out[field] = (*mine, DEFAULT_TRAITS[field], *fallback)
    return out


def split_name(name: Any) -> tuple[str | None, str | None]:
    """``"Peter Gibbons"`` -> ``("Peter", "Gibbons")``; the last name is everything after the
    first word (``"Jean Claude Van Damme"`` -> ``("Jean", "Claude Van Damme")``)."""
    if not isinstance(name, str) or not name.strip():
        return None, None
    parts = name.strip().split(None, 1)
    return parts[0], (parts[1] if len(parts) > 1 else None)


def subscriber_fields(
    settings: NovuSettings, traits: Mapping[str, Any], raw: Mapping[str, Any]
) -> tuple[dict[str, str], set[str]]:
    """The subscriber attributes found in ``traits`` (``$.`` paths read ``raw``), and the
    top-level trait names they used (those are not repeated in ``data``).

    ``firstName``/``lastName`` fall back to splitting the ``name`` trait; ``locale`` and
    ``timezone`` to ``context.locale`` / ``context.timezone``.
    """
    candidates = _candidates(tuple(settings.identify_fields.items()))
    fields: dict[str, str] = {}
    used: set[str] = set()
    for field in SUBSCRIBER_FIELDS:
        for path in candidates[field]:
            source = raw if path.startswith("$.") else traits
            value = get_path(source, path)
            text = None if value is MISSING else novu_takes(field, as_text(value))
            if text is not None:
                fields[field] = text
                if source is traits and "." not in path:
                    used.add(path)
                break
    if "firstName" not in fields or "lastName" not in fields:
        first, last = split_name(traits.get("name"))
        for field, part in (("firstName", first), ("lastName", last)):
            if field not in fields and part is not None:
                fields[field] = part
                used.add("name")
    return {field: fields[field] for field in SUBSCRIBER_FIELDS if field in fields}, used


def without_nulls(values: Mapping[str, Any] | None) -> dict[str, Any]:
    """A copy without ``null`` values (a trigger's payload)."""
    return {k: js_safe(v) for k, v in (values or {}).items() if v is not None}


def without_keys(values: Mapping[str, Any], exclude: Collection[str]) -> dict[str, Any]:
    """A copy without the ``exclude`` keys, ``null``s kept."""
    return {k: js_safe(v) for k, v in values.items() if k not in exclude}


JS_SAFE_INT = 2**53 - 1
"""The largest integer JavaScript's numbers hold exactly (``Number.MAX_SAFE_INTEGER``)."""


def js_safe(value: Any) -> Any:
    """``value`` with every integer beyond +-2^53 - 1 (at any depth) as its decimal text: Novu
    parses JSON in JavaScript, which rounded ``9223372036854775807`` to
    ``9223372036854776000`` (vendors audit)."""
    if isinstance(value, int):
        return str(value) if not -JS_SAFE_INT <= value <= JS_SAFE_INT else value
    if isinstance(value, dict):
        return {k: js_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [js_safe(v) for v in value]
    return value


def cleared_fields(
    settings: NovuSettings, traits: Mapping[str, Any], found: Mapping[str, str]
) -> tuple[dict[str, None], set[str]]:
    """The subscriber attributes an identify clears, and the top-level ``null`` traits an
    attribute is read from (not repeated in ``data``). An attribute is cleared when such a
    trait is explicitly ``null`` and no other source gave a value
    (``{"email": null}`` -> ``"email": null``, which Novu stores; leaving it out kept the old
    address, vendors audit)."""
    candidates = _candidates(tuple(settings.identify_fields.items()))
    cleared: dict[str, None] = {}
    used: set[str] = set()
    for field in SUBSCRIBER_FIELDS:
        nulls = [path for path in candidates[field]
                 if not path.startswith("$.") and get_path(traits, path) is None]
        if nulls and field not in found:
            cleared[field] = None
        used.update(path for path in nulls if "." not in path)  # not in data: an attribute's
    return cleared, used


def _context_traits(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    traits = get_path(raw, "context.traits")
    return traits if isinstance(traits, Mapping) else {}


# -- the calls -----------------------------------------------------------------------------
def map_identify(settings: NovuSettings, event: Identify, raw: Mapping[str, Any]) -> MapResult:
    user_id = event.user_id
    if user_id is None:
        return MapResult.skip(NO_USER_ID)
    traits = event.traits or {}
    fields, used = subscriber_fields(settings, traits, raw)
    cleared, nulls = cleared_fields(settings, traits, fields)
    given = {**fields, **cleared}
    body: dict[str, Any] = {"subscriberId": user_id}
    body.update((field, given[field]) for field in SUBSCRIBER_FIELDS if field in given)
    data = without_keys(traits, used | nulls)
    if data:
        body["data"] = data
    return MapResult.send(
        Delivery(kind=KIND_SUBSCRIBER, path=SUBSCRIBERS_PATH, body=body, ordering_key=user_id)
    )


def trigger_body(
    settings: NovuSettings, workflow: str, event: Track, raw: Mapping[str, Any], user_id: str
) -> dict[str, Any]:
    """One trigger event, as ``/v1/events/trigger`` takes it and ``/bulk`` lists it."""
    fields, _ = subscriber_fields(settings, _context_traits(raw), raw)
    body: dict[str, Any] = {
        "name": workflow,
        "to": {"subscriberId": user_id, **fields},
        "payload": without_nulls(event.properties),
    }
    message_id = raw.get("messageId")
    if isinstance(message_id, str) and message_id:
        body["transactionId"] = message_id
    return body


def map_track(settings: NovuSettings, event: Track, raw: Mapping[str, Any]) -> MapResult:
    user_id = event.user_id
    if user_id is None:
        return MapResult.skip(NO_USER_ID)
    workflow = settings.workflows.get(event.event)
    if workflow is None:
        reason = f"no Novu workflow mapped for event {event.event!r} (settings.workflows)"
        if settings.send_unmapped == "skip":
            return MapResult.skip(reason)
        return MapResult.send(
            Delivery(
                kind=KIND_UNMAPPED,
                body={"event": event.event, "error": reason},
                ordering_key=user_id,
            )
        )
    body = trigger_body(settings, workflow, event, raw, user_id)
    return MapResult.send(
        Delivery(kind=KIND_TRIGGER, path=TRIGGER_PATH, body=body, ordering_key=user_id)
    )


def valid_topic_key(key: str) -> bool:
    """Novu topic keys: letters, digits, ``-``, ``_``, ``:``, or an email address (at most
    254 characters, checked before the pattern, which is quadratic on a long run of dots)."""
    return bool(TOPIC_KEY_RE.match(key) or (len(key) <= 254 and EMAIL_RE.match(key)))


def map_group(settings: NovuSettings, event: Group, raw: Mapping[str, Any]) -> MapResult:
    user_id = event.user_id
    if user_id is None:
        return MapResult.skip(NO_USER_ID)
    key = str(event.groupId)
    if not valid_topic_key(key):
        return MapResult.skip(
            f"groupId {key!r} is not a valid Novu topic key "
            "(letters, digits, '-', '_', ':', or an email address)"
        )
    body: dict[str, Any] = {"subscriptions": [user_id]}
    name = as_text((event.traits or {}).get("name"))
    if name is not None:
        body["name"] = name
    path = TOPIC_SUBSCRIPTIONS_PATH.format(key=quote(key, safe=""))
    return MapResult.send(Delivery(kind=KIND_TOPIC, path=path, body=body, ordering_key=user_id))


def map_novu(settings: NovuSettings, event: Event, raw: Mapping[str, Any]) -> MapResult:
    """identify -> subscriber, track -> workflow trigger, group -> topic; others skipped."""
    if isinstance(event, Identify):
        return map_identify(settings, event, raw)
    if isinstance(event, Track):
        return map_track(settings, event, raw)
    if isinstance(event, Group):
        return map_group(settings, event, raw)
    return MapResult.skip(
        f"Novu takes identify (subscribers), track (workflow triggers) and group (topics) "
        f"calls, not {event_type(event)}"
    )
