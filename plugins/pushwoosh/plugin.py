"""The Pushwoosh connector plugin.

Destination ``pushwoosh``: identify -> Pushwoosh tags (``/json/1.3/setTags``, "Create or Update
User Profile"), track -> Pushwoosh events (``/json/1.3/postEvent``, "Track Events"); see
:mod:`hookyard_pushwoosh.destination` and :mod:`hookyard_pushwoosh.tags`.

Source ``pushwoosh``: Pushwoosh's message events (Email Sent, Push Delivered, ...) exported to
hookyard as Segment track calls on ``/v1/track`` / ``/v1/batch`` with a write key, or posted by
Pushwoosh's Webhook integration to ``/connector/pushwoosh/?writeKey=...``, filtered by the
source's ``events`` list; see :mod:`hookyard_pushwoosh.source` and
:mod:`hookyard_pushwoosh.webhook`.
"""

from __future__ import annotations

from typing import Any

from hookyard import hookimpl
from hookyard.connectors import (
    AuthResult,
    Connector,
    DestinationContext,
    IngestRequest,
    ParsedEvent,
    RefusedEvent,
    SourceContext,
)
from hookyard.deliveries import Delivery, DeliveryResult, MapResult
from hookyard.events import Event
from hookyard.http import HttpClient
from hookyard.tracking_api import authenticate_write_key, keys_match

from .destination import deliver_pushwoosh, map_pushwoosh
from .settings import PushwooshSettings, PushwooshSourceSettings
from .source import TRACKING_PATH, filtered_reason, parse_pushwoosh
from .webhook import WEBHOOK_PATHS, parse_webhook, webhook_key

BATCH_SIZE = 20
"""Deliveries per ``deliver`` call: sent concurrently across users (Pushwoosh has no batch
endpoint for setTags/postEvent, so each is its own request)."""


@hookimpl
def register_connectors() -> list[Connector]:
    return [
        Connector(
            name="pushwoosh",
            kind="destination",
            settings=PushwooshSettings,
            batch_size=BATCH_SIZE,
            deliver_anywhere=True,  # deliver needs only its settings and the HTTP client
            description="Pushwoosh: identify -> tags (/json/1.3/setTags), "
            "track -> events (/json/1.3/postEvent)",
        ),
        Connector(
            name="pushwoosh",
            kind="source",
            settings=PushwooshSourceSettings,
            paths=(TRACKING_PATH, *WEBHOOK_PATHS),
            description="Pushwoosh message events (Email Sent, Push Delivered, ...) as Segment "
            "track calls on /v1/track, /v1/batch and /v1/import, Basic or Bearer write key; "
            "or from Pushwoosh's Webhook integration on /connector/pushwoosh/?writeKey=...",
        ),
    ]


@hookimpl
def authenticate(source: SourceContext, request: IngestRequest) -> AuthResult:
    if request.path in WEBHOOK_PATHS:  # Pushwoosh's webhook sends no header: the key is in the URL
        key = webhook_key(request)
        if key is not None:
            return AuthResult.accept() if keys_match(key, source.write_key) else _INVALID
        if not request.headers.get("authorization"):
            return AuthResult.refuse("missing write key: add ?writeKey=<write key> to the"
                                     " webhook URL")
    return authenticate_write_key(source.write_key, request)


_INVALID = AuthResult.refuse("invalid write key")


@hookimpl
def parse_events(
    source: SourceContext, request: IngestRequest
) -> list[ParsedEvent | RefusedEvent]:
    settings = source.settings
    if not isinstance(settings, PushwooshSourceSettings):
        settings = PushwooshSourceSettings()
    if request.path in WEBHOOK_PATHS:
        parsed = parse_webhook(request.body)
        for item in parsed:
            if isinstance(item, ParsedEvent):
                item.filtered = filtered_reason(settings, item.event.event)  # type: ignore[union-attr]
        return parsed
    return parse_pushwoosh(settings, request)


@hookimpl
def map_event(destination: DestinationContext, event: Event, raw: dict[str, Any]) -> MapResult:
    settings: PushwooshSettings = destination.settings
    return map_pushwoosh(settings, event, raw)


@hookimpl
async def deliver(
    destination: DestinationContext, deliveries: list[Delivery], client: HttpClient
) -> list[DeliveryResult]:
    settings: PushwooshSettings = destination.settings
    return await deliver_pushwoosh(settings, deliveries, client)
