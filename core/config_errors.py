"""What a msgspec validation error of a config would have needed: an enum's allowed values, or
that an ``env:`` value is a string (``port = "env:PORT"``). Shared by the config's own
settings (:mod:`hookyard.config`) and plugins' settings (:mod:`hookyard.runtime`)."""

from __future__ import annotations

import re
from typing import Any

import msgspec

_AT = re.compile(r" - at `?\$((?:\.[^.\[`]+|\[\d+\]|\[\.\.\.\])*)`?$")  # [...]: a dict key


_UNKNOWN = re.compile(r"Object contains unknown field `([^`]*)`")


def explain_invalid(message: str, type_: Any, raw: Any) -> str:
    """msgspec's ``message`` about ``raw`` (as written, before ``env:``) converted to ``type_``,
    with what would be valid: an enum's allowed values, that ``env:`` gives strings only, or
    for an unknown key the closest known one, the keys of that table, and the table where the
    key belongs when it is another's (``port`` under ``[storage]``)."""
    at = _AT.search(message)
    unknown = _UNKNOWN.match(message)
    if at is None and unknown is None:
        return message
    steps = [int(i) if i.isdigit() else i or name
             for name, i in re.findall(r"\.([^.\[]+)|\[(\d+|\.\.\.)\]", at.group(1))
             ] if at is not None else []
    if unknown is not None:
        return message + unknown_key_hint(unknown.group(1), msgspec.inspect.type_info(type_), steps)
    if message.startswith("Invalid enum value"):
        values = _allowed_values(msgspec.inspect.type_info(type_), steps)
        if values:
            return f"{message}: use one of {', '.join(repr(v) for v in values)}"
    elif ", got `str`" in message:
        written = _written(raw, steps)
        if isinstance(written, str) and written.startswith("env:"):
            return (f"{message} ({written!r}: an env: value is a string, so it works only"
                    " for string settings)")
    elif " matching regex '^https?://" in message:  # a pattern says little to a reader (the
        # value is not shown: it may have come from an env: secret, a URL with a password)
        return f"{message}: expected an http:// or https:// URL"
    return message


def _written(raw: Any, steps: list[str | int]) -> Any:
    """The value at ``steps`` in the config as written, or None."""
    for step in steps:
        try:
            raw = raw[step]
        except (KeyError, IndexError, TypeError):
            return None
    return raw


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


def unknown_key_hint(key: str, root: Any, steps: list[str | int]) -> str:
    """``: did you mean 'x'? The keys of [table] are: ...``, and where ``key`` belongs when it
    is a key of another table of ``root`` (msgspec.inspect info of the whole config)."""
    from .errors import did_you_mean

    tables = dict(_tables(root, ""))
    here = _table_name(root, steps)
    fields = tables.get(here, [])
    hint = did_you_mean(key, fields) if fields else ""
    elsewhere = [name for name, keys in tables.items() if key in keys and name != here]
    if elsewhere:
        hint += f"; {key!r} is a key of {' and of '.join(elsewhere)}"
        hint += (": write it above [destinations.settings] (in TOML every key after a table"
                 " header belongs to that table)" if here.startswith("[destinations.") and
                 "[[destinations]]" in elsewhere else "")
    if fields:
        hint += f"; the keys of {here or 'the top level'} are: {', '.join(fields)}"
    return hint


def _tables(info: Any, name: str) -> list[tuple[str, list[str]]]:
    """(TOML name, keys) of every table in ``info``: ``[server]``, ``[[sources]]``,
    ``[destinations.delivery]``..."""
    ins = msgspec.inspect
    if isinstance(info, ins.UnionType):
        return [t for option in info.types for t in _tables(option, name)]
    if isinstance(info, ins.ListType) and isinstance(info.item_type, ins.StructType):
        return _tables(info.item_type, f"[{name}]")
    if not isinstance(info, ins.StructType):
        return []
    found = [(name, [f.encode_name for f in info.fields])]
    for f in info.fields:
        inner = name.strip("[]")
        child = f"{inner}.{f.encode_name}" if inner else f.encode_name
        if isinstance(f.type, ins.ListType) and isinstance(f.type.item_type, ins.StructType):
            found += _tables(f.type.item_type, f"[[{child}]]")
        elif isinstance(f.type, ins.StructType):
            found += _tables(f.type, f"[{child}]")
    return found


def _table_name(info: Any, steps: list[str | int]) -> str:
    """The TOML name of the table at ``steps`` (as :func:`_tables` names it)."""
    ins = msgspec.inspect
    path: list[str] = []
    array = False
    for step in steps:
        if isinstance(step, int):
            continue
        if not isinstance(info, ins.StructType):
            return ""
        field = next((f for f in info.fields if f.encode_name == step), None)
        if field is None:
            return ""
        path.append(step)
        info, array = field.type, False
        if isinstance(info, ins.ListType):
            info, array = info.item_type, True
    dotted = ".".join(path)
    return "" if not dotted else f"[[{dotted}]]" if array else f"[{dotted}]"
