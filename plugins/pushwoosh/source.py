"""The ``pushwoosh`` source: Pushwoosh's Segment exporter posting message events to hookyard.

Pushwoosh's "3rd party integration > Segment" sends server-side *track* calls (Email Sent, Push
Delivered, ...) to a Segment tracking API with a write key; pointed at hookyard they arrive on
``/v1/track`` or ``/v1/batch``, authenticated exactly like the Segment source (HTTP Basic with
the write key as user name, a Bearer token or a ``writeKey`` body field). The path is shared with the Segment
source: the host asks each source in config order and the write key decides.
"""

from __future__ import annotations

from functools import lru_cache

from hookyard.connectors import IngestRequest, ParsedEvent, RefusedEvent
from hookyard.errors import NotFound
from hookyard.events import Track, event_type
from hookyard.tracking_api import parse_call

from .settings import PushwooshSourceSettings

TRACKING_PATH = "/v1/{call}"
ACCEPTED_CALLS = ("track", "batch", "import")  # import: batch, as on the Segment source
KNOWN_EVENTS = (
    "Email Sent",
    "Push Sent",
    "SMS Sent",
    "Email Delivered",
    "Push Delivered",
    "SMS Delivered",
    "Email Bounced",
)
"""Message events Pushwoosh exports (properties: message type, campaign id, device type)."""


@lru_cache(maxsize=64)
def event_filter(events: str) -> frozenset[str]:
    """The accepted event names of an ``events`` setting, trimmed and case-folded; empty = all."""
    return frozenset(name.strip().casefold() for name in events.split(",") if name.strip())


def filtered_reason(settings: PushwooshSourceSettings, name: str) -> str | None:
    """Why event ``name`` is not routed, or None when the source's list accepts it."""
    accepted = event_filter(settings.events)
    if not accepted or name.strip().casefold() in accepted:
        return None
    shown = name if len(name) <= 200 else name[:200] + "…"
    return f'event "{shown}" is not in this source\'s events list'


def parse_pushwoosh(
    settings: PushwooshSourceSettings, request: IngestRequest
) -> list[ParsedEvent | RefusedEvent]:
    """Parse ``/v1/track`` or ``/v1/batch`` (track events only; in a batch, another type is
    refused alone, as an invalid event is) and apply the events list."""
    call = request.path_params.get("call", "")
    if call not in ACCEPTED_CALLS:
        raise NotFound(
            f"a Pushwoosh source takes /v1/track, /v1/batch and /v1/import only, not /v1/{call}")
    parsed = parse_call(call, request.body)
    for i, item in enumerate(parsed):
        if isinstance(item, RefusedEvent):
            continue
        if not isinstance(item.event, Track):
            parsed[i] = RefusedEvent(
                f"type {event_type(item.event)} is not accepted: a Pushwoosh source takes"
                " track events only"
            )
            continue
        item.filtered = filtered_reason(settings, item.event.event)
    return parsed
