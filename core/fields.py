"""Field mappings, like Segment's actions: settings fields that default to a path in the event.

A connector declares defaults such as ``{"email": "$.traits.email"}``; users override any of
them in ``[destinations.settings.fields]``. Every plugin resolves them with this one helper
instead of hand-written dict lookups, so a missing field gives a clear reason, not a KeyError.

Paths: ``$.traits.email`` or ``traits.email``; list items by index (``$.products.0.sku``); a
value not starting with ``$.`` and containing no dot is still a path (``userId``). A literal is
written with a leading ``=`` (``"=web"``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

DROPPABLE = ("properties", "traits", "context")
"""Where a destination's ``drop_fields`` may remove fields, as Segment's destination filters
drop properties: never the event's type, ids or times."""


def drop_path(path: str) -> tuple[str, ...]:
    """A ``drop_fields`` entry as its parts; ValueError when it is no field of
    :data:`DROPPABLE` (``traits.email``, ``context.traits.phone``, ``properties.card.number``)."""
    parts = tuple(path.removeprefix("$.").split("."))
    if len(parts) < 2 or parts[0] not in DROPPABLE or not all(p.strip() for p in parts):
        raise ValueError(f"{path!r} is not a field under {', '.join(DROPPABLE)}"
                         " (e.g. 'traits.email', 'context.traits.phone', 'properties.card')")
    if any(p != p.strip() for p in parts):  # it would name no field and drop nothing
        raise ValueError(f"{path!r} has spaces around a name")
    return parts


def without_paths(raw: dict[str, Any], paths: tuple[tuple[str, ...], ...]) -> dict[str, Any]:
    """A copy of ``raw`` without the fields at ``paths`` (:func:`drop_path`'s parts), in each
    object of a list on the way too (``properties.products.price``); only the objects and
    lists on a path are copied, so the stored event is never changed."""
    out = dict(raw)
    for path in paths:
        _drop(out, path)
    return out


def _drop(obj: dict[str, Any], path: tuple[str, ...]) -> None:
    head, rest = path[0], path[1:]
    if not rest:
        obj.pop(head, None)
        return
    child = obj.get(head)
    if isinstance(child, dict):
        obj[head] = copy = dict(child)
        _drop(copy, rest)
    elif isinstance(child, list):
        obj[head] = items = [dict(i) if isinstance(i, dict) else i for i in child]
        for item in items:
            if isinstance(item, dict):
                _drop(item, rest)


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"

    def __bool__(self) -> bool:
        return False


MISSING: Any = _Missing()


class FieldMissing(Exception):
    """A required mapped field is absent; ``reason`` is what the host records."""

    def __init__(self, field: str, path: str) -> None:
        super().__init__(f"skipped: field {field} missing ({path})")
        self.field = field
        self.path = path
        self.reason = str(self)


def get_path(data: Any, path: str) -> Any:
    """The value at ``path`` in ``data``, or :data:`MISSING`. Never raises."""
    if path.startswith("="):
        return path[1:]
    if path.startswith("$."):
        path = path[2:]
    elif path == "$":
        return data
    current = data
    for part in path.split(".") if path else []:
        if isinstance(current, Mapping):
            if part not in current:
                return MISSING
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return MISSING
    return current


def resolve_fields(
    raw: Mapping[str, Any],
    defaults: Mapping[str, str],
    overrides: Mapping[str, str] | None = None,
    *,
    required: tuple[str, ...] = (),
) -> dict[str, Any]:
    """Resolve every mapped field; absent or null ones are left out.

    Raises :class:`FieldMissing` for the first ``required`` field that is absent or null.
    """
    mapping = {**defaults, **(overrides or {})}
    out: dict[str, Any] = {}
    for field, path in mapping.items():
        value = get_path(raw, path)
        if value is MISSING or value is None:
            if field in required:
                raise FieldMissing(field, path)
            continue
        out[field] = value
    for field in required:
        if field not in mapping:
            raise FieldMissing(field, "<not mapped>")
    return out
