"""The Segment-compatible wire format: credentials and bodies of the tracking API and webhooks.

hookyard's native event format is the Segment spec, so these helpers live in core and every
source plugin speaking it (Segment itself, Pushwoosh's exporter, ...) reuses them:

* :func:`basic_auth_user`, :func:`bearer_token`, :func:`body_write_key` find the key a client
  sent; :func:`keys_match` compares keys in constant time; :func:`authenticate_write_key` does
  all of it for the tracking API (Basic user name, Bearer token or a ``writeKey`` field in the
  body).
* :func:`parse_call` parses ``/v1/{identify,track,page,screen,group,alias,batch,import}``.
* :func:`parse_webhook` parses one event or a JSON array of events (Segment's webhooks).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

import msgspec

from .connectors import AuthResult, IngestRequest, ParsedEvent, RefusedEvent
from .errors import BadRequest, NotFound, PayloadTooLarge
from .events import (
    EVENT_TYPES,
    Identify,
    any_event_decoder,
    encoder,
    event_decoders,
    validate_event,
)
from .nesting import MAX_NESTING, TOO_DEEP, deep_items_emptied, too_deep

BATCH_CALLS = ("batch", "import")
WRITE_KEY_NAMES = ("writeKey", "write_key")
"""The names a write key goes by in a URL's query (a webhook that sends no header of its own)
or a vendor's body: a query giving one twice is refused, a body's is never stored."""
MAX_BATCH_EVENTS = 10_000
"""Events in one request at most. Segment's libraries send 100 or fewer per batch; 500 KB of
``{}`` is 166,000 of them, 0.4 s of the event loop, and a 16 MB answer listing each refused."""


def check_event_count(count: int) -> None:
    """:class:`~hookyard.errors.PayloadTooLarge` for a request of more than
    :data:`MAX_BATCH_EVENTS` events."""
    if count > MAX_BATCH_EVENTS:
        raise PayloadTooLarge(f"{count} events in one request: at most {MAX_BATCH_EVENTS},"
                              " send them in several")


class _BatchBody(msgspec.Struct):
    batch: list[msgspec.Raw]
    context: dict[str, Any] | None = None
    integrations: dict[str, Any] | None = None
    sentAt: str | None = None


class _WriteKeyOnly(msgspec.Struct):
    writeKey: str | None = None


class _LooseBatchBody(msgspec.Struct):
    batch: list[msgspec.Raw]
    context: Any = None
    integrations: Any = None
    sentAt: Any = None


_batch_decoder = msgspec.json.Decoder(_BatchBody)
_loose_batch_decoder = msgspec.json.Decoder(_LooseBatchBody)
_raw_list_decoder = msgspec.json.Decoder(list[msgspec.Raw])
_write_key_decoder = msgspec.json.Decoder(_WriteKeyOnly)
_dict_decoder = msgspec.json.Decoder(dict[str, Any])

# What decoding untrusted bytes may raise besides msgspec's own errors: invalid UTF-8 inside
# strings and nesting deeper than the decoder's recursion limit.
_UNDECODABLE = (msgspec.DecodeError, UnicodeDecodeError, RecursionError, ValueError)

# A JSON escape, as a scan from the left sees them (so an escaped backslash is one token): a
# UTF-16 surrogate pair, a lone half of one, or any other escape.
_ESCAPES = re.compile(
    rb"(\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2})"
    rb"|(\\u[dD][89a-fA-F][0-9a-fA-F]{2})"
    rb"|\\.",
    re.DOTALL,
)
_LONE_HALF = re.compile(rb"\\u[dD][89a-fA-F]")


def _lone_half_replaced(match: re.Match[bytes]) -> bytes:
    return b"\\ufffd" if match.group(2) else match.group(0)


def json_text(body: bytes) -> bytes:
    """``body`` as JSON text every later step can decode, or :class:`BadRequest`.

    * Invalid UTF-8 is refused here, wherever it is: msgspec skips the fields a Struct does not
      name without checking their bytes, and such an event could be stored but never read
      back (``/api/events``, the router).
    * A lone half of a UTF-16 surrogate pair (``"\\ud83c"``: JavaScript's
      ``JSON.stringify`` of a string cut in the middle of an emoji) becomes U+FFFD, the
      replacement character, as a browser's ``TextEncoder`` makes of it. msgspec refuses it,
      which would refuse every event of the batch it came in (and the Segment libraries drop
      a batch answered 400).
    """
    if not body or body.isspace():  # not strip(): that copies the body
        raise BadRequest("malformed JSON: the body is empty (expected a JSON object)")
    if body.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte order mark (Windows tools write
        body = body[3:]  # one): not JSON, but RFC 8259 lets a reader ignore it, as we do
    if not body.isascii():
        try:
            body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise BadRequest(f"malformed JSON: invalid UTF-8 at byte {exc.start}") from None
    if body.find(b"\\u") >= 0 and _LONE_HALF.search(body) is not None:
        body = _ESCAPES.sub(_lone_half_replaced, body)
    return body


# Substring tests on request bytes use ``bytes.find``, not ``in``: CPython's ``bytes.__contains__``
# first tries the operand as an integer and raises and clears a TypeError for every bytes
# operand (about 2,000 instructions under callgrind, twice per event of a batch).


def keys_match(given: str | None, expected: str) -> bool:
    """Constant-time comparison of a presented key with the configured one."""
    if given is None or not expected:  # a source without a key accepts no key
        return False
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def basic_auth_user(headers: Mapping[str, str]) -> str | None:
    """The user name of an ``Authorization: Basic`` header (Segment: the write key)."""
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return decoded.partition(":")[0]


def bearer_token(headers: Mapping[str, str]) -> str | None:
    """The token of an ``Authorization: Bearer`` header."""
    value = headers.get("authorization", "")
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def body_write_key(body: bytes) -> str | None:
    """A ``writeKey`` field at the top of a JSON object body, if any."""
    if body.find(b'"writeKey"') < 0:
        return None
    try:
        return _write_key_decoder.decode(body).writeKey
    except (msgspec.ValidationError, *_UNDECODABLE):
        pass
    if body.startswith(b"\xef\xbb\xbf"):  # json_text ignores a byte order mark: so must this
        return body_write_key(body[3:])
    fixed = _non_finite_as_null(body)  # parse_call reads a NaN as null: so must the key's lookup
    if fixed is None:
        return None
    try:
        return _write_key_decoder.decode(fixed).writeKey
    except (msgspec.ValidationError, *_UNDECODABLE):
        return None


def authenticate_write_key(write_key: str, request: IngestRequest) -> AuthResult:
    """Accept the request when its Basic user name is ``write_key``; without a Basic header,
    when its Bearer token (Customer.io's library sends its ``pk_``/``sk_`` keys so) or its
    ``writeKey`` field is (a Bearer token may be a proxy's, with the key in the body)."""
    key = basic_auth_user(request.headers)
    if key is not None:
        return AuthResult.accept() if keys_match(key, write_key) else _INVALID_KEY
    token = bearer_token(request.headers)
    if token is not None and keys_match(token, write_key):
        return AuthResult.accept()
    in_body = body_write_key(request.body)
    if in_body is not None and keys_match(in_body, write_key):
        return AuthResult.accept()
    if token is None and in_body is None:
        return AuthResult.refuse(
            "missing write key: send Authorization: Basic base64(<write key>:), Authorization:"
            " Bearer <write key> or a writeKey field"
        )
    return _INVALID_KEY


_INVALID_KEY = AuthResult.refuse("invalid write key")


def _clean(message: str) -> str:
    return message.replace("`", "")


def _describe(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "invalid UTF-8"
    if isinstance(exc, RecursionError):
        return TOO_DEEP
    return _clean(str(exc))


def _decode_event(raw: bytes, call: str | None, require_user_id: bool = False) -> ParsedEvent:
    """Decode and validate one event (:class:`BadRequest` with the reason). With
    ``require_user_id``, a well-formed event without ``userId`` raises :class:`_NoUserId`."""
    try:
        if call is None:
            event = any_event_decoder.decode(raw)
        else:
            event = event_decoders[call].decode(raw)
    except msgspec.ValidationError as exc:
        msg = _clean(str(exc))
        if call is None and "type" in msg:
            msg = f"type must be one of {', '.join(EVENT_TYPES)} ({msg})"
        elif call is not None and msg.endswith("at $.type"):
            msg = (f"its type is not {call!r}, as its path says ({msg}): leave type out, or"
                   " post the event to the path of its type")
        raise BadRequest(f"the event is not a valid Segment event: {msg}") from None
    except RecursionError:  # deeper than the decoder goes: ~950 levels (Python 3.11)
        raise BadRequest(f"the event is {TOO_DEEP}") from None
    except _UNDECODABLE as exc:
        raise BadRequest(f"malformed JSON: {_describe(exc)}") from None
    if too_deep(raw):  # the same limit on every Python (hookyard.nesting)
        raise BadRequest(f"the event is {TOO_DEEP}")
    if require_user_id and event.user_id is None:
        raise _NoUserId(USER_ID_REQUIRED)
    problem = validate_event(event)
    if problem:
        raise BadRequest(problem)
    drop_key = event.writeKey is not None  # the typed decode found one (escaped name too)
    if drop_key:
        event.writeKey = None
    context_traits = (type(event) is Identify and bool(event.traits) and event.context is not None
                      and event.traits is event.context.get("traits"))
    if drop_key or context_traits:  # the 32 KB limit stays on what the client sent: with
        # context.traits copied to traits, a 17 KB identify would be 34 KB
        rewritten = _rewritten(raw, drop_key, context_traits)
        return ParsedEvent(raw=rewritten, event=event, sent_bytes=len(raw), checked=rewritten)
    return ParsedEvent(raw=raw, event=event, checked=raw)


def _rewritten(raw: bytes, drop_write_key: bool, context_traits: bool) -> bytes:
    """``raw`` decoded once and written again with what the typed event already has:

    * without its top-level ``writeKey`` (a key is never stored nor forwarded);
    * for an identify whose traits are only ``context.traits`` (RudderStack's Python library),
      with them as its ``traits`` too: what reads the stored JSON (filters, a destination's
      field paths such as ``traits.external_id``, the read API, the forwarder) sees them as the
      typed event does (:class:`hookyard.events.Identify`).

    ``raw`` itself, byte for byte, when neither changes it."""
    data = _dict_decoder.decode(raw)
    changed = False
    if drop_write_key and "writeKey" in data:
        del data["writeKey"]
        changed = True
    if context_traits:
        data["traits"] = data["context"]["traits"]
        changed = True
    return encoder.encode(data) if changed else raw


def _without_malformed_defaults(body: bytes, exc: msgspec.ValidationError) -> _BatchBody:
    """The batch with its ``context``, ``integrations`` or ``sentAt`` left out where it has
    the wrong type (a ``sentAt`` of ``123``, a ``context`` that is a list): they are only
    defaults for the events, and refusing the batch would lose every event in it (the
    Segment libraries drop a batch answered 400). A ``batch`` that is not a list is refused."""
    try:
        loose = _loose_batch_decoder.decode(body)
    except msgspec.ValidationError:
        raise BadRequest(f"invalid batch: {_clean(str(exc))}") from None
    return _BatchBody(
        batch=loose.batch,
        context=loose.context if isinstance(loose.context, dict) else None,
        integrations=loose.integrations if isinstance(loose.integrations, dict) else None,
        sentAt=loose.sentAt if isinstance(loose.sentAt, str) else None,
    )


def _with_batch_defaults(raw: bytes, body: _BatchBody, sent_at_field: bytes) -> bytes:
    """The event with the batch's ``context``/``integrations`` merged under its own and the
    batch's ``sentAt`` when it has none (``sent_at_field``: ``"sentAt":"...",`` encoded)."""
    if body.context is None and body.integrations is None and raw.find(b'"sentAt"') < 0:
        # only the batch's sentAt to add, and the event has none: splice it in front of the
        # event's own keys (a valid event has at least "type") instead of decode + encode
        start = raw.index(b"{") + 1
        return b"".join((raw[:start], sent_at_field, raw[start:]))
    data = _dict_decoder.decode(raw)
    changed = False
    for key, value in (("context", body.context), ("integrations", body.integrations)):
        if value is not None:
            merged = {**value, **(data.get(key) or {})}
            if merged != data.get(key):
                data[key] = merged
                changed = True
    if body.sentAt is not None and data.get("sentAt") is None:  # "sentAt": null is no value
        data["sentAt"] = body.sentAt
        changed = True
    return encoder.encode(data) if changed else raw


# analytics.js (analytics-next) posts to one-letter paths: /v1/t, /v1/i, ... and /v1/b for batches.
SHORT_CALLS = {"t": "track", "i": "identify", "p": "page", "s": "screen", "g": "group",
               "a": "alias", "b": "batch"}


_NON_FINITE = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|(-?Infinity|NaN)', re.DOTALL)
"""A JSON string (skipped whole), or a bare ``NaN`` / ``Infinity`` / ``-Infinity`` outside one.
A string that is never closed runs to the end of the body: a string match never fails, so
the scan is linear (with ``"(?:[^"\\]|\\.)*"`` an unclosed string full of ``\"`` was tried
again from each of its quotes, quadratic: 1.3 s for 20 KB)."""


def _non_finite_as_null(body: bytes) -> bytes | None:
    """``body`` with each bare ``NaN``, ``Infinity`` and ``-Infinity`` read as ``null``; None
    when it has none (for a body refused as malformed JSON). Python's ``json.dumps`` (every Python
    Segment-protocol library) writes ``float("nan")`` so, which is not JSON: one NaN from a
    pandas frame lost its whole batch of 100 events. ``null`` is what JavaScript's
    ``JSON.stringify`` writes for the same values."""
    if body.find(b"NaN") < 0 and body.find(b"Infinity") < 0:
        return None
    fixed = _NON_FINITE.sub(lambda m: b"null" if m[1] else m[0], body)
    return fixed if fixed != body else None


Parsed = list[ParsedEvent | RefusedEvent]


def read_json(parse: Callable[[bytes], Parsed], body: bytes,
              events_in: Literal["array", "batch"] | None = None) -> Parsed:
    """``parse(body)`` after :func:`json_text`, for a source plugin with a body format of its
    own too, so that it reads what the tracking API reads. When ``parse`` refuses the body as
    ``malformed JSON: ...`` (:class:`BadRequest`), it is parsed again with

    * each bare ``NaN``, ``Infinity`` and ``-Infinity`` read as ``null`` (Python's
      ``json.dumps`` writes them: one NaN from a pandas frame lost a batch of 100 events);
    * with ``events_in`` (the events are a top-level ``"array"``, or the ``"batch"`` array of
      an object), each event nested too deeply for the decoder to read at all (about 1,000
      levels: it refuses the whole body) replaced by ``{}``, and refused alone
      (:func:`hookyard.nesting.deep_items_emptied`).

    Nothing is paid for bodies that are JSON. The second refusal is the one a client reads,
    unless it is malformed JSON still: then the first one, about the client's own bytes."""
    text = json_text(body)
    try:
        return parse(text)
    except BadRequest as exc:
        if not exc.reason.startswith("malformed JSON"):
            raise
        first = exc
    fixed = _non_finite_as_null(text)
    deep: list[int] = []
    if events_in is not None and text.count(b"[") + text.count(b"{") > MAX_NESTING:
        emptied = deep_items_emptied(fixed or text, batch=events_in == "batch")
        if emptied is not None:
            fixed, deep = emptied
    if fixed is None:
        raise first
    try:
        events = parse(fixed)
    except BadRequest as again:
        raise (first if again.reason.startswith("malformed JSON") else again) from None
    if deep and len(events) <= deep[-1]:  # not the events' array after all: as it was
        raise first
    for i in deep:
        events[i] = RefusedEvent(f"the event is {TOO_DEEP}")
    return events


def parse_call(call: str, body: bytes) -> list[ParsedEvent | RefusedEvent]:
    """Parse a tracking-API call body (``call`` is the last path segment, long or short form).

    A body that is not JSON, or a single call that is not a valid event, raises
    :class:`BadRequest`. In a batch, an invalid event is refused alone (a
    :class:`RefusedEvent`): the others are stored and the answer lists it, where Segment's own
    API answers 200 and drops it unseen. The Segment libraries drop a whole batch answered 400,
    so refusing the batch would lose every valid event in it. A bare ``NaN`` or ``Infinity``
    (Python's ``json.dumps``) is read as ``null``."""
    call = SHORT_CALLS.get(call, call)
    return read_json(lambda text: _parse_call(call, text), body,
                     "batch" if call in BATCH_CALLS else None)


def _parse_call(call: str, body: bytes) -> list[ParsedEvent | RefusedEvent]:
    if call in BATCH_CALLS:
        try:
            batch = _batch_decoder.decode(body)
        except msgspec.ValidationError as exc:
            batch = _without_malformed_defaults(body, exc)
        except _UNDECODABLE as exc:
            raise BadRequest(f"malformed JSON: {_describe(exc)}") from None
        check_event_count(len(batch.batch))
        needs_defaults = batch.context or batch.integrations or batch.sentAt
        sent_at_field = b'"sentAt":' + encoder.encode(batch.sentAt) + b"," if needs_defaults else b""
        events: list[ParsedEvent | RefusedEvent] = []
        for item in batch.batch:
            try:
                parsed = _decode_event(bytes(item), None)
            except BadRequest as exc:  # this event alone (Segment's API: 200, event rejected)
                events.append(RefusedEvent(exc.reason))
                continue
            if needs_defaults:  # the item's limit is on what the client sent (its libraries
                # check each item at 32 KB; the batch's sentAt alone adds ~40 bytes)
                parsed.sent_bytes = parsed.sent_bytes or len(parsed.raw)
                parsed.raw = _with_batch_defaults(parsed.raw, batch, sent_at_field)
                if (batch.context or batch.integrations) and too_deep(parsed.raw):
                    events.append(RefusedEvent(f"the event is {TOO_DEEP} with the batch's context"))
                    continue
            events.append(parsed)
        return events
    if call not in EVENT_TYPES:
        shown = call if len(call) <= 40 else call[:40] + "…"
        raise NotFound(f"unknown call /v1/{shown}; expected one of {', '.join(EVENT_TYPES + BATCH_CALLS)}")
    return [_decode_event(body, call)]


def parse_webhook(
    body: bytes, *, require_user_id: bool = False
) -> list[ParsedEvent | RefusedEvent]:
    """Parse a webhook body: one Segment event, or a JSON array of them.

    With ``require_user_id``, an event without ``userId`` is refused: a single event with
    ``BadRequest("userId is required")``; in an array, that event alone (a
    :class:`RefusedEvent`), so the identified events of the batch are still stored (Segment
    does not retry a 400: refusing the whole batch would lose them). An invalid event in an
    array is refused alone the same way. A bare ``NaN`` or ``Infinity`` is read as ``null``."""
    return read_json(lambda text: _parse_webhook(text, require_user_id), body, "array")


def _parse_webhook(body: bytes, require_user_id: bool) -> list[ParsedEvent | RefusedEvent]:
    stripped = body.lstrip()
    if not stripped.startswith(b"["):
        return [_decode_event(body, None, require_user_id)]
    try:
        items = [bytes(r) for r in _raw_list_decoder.decode(body)]
    except (msgspec.ValidationError, *_UNDECODABLE) as exc:
        raise BadRequest(f"malformed JSON: {_describe(exc)}") from None
    if not items:
        raise BadRequest("empty array: expected at least one event")
    check_event_count(len(items))
    events: list[ParsedEvent | RefusedEvent] = []
    for raw in items:
        try:
            events.append(_decode_event(raw, None, require_user_id))
        except BadRequest as exc:  # _NoUserId included
            events.append(RefusedEvent(exc.reason))
    return events


USER_ID_REQUIRED = "userId is required"


class _NoUserId(BadRequest):
    """An otherwise valid event without ``userId`` (a webhook requires one)."""

