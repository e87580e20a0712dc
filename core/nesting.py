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
