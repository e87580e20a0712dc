"""The Novu connector plugin.

Destination ``novu``: identify -> Novu subscriber (``POST /v2/subscribers``), track -> workflow
trigger (``POST /v1/events/trigger``, several at once through ``/v1/events/trigger/bulk``),
group -> topic subscription (``POST /v2/topics/{groupId}/subscriptions``). See
:mod:`hookyard_novu.mapping` for the request bodies and :mod:`hookyard_novu.destination` for
delivery, batching and error handling.
"""

from __future__ import annotations

from typing import Any

from hookyard import hookimpl
from hookyard.connectors import Connector, DestinationContext
from hookyard.deliveries import Delivery, DeliveryResult, MapResult
from hookyard.events import Event
from hookyard.http import HttpClient

from .destination import MAX_BULK, deliver_novu
from .mapping import map_novu
from .settings import NovuSettings

BATCH_SIZE = MAX_BULK
"""Deliveries per ``deliver`` call: the triggers among them go out as one bulk trigger (Novu
takes at most 100), the other requests concurrently."""


@hookimpl
def register_connectors() -> list[Connector]:
    return [
        Connector(
            name="novu",
            kind="destination",
            settings=NovuSettings,
            batch_size=BATCH_SIZE,
            deliver_anywhere=True,  # deliver needs only its settings and the HTTP client
            description="Novu: identify -> subscribers (/v2/subscribers), track -> workflow "
            "triggers (/v1/events/trigger, /bulk), group -> topics",
        ),
    ]


@hookimpl
def map_event(destination: DestinationContext, event: Event, raw: dict[str, Any]) -> MapResult:
    settings: NovuSettings = destination.settings
    return map_novu(settings, event, raw)


@hookimpl
async def deliver(
    destination: DestinationContext, deliveries: list[Delivery], client: HttpClient
) -> list[DeliveryResult]:
    settings: NovuSettings = destination.settings
    return await deliver_novu(settings, deliveries, client)
