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
