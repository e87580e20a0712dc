"""Which plugin raised an exception: the innermost frame of its traceback that runs code of a
registered plugin's package.

A step's hook runs the owner's implementation and every plugin's wrapper of it, so "map_event
failed" or "parse_events of source web (connector 'acme') failed" blamed the connector for
what a wrapper of another plugin raised (source-author audit). Messages name that plugin.
"""

from __future__ import annotations

import types
from typing import Any

import pluggy


def _package(plugin: object) -> str | None:
    """The package whose modules are ``plugin``'s: its module's parent (``hookyard_novu`` of
    ``hookyard_novu.plugin``), or the module itself when it has none."""
    module = plugin.__name__ if isinstance(plugin, types.ModuleType) else type(plugin).__module__
    if not module or module == "builtins":
        return None
    return module.rpartition(".")[0] or module


def raised_by(pm: pluggy.PluginManager, exc: BaseException, owner: str | None = None) -> str | None:
    """The name of the plugin whose code raised ``exc`` (its innermost frame in a plugin's
    package), unless that is ``owner`` (the connector's own plugin: it is named already);
    None when no plugin's code is in the traceback."""
    packages: list[tuple[str, str]] = []
    for name, plugin in pm.list_name_plugin():
        package = _package(plugin) if plugin is not None else None
        if package is not None and package != "hookyard":
            packages.append((package, name))
    frames: list[Any] = []
    tb = exc.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        module = frame.f_globals.get("__name__", "")
        found = [name for package, name in packages
                 if module == package or module.startswith(package + ".")]
        if found:
            return None if owner in found else found[0]
    return None


def blamed_text(pm: pluggy.PluginManager, exc: BaseException, owner: str | None) -> str:
    """`` (raised in plugin 'x')`` when :func:`raised_by` names another plugin than
    ``owner``, else empty."""
    culprit = raised_by(pm, exc, owner)
    return f" (raised in plugin {culprit!r})" if culprit else ""
