"""The runtime: a validated config bound to installed plugins and an open database.

``Runtime.build(config)`` does all start-up validation: every source/destination names an
installed connector, every plugin settings table passes the connector's settings Struct, every
filter/trigger expression parses, the data dir is writable. Anything wrong raises ConfigError
before the server listens, so bad config stops boot, not a delivery.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pluggy
from starlette.routing import compile_path

from .config import Config, DeliverySettings, DestinationConfig
from .config_errors import explain_invalid
from .connectors import Connector, ConnectorKind, DestinationContext, SourceContext
from .errors import ConfigError, HookyardError, PluginFailed, StorageUnavailable, did_you_mean
from .fields import drop_path
from .integration_flags import switched_off
from .plugins import (
    ConnectorRegistry,
    host_cancels,
    make_plugin_manager,
    maybe_await,
    plugin_label,
)
from .refused_tokens import RefusedTokens
from .secret_files import read_or_create_secret
from .sizes import SizeCounter
from .storage import (
    POSTGRESQL,
    Storage,
    check_schema,
    describe,
    migrate,
    open_database,
    schema_version,
)

if TYPE_CHECKING:
    from .delivery.hook_thread import HookThread
    from .delivery.scrub import Scrubber

log = logging.getLogger("hookyard")

STARTUP_HOOK_SECONDS = 60.0
"""How long one plugin's ``startup`` hook may take before the start is given up."""
SHUTDOWN_HOOK_SECONDS = 10.0
"""How long one plugin's ``shutdown`` hook may take before the stop goes on without it."""

Predicate = Callable[[dict[str, Any]], bool]


@dataclass
class DestinationRuntime:
    """A configured destination with its connector, policy and compiled filters."""

    config: DestinationConfig
    connector: Connector
    context: DestinationContext
    policy: DeliverySettings
    filter: Predicate | None = None
    trigger: Predicate | None = None
    drop: tuple[tuple[str, ...], ...] = ()  # drop_fields, as paths (fields.without_paths)
    loop_bound: bool = False  # a plain-function deliver that needs the event loop (calling.py)

    @property
    def name(self) -> str:
        return self.config.name

    @functools.cached_property
    def hook_thread(self) -> HookThread:
        """Where a plain-function ``deliver`` of this destination runs (not on the loop)."""
        from .delivery.hook_thread import HookThread

        return HookThread(self.config.name)

    @functools.cached_property
    def integration_names(self) -> tuple[str, ...]:
        """The keys of an event's ``integrations`` that name this destination (case-folded):
        its own name, its plugin's, and the names the connector adds."""
        names = (self.config.name, self.config.plugin, *self.connector.integration_names)
        return tuple(n.casefold() for n in names)

    @property
    def batch_size(self) -> int:
        return max(1, self.policy.batch_size or self.connector.batch_size)

    def switched_off(self, raw: dict[str, Any], integrations: bool = True) -> str | None:
        """Why the event's ``integrations`` object turns this destination off (unless
        ``integrations`` is false: its source ignores them), or None."""
        flags = raw.get("integrations")
        if flags and integrations and self.config.honor_integrations:
            return switched_off(flags, self.integration_names,
                                not self.connector.forwards_integrations)
        return None

    def gate(self, raw: dict[str, Any], integrations: bool = True) -> str | None:
        """Why the event's ``integrations`` switches (:meth:`switched_off`) or the destination's
        filter/trigger stop this event, or None to map it."""
        off = self.switched_off(raw, integrations)
        if off is not None:
            return off
        if self.filter is not None and self.filter(raw):
            return f"dropped by filter: {self.config.filter}"
        if self.trigger is not None and not self.trigger(raw):
            return f"does not match trigger: {self.config.trigger}"
        return None


@dataclass
class IngestRoute:
    """An ingest path pattern and the sources (in config order) that accept on it."""

    pattern: str
    sources: list[SourceContext]


def convert_settings(connector: Connector, data: dict[str, Any]) -> Any:
    """``data`` as the connector's settings Struct; raises ``msgspec.ValidationError``, also
    for a key the Struct does not have (see :func:`_unknown_setting`). Shared with
    ``hookyard.testing``, so a plugin's tests refuse what the server refuses."""
    unknown = _unknown_setting(connector.settings, data)
    if unknown is not None:
        raise msgspec.ValidationError(unknown)
    return msgspec.convert(data, connector.settings)


def _settings(connector: Connector, data: dict[str, Any], where: str) -> Any:
    try:
        return convert_settings(connector, data)
    except msgspec.ValidationError as exc:
        message = explain_invalid(str(exc), connector.settings, data)
        raise ConfigError(f"{where}.settings: {message.replace('`', '')}") from None
    except Exception as exc:  # noqa: BLE001 - a settings __post_init__ that raised, say, re.error
        raise ConfigError(f"{where}.settings: the {connector.name} plugin's check of its settings"
                          f" failed: {type(exc).__name__}: {exc}") from None


def _unknown_setting(settings: Any, data: Any) -> str | None:
    """What is wrong when ``data`` holds a key the settings Struct does not have (a typo);
    checked whether or not the plugin's Struct forbids unknown fields, since a setting that
    is silently ignored is a delivery that goes wrong later."""
    if not (isinstance(settings, type) and issubclass(settings, msgspec.Struct)
            and isinstance(data, dict)):
        return None
    names = [f.encode_name for f in msgspec.structs.fields(settings)]
    for key in data:
        if key not in names:
            known = ", ".join(names) or "none"
            return (f"unknown setting {key!r}{did_you_mean(str(key), names)}"
                    f"{_misplaced(str(key))}; the settings are: {known}")
    return None


def _connector(registry: ConnectorRegistry, kind: ConnectorKind, plugin: str, where: str,
               needs: tuple[str, ...]) -> Connector:
    """``registry.get``, its error naming the config entry (``destinations[pw].plugin``)."""
    try:
        return registry.get(kind, plugin, needs=needs)
    except ConfigError as exc:
        raise ConfigError(f"{where}.plugin: {exc}") from None


def _misplaced(key: str) -> str:
    """Where a key found in ``[destinations.settings]`` belongs when it is a key of the
    destination itself or of its delivery policy: TOML puts every key written after the
    ``[destinations.settings]`` header into that table (docs audit: ``filter`` or ``sources``
    written below it got "unknown setting" and nothing more)."""
    for table, struct in (("[[destinations]]", DestinationConfig),
                          ("[destinations.delivery]", DeliverySettings)):
        if key in {f.encode_name for f in msgspec.structs.fields(struct)}:
            return (f" ({key!r} is a key of {table}: write it above [destinations.settings],"
                    " since in TOML every key after a table header belongs to that table)")
    return ""


def _compile(expr: str | None, where: str) -> Predicate | None:
    if not expr:
        return None
    from .fql import compile_fql  # imported lazily: only configs with filters need it

    try:
        return compile_fql(expr)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _drop_paths(paths: list[str], where: str) -> tuple[tuple[str, ...], ...]:
    try:
        return tuple(drop_path(p) for p in paths)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _passing(exc: StorageUnavailable) -> bool:
    """Whether a storage failure mends without an operator: a full disk, a lock another
    process holds (not a read-only file or a wrong path, which start-up should report)."""
    reason = exc.reason.lower()
    return "cannot open" not in reason and (
        "database or disk is full" in reason or "database is locked" in reason)


class Runtime:
    """Everything a running hookyard needs; built once by the server, worker or CLI."""

    def __init__(
        self,
        config: Config,
        pm: pluggy.PluginManager,
        registry: ConnectorRegistry,
        data_dir: Path,
    ) -> None:
        self.config = config
        self.pm = pm
        self.registry = registry
        self.data_dir = data_dir
        self.db: Storage = open_database(config.storage, data_dir)
        self.sources: dict[str, SourceContext] = {}
        self.destinations: dict[str, DestinationRuntime] = {}
        self.routes: list[IngestRoute] = []
        self.admin_token = ""
        self.admin_token_created = False
        self._opened = False
        self.engine: Any = None  # set by hookyard.delivery.engine when workers run
        self.metrics: Any = None  # set by hookyard.app
        self.refused_tokens = RefusedTokens()  # counted in /metrics once hookyard.app sets it up
        self.sizes = SizeCounter()  # inbox/outbox sizes for /metrics and the dashboard
        self.integrations_ignored_from = frozenset(  # sources with honor_integrations = false
            s.name for s in config.sources if not s.honor_integrations)

    @classmethod
    def build(
        cls, config: Config, plugins: list[object] | None = None, *, prepare: bool = True
    ) -> Runtime:
        """Validate ``config`` against the installed plugins and prepare the data dir (with
        ``prepare=False``, as ``check-config`` does, nothing is created on disk)."""
        pm = make_plugin_manager(plugins or ())
        registry = ConnectorRegistry(pm)
        registry.check_step_owners()
        data_dir = Path(config.server.data_dir).expanduser().resolve()
        rt = cls(config, pm, registry, data_dir)
        by_pattern: dict[str, IngestRoute] = {}
        for src in config.sources:
            connector = _connector(registry, "source", src.plugin, f"sources[{src.name}]",
                                   ("authenticate", "parse_events"))
            if connector.write_key and src.write_key is None:
                raise ConfigError(f"source {src.name!r} has no write_key: the {src.plugin} plugin"
                                  " authenticates requests with it (write_key = \"...\", at"
                                  " least 8 characters, or \"env:VAR\")")
            ctx = SourceContext(
                name=src.name,
                plugin=src.plugin,
                write_key=src.write_key or "",
                settings=_settings(connector, src.settings, f"sources[{src.name}]"),
            )
            rt.sources[src.name] = ctx
            for pattern in connector.paths:
                by_pattern.setdefault(pattern, IngestRoute(pattern, [])).sources.append(ctx)
        rt.routes = list(by_pattern.values())
        for dest in config.destinations:
            where = f"destinations[{dest.name}]"
            connector = _connector(registry, "destination", dest.plugin, where,
                                   ("map_event", "deliver"))
            dctx = DestinationContext(
                name=dest.name,
                plugin=dest.plugin,
                settings=_settings(connector, dest.settings, where),
                sources=tuple(dest.sources),
                data_dir=data_dir,
            )
            rt.destinations[dest.name] = DestinationRuntime(
                config=dest,
                connector=connector,
                context=dctx,
                policy=dest.delivery,
                filter=_compile(dest.filter, f"{where}.filter"),
                trigger=_compile(dest.trigger, f"{where}.trigger"),
                drop=_drop_paths(dest.drop_fields, f"{where}.drop_fields"),
            )
        try:  # only once everything else is valid: a bad config leaves no empty data dir
            if prepare:  # its own user only: the databases in it hold customer data
                data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create data dir {data_dir}: {exc}") from None
        if config.server.admin_token:
            rt.admin_token = config.server.admin_token
        elif prepare:
            rt.admin_token, rt.admin_token_created = read_or_create_secret(
                data_dir / "admin_token", "adm"
            )
        return rt

    @functools.cached_property
    def scrubber(self) -> Scrubber:
        """Every configured secret out of stored texts (attempt results, mapping errors)."""
        from .delivery.scrub import Scrubber
        from .logs import config_secrets

        return Scrubber(config_secrets(self))

    def open(self, upgrade: bool = True) -> None:
        """Start the database's writer and create or migrate the database; with
        ``upgrade=False`` (operator commands) only check that its schema is current.
        Once opened, opening again does nothing (``serve`` opens before uvicorn starts, so a
        schema problem stops it with one line; the app's lifespan opens it for embedders)."""
        if self._opened:
            return
        if upgrade and self.db.dialect == POSTGRESQL:  # serve and worker wait for the server
            from .storage.postgres import wait_for_server

            storage = self.config.storage
            wait_for_server(storage.url or "", storage.schema, storage.connect_wait_seconds)
        self.db.write_timeout = 0  # a migration (an index on a large table) may take minutes
        self.db.start()
        try:
            if upgrade:
                before = self.db.read_sync(schema_version)
                try:
                    after = self.db.write_sync(migrate)
                except StorageUnavailable as exc:
                    if not _passing(exc):
                        raise
                    # a full disk or a lock held elsewhere mends by itself: on a current
                    # schema, serve and answer 503 until it does (exiting instead would soon
                    # exhaust a service manager's restarts, and nothing would be taken after)
                    try:
                        after = self.db.read_sync(check_schema)
                    except HookyardError:  # a migration is due: it needs the writes
                        raise exc from None
                    log.error("%s at start-up: starting anyway; writes are answered 503 until"
                              " it answers", exc)
                if 0 < before < after:
                    log.warning("database upgraded from schema version %d to %d", before, after)
            else:
                self.db.read_sync(check_schema)
        except HookyardError:
            self.db.stop()
            raise
        except Exception as exc:  # e.g. SQLite's "unable to open database file": one line
            self.db.stop()
            where = describe(self.config.storage, self.data_dir)
            raise ConfigError(f"cannot open the database ({where}): {exc}") from exc
        except BaseException:
            self.db.stop()
            raise
        self.db.write_timeout = self.config.storage.write_timeout_seconds
        self._opened = True

    async def run_startup_hooks(self) -> None:
        """Await every plugin's ``startup`` hook (``serve`` and ``worker`` alike). One that raises,
        or runs past :data:`STARTUP_HOOK_SECONDS`, stops the start with a ``ConfigError`` naming
        the plugin: the server must not run without what a plugin prepared."""
        for impl in self.pm.hook.startup.get_hookimpls():
            if impl.wrapper or impl.hookwrapper:
                continue
            label = plugin_label(self.pm, impl.plugin)
            try:
                async with asyncio.timeout(STARTUP_HOOK_SECONDS):
                    await maybe_await(impl.function(runtime=self))
            except TimeoutError:
                raise ConfigError(f"startup hook of {label} did not finish within"
                                  f" {STARTUP_HOOK_SECONDS:g} s") from None
            except (Exception, *PluginFailed.NOT_EXCEPTIONS, asyncio.CancelledError) as exc:  # noqa: BLE001
                if isinstance(exc, HookyardError):
                    raise
                if isinstance(exc, asyncio.CancelledError) and host_cancels():
                    raise
                raise ConfigError(f"startup hook of {label} failed: {type(exc).__name__}:"
                                  f" {exc}") from exc

    async def run_shutdown_hooks(self) -> None:
        """Await every plugin's ``shutdown`` hook, the last registered first, each on its own and
        for at most :data:`SHUTDOWN_HOOK_SECONDS`: one that raises or hangs is logged, and the
        others still close what they opened."""
        for impl in reversed(self.pm.hook.shutdown.get_hookimpls()):
            if impl.wrapper or impl.hookwrapper:
                continue
            try:
                async with asyncio.timeout(SHUTDOWN_HOOK_SECONDS):
                    await maybe_await(impl.function(runtime=self))
            except TimeoutError:
                log.error("shutdown hook of plugin %s did not finish within %g s",
                          impl.plugin_name, SHUTDOWN_HOOK_SECONDS)
            except (Exception, *PluginFailed.NOT_EXCEPTIONS, asyncio.CancelledError) as exc:  # noqa: BLE001
                if isinstance(exc, asyncio.CancelledError) and host_cancels():
                    raise
                # one plugin must not keep the others open
                log.exception("shutdown hook of plugin %s failed", impl.plugin_name)

    def close(self) -> None:
        self._opened = False
        self.db.stop()

    def sources_for(self, path: str) -> list[tuple[SourceContext, dict[str, str]]]:
        """The sources accepting on ``path`` (config order) with their path parameters; a
        trailing slash more or less still matches (``/v1/track/``), as a client expects of an
        API rather than a redirect it may not follow with its body."""
        found: dict[str, tuple[SourceContext, dict[str, str]]] = {}
        other = path[:-1] if path.endswith("/") and len(path) > 1 else path + "/"
        for route in self.routes:
            regex = _pattern_regex(route.pattern)
            match = regex.match(path) or regex.match(other)
            if match:
                for s in route.sources:
                    found.setdefault(s.name, (s, match.groupdict()))
        return [found[name] for name in self.sources if name in found]

    def destinations_for(self, source: str) -> list[DestinationRuntime]:
        return [
            d for d in self.destinations.values() if d.config.enabled and source in d.config.sources
        ]


_regex_cache: dict[str, re.Pattern[str]] = {}


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    regex = _regex_cache.get(pattern)
    if regex is None:
        regex = compile_path(pattern)[0]
        _regex_cache[pattern] = regex
    return regex
