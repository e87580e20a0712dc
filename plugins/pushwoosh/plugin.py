"""The Pushwoosh connector plugin.

Destination ``pushwoosh``: identify -> Pushwoosh tags (``/json/1.3/setTags``, "Create or Update
User Profile"), track -> Pushwoosh events (``/json/1.3/postEvent``, "Track Events"); see
:mod:`hookyard_pushwoosh.destination` and :mod:`hookyard_pushwoosh.tags`.

Source ``pushwoosh``: Pushwoosh's message events (Email Sent, Push Delivered, ...) exported to
hookyard as Segment track calls on ``/v1/track`` / ``/v1/batch`` with a write key, filtered by
the source's ``events`` list; see :mod:`hookyard_pushwoosh.source`.
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
from hookyard.tracking_api import authenticate_write_key

from .destination import deliver_pushwoosh, map_pushwoosh
from .settings import PushwooshSettings, PushwooshSourceSettings
from .source import TRACKING_PATH, parse_pushwoosh

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
            paths=(TRACKING_PATH,),
            description="Pushwoosh message events (Email Sent, Push Delivered, ...) as Segment "
            "track calls on /v1/track, /v1/batch and /v1/import, Basic or Bearer write key",
        ),
    ]


@hookimpl
def authenticate(source: SourceContext, request: IngestRequest) -> AuthResult:
    return authenticate_write_key(source.write_key, request)


@hookimpl
def parse_events(
    source: SourceContext, request: IngestRequest
) -> list[ParsedEvent | RefusedEvent]:
    settings = source.settings
    if not isinstance(settings, PushwooshSourceSettings):
        settings = PushwooshSourceSettings()
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
