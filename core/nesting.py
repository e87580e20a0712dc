"""How deeply an event's JSON may nest objects and arrays: :data:`MAX_NESTING` levels.

Without a limit of its own, ingest took whatever its JSON decoder could (measured: about 1,000
levels on Python 3.11, 1,500 on 3.12, 10,000 on 3.13). Code that walks an event recursively
further on (the dashboard's JSON view, a plugin's mapping) then failed with ``RecursionError``
on events that ingest had acknowledged, and a database written under 3.13 held events that
3.11 cannot even decode. Now every event is held to one documented limit, whatever the Python: nobody's
analytics data nests 100 deep, and 100 levels leave room for code that takes several frames
per level.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec

MAX_NESTING = 100
"""Levels of objects and arrays an event may have (the event object itself is the first)."""

TOO_DEEP = f"nested too deeply (more than {MAX_NESTING} levels of objects and arrays)"

_any_decoder = msgspec.json.Decoder()


def too_deep(raw: bytes, limit: int = MAX_NESTING) -> bool:
    """Whether the JSON ``raw`` nests objects and arrays more than ``limit`` levels deep.

    Cheap for the usual event: JSON with no more than ``limit`` brackets in all cannot nest
    deeper, and counting them is two ``bytes.count`` calls. Only JSON with more brackets is
    decoded and measured. ``raw`` must be valid JSON (the caller decoded it already).
    """
    if raw.count(b"{") + raw.count(b"[") <= limit:
        return False
    try:
        value = _any_decoder.decode(raw)
    except RecursionError:
        return True
    return depth_exceeds(value, limit)


def depth_exceeds(value: Any, limit: int = MAX_NESTING) -> bool:
    """Whether a decoded JSON value nests dicts and lists more than ``limit`` levels deep
    (without recursion: any depth is measured)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > limit:
            return True
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return False


_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(?:"|\\?\Z)|[\[{]+|[\]}]+|[:,]')
"""A JSON string (skipped whole, linear even when never closed), a run of opening or of
closing brackets (a run at a time: 500 KB of brackets is read in milliseconds), or ``:``, ``,``."""


def deep_items_emptied(body: bytes, limit: int = MAX_NESTING, *,
                       batch: bool = False) -> tuple[bytes, list[int]] | None:
    """For a body too deep for the JSON decoder to read at all (about 1,000 levels: it refuses
    the whole body), when it is an array of events (or with ``batch``, an object whose
    ``batch`` is one): the body with each event nested more than ``limit`` levels replaced by
    ``{}``, and their positions, so that only those events are refused, not the events beside
    them. None when the body is not of that shape, or no event in it is too deep (an
    iterative scan: any depth)."""
    depth = 0
    items_at = 0  # the depth of the array holding the events, once found
    key = last = b""
    start = deepest = index = 0
    spans: list[tuple[int, int]] = []
    found: list[int] = []

    def item_ends(end: int) -> None:
        if deepest > limit:
            spans.append((start, end))
            found.append(index)

    for match in _TOKEN.finditer(body):
        token = match.group()
        char = token[:1]
        if char == b'"':
            last = token
        elif char == b":":
            if depth == 1:
                key = last
        elif char == b",":
            if items_at and depth == items_at:
                item_ends(match.start())
                start, deepest, index = match.end(), 0, index + 1
        elif char in b"[{":
            if not items_at:  # the events' array opens at depth 1 or 2: in a run's first two
                for i, bracket in enumerate(token[:2]):
                    opened = depth + i + 1
                    if bracket == 0x5B and (opened == 2 and batch and key == b'"batch"'
                                            or opened == 1 and not batch):
                        items_at, start = depth + i + 1, match.start() + i + 1
                        break
            depth += len(token)
            if items_at:
                deepest = max(deepest, depth - items_at)
        elif items_at and depth - len(token) < items_at:  # this run closes the events' array
            item_ends(match.start() + depth - items_at)
            break
        else:
            depth -= len(token)
    if not found:
        return None
    parts, at = [], 0
    for begin, end in spans:
        parts += [body[at:begin], b"{}"]
        at = end
    parts.append(body[at:])
    return b"".join(parts), found


def plugin_raw_too_deep(raw: bytes) -> bool:
    """:func:`too_deep` for an event a source plugin made itself (hookyard's parsers check
    theirs as they decode): JSON that only Python's decoder reads (``1e999``) is not
    measured."""
    try:
        return too_deep(raw)
    except msgspec.DecodeError:
        return False

