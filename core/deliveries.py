"""What ``map_event`` produces and what ``deliver`` answers.

A :class:`Delivery` describes one request a destination will receive. It is stored in the
durable outbox as JSON (so its ``body`` must be JSON-serialisable) and must not contain secrets:
the deliver hook adds credentials from the settings when it sends.
"""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal

import msgspec

Outcome = Literal["ok", "retryable", "permanent"]


class Delivery(msgspec.Struct, kw_only=True):
    """One request to a destination.

    kind:         what the request does, shown to operators (``"identify"``, ``"trigger"``...).
    method, path: the HTTP request line; the deliver hook joins ``path`` to its own base URL.
    body:         the JSON body (any JSON-serialisable value).
    message_id:   the Segment messageId it came from (filled in by the host when empty).
    ordering_key: deliveries with the same key go out in order (default: userId/anonymousId).
    """

    kind: str
    method: str = "POST"
    path: str = ""
    body: Any = None
    message_id: str = ""
    ordering_key: str = ""


class MapResult(msgspec.Struct):
    """The answer of a ``map_event`` hook: deliveries to send, or a reason it was filtered."""

    deliveries: list[Delivery] = []
    filtered: str | None = None

    @classmethod
    def send(cls, *deliveries: Delivery) -> MapResult:
        return cls(list(deliveries))

    @classmethod
    def skip(cls, reason: str) -> MapResult:
        """Nothing to send; ``reason`` is recorded (not an error, never retried)."""
        return cls([], reason)


class DeliveryResult(msgspec.Struct, kw_only=True):
    """The outcome of one delivery: ``ok``, ``retryable`` or ``permanent``."""

    outcome: Outcome
    http_status: int | None = None
    error: str | None = None
    response_body: str | None = None
    retry_after: float | None = None
    sent: bool = True
    """False for a delivery the hook did not send (:meth:`not_sent`): retried without counting
    an attempt, so a user's later events held behind a failing one never run out of attempts."""

    @property
    def rate_limited(self) -> bool:
        """Sent and answered ``429``: the destination says "later" (retried on time only, and
        two users' in a row hold back the destination's next requests)."""
        return self.sent and self.http_status == 429

    @classmethod
    def ok(cls, http_status: int | None = None) -> DeliveryResult:
        return cls(outcome="ok", http_status=http_status)

    @classmethod
    def retryable(cls, error: str, **kw: Any) -> DeliveryResult:
        return cls(outcome="retryable", error=error, **kw)

    @classmethod
    def permanent(cls, error: str, **kw: Any) -> DeliveryResult:
        return cls(outcome="permanent", error=error, **kw)

    @classmethod
    def not_sent(cls, reason: str, retry_after: float | None = None) -> DeliveryResult:
        """Not sent at all (held back behind a failed delivery of the same user, or never
        reached): retried like a retryable result, without counting an attempt."""
        return cls(outcome="retryable", error=reason, retry_after=retry_after, sent=False)


RESPONSE_BODY_LIMIT = 2000


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # an offset of 20 digits
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


EPOCH_AFTER = 1_000_000_000.0
"""A rate-limit reset larger than this is a Unix time (GitHub's ``X-RateLimit-Reset``), not a
number of seconds to wait (the IETF draft's and Novu's ``RateLimit-Reset``)."""


def rate_limit_reset(headers: Mapping[str, str] | None, now: float | None = None) -> float | None:
    """Seconds until a 429's rate limit resets, from ``RateLimit-Reset`` or
    ``X-RateLimit-Reset`` (used when there is no ``Retry-After``: Novu sends ``RateLimit-Reset:
    2`` alone; vendor audit), or None."""
    for name in ("ratelimit-reset", "x-ratelimit-reset"):
        value = _header(headers, name)
        if not value:
            continue
        try:
            seconds = float(value.strip())
        except ValueError:
            continue
        if seconds != seconds or seconds in (float("inf"), float("-inf")):
            continue
        if seconds > EPOCH_AFTER:
            seconds -= time.time() if now is None else now
        return max(0.0, seconds)
    return None


def _header(headers: Mapping[str, str] | None, name: str) -> str | None:
    """A header by case-insensitive name, from any mapping (aiohttp's is already insensitive)."""
    if not headers:
        return None
    value = headers.get(name) or headers.get(name.title())
    if value is not None:
        return value
    return next((v for k, v in headers.items() if k.lower() == name), None)


def classify_http(
    status: int, headers: Mapping[str, str] | None = None, body: str | bytes | None = None
) -> DeliveryResult:
    """The common HTTP rules: 2xx ok; 408, 429, 5xx retryable; other statuses permanent.

    ``Retry-After`` is honoured on retryable answers. The body is kept, truncated, for
    operators.
    """
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    if text is not None and len(text) > RESPONSE_BODY_LIMIT:
        text = text[:RESPONSE_BODY_LIMIT] + "…"
    if 200 <= status < 300:
        return DeliveryResult(outcome="ok", http_status=status, response_body=text)
    reason = error_reason(text)
    error = f"HTTP {status}: {reason}" if reason else f"HTTP {status}"
    if status in (408, 429) or 500 <= status < 600:
        retry_after = parse_retry_after(_header(headers, "retry-after"))
        if retry_after is None and status == 429:
            retry_after = rate_limit_reset(headers)
        return DeliveryResult(
            outcome="retryable",
            http_status=status,
            error=error,
            response_body=text,
            retry_after=retry_after,
        )
    return DeliveryResult(outcome="permanent", http_status=status, error=error, response_body=text)


REASON_KEYS = ("message", "error_description", "error", "detail", "title", "msg")
"""Where JSON error answers commonly say why (Segment's ``message``, OAuth's
``error_description``, RFC 9457's ``detail`` and ``title``, ``{"error": {"message": ...}}``)."""
REASON_LIMIT = 200
_json_object = msgspec.json.Decoder(dict[str, Any])


def error_reason(text: str | None) -> str | None:
    """The first line of a JSON error answer's own reason (:data:`REASON_KEYS`), at most
    :data:`REASON_LIMIT` characters; None for any other answer. Shown beside the status in
    ``dlq list`` and the dashboard (``HTTP 401: Invalid write key``), where the status alone
    said little; the body itself is kept too."""
    if not text or not text.lstrip().startswith("{"):
        return None
    try:
        data = _json_object.decode(text)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    for key in REASON_KEYS:
        value = data.get(key)
        if isinstance(value, dict):
            value = value.get("message")
        if isinstance(value, str) and value.strip():
            line = value.strip().splitlines()[0]
            return line if len(line) <= REASON_LIMIT else line[:REASON_LIMIT] + "…"
    return None


def expect_json(
    result: DeliveryResult, body: bytes | None, service: str, url_setting: str
) -> DeliveryResult:
    """``result``, unless it is a 2xx whose body is no JSON object or array: then not
    ``service``'s answer, where the service answers every call with JSON, but a proxy's, a
    captive portal's or a web app's page (``url_setting`` pointing at the vendor's dashboard):
    retryable, saying so, and never counted as delivered (vendors audit: a 200 of
    ``<html>Welcome to nginx!</html>`` was)."""
    if result.outcome != "ok" or body is None:
        return result
    text = body.removeprefix(b"\xef\xbb\xbf").lstrip()  # a byte order mark is no reason
    if text[:1] in (b"{", b"["):
        try:
            msgspec.json.decode(text)
            return result
        except msgspec.DecodeError:
            pass
    what = "an empty body" if not text else "a body that is no JSON object or array"
    return DeliveryResult.retryable(
        f"HTTP {result.http_status} with {what}: not an answer of {service}'s API"
        f" (is the destination's {url_setting} right?)",
        http_status=result.http_status, response_body=result.response_body,
    )


HELD_BACK = "not sent: an earlier delivery with the same ordering key failed and will be retried"


def held_back(failed: DeliveryResult) -> DeliveryResult:
    """The answer for a delivery not sent because an earlier one of its ordering key failed
    with ``failed`` (retryable): retried at the same ``retry_after``, without counting an
    attempt (:meth:`DeliveryResult.not_sent`)."""
    return DeliveryResult.not_sent(HELD_BACK, retry_after=failed.retry_after)


async def send_in_order(
    deliveries: list[Delivery],
    send: Callable[[Delivery], Awaitable[DeliveryResult]],
    *,
    concurrency: int = 8,
) -> list[DeliveryResult]:
    """Send ``deliveries`` one request each with ``send``, keeping the engine's per-user order.

    Deliveries with the same ``ordering_key`` are sent one after another, in order; different
    keys concurrently, at most ``concurrency`` requests at a time. Once a key's delivery fails
    with a retryable result, that key's later deliveries in this call are not sent: they are
    answered :func:`held_back` (retryable, same ``retry_after``), so the retry can never land
    after a newer update of the same user. A permanent failure does not hold the key back (it
    becomes a dead letter; the user's later events go on, as in the engine). After ``429``
    answers for two keys with no delivery in between (the destination's rate limit, not a
    user's own) nothing more of the call is sent: held back the same way (each would be
    refused too).

    For a deliver hook that sends a batch as separate requests (``batch_size`` > 1); a hook
    that sends the whole batch in one request keeps the order anyway. An exception from
    ``send`` propagates (the engine then retries the whole call)."""
    results: list[DeliveryResult] = [DeliveryResult.not_sent("not sent")] * len(deliveries)
    keys: dict[str, list[int]] = {}
    for i, delivery in enumerate(deliveries):
        keys.setdefault(delivery.ordering_key or f"\x00{i}", []).append(i)
    slots = asyncio.Semaphore(max(1, concurrency))
    limited: dict[str, DeliveryResult] = {}  # the 429s of this call, by key

    async def one_key(key: str, indexes: list[int]) -> None:
        failed: DeliveryResult | None = None
        for i in indexes:
            if failed is not None:
                results[i] = held_back(failed)
                continue
            async with slots:
                if len(limited) >= 2:
                    results[i] = failed = held_back(next(iter(limited.values())))
                    continue
                results[i] = await send(deliveries[i])
            if results[i].outcome == "ok":
                limited.clear()  # it takes requests: the 429s were those users' own
            elif results[i].outcome == "retryable":
                failed = results[i]
                if failed.rate_limited:
                    limited[key] = failed

    await asyncio.gather(*(one_key(key, indexes) for key, indexes in keys.items()))
    return results
