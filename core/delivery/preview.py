"""Preview: what one destination would do with one event, without sending or storing anything.

The "event tester": ``POST /api/destinations/{name}/preview`` and ``hookyard preview
--destination NAME --file event.json`` both answer with :func:`preview_event`'s document::

    {"destination": "segment-out", "plugin": "segment",
     "passes": true,                       # passes integrations, the filter and the trigger
     "integrations": null,                 # why the event's integrations object stops it
     "filter": null, "dropped_by_filter": false,
     "trigger": "type = \\"track\\"", "matches_trigger": true,
     "sent": true,                         # map_event made at least one delivery
     "reason": null,                       # why nothing would be sent, when sent is false
     "filtered": null,                     # the same reason (older name)
     "requests": [{"kind": "track", "method": "POST", "path": "/v1/batch",
                   "url": "https://api.segment.io/v1/batch", "body": {...},
                   "message_id": "...", "ordering_key": "u1"}],
     "deliveries": [...]}                  # the same requests as the map hook returned them

It runs the same code as the router (filter, trigger, the plugin's pure ``map_event`` hook and
its field mappings); the ``deliver`` hook is never called. ``url`` is the plugin's
``base_url`` setting joined with the request path, when the plugin has one. Credentials are
added by ``deliver`` at send time and are not shown; a batching plugin may wrap several bodies
into one HTTP request (the Segment forwarder sends them inside ``{"batch": [...]}``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import msgspec

from ..deliveries import Delivery
from ..errors import BadRequest, ConfigError
from ..events import Event, validate_event
from ..nesting import MAX_NESTING, TOO_DEEP, depth_exceeds
from ..times import now_iso
from .router import map_one, requests_of

if TYPE_CHECKING:
    from ..runtime import DestinationRuntime, Runtime

log = logging.getLogger("hookyard.preview")
_object = msgspec.json.Decoder(dict[str, Any])
_encoder = msgspec.json.Encoder()


def load_event(data: bytes) -> dict[str, Any]:
    """Decode a JSON object; :class:`BadRequest` names what is wrong."""
    if not data.strip():
        raise BadRequest("no event given: pass --file FILE, or the event's JSON on stdin")
    try:
        return _object.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError, UnicodeDecodeError, RecursionError) as exc:
        raise BadRequest(f"the event must be a JSON object: {exc}") from None


def _event(raw: dict[str, Any]) -> Event:
    if "type" not in raw:  # a body written for /v1/identify, whose path gives the type
        raise BadRequest('not a valid Segment event: it has no "type": add "type": "identify"'
                         ' (or track, page, screen, group, alias), which /v1/<type> gives an'
                         " event sent there")
    try:
        event: Event = msgspec.convert(raw, Event)  # type: ignore[arg-type]
    except (msgspec.ValidationError, RecursionError) as exc:
        raise BadRequest(f"not a valid Segment event: {exc}") from None
    problem = validate_event(event)
    if problem:
        raise BadRequest(f"not a valid Segment event: {problem}")
    return event


def request_of(dest: DestinationRuntime, d: Delivery) -> dict[str, Any]:
    """One delivery as the HTTP request it describes."""
    out: dict[str, Any] = {"kind": d.kind, "method": d.method, "path": d.path}
    base = getattr(dest.context.settings, "base_url", None)
    if isinstance(base, str) and base and d.path:  # no path: not an HTTP request (Novu's
        # send_unmapped = "error" fails such a delivery without sending anything)
        out["url"] = base.rstrip("/") + d.path
    out.update(body=d.body, message_id=d.message_id, ordering_key=d.ordering_key)
    return out


def _ingest_would_take(rt: Runtime, raw: dict[str, Any]) -> None:
    """BadRequest for an event ingest refuses, whatever a destination would make of it: one
    larger than ``max_event_bytes`` (a 413 at ingest) or nested more than 100 levels deep
    (API contract audit: a preview said "would be sent" for both)."""
    try:
        size = len(_encoder.encode(raw))
    except (RecursionError, TypeError, ValueError):
        size = 0  # too deep to encode: said below
    limit = rt.config.server.max_event_bytes
    if size > limit:
        raise BadRequest(f"the event is larger than {limit} bytes: ingest refuses it (413)")
    if depth_exceeds(raw, MAX_NESTING):
        raise BadRequest(f"the event is {TOO_DEEP}: ingest refuses it")


def preview_event(
    rt: Runtime, dest: DestinationRuntime, raw: dict[str, Any], source: str | None = None
) -> dict[str, Any]:
    """What ``dest`` would send for ``raw`` (a Segment event dict) arriving from ``source``
    (whose ``honor_integrations`` applies; None: a source that honors them); nothing is sent
    or stored.

    ``messageId`` is filled in when missing, and ``receivedAt`` is now, as ingest sets it
    whatever the client sent (a client's own receivedAt made a preview differ from what is
    sent, for the times that depend on it). Raises
    :class:`BadRequest` when ``raw`` is not a valid Segment event or ``source`` is not a
    configured source; a crashing ``map_event`` hook, or a delivery that cannot be encoded as
    JSON (the router dead-letters both), is reported in ``reason``, never raised.
    """
    if source is not None and source not in rt.sources:
        known = ", ".join(rt.sources) or "none"
        raise BadRequest(f"no source named {source!r} (configured: {known})")
    _ingest_would_take(rt, raw)
    raw = dict(raw)
    event = _event(raw)
    raw.setdefault("messageId", "preview")
    raw["receivedAt"] = now_iso()
    honored = source not in rt.integrations_ignored_from
    off = dest.switched_off(raw, honored)
    dropped = bool(dest.filter(raw)) if dest.filter is not None else False
    matches = bool(dest.trigger(raw)) if dest.trigger is not None else True
    deliveries: list[Delivery] = []
    reason: str | None = dest.gate(raw, honored)
    if reason is None:
        try:
            result = map_one(rt, dest, raw, event, source)
            requests_of(result)  # a delivery the router could not store fails like a raise
        except Exception as exc:  # noqa: BLE001 - the router turns this into a dead letter
            log.warning("map_event of %s failed in a preview: %s", dest.name, exc)
            where = rt.registry.blamed(exc, "destination", dest.config.plugin)
            reason = rt.scrubber.text(f"map_event failed{where}: {type(exc).__name__}: {exc}")
        else:
            deliveries = result.deliveries
            if not deliveries:
                reason = result.filtered or "no deliveries"
    return {
        "destination": dest.name,
        "plugin": dest.config.plugin,
        "passes": off is None and not dropped and matches,
        "integrations": off,
        "filter": dest.config.filter,
        "dropped_by_filter": dropped,
        "trigger": dest.config.trigger,
        "matches_trigger": matches,
        "sent": bool(deliveries),
        "reason": reason,
        "filtered": reason,
        "requests": [request_of(dest, d) for d in deliveries],
        "deliveries": [msgspec.to_builtins(d) for d in deliveries],
    }


def preview_cli(rt: Runtime, destination: str, data: bytes, source: str | None = None) -> str:
    """``hookyard preview``: the API's answer as indented JSON; errors raise HookyardError."""
    dest = rt.destinations.get(destination)
    if dest is None:
        known = ", ".join(rt.destinations) or "none"
        raise ConfigError(f"no destination named {destination!r} (configured: {known})")
    result = preview_event(rt, dest, load_event(data), source)
    return msgspec.json.format(msgspec.json.encode(result), indent=2).decode()
