"""Building the plugin manager, and deterministic dispatch to a connector's own hooks.

``make_plugin_manager()`` is a factory (nothing is built at import): it loads the ``hookyard``
entry-point group (built-in connectors are registered there exactly like third-party ones), adds
any plugin objects passed in, and runs ``check_pending()`` so a misspelt hook name fails loudly.

:class:`ConnectorRegistry` remembers which plugin registered which connector. A step hook for
connector ``novu`` is called through a pluggy *subset* hook caller that leaves out every other
plugin's non-wrapper implementation: only the owner answers, while wrappers
(``@hookimpl(wrapper=True)``) from plugins that implement no connector step still run around it.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from collections.abc import Iterable
from typing import Any

import pluggy

from . import hookspecs
from .connectors import Connector, ConnectorKind
from .errors import ConfigError

ENTRY_POINT_GROUP = "hookyard"
STEP_HOOKS = ("authenticate", "parse_events", "map_event", "deliver")

# The built-in plugins by entry-point name, as in ``[project.entry-points.hookyard]`` of
# pyproject.toml. A frozen single-file binary (PyInstaller) carries no entry-point metadata, so
# there they are registered from this list (tests/test_binary.py checks the two agree).
BUILTIN_PLUGINS = {
    "profiles": "hookyard.profiles.plugin",
    "segment": "hookyard_segment.plugin",
    "pushwoosh": "hookyard_pushwoosh.plugin",
    "novu": "hookyard_novu.plugin",
}


def register_builtin_plugins(pm: pluggy.PluginManager) -> None:
    """Register every built-in plugin not already registered (used when frozen)."""
    for name, module_name in BUILTIN_PLUGINS.items():
        if pm.get_plugin(name) is None and not pm.is_blocked(name):
            module = importlib.import_module(module_name)
            if not pm.is_registered(module):
                pm.register(module, name=name)


def make_plugin_manager(
    plugins: Iterable[object] = (), *, load_entry_points: bool = True
) -> pluggy.PluginManager:
    """A new plugin manager with the hookyard hookspecs and the installed plugins."""
    pm = pluggy.PluginManager("hookyard")
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        if getattr(sys, "frozen", False):
            register_builtin_plugins(pm)
    for plugin in plugins:
        if not pm.is_registered(plugin):
            pm.register(plugin)
    pm.check_pending()
    return pm


async def maybe_await(value: Any) -> Any:
    """Await ``value`` if a hook returned a coroutine (pluggy itself never awaits)."""
    if inspect.isawaitable(value):
        return await value
    return value


class ConnectorRegistry:
    """Every installed connector, the plugin that owns it, and dispatch to its hooks."""

    def __init__(self, pm: pluggy.PluginManager) -> None:
        self.pm = pm
        self._connectors: dict[tuple[ConnectorKind, str], tuple[Connector, object]] = {}
        self._callers: dict[tuple[str, int], Any] = {}
        self._direct_cache: dict[tuple[str, str, str], tuple[Any, list[Any]]] = {}
        for impl in pm.hook.register_connectors.get_hookimpls():
            if impl.wrapper or impl.hookwrapper:
                continue  # the registry reads every plugin's list itself; wrappers have nothing to add
            connectors: list[Connector] = impl.function() or []  # type: ignore[assignment]
            for connector in connectors:
                key = (connector.kind, connector.name)
                if key in self._connectors:
                    other = pm.get_name(self._connectors[key][1])
                    raise ConfigError(
                        f"{connector.kind} connector {connector.name!r} is registered by both "
                        f"plugin {other!r} and plugin {impl.plugin_name!r}"
                    )
                self._connectors[key] = (connector, impl.plugin)

    def get(self, kind: ConnectorKind, name: str) -> Connector:
        """The connector of that kind and name, or a ConfigError listing what exists."""
        try:
            return self._connectors[(kind, name)][0]
        except KeyError:
            known = ", ".join(sorted(n for k, n in self._connectors if k == kind)) or "none"
            raise ConfigError(
                f"no {kind} plugin named {name!r} is installed (installed: {known})"
            ) from None

    def all(self) -> list[tuple[Connector, str]]:
        """Every connector with the name of the plugin that registered it."""
        return [
            (connector, self.pm.get_name(plugin) or "?")
            for connector, plugin in self._connectors.values()
        ]

    def caller(self, hook_name: str, kind: ConnectorKind, name: str) -> Any:
        """A hook caller for ``hook_name`` that only reaches the owner of connector ``name``
        (plus wrappers from plugins that do not implement the step themselves)."""
        owner = self._connectors[(kind, name)][1]
        key = (hook_name, id(owner))
        caller = self._callers.get(key)
        if caller is None:
            hook = getattr(self.pm.hook, hook_name)
            others = {
                impl.plugin
                for impl in hook.get_hookimpls()
                if not (impl.wrapper or impl.hookwrapper) and impl.plugin is not owner
            }
            caller = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
            self._callers[key] = caller
        return caller

    def _direct(self, hook_name: str, kind: ConnectorKind, name: str) -> Any:
        """The owner's own implementation of ``hook_name`` when it is the only one the subset
        caller would run (no wrappers): ``(impl, snapshot)``, else ``None``.

        ``snapshot`` is the hook's implementation list when this was decided; a plugin
        registered or unregistered later changes that list and the decision is made again.
        """
        hook = getattr(self.pm.hook, hook_name)
        impls = hook.get_hookimpls()
        key = (hook_name, kind, name)
        cached = self._direct_cache.get(key)
        if cached is not None and cached[1] == impls:
            return cached[0]
        owner = self._connectors[(kind, name)][1]
        mine = [i for i in impls if i.plugin is owner and not (i.wrapper or i.hookwrapper)]
        wrapped = any(i.wrapper or i.hookwrapper for i in impls)
        impl = mine[0] if len(mine) == 1 and not wrapped else None
        self._direct_cache[key] = (impl, impls)
        return impl

    def call(self, hook_name: str, kind: ConnectorKind, name: str, **kwargs: Any) -> Any:
        """Call step ``hook_name`` of connector ``name`` with keyword arguments.

        When the owner's implementation is the only one that would run (no wrappers), it is
        called directly: a pluggy hook call costs ~8 us more, which ingest pays per request.
        """
        impl = self._direct(hook_name, kind, name)
        if impl is not None:
            result = impl.function(*[kwargs[a] for a in impl.argnames])
        else:
            result = self.caller(hook_name, kind, name)(**kwargs)
        if result is None:
            raise ConfigError(
                f"plugin of {kind} connector {name!r} does not implement hook {hook_name!r}"
            )
        return result
