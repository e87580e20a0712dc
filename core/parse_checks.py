"""What a source's ``parse_events`` answered, checked before anything is stored: a list of
:class:`~hookyard.connectors.ParsedEvent` (bytes of a JSON object whose ``type`` and ids agree
with its typed event) or :class:`~hookyard.connectors.RefusedEvent`. A wrong answer is a plugin
bug: ``TypeError``, which ingest answers 503 (the client retries) with the reason logged."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import msgspec

from .connectors import ParsedEvent, RefusedEvent
from .events import EVENT_CLASSES, event_type

_EVENT_TYPES = tuple(EVENT_CLASSES.values())


def wrong_type(value: Any, expected: str) -> str:
    """How a hook's answer of the wrong type is reported (a coroutine is closed, so Python
    does not add a "never awaited" warning: these hooks are not awaited)."""
    if asyncio.iscoroutine(value):
        value.close()
        return f"is async: it must be a plain def returning {expected}"
    return f"returned {type(value).__name__}, not {expected}"


def check_parsed(parsed: Any) -> None:
    """TypeError when a ``parse_events`` answer is not a list of ParsedEvent (raw bytes, a
    typed event) or RefusedEvent: a plugin bug is a 400 with its traceback logged, as an
    exception in the hook is, never a 500 or a storage error."""
    if not isinstance(parsed, list):
        raise TypeError("parse_events " + wrong_type(parsed, "a list of ParsedEvent"))
    for i, item in enumerate(parsed):
        if isinstance(item, RefusedEvent):
            if not isinstance(item.reason, str) or not item.reason:
                raise TypeError(f"parse_events returned a RefusedEvent at [{i}] whose reason is"
                                f" {item.reason!r} (must be a message for the client)")
            continue
        if not isinstance(item, ParsedEvent):
            raise TypeError(f"parse_events returned a {type(item).__name__} at [{i}],"
                            " not a ParsedEvent or RefusedEvent")
        raw = item.raw
        if not isinstance(raw, bytes):
            raise TypeError(f"parse_events returned a ParsedEvent at [{i}] whose raw is"
                            f" {type(raw).__name__} (must be bytes: the event's JSON)")
        if not (raw and raw[0] == 123 and raw[-1] == 125) and not (  # b"{", b"}"
                raw.lstrip()[:1] == b"{" and raw.rstrip()[-1:] == b"}"):
            raise TypeError(f"parse_events returned a ParsedEvent at [{i}] whose raw is not a"
                            " JSON object (it is stored as the event, and read back as one)")
        if item.filtered is not None and not isinstance(item.filtered, str):
            raise TypeError(f"parse_events returned a ParsedEvent at [{i}] whose filtered is"
                            f" {type(item.filtered).__name__} (must be None or the reason)")
        if not isinstance(item.event, _EVENT_TYPES):
            raise TypeError(f"parse_events returned a ParsedEvent at [{i}] whose event is"
                            f" {type(item.event).__name__} (must be a hookyard.events type)")
        if item.checked is not raw:  # a plugin's own raw (hookyard's parsers validated theirs)
            _check_raw(i, raw, item.event)


_IDS = ("messageId", "userId", "anonymousId")


def _check_raw(i: int, raw: bytes, event: Any) -> None:
    """TypeError unless ``raw`` is a JSON object whose ``type`` and ids agree with ``event``:
    the inbox stores ``raw`` but takes the type and ids from ``event``, and a ``raw`` the
    router cannot read was acknowledged and then dead-lettered (plugin-author audit)."""
    where = f"parse_events returned a ParsedEvent at [{i}] whose raw"
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        try:
            data = json.loads(raw)  # numbers msgspec does not take (1e999) are read as the router does
        except ValueError as exc:
            raise TypeError(f"{where} is not valid JSON ({exc})") from None
    if not isinstance(data, dict):
        raise TypeError(f"{where} is not a JSON object")
    kind, typed = data.get("type"), event_type(event)
    if kind is not None and kind != typed:
        raise TypeError(f"{where} is a {kind!r} event but whose event is a {typed!r} (make the"
                        " event from the final raw: hookyard.events.event_from_dict)")
    for key in _IDS:
        given, typed_id = data.get(key), getattr(event, key, None)
        if given in (None, ""):
            continue
        if typed_id in (None, ""):
            raise TypeError(f"{where} has a {key} that its event lacks (make the event from the"
                            " final raw: hookyard.events.event_from_dict); it would be stored"
                            " without it")
        if str(given) != str(typed_id):  # stored and delivered as raw's, keyed as the event's
            raise TypeError(f"{where} has a {key} other than its event's (make the event from"
                            " the final raw: hookyard.events.event_from_dict)")
