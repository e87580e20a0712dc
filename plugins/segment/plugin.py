"""The Segment connector plugin.

Source ``segment``:
    * tracking API ``POST /v1/{identify,track,page,screen,group,alias,batch,import}`` with HTTP
      Basic auth (write key as user name, empty password) or a ``writeKey`` body field, exactly as
      Segment's own API and libraries send it, or ``Authorization: Bearer <write key>``;
    * webhook ``POST /connector/segment/`` with ``Authorization: Bearer <write key>``, body one
      event or a JSON array of events (Segment's "Webhooks (Actions)" destination). An event
      without ``userId`` is refused with 400 ``userId is required``; in an array, that event
      alone (the others are stored, the 200 answer lists it under ``refused``).

Destination ``segment`` (the forwarder): see :mod:`hookyard_segment.forwarder`.
"""

from __future__ import annotations

from hookyard import hookimpl
from hookyard.connectors import (
    BEARER_CHALLENGE,
    AuthResult,
    Connector,
    IngestRequest,
    ParsedEvent,
    RefusedEvent,
    SourceContext,
)
from hookyard.events import encoder, raw_dict_decoder
from hookyard.tracking_api import (
    authenticate_write_key,
    basic_auth_user,
    bearer_token,
    keys_match,
    parse_call,
    parse_webhook,
)

from .forwarder import SegmentForwarderSettings, deliver, map_event  # noqa: F401 (hooks)

WEBHOOK_PATHS = ("/connector/segment/", "/connector/segment")
TRACKING_PATH = "/v1/{call}"


@hookimpl
def register_connectors() -> list[Connector]:
    return [
        Connector(
            name="segment",
            kind="source",
            paths=(TRACKING_PATH, *WEBHOOK_PATHS),
            description="Segment tracking API (/v1/*, Basic or Bearer write key) and webhook "
            "(/connector/segment/, Bearer write key)",
        ),
        Connector(
            name="segment",
            kind="destination",
            settings=SegmentForwarderSettings,
            batch_size=100,
            raw_bodies=True,  # events are forwarded as stored: no parse + re-encode per event
            deliver_anywhere=True,  # deliver needs only its settings and the HTTP client
            forwards_integrations=True,  # Segment applies each event's "integrations" itself
            integration_names=("Segment.io",),  # {"Segment.io": false} stops it too
            description="Forwards events to Segment's tracking API (/v1/batch)",
        ),
    ]


def _is_webhook(request: IngestRequest) -> bool:
    return "call" not in request.path_params


@hookimpl
def authenticate(source: SourceContext, request: IngestRequest) -> AuthResult:
    if _is_webhook(request):
        token = bearer_token(request.headers)
        if token is None:
            token = basic_auth_user(request.headers)  # the tracking API's way works here too
        if token is None:
            return AuthResult.refuse("missing Authorization: Bearer <write key>" if not
                                     request.headers.get("authorization") else
                                     "Authorization must be Bearer <write key>", BEARER_CHALLENGE)
        if keys_match(token, source.write_key):
            return AuthResult.accept()
        return AuthResult.refuse("invalid write key", BEARER_CHALLENGE)
    return authenticate_write_key(source.write_key, request)


@hookimpl
def parse_events(
    source: SourceContext, request: IngestRequest
) -> list[ParsedEvent] | list[ParsedEvent | RefusedEvent]:
    if _is_webhook(request):
        return [_as_processed(p) for p in parse_webhook(request.body, require_user_id=True)]
    return parse_call(request.path_params["call"], request.body)


def _as_processed(parsed: ParsedEvent | RefusedEvent) -> ParsedEvent | RefusedEvent:
    """A webhook event came through Segment, which fixed its ``timestamp`` for the client's
    clock already: its ``sentAt`` (the client's clock) is left out, so that no destination
    corrects the time again, by the skew and by how long the webhook took (hours, when
    Segment retried it). Without a ``timestamp`` the event keeps its ``sentAt``."""
    if isinstance(parsed, RefusedEvent) or parsed.event.sentAt is None or not parsed.event.timestamp:
        return parsed
    data = raw_dict_decoder.decode(parsed.raw)
    data.pop("sentAt", None)
    parsed.event.sentAt = None
    raw = encoder.encode(data)
    return ParsedEvent(raw=raw, event=parsed.event, filtered=parsed.filtered,
                       sent_bytes=parsed.sent_bytes or len(parsed.raw), checked=raw)

