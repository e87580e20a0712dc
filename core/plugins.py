"""Building the plugin manager, and deterministic dispatch to a connector's own hooks.

``make_plugin_manager()`` is a factory (nothing is built at import): it loads the ``hookyard``
entry-point group (built-in connectors are registered there exactly like third-party ones), adds
any plugin objects passed in, and checks every hook so a misspelt hook name fails loudly. A broken
plugin (a module that fails to import, an unknown hook, an argument the hookspec lacks) is a
:class:`ConfigError` of one line naming the entry point and the problem, not pluggy's
traceback, so every command stops the way it does for a bad config.

:class:`ConnectorRegistry` remembers which plugin registered which connector. A step hook for
connector ``novu`` is called through a pluggy *subset* hook caller that leaves out every other
plugin's non-wrapper implementation: only the owner answers, while wrappers
(``@hookimpl(wrapper=True)``) from plugins that implement no connector step still run around it.
"""

from __future__ import annotations

import asyncio
import importlib
import importlib.metadata
import inspect
import re
import traceback
from collections.abc import Coroutine, Iterable
from types import CoroutineType
from typing import Any

import pluggy
from pluggy import PluginValidationError

from . import hookspecs
from .blame import blamed_text
from .connector_checks import connector_problem
from .connectors import Connector, ConnectorKind
from .errors import ConfigError, PluginFailed, did_you_mean

ENTRY_POINT_GROUP = "hookyard"
STEP_RESULTS = {
    "authenticate": "an AuthResult",
    "parse_events": "a list of ParsedEvent",
    "map_event": "a MapResult",
    "deliver": "a list of DeliveryResult",
}

def make_plugin_manager(
    plugins: Iterable[object] = (), *, load_entry_points: bool = True
) -> pluggy.PluginManager:
    """A new plugin manager with the hookyard hookspecs and the installed plugins.

    Raises :class:`ConfigError` (one line: which plugin, what is wrong) when a plugin cannot be
    imported, implements a hook that does not exist, or takes an argument its hook lacks."""
    pm = pluggy.PluginManager("hookyard")
    pm.add_hookspecs(hookspecs)
    if load_entry_points:
        _check_entry_point_names()
        try:
            pm.load_setuptools_entrypoints(ENTRY_POINT_GROUP)
        except (Exception, *PluginFailed.NOT_EXCEPTIONS) as exc:  # noqa: BLE001 - any error
            raise entry_point_error(pm, exc) from exc  # of a third-party module's import
    for plugin in plugins:
        if not pm.is_registered(plugin):
            _register(pm, plugin, None, _object_label(plugin))
    check_hooks(pm)
    return pm


def entry_point_error(pm: pluggy.PluginManager, exc: BaseException) -> ConfigError:
    """The one-line error for ``exc``, raised by pluggy's ``load_setuptools_entrypoints``.

    pluggy does not say which entry point failed. A plugin that fails validation is the
    exception's ``plugin``, left registered under its entry point's name; for an import error,
    the entry points not registered yet are loaded again, one by one, until one fails (an
    import that failed is not cached: it fails again)."""
    entry_points = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
    if isinstance(exc, PluginValidationError):
        name = pm.get_name(exc.plugin)
        for ep in entry_points:
            if ep.name == name:
                return ConfigError(f"{_entry_point_label(ep)}: {_validation_problem(pm, str(exc))}")
    for ep in entry_points:
        if pm.get_plugin(ep.name) is not None or pm.is_blocked(ep.name):
            continue
        label = _entry_point_label(ep)
        try:
            plugin = ep.load()
        except (Exception, *PluginFailed.NOT_EXCEPTIONS) as again:  # noqa: BLE001
            return ConfigError(f"{label}: could not be imported: {_exception_text(again)}")
        try:
            pm.register(plugin, name=ep.name)
        except PluginValidationError as invalid:
            return ConfigError(f"{label}: {_validation_problem(pm, str(invalid))}")
    text = " ".join(_exception_text(exc).split())
    return ConfigError(f"loading the {ENTRY_POINT_GROUP!r} plugins failed: {text}")


def _check_entry_point_names() -> None:
    """Refuse two distributions that use one entry-point name: pluggy would load the first
    one it is given and skip the other without a word (a third-party plugin named ``novu``
    could even stand in for the built-in one)."""
    seen: dict[str, importlib.metadata.EntryPoint] = {}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        first = seen.setdefault(ep.name, ep)
        if first.value != ep.value:
            raise ConfigError(
                f"two plugins use the entry-point name {ep.name!r}: {_entry_point_label(first)}"
                f" and {_entry_point_label(ep)}; only one of them would load: rename one"
                " ([project.entry-points.hookyard] in its pyproject.toml) or uninstall it"
            )


def _entry_point_label(ep: importlib.metadata.EntryPoint) -> str:
    """``plugin 'acme' (hookyard_acme.plugin, distribution hookyard-acme 0.1.0)``."""
    dist = getattr(ep, "dist", None)
    where = f", distribution {dist.name} {dist.version}" if dist is not None else ""
    return f"plugin {ep.name!r} ({ep.value}{where})"


def _installed_label(pm: pluggy.PluginManager, plugin: object) -> str | None:
    """The entry-point label of ``plugin`` when pluggy loaded it from one, else None."""
    name = pm.get_name(plugin)
    for loaded, dist in pm.list_plugin_distinfo():
        if loaded is plugin:
            for ep in dist.entry_points:
                if ep.group == ENTRY_POINT_GROUP and ep.name == name:
                    return _entry_point_label(ep)
    return None


def _object_label(plugin: object) -> str:
    if inspect.ismodule(plugin):
        return f"plugin {plugin.__name__!r}"
    return f"plugin {type(plugin).__name__!r} object"


def plugin_label(pm: pluggy.PluginManager, plugin: object) -> str:
    """``plugin 'acme' (hookyard_acme.plugin, distribution hookyard-acme 0.1.0)`` for a plugin
    loaded from its entry point, else after its type (for error messages)."""
    installed = _installed_label(pm, plugin)
    if installed:
        return installed
    name = pm.get_name(plugin)
    return _object_label(plugin) if name in (None, str(id(plugin))) else f"plugin {name!r}"


def _exception_text(exc: BaseException) -> str:
    """``NameError: name 'x' is not defined (at .../plugin.py:12)``: the innermost frame."""
    text = f"{type(exc).__name__}: {exc}"
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if not f.filename.startswith("<frozen ") and "importlib" not in f.filename]
    if frames and not isinstance(exc, SyntaxError):  # a SyntaxError names its line itself
        text += f" (at {frames[-1].filename}:{frames[-1].lineno})"
    return text


def _register(pm: pluggy.PluginManager, plugin: object, name: str | None, label: str) -> None:
    try:
        hash(plugin)
    except TypeError:  # pluggy keys its plugins by the object: every hook call would fail later
        raise ConfigError(f"{label}: a plugin must be hashable (a module, a class, or an"
                          f" instance of a class that does not define __eq__), not a"
                          f" {type(plugin).__name__}") from None
    try:
        pm.register(plugin, name=name)
    except PluginValidationError as exc:
        raise ConfigError(f"{label}: {_validation_problem(pm, str(exc))}") from exc


def _validation_problem(pm: pluggy.PluginManager, message: str) -> str:
    """pluggy's several-line validation message as one line."""
    hook = re.search(r"hook '(\w+)'", message)
    args = re.search(r"Argument\(s\) \{(.*)\} are declared", message)
    if hook and args:
        spec = getattr(pm.hook, hook[1]).spec
        takes = ", ".join(spec.argnames) if spec is not None else "?"
        plural = "s" if "," in args[1] else ""
        return f"hook {hook[1]!r} has no argument{plural} {args[1]} (it takes: {takes})"
    last = message.strip().splitlines()[-1]
    return f"hook {hook[1]!r}: {last}" if hook else " ".join(message.split())


def hook_names() -> list[str]:
    """The names of hookyard's hooks (the hookspecs)."""
    return sorted(n for n, f in vars(hookspecs).items() if hasattr(f, "hookyard_spec"))


def _unknown_hook(name: str) -> str:
    hint = did_you_mean(name, hook_names())
    if hint:
        return f"unknown hook {name!r}{hint}"
    return f"unknown hook {name!r} (hookyard's hooks: {', '.join(hook_names())})"


def check_hooks(pm: pluggy.PluginManager) -> None:
    """Refuse a plugin implementing hooks that do not exist, naming every such hook of it
    (pluggy's ``check_pending`` stops at the first one and shows the module's repr)."""
    unknown: dict[int, list[str]] = {}
    plugins: dict[int, object] = {}
    for name, caller in vars(pm.hook).items():
        if name.startswith("_") or caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if not impl.optionalhook:
                unknown.setdefault(id(impl.plugin), []).append(name)
                plugins[id(impl.plugin)] = impl.plugin
    if unknown:  # the first plugin with unknown hooks, every one of them
        key, names = next(iter(unknown.items()))
        plugin = plugins[key]
        label = plugin_label(pm, plugin)
        raise ConfigError(f"{label}: {'; '.join(_unknown_hook(name) for name in sorted(names))}")
    pm.check_pending()  # anything the loop above does not know about
    check_not_async(pm)


STEP_HOOKS = {"authenticate": "source", "parse_events": "source",
              "map_event": "destination", "deliver": "destination"}
"""The pipeline's steps, each answered by the plugin owning the connector of that kind."""

ASYNC_HOOKS = ("deliver", "startup", "shutdown")
"""The hooks the host awaits; the others are called as plain functions."""


def check_not_async(pm: pluggy.PluginManager) -> None:
    """Refuse an ``async def`` implementation of a hook that is not awaited (its coroutine
    would be used as the answer: a 500, or every event dead-lettered, found only at run time)."""
    for name, caller in vars(pm.hook).items():
        if name.startswith("_") or name in ASYNC_HOOKS or not caller.has_spec():
            continue
        for impl in caller.get_hookimpls():
            if inspect.iscoroutinefunction(impl.function):
                label = plugin_label(pm, impl.plugin)
                raise ConfigError(
                    f"{label}: hook {name!r} is an async def, but hookyard calls it without"
                    f" awaiting: make it a plain def (only {', '.join(ASYNC_HOOKS)} may be async)"
                )


def host_cancels() -> bool:
    """Whether the running task is being cancelled by the host, as opposed to a hook that
    raised a ``CancelledError`` of its own."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


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
        self._decisions: dict[tuple[str, str, str], tuple[Any, list[Any], bool]] = {}
        for impl in pm.hook.register_connectors.get_hookimpls():
            if impl.wrapper or impl.hookwrapper:
                continue  # the registry reads every plugin's list itself; wrappers have nothing to add
            try:
                connectors: list[Connector] = impl.function()  # type: ignore[assignment]
            except (Exception, *PluginFailed.NOT_EXCEPTIONS) as exc:  # noqa: BLE001 - a plugin
                raise ConfigError(  # bug: one line, not a traceback (nor a silent exit)
                    f"{plugin_label(pm, impl.plugin)}: register_connectors failed: "
                    f"{_exception_text(exc)}"
                ) from exc
            if connectors is None:  # a forgotten return: its connectors would be "not installed"
                raise ConfigError(f"{plugin_label(pm, impl.plugin)}: register_connectors returned"
                                  " None, not a list of Connector (a missing return?)")
            if not isinstance(connectors, list | tuple):
                raise ConfigError(f"{plugin_label(pm, impl.plugin)}: register_connectors returned"
                                  f" {type(connectors).__name__}, not a list of Connector")
            for connector in connectors:
                problem = connector_problem(connector)
                if problem:
                    raise ConfigError(f"{plugin_label(pm, impl.plugin)}: {problem}")
                key = (connector.kind, connector.name)
                if key in self._connectors:
                    other = self._connectors[key][1]
                    raise ConfigError(
                        f"{connector.kind} connector {connector.name!r} is registered by both "
                        f"{plugin_label(pm, other)} and {plugin_label(pm, impl.plugin)}"
                    )
                self._connectors[key] = (connector, impl.plugin)

    def check_step_owners(self) -> None:
        """Refuse a plugin implementing a step hook (``map_event``, ...) without owning a
        connector of its kind and without being a wrapper: the hook would never be called
        (a generator ``map_event`` without ``wrapper=True`` loaded silently and did nothing;
        plugin-author audit). Called when a server or ``hookyard plugins`` loads them."""
        owners: dict[str, set[int]] = {"source": set(), "destination": set()}
        for connector, plugin in self._connectors.values():
            owners[connector.kind].add(id(plugin))
        for hook_name, kind in STEP_HOOKS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                if impl.wrapper or impl.hookwrapper or id(impl.plugin) in owners[kind]:
                    continue
                raise ConfigError(
                    f"{plugin_label(self.pm, impl.plugin)}: implements {hook_name} but registers"
                    f" no {kind} connector, so it would never be called: register one, or make"
                    f" it a wrapper of every {kind}'s {hook_name} (@hookimpl(wrapper=True), a"
                    " generator that yields once)"
                )

    def get(self, kind: ConnectorKind, name: str, needs: Iterable[str] = ()) -> Connector:
        """The connector of that kind and name, or a ConfigError listing what exists; also
        a ConfigError when its plugin lacks one of the hooks ``needs`` (so a destination
        without ``deliver`` stops start-up instead of retrying every event)."""
        try:
            connector, owner = self._connectors[(kind, name)]
        except KeyError:
            other = "source" if kind == "destination" else "destination"
            if (other, name) in self._connectors:
                raise ConfigError(
                    f"{name!r} is a {other} connector, not a {kind}: use it under"
                    f" [[{other}s]]") from None
            names = sorted(n for k, n in self._connectors if k == kind)
            raise ConfigError(
                f"no {kind} plugin named {name!r} is installed{did_you_mean(name, names)}"
                f" (installed: {', '.join(names) or 'none'})"
            ) from None
        missing = [hook for hook in needs if not any(
            i.plugin is owner and not (i.wrapper or i.hookwrapper)
            for i in getattr(self.pm.hook, hook).get_hookimpls())]
        if missing:
            raise ConfigError(
                f"{plugin_label(self.pm, owner)} ({kind} connector {name!r}) does not implement"
                f" {' or '.join(repr(h) for h in missing)} (a missing @hookimpl?)"
            )
        return connector

    def all(self) -> list[tuple[Connector, str]]:
        """Every connector with the name of the plugin that registered it."""
        return [
            (connector, self.pm.get_name(plugin) or "?")
            for connector, plugin in self._connectors.values()
        ]

    def _owner(self, kind: ConnectorKind, name: str) -> object:
        """The plugin that registered connector ``name``; ConfigError listing the installed
        ones when none did (say, a plugin object a test registered elsewhere)."""
        found = self._connectors.get((kind, name))
        if found is None:
            self.get(kind, name)  # raises
        return found[1]  # type: ignore[index]

    def blamed(self, exc: BaseException, kind: ConnectorKind, name: str) -> str:
        """`` (raised in plugin 'x')`` when code of another plugin than connector ``name``'s
        own raised ``exc`` (a wrapper of the step: :mod:`hookyard.blame`), else empty."""
        return blamed_text(self.pm, exc, self.pm.get_name(self._owner(kind, name)))

    def caller(self, hook_name: str, kind: ConnectorKind, name: str) -> Any:
        """A hook caller for ``hook_name`` that only reaches the owner of connector ``name``
        (plus wrappers from plugins that do not implement the step themselves)."""
        owner = self._owner(kind, name)
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

    def _decision(self, hook_name: str, kind: ConnectorKind, name: str) -> tuple[Any, list[Any], bool]:
        """``(direct, snapshot, blocks)`` for step ``hook_name`` of connector ``name``:

        * ``direct``: the owner's own implementation when it is the only one the subset caller
          would run (no wrappers), else None;
        * ``snapshot``: the hook's implementation list when this was decided (a plugin
          registered or unregistered later changes it, and the decision is made again);
        * ``blocks``: whether the owner's implementation is a plain function, not an ``async
          def`` (:meth:`blocks`)."""
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        key = (hook_name, kind, name)
        cached = self._decisions.get(key)
        if cached is not None and cached[1] == impls:
            return cached
        owner = self._owner(kind, name)
        mine = [i for i in impls if i.plugin is owner and not (i.wrapper or i.hookwrapper)]
        wrapped = any(i.wrapper or i.hookwrapper for i in impls)
        decision = (mine[0] if len(mine) == 1 and not wrapped else None, impls,
                    bool(mine) and not inspect.iscoroutinefunction(mine[0].function))
        self._decisions[key] = decision
        return decision

    def blocks(self, hook_name: str, kind: ConnectorKind, name: str) -> bool:
        """True when the owner's implementation of ``hook_name`` is a plain function, not an
        ``async def``: a call of it may block, so the host may run it off the event loop
        (:mod:`hookyard.delivery.hook_thread`). Its wrappers, generators, run with it."""
        return self._decision(hook_name, kind, name)[2]

    def call(self, hook_name: str, kind: ConnectorKind, name: str, **kwargs: Any) -> Any:
        """Call step ``hook_name`` of connector ``name`` with keyword arguments.

        When the owner's implementation is the only one that would run (no wrappers), it is
        called directly: a pluggy hook call costs ~8 us more, which ingest pays per request.
        """
        impl = self._decision(hook_name, kind, name)[0]
        try:
            if impl is not None:
                result = impl.function(*[kwargs[a] for a in impl.argnames])
            else:
                result = self.caller(hook_name, kind, name)(**kwargs)
        except (*PluginFailed.NOT_EXCEPTIONS, asyncio.CancelledError) as exc:
            # a sync hook: no cancellation of the host's can reach it, so this is the plugin's
            raise self._failed(hook_name, kind, name, exc) from exc
        if result is None:
            raise self._no_answer(hook_name, kind, name)
        if isinstance(result, CoroutineType):  # (not inspect.iscoroutine: ingest pays per call)
            return self._guarded(result, hook_name, kind, name)
        return result

    async def _guarded(self, coro: Coroutine[Any, Any, Any], hook_name: str,
                       kind: ConnectorKind, name: str) -> Any:
        """Await an async hook's coroutine, with what it raises outside ``Exception`` made a
        :class:`PluginFailed`, except the host's own cancellation of the awaiting task."""
        try:
            return await coro
        except PluginFailed.NOT_EXCEPTIONS as exc:
            raise self._failed(hook_name, kind, name, exc) from exc
        except asyncio.CancelledError as exc:
            if host_cancels():
                raise  # the host cancels (shutdown, a time limit): not the plugin's doing
            raise self._failed(hook_name, kind, name, exc) from exc

    def _failed(self, hook_name: str, kind: ConnectorKind, name: str,
                exc: BaseException) -> PluginFailed:
        owner = self._connectors[(kind, name)][1]
        return PluginFailed(f"{hook_name} of {plugin_label(self.pm, owner)} ({kind} connector"
                            f" {name!r}) raised {type(exc).__name__}: {exc}")

    def _no_answer(self, hook_name: str, kind: ConnectorKind, name: str) -> Exception:
        """Why a step hook call answered None: the owner lacks the hook (ConfigError), or its
        implementation returned None (a forgotten ``return``: TypeError)."""
        owner = self._connectors[(kind, name)][1]
        impls = getattr(self.pm.hook, hook_name).get_hookimpls()
        if not any(i.plugin is owner and not (i.wrapper or i.hookwrapper) for i in impls):
            return ConfigError(
                f"plugin of {kind} connector {name!r} does not implement hook {hook_name!r}"
            )
        expected = STEP_RESULTS.get(hook_name, "a result")
        wrappers = sorted({plugin_label(self.pm, i.plugin) for i in impls
                           if i.wrapper or i.hookwrapper})
        wrapped = f", or a wrapper of it did: {', '.join(wrappers)}" if wrappers else ""
        return TypeError(
            f"{hook_name} of {plugin_label(self.pm, owner)} ({kind} connector {name!r}) "
            f"returned None, not {expected} (a missing return?{wrapped})"
        )
