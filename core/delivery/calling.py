"""Calling a destination's ``deliver`` hook: one answer per delivery, whatever the plugin does.

Used by the delivery worker and by the deliver process (:mod:`.deliver_process`), so both turn
a plugin's exceptions, hangs and wrong answers into results the same way.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from ..config import HOOK_LEASE_SHARE
from ..deliveries import Delivery, DeliveryResult
from ..errors import PermanentError, RetryableError
from ..http import HttpClient, send_deadline
from ..plugins import maybe_await
from .retry import seconds_text, wrong_answer

if TYPE_CHECKING:
    from ..runtime import DestinationRuntime, Runtime

log = logging.getLogger("hookyard.delivery")


class _RawBodyDelivery(Delivery, kw_only=True):
    """A Delivery whose body stays the stored JSON (``Connector.raw_bodies``)."""

    body: msgspec.Raw = msgspec.Raw(b"null")


_delivery_decoder = msgspec.json.Decoder(Delivery)
_raw_body_decoder = msgspec.json.Decoder(_RawBodyDelivery)


def client_for(dest: DestinationRuntime) -> HttpClient:
    """The HTTP client of ``dest`` (its connect and total timeouts); the worker and the deliver
    process each open one."""
    return HttpClient(connect_timeout=dest.policy.connect_timeout_seconds,
                      total_timeout=dest.policy.total_timeout_seconds)


def decoder_for(dest: DestinationRuntime) -> msgspec.json.Decoder[Delivery]:
    """How ``dest``'s stored requests are decoded (bodies kept raw when its connector asks)."""
    return _raw_body_decoder if dest.connector.raw_bodies else _delivery_decoder  # type: ignore[return-value]


def as_stored(deliveries: list[Delivery], raw_bodies: bool) -> list[Delivery]:
    """``deliveries`` as ``deliver`` gets them from the outbox: with ``raw_bodies`` (see
    ``Connector.raw_bodies``) each body is the stored JSON as ``msgspec.Raw``. For
    ``hookyard.testing.deliver_with``, so a plugin's tests see what the server hands it."""
    if not raw_bodies:
        return deliveries
    return [d if isinstance(d.body, msgspec.Raw) else _raw_body_decoder.decode(msgspec.json.encode(d))
            for d in deliveries]


def decode_rows(
    decoder: msgspec.json.Decoder[Delivery], requests: list[bytes]
) -> list[Delivery | DeliveryResult]:
    """Each stored request decoded, or the permanent result of one that cannot be."""
    decoded: list[Delivery | DeliveryResult] = []
    for request in requests:
        try:
            decoded.append(decoder.decode(request))
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            decoded.append(DeliveryResult.permanent(f"stored request cannot be decoded: {exc}"))
    return decoded


async def call_deliver(
    rt: Runtime, dest: DestinationRuntime, client: HttpClient, deliveries: list[Delivery],
    limit: float,
) -> list[DeliveryResult]:
    """The plugin's answers, one per delivery; never raises (a plugin bug is retryable).

    The hook has ``limit`` seconds to answer (the worker gives it until 90 % of the lease,
    counted from the claim), so a hung plugin cannot outlive its lease and have the same rows
    delivered twice at once."""
    name = dest.name
    call = functools.partial(
        rt.registry.call, "deliver", "destination", dest.config.plugin,
        # a copy: a hook that empties or reorders its list must not change what the host
        # matches its results against
        destination=dest.context, deliveries=list(deliveries), client=client,
    )
    try:
        async with asyncio.timeout(limit):
            # no request started that could not be answered before the call's own limit, nor
            # one whose cut timeout would end after it (a margin: the limit's timer fires first
            # and throws the answered results away; the session's review)
            with send_deadline(limit - min(1.0, 0.1 * limit)):
                if dest.loop_bound or not rt.registry.blocks("deliver", "destination", dest.config.plugin):
                    results = await maybe_await(call())
                else:
                    results = await maybe_await(await _off_the_loop(dest, call))
    except TimeoutError:
        budget = dest.policy.lease_seconds * HOOK_LEASE_SHARE
        return [DeliveryResult.retryable(
            f"deliver hook did not answer within {seconds_text(budget)} s")] * len(deliveries)
    except RetryableError as exc:
        return [DeliveryResult.retryable(str(exc), http_status=exc.http_status,
                                         retry_after=exc.retry_after)] * len(deliveries)
    except PermanentError as exc:
        return [DeliveryResult.permanent(str(exc), http_status=exc.http_status)] * len(deliveries)
    except Exception as exc:  # noqa: BLE001 - a plugin bug must not lose the event
        log.exception("deliver hook of %s raised", name)
        return [DeliveryResult.retryable(f"deliver hook raised {type(exc).__name__}: {exc}")] * len(
            deliveries
        )
    if not isinstance(results, list) or len(results) != len(deliveries):
        error = wrong_answer(results, len(deliveries))
        log.warning("destination %s: %s", name, error, extra={"destination": name})
        return [DeliveryResult.retryable(error)] * len(deliveries)
    return [checked(r, name) for r in results]


async def _off_the_loop(dest: DestinationRuntime, call: Callable[[], Any]) -> Any:
    """A plain-function ``deliver`` called on its destination's thread
    (:mod:`hookyard.delivery.hook_thread`). One that needs the event loop (it returns
    ``asyncio.gather(...)``, as the hookspec allows a ``def`` to return an awaitable) fails
    there before it sends anything: it is called on the loop instead, from then on."""
    try:
        return await dest.hook_thread.run(call)
    except RuntimeError as exc:
        if "event loop" not in str(exc):
            raise
        reason = str(exc)
    if not dest.loop_bound:  # once: the calls already on the thread fail the same way
        dest.loop_bound = True
        log.warning("destination %s: its plain-function deliver hook uses the event loop (%s):"
                    " it runs on the loop from now on, where a blocking call holds every"
                    " request; make it async def", dest.name, reason,
                    extra={"destination": dest.name})
    return call()


_OUTCOMES = ("ok", "retryable", "permanent")


def checked(result: Any, name: str) -> DeliveryResult:
    """A deliver hook's result as the host can store it: one of the wrong type, or with a
    field of the wrong type (``outcome="success"`` was recorded as delivered; an ``int`` error
    or ``retry_after="5"`` failed every write of the destination's results, and the rows stayed
    leased), is a retryable result saying what is wrong; text that UTF-8 cannot carry (a lone
    surrogate) is stored with ``?`` in its place."""
    if not isinstance(result, DeliveryResult):
        if asyncio.iscoroutine(result):  # [send(d) for d in deliveries] without an await
            result.close()  # (no "never awaited" warning pointing into hookyard)
            return DeliveryResult.retryable(
                "deliver hook returned a coroutine, not a DeliveryResult (a missing await?)")
        return DeliveryResult.retryable(
            f"deliver hook returned {type(result).__name__}, not a DeliveryResult")
    r = result
    if r.outcome == "ok" and r.error is None and r.http_status is None \
            and r.response_body is None and r.retry_after is None and r.sent is True:
        return r  # DeliveryResult.ok(): the common case, nothing more to check
    problem = _wrong_field(r)
    if problem is not None:
        log.warning("destination %s: deliver hook returned a DeliveryResult with %s", name,
                    problem, extra={"destination": name})
        return DeliveryResult.retryable(f"deliver hook returned a DeliveryResult with {problem}")
    if (r.error is not None and not r.error.isascii()) or (
            r.response_body is not None and not r.response_body.isascii()):
        r = msgspec.structs.replace(r, error=_utf8(r.error), response_body=_utf8(r.response_body))
    return r


def _wrong_field(r: DeliveryResult) -> str | None:
    """The first field of ``r`` the host cannot store, as a reason; None when there is none."""
    if r.outcome not in _OUTCOMES:
        return f"outcome {r.outcome!r} (not ok, retryable or permanent)"
    for field, value, kinds in (
        ("http_status", r.http_status, int), ("error", r.error, str),
        ("response_body", r.response_body, str), ("retry_after", r.retry_after, (int, float)),
    ):
        if value is not None and (not isinstance(value, kinds) or isinstance(value, bool)):
            return f"{field} of type {type(value).__name__}"
    if not isinstance(r.sent, bool):
        return f"sent of type {type(r.sent).__name__}"
    return None


def _utf8(text: str | None) -> str | None:
    if text is None:
        return None
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


async def deliver_rows(
    rt: Runtime, dest: DestinationRuntime, client: HttpClient, requests: list[bytes], limit: float,
) -> list[tuple[str, DeliveryResult]]:
    """Decode the stored requests and deliver them: (message id, result) for each, in order."""
    decoded = decode_rows(decoder_for(dest), requests)
    deliveries = [d for d in decoded if isinstance(d, Delivery)]
    sent = iter(await call_deliver(rt, dest, client, deliveries, limit) if deliveries else [])
    return [("", d) if isinstance(d, DeliveryResult) else (d.message_id, next(sent))
            for d in decoded]


def failed(dest: DestinationRuntime, requests: list[bytes], result: DeliveryResult,
           ) -> list[tuple[str, DeliveryResult]]:
    """``result`` for every stored request, each with its messageId (for a batch whose
    answer was lost: the deliver process stopped)."""
    return [("" if isinstance(d, DeliveryResult) else d.message_id, result)
            for d in decode_rows(decoder_for(dest), requests)]
