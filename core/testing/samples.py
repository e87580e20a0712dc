"""Sample Segment events and direct hook calls, for unit tests of connector plugins.

    from hookyard.testing import sample_identify, map_with, destination_context

    ctx = destination_context("novu", {"api_key": "k", "workflows": {"Signed Up": "welcome"}})
    result = map_with(ctx, sample_track(event="Signed Up"))
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import msgspec

from ..config import resolve_env
from ..connectors import (
    AuthResult,
    DestinationContext,
    IngestRequest,
    ParsedEvent,
    RefusedEvent,
    SourceContext,
)
from ..deliveries import Delivery, DeliveryResult, MapResult
from ..delivery.calling import as_stored
from ..delivery.router import call_map_event
from ..events import Event
from ..http import HttpClient
from ..plugins import ConnectorRegistry, make_plugin_manager, maybe_await
from ..runtime import convert_settings

TIMESTAMP = "2026-01-01T00:00:00.000Z"


def _event(kind: str, fields: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "type": kind,
        "messageId": str(uuid.uuid4()),
        "userId": "97980cfea0067",
        "timestamp": TIMESTAMP,
        "receivedAt": TIMESTAMP,
        "context": {},
        **fields,
    }
    raw.update(overrides)
    return {k: v for k, v in raw.items() if v is not None}


def sample_identify(**overrides: Any) -> dict[str, Any]:
    """The identify call of the reference documents (pass ``userId=None`` for anonymous)."""
    traits = {"name": "Peter Gibbons", "email": "peter@example.com", "language": "hi",
              "timezone": "Asia/Kolkata", "plan": "premium", "logins": 5}
    return _event("identify", {"traits": traits}, overrides)


def sample_track(**overrides: Any) -> dict[str, Any]:
    """``User Registered`` with the reference documents' properties."""
    props = {"plan": "Pro Annual", "accountType": "Facebook"}
    return _event("track", {"event": "User Registered", "properties": props}, overrides)


def sample_group(**overrides: Any) -> dict[str, Any]:
    return _event("group", {"groupId": "acme", "traits": {"name": "Acme Inc"}}, overrides)


def sample_page(**overrides: Any) -> dict[str, Any]:
    return _event("page", {"name": "Home", "properties": {"url": "https://example.com/"}}, overrides)


def sample_screen(**overrides: Any) -> dict[str, Any]:
    return _event("screen", {"name": "Home", "properties": {}}, overrides)


def sample_alias(**overrides: Any) -> dict[str, Any]:
    return _event("alias", {"previousId": "anon-1"}, overrides)


def as_event(raw: dict[str, Any]) -> Event:
    """The typed event of a raw event dict."""
    return msgspec.convert(raw, Event)  # type: ignore[arg-type]


def registry(plugins: list[object] | None = None, *, installed: bool = True) -> ConnectorRegistry:
    """A registry of the installed plugins (plus ``plugins``); with ``installed=False``, of
    ``plugins`` only, so that a wrapper plugin installed in the same environment (an
    enrichment, a scrubber) does not change what a unit test of another plugin sees."""
    return ConnectorRegistry(make_plugin_manager(plugins or (), load_entry_points=installed))


# The registry a context was built with (``reg=``, for plugin objects that are not installed),
# so the *_with helpers find it without being given it again; the newest contexts only.
_BUILT_WITH: dict[int, tuple[object, ConnectorRegistry]] = {}
_BUILT_WITH_MAX = 256


def _remember(ctx: object, reg: ConnectorRegistry | None) -> None:
    if reg is not None:
        if len(_BUILT_WITH) >= _BUILT_WITH_MAX:
            del _BUILT_WITH[next(iter(_BUILT_WITH))]
        _BUILT_WITH[id(ctx)] = (ctx, reg)


def _registry_for(ctx: object, reg: ConnectorRegistry | None) -> ConnectorRegistry:
    """``reg``, else the one ``ctx`` was built with, else the installed plugins'."""
    if reg is not None:
        return reg
    found = _BUILT_WITH.get(id(ctx))
    return found[1] if found is not None and found[0] is ctx else registry()


def destination_context(
    plugin: str, settings: dict[str, Any] | None = None, *, name: str | None = None,
    data_dir: Path | str = ".", reg: ConnectorRegistry | None = None,
) -> DestinationContext:
    """A destination context with settings validated by the plugin's settings Struct
    (``env:VAR`` values resolved, as the server does). The ``*_with`` helpers called with it
    use ``reg`` too, unless given another."""
    connector = (reg or registry()).get("destination", plugin)
    ctx = DestinationContext(
        name=name or plugin, plugin=plugin,
        settings=convert_settings(connector, resolve_env(settings or {})), data_dir=Path(data_dir),
    )
    _remember(ctx, reg)
    return ctx


def source_context(
    plugin: str, write_key: str = "test-write-key", settings: dict[str, Any] | None = None,
    *, name: str | None = None, reg: ConnectorRegistry | None = None,
) -> SourceContext:
    """A source context with settings validated by the plugin's settings Struct (``env:VAR``
    values resolved, as the server does). A connector with ``write_key=False`` gets ""."""
    connector = (reg or registry()).get("source", plugin)
    ctx = SourceContext(name=name or plugin, plugin=plugin,
                        write_key=write_key if connector.write_key else "",
                        settings=convert_settings(connector, resolve_env(settings or {})))
    _remember(ctx, reg)
    return ctx


def ingest_request(
    path: str, body: bytes | dict[str, Any] | list[Any], headers: dict[str, str] | None = None,
    path_params: dict[str, str] | None = None, *, query: dict[str, str] | None = None,
    method: str = "POST", client: str | None = "127.0.0.1",
) -> IngestRequest:
    """An ingest request as the host hands it to the source hooks (header names lower-cased;
    a dict or list body encoded as JSON, bytes as they are)."""
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    return IngestRequest(method=method, path=path,
                         headers={k.lower(): v for k, v in (headers or {}).items()},
                         body=data, path_params=path_params or {}, query=query or {},
                         client=client)


def authenticate_with(
    ctx: SourceContext, request: IngestRequest, reg: ConnectorRegistry | None = None
) -> AuthResult:
    """Call the source plugin's ``authenticate`` hook (deterministic dispatch, no server)."""
    reg = _registry_for(ctx, reg)
    result: AuthResult = reg.call("authenticate", "source", ctx.plugin, source=ctx, request=request)
    return result


def parse_with(
    ctx: SourceContext, request: IngestRequest, reg: ConnectorRegistry | None = None
) -> list[ParsedEvent | RefusedEvent]:
    """Call the source plugin's ``parse_events`` hook (``BadRequest`` propagates): its events,
    and a ``RefusedEvent`` for each one it refused alone."""
    reg = _registry_for(ctx, reg)
    result: list[ParsedEvent | RefusedEvent] = reg.call("parse_events", "source", ctx.plugin, source=ctx,
                                         request=request)
    return result


def map_with(
    ctx: DestinationContext, raw: dict[str, Any], reg: ConnectorRegistry | None = None
) -> MapResult:
    """Call the destination plugin's ``map_event`` hook as the router does (no server),
    without the filter and trigger: ``hookyard.delivery.router.call_map_event`` (a
    ``hookyard.fields.FieldMissing`` raised by the hook is the skip
    ``MapResult.skip(exc.reason)``; each delivery without a ``message_id`` / ``ordering_key``
    gets the event's ``messageId`` / ``userId``, else ``anonymousId``). The hook gets a copy
    of ``raw``, as each destination does in the router: a wrapper that changes it does not
    change the test's own dict (a test comparing a body with ``raw`` passed only because both
    had changed; plugin-author audit)."""
    raw = msgspec.json.decode(msgspec.json.encode(raw))
    return call_map_event(_registry_for(ctx, reg), ctx, raw, as_event(raw))


def deliver_with(
    ctx: DestinationContext, deliveries: list[Delivery], reg: ConnectorRegistry | None = None,
    client: HttpClient | None = None, *, connect_timeout: float = 2.0,
    total_timeout: float = 5.0,
) -> list[DeliveryResult]:
    """Call the plugin's ``deliver`` hook and wait for it.

    The hook gets ``client``, else a fresh ``HttpClient`` (closed afterwards) whose requests
    time out after ``connect_timeout`` seconds to connect and ``total_timeout`` seconds in all
    (short defaults for tests; a server uses ``[destinations.delivery]``
    ``connect_timeout_seconds`` / ``total_timeout_seconds``, 5 and 15 by default).
    ``client.send`` answers a request that timed out with a retryable result. A connector
    with ``raw_bodies`` gets each body as ``msgspec.Raw``, as from the server's outbox."""
    reg = _registry_for(ctx, reg)
    deliveries = as_stored(deliveries, reg.get("destination", ctx.plugin).raw_bodies)

    async def run() -> list[DeliveryResult]:
        http = client or HttpClient(connect_timeout=connect_timeout, total_timeout=total_timeout)
        try:
            return await maybe_await(  # type: ignore[no-any-return]
                reg.call("deliver", "destination", ctx.plugin, destination=ctx,
                         deliveries=deliveries, client=http)
            )
        finally:
            if client is None:
                await http.close()

    return asyncio.run(run())
