"""Segment traits -> Pushwoosh tags: names, inferred types and coercion to forced types.

Rules (documented in docs/connectors/pushwoosh.md):

* every trait becomes one tag named like the trait, unless renamed in ``tag_names``;
* Segment reserved traits with a Pushwoosh default tag are renamed to it: ``language`` ->
  ``Language`` (reduced to its ISO 639 primary subtag, ``en-US`` -> ``en``), ``timezone`` ->
  ``TimeZone``, ``address.city`` -> ``City``, ``address.country`` -> ``Country``; the other
  ``address`` parts stay together in an ``address`` String tag (JSON);
* the type is inferred: bool Boolean, int Integer (String past 64 bits), float Decimal, list
  List (of strings),
  ISO-8601 date/datetime string Date (``"YYYY-MM-DD HH:mm"``, UTC), anything else String
  (objects as compact JSON); Version is never inferred;
* ``tag_types`` forces a type (looked up by tag name, then by trait name) and the value is
  coerced; a value that cannot be coerced is left out and reported;
* null traits are left out (Segment sends null for "no value").
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

import msgspec

from .dates import finite_float, parse_tag_date, pushwoosh_date
from .settings import TagType

TagValue = bool | int | float | str | list[str]

RESERVED_TRAITS: dict[str, str] = {"language": "Language", "timezone": "TimeZone"}
"""Top-level Segment reserved traits -> Pushwoosh default tag names."""
RESERVED_ADDRESS: dict[str, str] = {"city": "City", "country": "Country"}
"""Parts of the Segment ``address`` trait -> Pushwoosh default tag names."""

_json = msgspec.json.Encoder()
_INT_RE = re.compile(r"^[+-]?\d+$")
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_VERSION_RE = re.compile(r"^\d{1,4}(?:\.\d{1,4}){0,3}$")
_TRUE = frozenset({"true", "1", "yes", "y", "on"})
_FALSE = frozenset({"false", "0", "no", "n", "off"})


def infer_type(value: Any) -> TagType:
    """The tag type a trait value gets when ``tag_types`` does not force one."""
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int):  # an id past 64 bits (Pushwoosh's Integer) is kept as text
        return "Integer" if INT64_MIN <= value <= INT64_MAX else "String"
    if isinstance(value, float):
        return "Decimal"
    if isinstance(value, list | tuple):
        return "List"
    if isinstance(value, str) and parse_tag_date(value) is not None:  # it checks the form first
        return "Date"
    return "String"


def as_text(value: Any) -> str:
    """A scalar or structure as tag text: strings as is, bools lower-case, the rest JSON."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return _json.encode(value).decode()


def _to_int(value: Any) -> int | None:
    number = _to_any_int(value)
    return number if number is not None and INT64_MIN <= number <= INT64_MAX else None


def _to_any_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if math.isfinite(value) and value.is_integer() else None
    if isinstance(value, str):
        text = value.strip()
        if _INT_RE.match(text):
            # past 64 bits it is no Integer tag anyway; int() refuses over 4,300 digits
            return int(text) if len(text) <= 21 else None
        number = _to_float(text)
        return int(number) if number is not None and number.is_integer() else None
    return None


def _to_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return finite_float(value)
    if isinstance(value, str):
        try:
            return finite_float(float(value.strip()))
        except ValueError:
            return None
    return None


def _to_decimal(value: Any) -> int | float | None:
    if isinstance(value, int) and not isinstance(value, bool) and INT64_MIN <= value <= INT64_MAX:
        return value
    return _to_float(value)  # a larger integer as the nearest double


def _to_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    return None


def _to_list(value: Any) -> list[str] | None:
    if isinstance(value, list | tuple):
        return [as_text(item) for item in value if item is not None]
    if isinstance(value, Mapping):
        return None
    return [as_text(value)]


def _to_version(value: Any) -> str | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | str):
        text = str(value).strip()
        return text if _VERSION_RE.match(text) else None
    return None


def coerce(value: Any, tag_type: TagType) -> TagValue | None:
    """``value`` as a value of ``tag_type``, or None when it cannot be one."""
    if value is None:
        return None
    if tag_type == "String":
        return as_text(value)
    if tag_type == "Integer":
        return _to_int(value)
    if tag_type == "Decimal":
        return _to_decimal(value)
    if tag_type == "Boolean":
        return _to_bool(value)
    if tag_type == "List":
        return _to_list(value)
    if tag_type == "Date":
        return pushwoosh_date(value)
    return _to_version(value)


def language_code(value: str) -> str:
    """``"en-US"`` -> ``"en"``, ``"pt_BR"`` -> ``"pt"``; other text is only trimmed."""
    text = value.strip()
    primary = re.split(r"[-_]", text, maxsplit=1)[0]
    if 2 <= len(primary) <= 3 and primary.isascii() and primary.isalpha():
        return primary.lower()
    return text


class TagBuilder:
    """Builds the ``tags`` object of one ``/setTags`` request."""

    def __init__(self, tag_names: Mapping[str, str], tag_types: Mapping[str, TagType]) -> None:
        self.tag_names = tag_names
        self.tag_types = tag_types
        self.tags: dict[str, TagValue] = {}
        self.dropped: list[str] = []

    def add(self, trait: str, name: str, value: Any) -> None:
        """Add trait ``trait`` (a path such as ``"address.city"``) as tag ``name``."""
        if value is None or not name:
            return
        forced = self.tag_types.get(name) or self.tag_types.get(trait)
        tag_type = forced or infer_type(value)
        converted = coerce(value, tag_type)
        if converted is None:
            self.dropped.append(f"{trait} (not a valid {tag_type})")
            return
        if name == "Language" and tag_type == "String" and isinstance(converted, str):
            converted = language_code(converted)
        self.tags[name] = converted

    def add_address(self, address: Mapping[str, Any]) -> None:
        rest: dict[str, Any] = {}
        for part, value in address.items():
            path = f"address.{part}"
            name = self.tag_names.get(path) or RESERVED_ADDRESS.get(part)
            if name is None:
                if value is not None:
                    rest[part] = value
            else:
                self.add(path, name, value)
        if rest:
            self.add("address", self.tag_names.get("address", "address"), rest)

    def add_traits(self, traits: Mapping[str, Any]) -> None:
        for key, value in traits.items():
            if key == "address" and isinstance(value, Mapping):
                self.add_address(value)
                continue
            self.add(key, self.tag_names.get(key) or RESERVED_TRAITS.get(key) or key, value)


def build_tags(
    traits: Mapping[str, Any],
    tag_names: Mapping[str, str] | None = None,
    tag_types: Mapping[str, TagType] | None = None,
) -> tuple[dict[str, TagValue], list[str]]:
    """Pushwoosh tags for ``traits``, and the traits left out because their value could not
    be coerced to the forced type."""
    builder = TagBuilder(tag_names or {}, tag_types or {})
    builder.add_traits(traits)
    return builder.tags, builder.dropped
