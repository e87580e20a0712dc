"""msgspec types of the public HTTP API's request and response bodies (used by the OpenAPI
document; the handlers produce exactly these shapes)."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

from .deliveries import Delivery
from .events import Event

UnixSeconds = Annotated[float, msgspec.Meta(
    description="Unix time in seconds (UTC), with a fraction")]
"""The times the database keeps as numbers (deliveries, attempts, dead letters, profiles);
event times (``receivedAt``, ``timestamp``) and the API log's ``at`` are ISO-8601 text."""


class RefusedItem(msgspec.Struct):
    index: int
    error: str


class IngestOK(msgspec.Struct, omit_defaults=True):
    """``{"success": true}``; a webhook array also lists the events refused alone (anonymous
    ones), the others being committed."""

    success: bool
    refused: list[RefusedItem] = []
    refused_count: int | None = None  # all the refused events, when ``refused`` lists the first 100


class IngestError(msgspec.Struct):
    success: bool
    error: str
    code: str  # bad_request, unauthorized, payload_too_large... (as Segment's API answers)
    message: str  # the same as error


class ApiError(msgspec.Struct):
    error: str


class Batch(msgspec.Struct):
    """``/v1/batch`` body: up to 500 KB of events; top-level context/integrations apply to all."""

    batch: list[Event]
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    sentAt: str | None = None
    writeKey: str | None = None


class Health(msgspec.Struct):
    status: str
    error: str | None = None


class Preferences(msgspec.Struct, rename={"locale": "$locale", "timezone": "$timezone"}):
    locale: str | None
    timezone: str | None


class Subscriber(msgspec.Struct):
    distinct_id: str
    properties: dict[str, Any]
    channels: dict[str, list[str]]
    preferences: Preferences
    created_at: UnixSeconds | None
    updated_at: UnixSeconds | None


class SubscriberSummary(msgspec.Struct):
    distinct_id: str
    properties: dict[str, Any]
    preferences: Preferences
    updated_at: UnixSeconds | None


class SubscriberPage(msgspec.Struct):
    subscribers: list[SubscriberSummary]
    next: str | None


class UserEvent(msgspec.Struct):
    event: str
    properties: dict[str, Any]
    timestamp: str | None
    receivedAt: str | None
    messageId: str | None


class UserEventPage(msgspec.Struct):
    events: list[UserEvent]
    next: str | None


class WorkflowRun(msgspec.Struct):
    id: int
    workflow: str
    distinct_id: str
    event: str
    messageId: str | None
    payload: dict[str, Any]
    created_at: UnixSeconds


class WorkflowRunPage(msgspec.Struct):
    runs: list[WorkflowRun]
    next: str | None


class LogLine(msgspec.Struct):
    id: int
    at: str
    source: str | None
    method: str
    path: str
    status: int
    events: int
    error: str | None
    duration_ms: float | None


class LogPage(msgspec.Struct):
    items: list[LogLine]
    next: str | None


class InboxItem(msgspec.Struct):
    id: int
    source: str
    filtered: str | None
    event: dict[str, Any]


class InboxPage(msgspec.Struct):
    items: list[InboxItem]
    next: str | None


class Attempt(msgspec.Struct):
    attempt: int
    outcome: str
    http_status: int | None
    latency_ms: float | None
    error: str | None
    at: UnixSeconds


class OutboxRow(msgspec.Struct):
    id: int
    destination: str
    inbox_id: int | None
    message_id: str | None
    user_key: str | None
    kind: str | None
    state: str
    attempts: int
    next_at: UnixSeconds | None
    lease_until: UnixSeconds | None
    created_at: UnixSeconds
    updated_at: UnixSeconds | None
    last_status: int | None
    last_error: str | None
    response_body: str | None
    plugin: str | None  # the plugin that made ``request`` (a plugin change makes it again)
    request: Any
    attempts_log: list[Attempt]


class DeliveryTrace(msgspec.Struct):
    message_id: str
    deliveries: list[OutboxRow]


class DeadLetter(msgspec.Struct):
    id: int
    destination: str
    message_id: str | None
    user_key: str | None
    kind: str | None
    attempts: int
    last_status: int | None
    last_error: str | None
    response_body: str | None
    created_at: UnixSeconds
    updated_at: UnixSeconds | None


class DeadLetterPage(msgspec.Struct):
    items: list[DeadLetter]
    next: str | None


class DeadLetterRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Which dead letters to retry or discard. Unknown keys and an empty ``ids`` are a 400;
    ``discard`` needs a filter or ``"all": true`` (``retry`` with none retries them all)."""

    destination: str | None = None
    # ISO-8601 (UTC when no zone is given) or Unix seconds: dead letters that failed since then
    since: str | float | None = None
    ids: Annotated[
        list[Annotated[int, msgspec.Meta(ge=1, le=2**63 - 1)]], msgspec.Meta(min_length=1)
    ] | None = None  # outbox row ids
    every: bool = msgspec.field(default=False, name="all")  # every dead letter, explicitly


class DeadLetterResult(msgspec.Struct, omit_defaults=True):
    action: str
    count: int
    # retry only: matched dead letters of destinations no longer in the config, left dead
    left_dead: dict[str, int] | None = None


class PreviewRequest(msgspec.Struct):
    kind: str
    method: str
    path: str
    body: Any
    message_id: str
    ordering_key: str
    url: str | None = None


class PreviewResult(msgspec.Struct):
    destination: str
    plugin: str
    passes: bool
    integrations: str | None
    filter: str | None
    dropped_by_filter: bool
    trigger: str | None
    matches_trigger: bool
    sent: bool
    reason: str | None
    filtered: str | None
    requests: list[PreviewRequest]
    deliveries: list[Delivery]


class ReplayRequest(msgspec.Struct, forbid_unknown_fields=True):
    """Unknown keys are a 400. ``since`` / ``until``: ISO-8601 (UTC when no zone is given) or
    Unix seconds, on the time an event was received; ``until`` is exclusive. ``since`` or
    ``"all": true`` (every stored event of the source) is required."""

    source: str
    destination: str | None = None
    since: str | float | None = None
    until: str | float | None = None
    every: bool = msgspec.field(default=False, name="all")  # from the first stored event


class ReplayResult(msgspec.Struct):
    """``events`` read; the outbox rows their mapping made: ``deliveries`` queued,
    ``filtered`` (reason recorded), ``failed`` (``map_event`` raised: dead letters)."""

    events: int
    deliveries: int
    filtered: int
    failed: int
    seconds: float
