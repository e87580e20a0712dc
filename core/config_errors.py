"""What a msgspec validation error of a config would have needed: an enum's allowed values, or
that an ``env:`` value is a string (``port = "env:PORT"``). Shared by the config's own
settings (:mod:`hookyard.config`) and plugins' settings (:mod:`hookyard.runtime`)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

_AT = re.compile(r" - at `?\$((?:\.[^.\[`]+|\[\d+\]|\[\.\.\.\])*)`?$")  # [...]: a dict key


def explain_invalid(message: str, type_: Any, raw: Any) -> str:
    """msgspec's ``message`` about ``raw`` (as written, before ``env:``) converted to ``type_``,
    with what would be valid: an enum's allowed values, or that ``env:`` gives strings only."""
    at = _AT.search(message)
    if at is None:
        return message
    steps = [int(i) if i.isdigit() else i or name
             for name, i in re.findall(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]", at.group(1))]
    if message.startswith("Invalid enum value"):
        values = _allowed_values(msgspec.inspect.type_info(type_), steps)
        if values:
            return f"{message}: use one of {', '.join(repr(v) for v in values)}"
    elif ", got `str`" in message:
        written = raw
        for step in steps:
            try:
                written = written[step]
            except (KeyError, IndexError, TypeError):
                return message
        if isinstance(written, str) and written.startswith("env:"):
            return (f"{message} ({written!r}: an env: value is a string, so it works only"
                    " for string settings)")
    return message


def _allowed_values(info: Any, steps: list[str | int]) -> list[Any]:
    """The values a Literal or Enum at ``steps`` inside ``info`` (msgspec.inspect) allows."""
    ins = msgspec.inspect
    if isinstance(info, ins.UnionType):
        for option in info.types:
            found = _allowed_values(option, steps)
            if found:
                return found
        return []
    if not steps:
        if isinstance(info, ins.LiteralType):
            return list(info.values)
        if isinstance(info, ins.EnumType):
            return [member.value for member in info.cls]
        return []
    step, rest = steps[0], steps[1:]
    if isinstance(info, ins.StructType) and isinstance(step, str):
        for f in info.fields:
            if f.encode_name == step:
                return _allowed_values(f.type, rest)
    elif isinstance(info, ins.ListType | ins.SetType | ins.FrozenSetType | ins.VarTupleType):
        return _allowed_values(info.item_type, rest) if isinstance(step, int) else []
    elif isinstance(info, ins.DictType):
        return _allowed_values(info.value_type, rest)
    return []
