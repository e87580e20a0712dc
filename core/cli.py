"""The ``hookyard`` command line (click).

Errors are one clear line on stderr and a non-zero exit code.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from . import __version__
from .config import Config, default_config, load_config
from .errors import ConfigError, HookyardError
from .logs import without_env_secrets
from .send_test import send_test as send_test_command
from .serving import (
    STOP_SIGNALS,
    end_like_the_signal,
    ensure_stdio,
    run_loop,
    tune_gc,
    warn_if_others_may_write,
)

CONFIG_HELP = "TOML config file (default: $HOOKYARD_CONFIG, else one Segment source -> profile store)"
TIME_HELP = "ISO-8601 (2026-11-01 or 2026-11-01T10:00:00Z; UTC when no zone is given) or Unix seconds"


def load_cli_config(config_path: str | None, host: str | None = None, port: int | None = None,
                    data_dir: str | None = None, *, create: bool = True,
                    unset_env: dict[str, str] | None = None) -> Config:
    """The config a command runs with: ``--config`` (else $HOOKYARD_CONFIG) or the default
    one in the data dir, with the command line's overrides applied."""
    config_path = config_path or os.environ.get("HOOKYARD_CONFIG")
    if config_path:
        config = load_config(config_path, unset_env)
    else:
        config = default_config(Path(data_dir or "./hookyard-data").expanduser().resolve(),
                                create=create)
    if host:
        config.server.host = host
    if port is not None:
        config.server.port = port
    if data_dir:
        config.server.data_dir = data_dir
    return config


def _runtime(config: Config) -> Any:
    from .runtime import Runtime

    return Runtime.build(config)


def stored_runtime(config_path: str | None, data_dir: str | None, *,
                   secrets_needed: bool = True) -> Any:
    """The opened runtime of a command that works on stored data (replay, dlq): refuses to
    start when there is no database yet, rather than create an empty install in the current
    directory (a command run from the wrong directory would find nothing and say so quietly).

    ``secrets_needed=False`` (a command that maps and sends nothing: ``dlq``): an ``env:``
    variable of a source or destination that is not set in the operator's shell is no error
    (the server's service manager may hold them)."""
    from .storage import POSTGRESQL, backend, sqlite_path

    config_path = config_path or os.environ.get("HOOKYARD_CONFIG")
    _refuse_new_default_install(config_path, data_dir)
    unset: dict[str, str] | None = None if secrets_needed else {}
    config = load_cli_config(config_path, data_dir=data_dir, unset_env=unset)
    if config_path and backend(config.storage) != POSTGRESQL:
        path = sqlite_path(config.storage, Path(config.server.data_dir).expanduser().resolve())
        if not path.exists():
            raise ConfigError(_no_database(path))
    try:
        rt = _runtime(config)
    except ConfigError as exc:
        if unset:  # a placeholder a plugin refused: the missing variable is the error to name
            missing = _unset_in_entry(str(exc), config_path, unset)
            message = str(exc)
            named = [var for var in missing if unset[var] in message] or missing
            for var, placeholder in unset.items():
                message = message.replace(placeholder, f"env:{var}")
            if named:
                names = ", ".join(f"env:{var}" for var in named)
                raise ConfigError(
                    f"{message} ({names}: not set in this shell; the plugin checks the form of"
                    " this setting, so set it here as the server's environment does)") from None
            load_cli_config(config_path, data_dir=data_dir)
        raise
    rt.open(upgrade=False)  # an old server may still be running on it: serve upgrades it
    forgotten = forgotten_config(rt)
    if forgotten:
        click.echo(f"warning: {forgotten}", err=True)
    return rt


def forgotten_config(rt: Any) -> str | None:
    """A warning when the built-in default config runs on a database other destinations
    wrote to: a server set up with ``--config`` started without it (a new write key, a new
    admin token, and ``dlq retry`` offering to discard their dead letters; newcomer audit)."""
    from .delivery import outbox

    if not rt.config.generated:
        return None
    try:
        others = [d for d in rt.db.read_sync(outbox.destinations_in) if d not in rt.destinations]
    except HookyardError:
        return None
    if not others:
        return None
    return (f"no config given, but this database has deliveries of destinations the default"
            f" config does not have ({', '.join(sorted(others))}): did you forget --config or"
            " HOOKYARD_CONFIG?")


def _unset_in_entry(message: str, config_path: str | None, unset: dict[str, str]) -> list[str]:
    """The variables of ``unset`` that the config entry a runtime error names
    (``destinations[pw].settings: ...``) refers to: a plugin refused their placeholders (the
    docs audit: ``dlq`` named another entry's unset variable instead)."""
    import tomllib

    found = re.match(r"(sources|destinations)\[([^\]]+)\]", message)
    if found is None or not config_path:
        return []
    try:
        data = tomllib.loads(Path(config_path).read_text(encoding="utf-8-sig"))
    except (OSError, ValueError):
        return []
    entries = data.get(found.group(1))
    entry = next((e for e in entries if isinstance(e, dict) and e.get("name") == found.group(2)),
                 None) if isinstance(entries, list) else None
    refs: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, str) and value.startswith("env:") and value[4:] in unset:
            refs.append(value[4:])
        elif isinstance(value, dict):
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)

    walk(entry)
    return list(dict.fromkeys(refs))


def _refuse_new_default_install(config_path: str | None, data_dir: str | None) -> None:
    """With no config file, a command that needs ``serve``'s data (a worker, replay, dlq)
    refuses a data dir without a database rather than create a new default install there
    (``--data-dir`` mistyped, or run from another directory). Checked before the default
    config is built, since that creates the data dir and its write key."""
    from .config import StorageSettings
    from .storage import sqlite_path

    if config_path or os.environ.get("HOOKYARD_CONFIG"):
        return
    where = Path(data_dir or "./hookyard-data").expanduser().resolve()
    default = sqlite_path(StorageSettings(), where)
    if not default.exists():
        raise ConfigError(_no_database(default))


def _no_database(path: Path) -> str:
    return (f"no hookyard database at {path}: run this where `hookyard serve` keeps its data,"
            " or pass --data-dir or --config")


def unknown_destination(rt: Any, name: str) -> str:
    return f"no destination named {name!r}; configured: {', '.join(rt.destinations) or 'none'}"


def fail(exc: Exception) -> None:
    raise click.ClickException(without_env_secrets(str(exc)))


def config_options(fn: Callable[..., Any]) -> Callable[..., Any]:
    fn = click.option("--data-dir", help="Data directory (overrides [server] data_dir)")(fn)
    fn = click.option("--config", "-c", "config_path", help=CONFIG_HELP)(fn)
    return fn


@click.group()
@click.version_option(__version__, prog_name="hookyard")
def main() -> None:
    """hookyard: a self-hosted event router for Segment-format customer data."""
    ensure_stdio()


def _interrupt_exits_130(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Ctrl-C while a server command starts (reading the config, opening or upgrading the
    database) ends it with the shell's status for SIGINT, as after start-up, not click's
    "Aborted!" and 1."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            sys.exit(128 + signal.SIGINT)
    return wrapper


def _setup_logging(rt: Any) -> None:
    from .logs import config_secrets, setup_logging

    setup_logging(rt.config.server.log_level, config_secrets(rt))
    warn_if_others_may_write(rt.data_dir)


def say(text: str) -> None:
    """A line of the start-up banner. A reader of stdout that went away (``hookyard serve |
    head -1``) made serve exit 1 without a word; the server goes on with stdout on /dev/null."""
    try:
        click.echo(text)
    except OSError:  # EPIPE, or a stdout that cannot be written
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)


@main.command()
@config_options
@click.option("--host", help="Interface to listen on (overrides [server] host)")
@click.option("--port", type=click.IntRange(0, 65535),
              help="Port to listen on, 0 for any free one (overrides [server] port)")
@click.option("--no-workers", is_flag=True, help="Ingest only; run delivery in `hookyard worker`")
@_interrupt_exits_130
def serve(config_path: str | None, data_dir: str | None, host: str | None, port: int | None,
          no_workers: bool) -> None:
    """Start the HTTP server (ingest, API) with the delivery workers."""
    import uvicorn

    from .app import create_app
    from .graceful_server import Server
    from .http_protocol import http_protocol
    from .serving import listen, lock_data_dir, lock_delivery, raise_fd_limit, url_host
    from .storage import describe as describe_storage

    try:
        config = load_cli_config(config_path, host, port, data_dir, create=False)
        # listen before anything is printed or created: a port in use stops here, with one
        # line, instead of after a banner (and a first-start admin token never shown again)
        sock = listen(config.server.host, config.server.port)
        # the data dir said as check-config says it, before the write key file is made there
        # ("cannot read or create .../write_key: File exists" for a data dir that is a file)
        _check_data_dir(Path(config.server.data_dir).expanduser().resolve())
        if config.generated:  # the default config: its write key is kept from now on
            config = load_cli_config(config_path, host, port, data_dir)
        config.server.port = sock.getsockname()[1]  # --port 0: the port the system chose
        rt = _runtime(config)
        lock = lock_data_dir(rt.data_dir, "serve")  # noqa: F841 - held while serve runs
        delivers = config.server.workers and not no_workers
        if delivers:
            delivering = lock_delivery(rt.data_dir, config.storage)  # noqa: F841 - held too
    except HookyardError as exc:
        fail(exc)
    _setup_logging(rt)
    try:  # create or upgrade the database now: a schema problem stops here, in one line
        rt.open()
    except HookyardError as exc:
        fail(exc)
    files = raise_fd_limit()  # each connection is an open file
    if 0 < files < 4096:
        logging.getLogger("hookyard").warning(
            "this process may open only %d files (ulimit -n): at most about that many"
            " connections at once; raise the hard limit (systemd: LimitNOFILE)", files)
    url = f"http://{url_host(config.server.host)}:{config.server.port}"
    say(f"hookyard {__version__} listening on {url}")
    say(f"  data dir:    {rt.data_dir}")
    say(f"  storage:     {describe_storage(config.storage, rt.data_dir)}")
    for src in config.sources:
        if not src.write_key:  # its plugin authenticates otherwise (Connector.write_key)
            say(f"  source {src.name!r} ({src.plugin})")
            continue
        # a configured key may come from env: or a secrets file: show only enough to recognise it
        shown = (src.write_key if config.generated else  # its start, of a long one only
                 f"{src.write_key[:4] + '… ' if len(src.write_key) >= 24 else ''}(from the config)")
        say(f"  source {src.name!r} ({src.plugin}) write key: {shown}")
    for dest in config.destinations:
        off = "" if dest.enabled else "  (disabled: enabled = false)"
        say(f"  destination {dest.name!r} ({dest.plugin}) <- {', '.join(dest.sources)}{off}")
    if not delivers:
        why = "--no-workers" if no_workers else "[server] workers = false"
        say(f"  delivery:    not in this process ({why}): run `hookyard worker` with the"
            " same config and data dir")
    if not config.sources:
        say(f"  {NO_SOURCES}")
    forgotten = forgotten_config(rt)
    if forgotten:
        say(f"  warning:     {forgotten}")
    say(f"  dashboard:   {url}/ui/  (log in with the admin token)")
    if rt.admin_token_created:
        say(f"  admin token: {rt.admin_token}  (saved in {rt.data_dir / 'admin_token'})")
    elif not config.server.admin_token:
        say(f"  admin token: in {rt.data_dir / 'admin_token'}")
    if config.generated:
        key = config.sources[0].write_key or ""
        say("  try it:")
        say(f"    curl -u {key}: -H 'Content-Type: application/json' \\")
        say(f"      -d '{{\"userId\":\"u1\",\"traits\":{{\"email\":\"a@example.com\"}}}}' {url}/v1/identify")
    try:
        app = create_app(rt, run_workers=False if no_workers else None)  # None: [server] workers
    except HookyardError as exc:  # a plugin's register_routes: one line
        fail(exc)
    tune_gc()
    server = Server(uvicorn.Config(
        app, host=config.server.host, port=config.server.port,
        log_level=config.server.log_level, timeout_graceful_shutdown=15,
        server_header=False, log_config=None, access_log=False, http=http_protocol(),
    ))
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises SIGINT after its graceful shutdown
        sys.exit(128 + signal.SIGINT)  # 130, not click's "Aborted!" and 1
    if server.captured:  # re-raised into a handler that ignores it (SIGINT in a script's
        end_like_the_signal(server.captured[-1])  # `cmd &`): exit as the signal says, not 0


@main.command()
@config_options
@_interrupt_exits_130
def worker(config_path: str | None, data_dir: str | None) -> None:
    """Run the router and delivery workers without the HTTP server."""
    from .delivery.engine import Engine
    from .serving import lock_data_dir, lock_delivery

    try:
        config = load_cli_config(config_path, data_dir=data_dir, create=False)
        _check_data_dir(Path(config.server.data_dir).expanduser().resolve())
        _refuse_new_default_install(config_path, data_dir)
        rt = _runtime(load_cli_config(config_path, data_dir=data_dir) if config.generated else config)
        lock = lock_data_dir(rt.data_dir, "worker")  # noqa: F841 - held while the worker runs
        delivering = lock_delivery(rt.data_dir, rt.config.storage)  # noqa: F841 - held too
    except HookyardError as exc:
        fail(exc)
    _setup_logging(rt)
    try:
        rt.open()
    except HookyardError as exc:
        fail(exc)

    async def run() -> None:
        try:
            await rt.run_startup_hooks()
        except HookyardError as exc:
            if exc.__cause__ is not None:  # the plugin's own traceback, for its author
                logging.getLogger("hookyard").error("%s", exc, exc_info=exc.__cause__)
            rt.close()
            fail(exc)
        engine = Engine(rt)
        await engine.start(wait_for_helpers=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        def on_signal(sig: int) -> None:
            caught.append(sig)
            stop.set()

        for sig in STOP_SIGNALS:
            if sig == signal.SIGHUP and signal.getsignal(sig) is signal.SIG_IGN:
                continue  # under nohup: left ignored
            loop.add_signal_handler(sig, on_signal, sig)
        click.echo(f"hookyard worker: delivering for {', '.join(rt.destinations) or 'no destinations'}")
        await stop.wait()
        await engine.stop()
        try:
            await rt.run_shutdown_hooks()
        finally:
            rt.close()

    caught: list[int] = []
    tune_gc()
    run_loop(run())
    if caught:
        end_like_the_signal(caught[0])


@main.command()
@click.option("--settings", "show_settings", is_flag=True,
              help="Also list each connector's settings (key, type, default) and its package")
def plugins(show_settings: bool) -> None:
    """List installed connectors: the name a config's "plugin =" takes, its kind, and the
    plugin (entry point) it comes from."""
    from .connectors import settings_lines
    from .plugins import ConnectorRegistry, make_plugin_manager

    try:
        pm = make_plugin_manager()
        registry = ConnectorRegistry(pm)
        registry.check_step_owners()
    except ConfigError as exc:
        fail(exc)
    packages = {id(p): f"{d.project_name} {d.version}" for p, d in pm.list_plugin_distinfo()}
    listed = set()
    for connector, plugin in sorted(registry.all(), key=lambda c: (c[0].name, c[0].kind)):
        listed.add(plugin)
        click.echo(f"{connector.name:<12} {connector.kind:<12} from={plugin:<10} {connector.description}")
        if show_settings:
            package = packages.get(id(pm.get_plugin(plugin)), "not installed: registered in code")
            click.echo(f"    package: {package}")
            for line in settings_lines(connector.settings) or ["(no settings)"]:
                click.echo(f"    {line}")
    for name, _plugin in sorted(pm.list_name_plugin()):
        if name not in listed and not name.startswith("hookyard.") and name != "builtins":
            click.echo(f"{name:<12} {'(hooks)':<12} from={name:<10} registers no connector")


@main.command("check-config")
@click.argument("file", required=False)
@click.option("--config", "-c", "config_path",
              help="TOML config file to check (default: $HOOKYARD_CONFIG; one of them is required)")
@click.option("--data-dir", help="Data directory (overrides [server] data_dir)")
def check_config(file: str | None, config_path: str | None, data_dir: str | None) -> None:
    """Validate a config file (FILE or --config) against the installed plugins (nothing is
    created on disk)."""
    from .runtime import Runtime

    if file and config_path and file != config_path:
        fail(ConfigError(f"two config files: {file} and --config {config_path}; give one"))
    config_path = config_path or file

    if not (config_path or os.environ.get("HOOKYARD_CONFIG")):
        fail(ConfigError("no config file to check: pass --config FILE (or set HOOKYARD_CONFIG);"
                          " without one, serve uses the default config"))
    try:
        config = load_cli_config(config_path, data_dir=data_dir)
        rt = Runtime.build(config, prepare=False)
        _check_data_dir(Path(config.server.data_dir).expanduser().resolve())
    except HookyardError as exc:
        fail(exc)
    click.echo(f"config ok: {len(rt.sources)} sources, {len(rt.destinations)} destinations")
    if not rt.sources:
        click.echo(NO_SOURCES, err=True)


NO_SOURCES = "warning: no [[sources]]: this server accepts no events (see docs/configuration.md)"


def _check_data_dir(path: Path) -> None:
    """What serve would meet at the data dir: a file in its place, or no right to write."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"the data dir {path} is not a directory" if existing == path else
                          f"the data dir {path} cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"the data dir {path} cannot be written: {existing} is not writable"
                          " by this user")


@main.command("new-plugin")
@click.argument("name")
@click.option("--kind", type=click.Choice(["destination", "source"]), default="destination",
              show_default=True, help="What the connector does")
@click.option("--dir", "directory", default=".", show_default=True,
              help="Where to create hookyard-NAME/")
def new_plugin(name: str, kind: str, directory: str) -> None:
    """Scaffold a pip-installable connector package hookyard-NAME (plugin, settings, tests)."""
    from .scaffold import module_name, scaffold

    try:
        root = scaffold(name, kind, directory)  # type: ignore[arg-type]
    except HookyardError as exc:
        fail(exc)
    click.echo(f"created {root} ({kind} plugin {name!r}, package {module_name(name)})")
    click.echo(f"  pip install -e '{root}[test]' && python -m pytest {root}")


@main.command()
def version() -> None:
    """Print the version."""
    click.echo(__version__)


main.add_command(send_test_command)


# the command groups of their own modules register themselves on main
from . import dlq_cli, replay_cli  # noqa: E402, F401
