"""Delivery to Novu: ``Authorization: ApiKey <api_key>``, per-user order kept, triggers pooled
into bulk triggers.

A ``deliver`` call gets up to ``batch_size`` deliveries of mixed kinds and several users. They go
out in *rounds*: each round takes the next request of every user (ordering key): a subscriber
upsert, a topic subscription or a trigger (one: Novu handles a bulk's events side by side, so
two of a user's triggers never share a bulk). The round's requests are sent concurrently; its
triggers, from every user, are pooled into ``POST /v1/events/trigger/bulk`` requests of 100
events (setting ``bulk_min``: Novu Cloud counts a bulk request as 100 rate-limit tokens, a
single trigger as 1, so the rest go as concurrent ``/v1/events/trigger`` requests). After a
retryable failure a user's later deliveries are held back, so a retry never lands after a
newer update of the same user; after a 429 every user's are (the limit is the environment's).

Outcomes:

* 2xx: delivered. A trigger answer (single, or each item of a bulk answer) with a ``status``
  other than ``processed`` is a permanent failure carrying Novu's error (the workflow ran
  nothing), except ``"status": "error"``, which carries whatever failed inside Novu for that
  event: a bulk's such item is sent again alone and that answer's status decides; in a single
  trigger's answer only Novu's known messages for an event at fault are permanent
  (:func:`item_error_is_permanent`). A topic subscription answer listing an error for the user
  (``SUBSCRIBER_NOT_FOUND``) is permanent too.
* "transactionId property is not unique": Novu already has this trigger (an earlier attempt
  succeeded but its answer was lost): delivered, never notified twice.
* 408, 429, 5xx, timeouts, connection errors: retryable, honouring ``Retry-After``.
* Other 4xx: permanent. A bulk request refused as a whole (400, 413, 422) is sent again one
  trigger at a time, so one bad event cannot sink the other 99; 401/403 fail them all.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import msgspec
from hookyard.deliveries import (  # noqa: F401 - HELD_BACK: the text tests compare with
    HELD_BACK,
    RESPONSE_BODY_LIMIT,
    Delivery,
    DeliveryResult,
    expect_json,
    held_back,
)
from hookyard.http import HttpClient, HttpResponse

from .mapping import (
    BULK_TRIGGER_PATH,
    KIND_SUBSCRIBER,
    KIND_TOPIC,
    KIND_TRIGGER,
    KIND_UNMAPPED,
    SUBSCRIBERS_PATH,
)
from .settings import NovuSettings

MAX_BULK = 100
"""Novu's bulk trigger takes at most 100 events."""
MAX_CONCURRENT = 10
"""Requests in flight at once per ``deliver`` call."""
PROCESSED = "processed"
ERROR = "error"
PERMANENT_ITEM_ERRORS = (
    "workflow_not_found", "trigger is missing", "validation failed", "must be a", "must be an",
    "should be", "is not a valid",
)
"""Novu's own messages for an event at fault (``workflow_not_found``, ``Trigger is missing:
...``, ``Payload validation failed``, ``... must be a string``), in a trigger answer's
``"status": "error"``; see :func:`item_error_is_permanent`."""
DUPLICATE_MARKER = "transactionid property is not unique"
AUTH_STATUSES = (401, 403)

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
Send = Callable[[int], Awaitable[DeliveryResult]]


# -- reading Novu's answers ------------------------------------------------------------------
def decode(body: bytes) -> Any:
    """The JSON of an answer (Novu wraps results in ``{"data": ...}``), or None."""
    if not body:
        return None
    try:
        value = _decoder.decode(body)
    except (msgspec.DecodeError, UnicodeDecodeError):
        return None
    if isinstance(value, dict) and set(value) == {"data"}:
        return value["data"]
    return value


def error_message(body: bytes) -> str | None:
    """Novu's ``message`` from an error answer (a string or a list of strings), followed by the
    field details of a validation error (``errors: {field: {messages: [...]}}``, where the
    ``message`` alone may be just ``Validation Error`` or missing, or the payload validation
    error's ``errors: [{field, message, value}, ...]``)."""
    value = decode(body)
    if not isinstance(value, dict):
        return None
    message = value.get("message")
    if isinstance(message, list):
        message = "; ".join(str(m) for m in message)
    parts = [message] if isinstance(message, str) and message else []
    errors = value.get("errors")
    if isinstance(errors, dict):
        parts.extend(_field_errors(errors))
    elif isinstance(errors, list):
        parts.extend(_listed_errors(errors))
    return "; ".join(parts) or None


def _listed_errors(errors: list[Any]) -> list[str]:
    """novu-py's PayloadValidationExceptionDto: ``[{field, message, value, schemaPath}]``."""
    out = []
    for error in errors:
        if isinstance(error, dict) and error.get("message"):
            field, text = error.get("field"), str(error["message"])
            out.append(text if not field or str(field) in text else f"{field}: {text}")
        elif isinstance(error, str):
            out.append(error)
    return out


def _field_errors(errors: dict[str, Any]) -> list[str]:
    out = []
    for field, detail in errors.items():
        messages = detail.get("messages") if isinstance(detail, dict) else detail
        if isinstance(messages, str):
            messages = [messages]
        if not isinstance(messages, list):
            continue
        for m in messages:
            text = str(m)
            out.append(text if str(field) in text else f"{field}: {text}")
    return out


def is_duplicate(text: str | None) -> bool:
    """Novu refused a trigger because its transactionId was already used."""
    return text is not None and DUPLICATE_MARKER in text.lower()


def _text(value: Any) -> str:
    text = _encoder.encode(value).decode()
    return text if len(text) <= RESPONSE_BODY_LIMIT else text[:RESPONSE_BODY_LIMIT] + "…"


def with_message(result: DeliveryResult, response: HttpResponse | None) -> DeliveryResult:
    """A failed HTTP result with Novu's error message added to its error."""
    if result.outcome != "ok" and response is not None:
        message = error_message(response.body)
        if message:  # in place of the common reason (its message without the field details)
            result.error = f"HTTP {response.status}: {message}"
    return result


def trigger_item_result(item: Any, http_status: int) -> DeliveryResult:
    """The outcome of one trigger from its answer ``{acknowledged, status, error?, ...}``."""
    if not isinstance(item, dict) or not isinstance(item.get("status"), str):
        return DeliveryResult.retryable(
            "unreadable Novu trigger answer", http_status=http_status, response_body=_text(item)
        )
    status = item["status"]
    errors = item.get("error")
    detail = "; ".join(str(e) for e in errors) if isinstance(errors, list) else str(errors or "")
    if status == PROCESSED or is_duplicate(detail):
        return DeliveryResult(outcome="ok", http_status=http_status, response_body=_text(item))
    error = f"Novu trigger {status}" + (f": {detail}" if detail else "")
    if status == ERROR and not item_error_is_permanent(detail):
        return DeliveryResult.retryable(error, http_status=http_status, response_body=_text(item))
    return DeliveryResult.permanent(error, http_status=http_status, response_body=_text(item))


def item_error_is_permanent(detail: str) -> bool:
    """Whether the error of a trigger answer's ``"status": "error"`` is the event's own fault
    (retrying cannot help). Novu answers so an event whose processing threw, with the
    exception's message, whatever it was: a missing workflow or an invalid payload, but also a
    database timeout. A bulk's such items are sent again alone (:meth:`Sender.send_bulk`),
    where the answer's status decides; for any other answer, only Novu's known messages for an
    event at fault are permanent, and anything else is retried (safe: Novu queued nothing, and
    the ``transactionId`` prevents a duplicate), up to ``max_attempts``."""
    text = detail.lower()
    return any(marker in text for marker in PERMANENT_ITEM_ERRORS)


def topic_result(
    result: DeliveryResult, response: HttpResponse | None, subscriber_id: str | None
) -> DeliveryResult:
    """A 2xx topic subscription answer may still list the user under ``errors``."""
    if result.outcome != "ok" or response is None:
        return result
    answer = decode(response.body)
    errors = answer.get("errors") if isinstance(answer, dict) else None
    for error in errors if isinstance(errors, list) else []:
        if isinstance(error, dict) and error.get("subscriberId") in (subscriber_id, None):
            message = f"Novu topic subscription failed: {error.get('code')}: {error.get('message')}"
            return DeliveryResult.permanent(
                message, http_status=response.status, response_body=result.response_body
            )
    return result


# -- sending -----------------------------------------------------------------------------------
class Sender:
    """Sends one ``deliver`` call's deliveries (see the module docstring)."""

    def __init__(self, settings: NovuSettings, deliveries: list[Delivery], client: HttpClient):
        self.settings = settings
        self.deliveries = deliveries
        self.client = client
        self.headers = {"Authorization": f"ApiKey {settings.api_key}", "Accept": "application/json"}
        self.slots = asyncio.Semaphore(MAX_CONCURRENT)
        self.limited: DeliveryResult | None = None  # a 429 of this call's

    async def post(
        self, path: str, body: Any, method: str = "POST"
    ) -> tuple[DeliveryResult, HttpResponse | None]:
        """One request; after a 429 of this call none is sent (Novu's rate limit is the
        environment's: the call's other requests, waiting for a slot, would be refused too and
        spend an attempt each; delivery adversity audit)."""
        async with self.slots:
            if self.limited is not None:
                return held_back(self.limited), None
            result, response = await self.client.send(
                method, self.settings.api_url + path, json=body, headers=self.headers
            )
            if result.rate_limited:
                self.limited = result
            return result, response

    async def send_one(self, i: int) -> DeliveryResult:
        """One delivery as its own request (a trigger through ``/v1/events/trigger``)."""
        d = self.deliveries[i]
        if d.kind == KIND_UNMAPPED:
            error = d.body.get("error") if isinstance(d.body, dict) else None
            return DeliveryResult.permanent(str(error or "no Novu workflow mapped"))
        if not d.path.startswith("/"):
            return DeliveryResult.permanent(f"cannot send Novu delivery of kind {d.kind!r}")
        result, response = await self.post(d.path, d.body)
        if d.kind == KIND_SUBSCRIBER and result.http_status == 409 and isinstance(d.body, dict):
            result, response = await self.update_subscriber(d.body)
        if response is not None:
            result = expect_json(result, response.body, "Novu", "base_url")
        if d.kind == KIND_TRIGGER:
            return self.trigger_result(result, response)
        if d.kind == KIND_TOPIC:
            subs = d.body.get("subscriptions") if isinstance(d.body, dict) else None
            subscriber = subs[0] if isinstance(subs, list) and subs else None
            return topic_result(with_message(result, response), response, subscriber)
        return with_message(result, response)

    async def update_subscriber(
        self, body: dict[str, Any]
    ) -> tuple[DeliveryResult, HttpResponse | None]:
        """``PATCH /v2/subscribers/{id}`` with an upsert's attributes and data: a Novu whose
        ``POST /v2/subscribers`` creates only (self-hosted releases before it upserted, which
        answer ``409 Subscriber ... already exists``) made a dead letter of every identify
        after a user's first (vendors audit)."""
        fields = {k: v for k, v in body.items() if k != "subscriberId"}
        path = f"{SUBSCRIBERS_PATH}/{quote(str(body.get('subscriberId')), safe='')}"
        return await self.post(path, fields, method="PATCH")

    def trigger_result(
        self, result: DeliveryResult, response: HttpResponse | None
    ) -> DeliveryResult:
        if response is None:
            return result
        if result.outcome == "ok":
            answer = decode(response.body)
            if isinstance(answer, dict) and "status" in answer:
                return trigger_item_result(answer, response.status)
            return result
        if is_duplicate(error_message(response.body)):
            return DeliveryResult(
                outcome="ok", http_status=response.status, response_body=result.response_body
            )
        return with_message(result, response)

    async def send_bulk(self, indexes: list[int]) -> dict[int, DeliveryResult]:
        """Up to 100 triggers in one bulk request; fewer than ``bulk_min`` as single triggers,
        concurrently (each user's still come one after another: see :meth:`in_order`)."""
        if len(indexes) < self.settings.bulk_min:
            return await self.in_order(indexes, self.send_one)
        body = {"events": [self.deliveries[i].body for i in indexes]}
        result, response = await self.post(BULK_TRIGGER_PATH, body)
        if response is None or result.outcome == "retryable":
            result = with_message(result, response)
            return {i: msgspec.structs.replace(result) for i in indexes}
        if result.outcome == "permanent":
            if response.status in AUTH_STATUSES:
                result = with_message(result, response)
                return {i: msgspec.structs.replace(result) for i in indexes}
            return await self.in_order(indexes, self.send_one)  # find the bad event(s)
        items = decode(response.body)
        if not isinstance(items, list) or len(items) != len(indexes):
            return {
                i: DeliveryResult.retryable(
                    "unreadable Novu bulk trigger answer (retried: transactionId makes it safe)",
                    http_status=response.status,
                    response_body=result.response_body,
                )
                for i in indexes
            }
        out = {i: trigger_item_result(item, response.status) for i, item in zip(indexes, items)}
        # an item Novu answers "status": "error" carries whatever its processing threw, the
        # event's fault or Novu's own (a database timeout): sent again alone, the HTTP status of
        # the answer tells which (safe: the transactionId prevents a second notification)
        again = [i for i, item in zip(indexes, items) if isinstance(item, dict)
                 and item.get("status") == ERROR and out[i].outcome != "ok"]
        if again:
            out.update(await self.in_order(again, self.send_one))
        return out

    async def in_order(self, indexes: list[int], send: Send) -> dict[int, DeliveryResult]:
        """Send ``indexes`` one by one per ordering key (keys concurrently); after a retryable
        failure the key's later ones are held back."""
        by_key: dict[str, list[int]] = {}
        for i in indexes:
            by_key.setdefault(self.key(i), []).append(i)
        out: dict[int, DeliveryResult] = {}

        async def run(mine: list[int]) -> None:
            failed: DeliveryResult | None = None
            for i in mine:
                if failed is not None:
                    out[i] = held_back(failed)
                    continue
                out[i] = await send(i)
                if out[i].outcome == "retryable":
                    failed = out[i]

        await asyncio.gather(*(run(mine) for mine in by_key.values()))
        return out

    def key(self, i: int) -> str:
        return self.deliveries[i].ordering_key or f"\x00{i}"

    async def run(self) -> list[DeliveryResult]:
        results: list[DeliveryResult | None] = [None] * len(self.deliveries)
        queues: dict[str, deque[int]] = {}
        for i in range(len(self.deliveries)):
            queues.setdefault(self.key(i), deque()).append(i)
        failed: dict[str, DeliveryResult] = {}
        while any(queues.values()):
            singles: list[int] = []
            triggers: list[int] = []
            for key, queue in queues.items():
                if key in failed:
                    while queue:
                        results[queue.popleft()] = held_back(failed[key])
                elif queue and self.deliveries[queue[0]].kind == KIND_TRIGGER:
                    # one trigger of a user per round: Novu handles a bulk's events side by
                    # side, and a retried one must not land after its user's later ones
                    triggers.append(queue.popleft())
                elif queue:
                    singles.append(queue.popleft())
            chunks = [triggers[n : n + MAX_BULK] for n in range(0, len(triggers), MAX_BULK)]
            single_answers, bulk_answers = await asyncio.gather(
                asyncio.gather(*(self.send_one(i) for i in singles)),
                asyncio.gather(*(self.send_bulk(chunk) for chunk in chunks)),
            )
            round_results: dict[int, DeliveryResult] = dict(zip(singles, single_answers))
            for answer in bulk_answers:
                round_results.update(answer)
            for i in sorted(round_results):
                results[i] = round_results[i]
                if round_results[i].outcome == "retryable":
                    failed.setdefault(self.key(i), round_results[i])
            limited = next((r for r in round_results.values() if r.rate_limited), None)
            if limited is not None:  # Novu's rate limit is the environment's, not the user's:
                for key in queues:  # the rest of the call waits with the 429's Retry-After
                    failed.setdefault(key, limited)
        return [r if r is not None else DeliveryResult.not_sent("not sent") for r in results]


async def deliver_novu(
    settings: NovuSettings, deliveries: list[Delivery], client: HttpClient
) -> list[DeliveryResult]:
    """One :class:`DeliveryResult` per delivery, in order."""
    return await Sender(settings, deliveries, client).run()
