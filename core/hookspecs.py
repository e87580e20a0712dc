"""The hookyard plugin API: the event pipeline as pluggy hooks.

Pipeline order::

    register_connectors                      once, at start-up
    authenticate -> parse_events             per ingest request   (source connectors)
    map_event    -> deliver                  per stored event     (destination connectors)
    register_routes, startup, shutdown       host integration

Dispatch is deterministic: the step hooks (``authenticate``, ``parse_events``, ``map_event``,
``deliver``) are called only on the plugin that registered the connector named in the config,
plus any *wrapper* implementations (``@hookimpl(wrapper=True)``) of other plugins, which see every
connector's calls (enrichment, auditing). Hooks are always called with keyword arguments.

``deliver``, ``startup`` and ``shutdown`` may be ``async def``: pluggy does not await, the host
awaits the returned coroutine. Every hook can be called directly from a unit test with no
server; ``hookyard.testing`` builds the contexts for you.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from starlette.routing import BaseRoute

    from .connectors import (
        AuthResult,
        Connector,
        DestinationContext,
        IngestRequest,
        ParsedEvent,
        RefusedEvent,
        SourceContext,
    )
    from .deliveries import Delivery, DeliveryResult, MapResult
    from .events import Event
    from .http import HttpClient
    from .runtime import Runtime

hookspec = pluggy.HookspecMarker("hookyard")
hookimpl = pluggy.HookimplMarker("hookyard")


@hookspec
def register_connectors() -> list[Connector]:
    """Declare the sources and destinations this plugin offers.

    Return a list of :class:`hookyard.connectors.Connector`, each with a unique ``name``, its
    ``kind`` (``"source"`` or ``"destination"``) and a msgspec Struct type for its settings.
    Called once per plugin when the connector registry is built (start-up, ``hookyard
    plugins``, ``hookyard.testing.registry``); two plugins declaring the same (name, kind)
    stop start-up with a clear error.
    """


@hookspec(firstresult=True)
def authenticate(source: SourceContext, request: IngestRequest) -> AuthResult | None:
    """Decide whether ``request`` is allowed to write to ``source``.

    Return :class:`AuthResult` accepted, or refused with a reason (answered 401). Compare keys
    in constant time (``hmac.compare_digest``). When several sources share a path, the host asks
    each in config order and the first that accepts owns the request.
    """


@hookspec(firstresult=True)
def parse_events(
    source: SourceContext, request: IngestRequest
) -> list[ParsedEvent | RefusedEvent] | None:
    """Turn an authenticated request body into typed events.

    Return a list of :class:`ParsedEvent` (raw JSON bytes + typed event); an item of a
    multi-event body may be a :class:`RefusedEvent` (that event alone is not stored and is
    listed in the 2xx answer; all refused -> 400). Raise
    :class:`hookyard.errors.BadRequest` (400) for malformed JSON or an invalid event, with a
    reason the client can act on, or :class:`hookyard.connectors.Reply` to answer the request
    yourself and store nothing (a vendor's verification handshake). The host then adds
    ``messageId`` (if missing) and ``receivedAt``, enforces the per-event size limit and
    commits all events in one transaction before answering. Runs on the event loop: be quick.
    """


@hookspec(firstresult=True)
def map_event(destination: DestinationContext, event: Event, raw: dict[str, Any]) -> MapResult | None:
    """Turn one stored event into the deliveries for ``destination``.

    ``event`` is the typed Segment event, ``raw`` its full JSON (unknown fields included,
    ``messageId``/``receivedAt`` filled in). Return ``MapResult.send(*deliveries)``, or
    ``MapResult.skip(reason)`` when the event does not apply (recorded, never retried). Must
    be pure: no I/O, it also runs for previews and replays, and in the router's helper process
    (``hookyard.delivery.map_process``), which runs no ``startup`` hooks (a plugin that has
    one is mapped in the worker's process, with the ``destination.state`` it prepared).
    """


@hookspec(firstresult=True)
def deliver(
    destination: DestinationContext, deliveries: list[Delivery], client: HttpClient
) -> list[DeliveryResult] | Awaitable[list[DeliveryResult]] | None:
    """Send ``deliveries`` (at most the connector's ``batch_size``) and report each outcome.

    Return one :class:`DeliveryResult` per delivery, in order: ``ok``, ``retryable`` or
    ``permanent``. Use ``client`` (a shared keep-alive aiohttp session with timeouts) for HTTP;
    ``client.send`` already applies the common rules (2xx ok; 408/429/5xx/timeouts retryable,
    honouring Retry-After; other 4xx permanent). May be ``async def``. When the connector
    sets ``deliver_anywhere``, this may run in hookyard's deliver process
    (``hookyard.delivery.deliver_process``), which runs no ``startup`` hooks.
    """


@hookspec
def register_routes(runtime: Runtime) -> list[BaseRoute] | None:
    """Add HTTP routes to the server (e.g. a read API). Routes under ``/api/`` require the
    admin token; the host enforces it."""


@hookspec
def startup(runtime: Runtime) -> Awaitable[None] | None:
    """Called once when the server or worker starts, after the database is open."""


@hookspec
def shutdown(runtime: Runtime) -> Awaitable[None] | None:
    """Called once at shutdown, after delivery workers stopped. Close what ``startup`` opened."""
