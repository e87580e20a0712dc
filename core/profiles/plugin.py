"""The built-in profile store destination (plugin name ``profiles``).

Registered through the ``hookyard`` entry-point group like any third-party connector. It keeps
subscribers, their channels and preferences, an event log and workflow runs in
``profiles.db`` in the data dir, and serves them on the read API (``/api/subscribers``...).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from starlette.routing import BaseRoute

from .. import hookimpl
from ..connectors import Connector, DestinationContext
from ..deliveries import Delivery, DeliveryResult, MapResult
from ..events import Event
from ..http import HttpClient
from .api import routes
from .mapping import ProfileSettings, map_profile_event
from .store import ProfileStore

if TYPE_CHECKING:
    from ..runtime import Runtime


def store_for(destination: DestinationContext) -> ProfileStore:
    """The destination's store, opened on first use and kept in its ``state``."""
    store = destination.state.get("store")
    if store is None:
        store = ProfileStore(destination.data_dir / "profiles.db")
        destination.state["store"] = store
    return store


@hookimpl
def register_connectors() -> list[Connector]:
    return [
        Connector(
            name="profiles",
            kind="destination",
            settings=ProfileSettings,
            batch_size=200,
            description="Built-in profile store: subscribers, channels, preferences, events, "
            "workflow runs",
        )
    ]


@hookimpl
def map_event(destination: DestinationContext, event: Event, raw: dict[str, Any]) -> MapResult:
    return map_profile_event(destination.settings, event, raw)


@hookimpl
async def deliver(
    destination: DestinationContext, deliveries: list[Delivery], client: HttpClient
) -> list[DeliveryResult]:
    store = store_for(destination)
    await asyncio.to_thread(store.apply, destination.name, deliveries)
    return [DeliveryResult.ok() for _ in deliveries]


@hookimpl
def register_routes(runtime: Runtime) -> list[BaseRoute]:
    return routes(runtime)


@hookimpl
def shutdown(runtime: Runtime) -> None:
    for dest in runtime.destinations.values():
        store = dest.context.state.pop("store", None)
        if store is not None:
            store.close()
