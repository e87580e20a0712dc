"""The checks a registered :class:`~hookyard.connectors.Connector` passes when the plugins are
loaded: what would otherwise only show later (a misspelt kind, settings that are not a Struct or
whose default their own type refuses, a batch size under 1, a source's paths over the host's).
Each returns the problem as text, or None; :class:`hookyard.plugins.ConnectorRegistry` makes it
a ``ConfigError`` naming the plugin."""

from __future__ import annotations

import re
from typing import Any

import msgspec

from .connectors import Connector


def connector_problem(connector: Any) -> str | None:
    """What is wrong with a registered ``Connector`` that would otherwise only show later (a
    misspelt kind: "no destination plugin named ..."; a settings class that is not a Struct:
    unknown keys silently dropped)."""
    if not isinstance(connector, Connector):
        return f"register_connectors returned a {type(connector).__name__}, not a Connector"
    if connector.kind not in ("source", "destination"):
        return (f"connector {connector.name!r} has kind {connector.kind!r}:"
                " use 'source' or 'destination'")
    if not isinstance(connector.name, str) or not _NAME.fullmatch(connector.name):
        return (f"connector name {connector.name!r} is what a config's plugin = \"...\" names:"
                " lower-case letters, digits, '-', '_' or '.', starting with a letter or digit,"
                " at most 64 characters")
    if connector.kind == "destination" and connector.paths:
        return (f"destination connector {connector.name!r} has paths: only a source receives"
                " requests (a destination's own routes: the register_routes hook)")
    settings = connector.settings
    if not (isinstance(settings, type) and issubclass(settings, msgspec.Struct)):
        return (f"connector {connector.name!r}: settings must be a msgspec.Struct class,"
                f" not {settings!r}")
    wrong_default = _wrong_default(settings)
    if wrong_default:
        return f"connector {connector.name!r}: settings {wrong_default}"
    size = connector.batch_size
    if not isinstance(size, int) or isinstance(size, bool) or size < 1:
        return f"connector {connector.name!r}: batch_size must be a whole number >= 1, not {size!r}"
    names = connector.integration_names
    if not isinstance(names, tuple | list) or not all(isinstance(n, str) and n for n in names):
        return (f"connector {connector.name!r}: integration_names must be a tuple of names,"
                f" not {names!r}")
    if connector.kind == "source":
        return _paths_problem(connector)
    return None


_NAME = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")


def _wrong_default(settings: type[msgspec.Struct]) -> str | None:
    """The first field of ``settings`` whose default its own type refuses (``timeout: int =
    "5"``, ``batch: Annotated[int, Meta(le=50)] = 500``): a config that leaves the setting out
    would pass ``check-config`` and hand the plugin a value it does not expect. None if all
    are valid, or they cannot be checked."""
    try:
        fields = msgspec.structs.fields(settings)
    except TypeError:
        return None
    for field in fields:
        if field.default is not msgspec.NODEFAULT:
            default = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            try:
                default = field.default_factory()
            except Exception:  # noqa: BLE001 - a factory that needs more: not checked here
                continue
        else:
            continue
        try:
            plain = msgspec.to_builtins(default)
        except Exception:  # noqa: BLE001 - a value msgspec cannot encode: not checked here
            continue
        try:
            msgspec.convert(plain, field.type)
        except msgspec.ValidationError as exc:
            return f"field {field.name!r} has a default its own type refuses ({exc})"
        except Exception:  # noqa: BLE001 - a type msgspec cannot convert to: not checked here
            continue
    return None


HOST_PATHS = ("/api", "/ui", "/healthz", "/readyz", "/metrics", "/openapi.json", "/docs")
"""The host's own paths: a source cannot ingest on them or under them."""
_HOST_SAMPLES = (*HOST_PATHS, "/", "/api/", "/api/replay", "/api/dead-letters/retry", "/ui/",
                 "/ui/login", "/ui/logout", "/ui/sources/web/write-key", "/ui/static/app.css")
"""Paths of the host's that a source's pattern must not match (``/{rest:path}`` or
``/{a}/login`` would take the dashboard's sign-in, which a prefix check does not see)."""


def _paths_problem(connector: Connector) -> str | None:
    """A source's ``paths``: at least one, each a Starlette pattern starting with '/', none of
    the host's (a source on ``/ui/login`` took the dashboard's sign-in; one without a leading
    '/' passed check-config, then stopped ``serve`` with a traceback naming no plugin)."""
    from starlette.routing import compile_path

    where = f"source connector {connector.name!r}"
    paths = connector.paths
    if not isinstance(paths, tuple | list) or not paths:
        return f"{where} has no paths: give paths=(\"/connector/{connector.name}\",) or another"
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/"):
            return f"{where}: path {path!r} must be a string starting with '/'"
        try:
            pattern = compile_path(path)[0]
        except (AssertionError, ValueError) as exc:
            return f"{where}: path {path!r} is not a valid route pattern: {exc}"
        taken = next((p for p in HOST_PATHS if path == p or path.startswith(p + "/")), None)
        taken = taken or next((p for p in _HOST_SAMPLES if pattern.match(p)), None)
        if taken is not None:
            return f"{where}: path {path!r} is hookyard's own ({taken}): choose another"
    return None
