"""``hookyard send-test``: send a sample identify and track to a running server, then show where
each went (stored, and every destination's delivery state) through the operator API.

Defaults come from the same places as ``hookyard serve``: the config file (``--config`` or
``$HOOKYARD_CONFIG``) or the data dir (``./hookyard-data``: ``write_key``, ``admin_token``).
Nothing is created: a missing key is an error naming the option to pass.

Exit code 0 when both events were stored and no delivery became a dead letter; otherwise one
line on stderr and exit code 1.
"""

from __future__ import annotations

import asyncio
import base64
import math
import os
import shlex
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import click

from .errors import ConfigError, HookyardError

TERMINAL = {"done", "dead", "filtered", "discarded"}
NO_ROWS_GRACE = 3.0  # seconds without any delivery row before "no destination" is concluded


@dataclass
class Target:
    """Where to send and how to authenticate."""

    url: str
    write_key: str
    admin_token: str | None
    token_from: str = "--admin-token"
    """Where ``admin_token`` came from, for the message when the server refuses it."""
    commands_args: str = ""
    """``--config`` / ``--data-dir`` as given, for the commands a message suggests."""
    destinations: tuple[str, ...] = ()
    """The destinations of the config, when one was read (for ``--destination``)."""
    ignoring: tuple[str, ...] = ()
    """Those of them that ignore an event's ``integrations`` (``honor_integrations = false``
    on the destination or on the source the events go to)."""


@dataclass
class Sent:
    """One sample event and what became of it."""

    kind: str
    message_id: str
    body: dict[str, Any]
    status: int = 0
    stored: bool = False
    deliveries: list[dict[str, Any]] = field(default_factory=list)


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip() or None
    except OSError:
        return None


def resolve(config_path: str | None, data_dir: str | None, url: str | None,
            write_key: str | None, admin_token: str | None, source: str | None,
            token_from_env: bool = False) -> Target:
    """The target server from the options, the config file or the data dir (read only)."""
    from .config import load_config

    config_path = config_path or os.environ.get("HOOKYARD_CONFIG")
    host, port = "127.0.0.1", 8000
    key = token = None
    configured: tuple[str, ...] = ()
    ignoring: tuple[str, ...] = ()
    if config_path:
        config = load_config(config_path)
        host, port = config.server.host, config.server.port
        folder = Path(data_dir or config.server.data_dir).expanduser()
        token = config.server.admin_token or _read(folder / "admin_token")
        token_from = config_path if config.server.admin_token else str(folder / "admin_token")
        candidates = [s for s in config.sources if s.plugin == "segment"]
        if source:
            candidates = [s for s in config.sources if s.name == source]
            if not candidates:
                names = ", ".join(s.name for s in config.sources) or "none"
                raise ConfigError(f"no source named {source!r} in {config_path} (sources: {names})")
        if candidates and candidates[0].plugin != "segment":
            raise ConfigError(f"source {candidates[0].name!r} uses the plugin"
                              f" {candidates[0].plugin!r}: send-test sends Segment events to"
                              " /v1/identify and /v1/track, so it needs a source of plugin"
                              " 'segment' (--source NAME)")
        if not candidates and not write_key:
            found = ", ".join(f"{s.name} (plugin {s.plugin!r})" for s in config.sources) or "none"
            raise ConfigError(f"{config_path} has no source of plugin 'segment', which send-test"
                              f" sends its Segment events to (sources: {found}); add one, or"
                              " give --url and HOOKYARD_WRITE_KEY of a server that has one")
        if candidates:
            key = candidates[0].write_key
            chosen = candidates[0]
            configured = tuple(d.name for d in config.destinations if chosen.name in d.sources)
            ignoring = tuple(d.name for d in config.destinations if chosen.name in d.sources
                             and not (d.honor_integrations and chosen.honor_integrations))
    else:
        folder = Path(data_dir or "./hookyard-data").expanduser()
        key, token = _read(folder / "write_key"), _read(folder / "admin_token")
        token_from = str(folder / "admin_token")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    target_url = (url or f"http://{host}:{port}").rstrip("/")
    if not target_url.startswith(("http://", "https://")):
        raise ConfigError(f"--url must start with http:// or https://, not {target_url!r}")
    key = write_key or key
    if not key:
        raise ConfigError(f"no write key: set HOOKYARD_WRITE_KEY, or pass --config / --data-dir of the "
                          f"running server (looked for {folder / 'write_key'})")
    for name, value in (("write key", key), ("admin token", admin_token or token)):
        if value is not None and not (value.isascii() and value.isprintable()):
            raise ConfigError(f"the {name} must be printable ASCII, as every hookyard key is")
    if admin_token:
        token_from = "$HOOKYARD_ADMIN_TOKEN" if token_from_env else "--admin-token"
    args = " ".join(f"{flag} {shlex.quote(value)}" for flag, value in
                    (("--config", config_path), ("--data-dir", data_dir)) if value)
    return Target(target_url, key, admin_token or token, token_from, args, configured, ignoring)


def samples(user_id: str, destinations: tuple[str, ...] = (),
            configured: tuple[str, ...] = ()) -> list[Sent]:
    """A sample identify and track with fresh messageIds; with ``destinations``, for those
    only: ``"integrations": {"All": false, name: true}``, and ``false`` for each other
    ``configured`` destination (a Segment forwarder hands ``"All": false`` on instead of
    obeying it)."""
    ident: dict[str, Any] = {"userId": user_id, "messageId": f"send-test-{uuid.uuid4()}",
             "traits": {"name": "hookyard send-test", "email": "send-test@example.com"},
             "context": {"library": {"name": "hookyard send-test"}}}
    track: dict[str, Any] = {"userId": user_id, "messageId": f"send-test-{uuid.uuid4()}",
             "event": "hookyard Test Event", "properties": {"source": "hookyard send-test"},
             "context": {"library": {"name": "hookyard send-test"}}}
    if destinations:
        for body in (ident, track):
            body["integrations"] = {"All": False, **{name: False for name in configured},
                                    **{name: True for name in destinations}}
    return [Sent("identify", ident["messageId"], ident), Sent("track", track["messageId"], track)]


async def run(target: Target, events: list[Sent], wait: float,
              echo: Callable[[str], None]) -> list[Sent]:
    """Send ``events``, then poll the operator API until their deliveries settle."""
    import aiohttp

    from .http import HttpClient

    client = HttpClient(connect_timeout=5, total_timeout=15, limit=4)
    auth = "Basic " + base64.b64encode(f"{target.write_key}:".encode()).decode()
    try:
        for ev in events:
            try:
                resp = await client.request("POST", f"{target.url}/v1/{ev.kind}", json=ev.body,
                                            headers={"Authorization": auth})
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise HookyardError(f"cannot reach hookyard at {target.url}: "
                                    f"{exc or type(exc).__name__} (a server started with"
                                    " --host or --port: pass its address with --url)") from None
            ev.status = resp.status
            if resp.status != 200:
                raise HookyardError(f"{ev.kind} refused by {target.url}: HTTP {resp.status} "
                                    f"{_error_text(resp.body)}")
            ev.stored = True
            echo(f"sent {ev.kind:<9} messageId={ev.message_id}  -> stored (HTTP 200)")
        if target.admin_token:
            try:
                await _follow(client, target, events, wait)
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise HookyardError(f"cannot read deliveries from {target.url}: "
                                    f"{exc or type(exc).__name__}") from None
    finally:
        await client.close()
    return events


def _error_text(body: bytes) -> str:
    import msgspec

    try:
        data = msgspec.json.decode(body)
    except msgspec.DecodeError:
        return body[:200].decode("utf-8", "replace")
    return str(data.get("error", data)) if isinstance(data, dict) else str(data)


async def _follow(client: Any, target: Target, events: list[Sent], wait: float) -> None:
    headers = {"Authorization": f"Bearer {target.admin_token}"}
    started = time.monotonic()
    while True:
        for ev in events:
            resp = await client.request(
                "GET", f"{target.url}/api/deliveries?message_id={quote(ev.message_id)}",
                headers=headers)
            if resp.status == 401:
                raise HookyardError(f"the admin token from {target.token_from} was refused by"
                                    f" {target.url}: pass the server's with --admin-token"
                                    + (" (or unset HOOKYARD_ADMIN_TOKEN to use the config's or the"
                                       " data dir's)" if target.token_from.startswith("$") else ""))
            if resp.status != 200:
                raise HookyardError(f"GET /api/deliveries failed: HTTP {resp.status} "
                                    f"{_error_text(resp.body)}")
            ev.deliveries = resp.json()["deliveries"]
        elapsed = time.monotonic() - started
        rows = [d for ev in events for d in ev.deliveries]
        settled = all(ev.deliveries for ev in events) and all(d["state"] in TERMINAL for d in rows)
        if settled or elapsed >= wait or (not rows and elapsed >= min(NO_ROWS_GRACE, wait)):
            return
        await asyncio.sleep(0.2)


def describe(delivery: dict[str, Any]) -> str:
    """One line about one delivery: destination, state, attempts, last answer."""
    attempts = delivery.get("attempts_log") or []
    parts = [f"{delivery['destination']:<16} {delivery['state']:<9}"]
    if delivery["state"] == "filtered":
        parts.append(f"skipped: {delivery.get('last_error')}")
        return "  ".join(parts)  # the column after the state as on the other lines
    if attempts:
        last = attempts[-1]
        latency = f", {last['latency_ms']:.0f} ms" if last.get("latency_ms") is not None else ""
        parts.append(f"{len(attempts)} attempt{'s' if len(attempts) != 1 else ''}{latency}")
    if delivery.get("last_status"):
        parts.append(f"HTTP {delivery['last_status']}")
    error = delivery.get("last_error")
    if error and delivery["state"] != "done" and error != f"HTTP {delivery.get('last_status')}":
        parts.append(f"error: {error}")
    if delivery["state"] == "pending" and not attempts:
        parts.append("queued")
    return "  ".join(parts)


def report(target: Target, events: list[Sent], echo: Callable[[str], None]) -> int:
    """Print where each event went; the number of dead deliveries."""
    if not target.admin_token:
        echo("(no admin token: pass --admin-token or set HOOKYARD_ADMIN_TOKEN to see deliveries)")
        return 0
    dead = 0
    for ev in events:
        echo(f"{ev.kind} {ev.message_id}:")
        if not ev.deliveries:
            echo("  no deliveries: no destination is connected to this source, or no worker is "
                 "running (`hookyard worker`)")
        for d in ev.deliveries:
            echo("  -> " + describe(d))
            dead += d["state"] == "dead"
    echo(f"details: {target.url}/ui/events/{quote(events[-1].message_id)}")
    return dead


def _finite_wait(value: float) -> float:
    if not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


@click.command("send-test")
@click.option("--config", "-c", "config_path",
              help="TOML config of the running server (default: $HOOKYARD_CONFIG)")
@click.option("--data-dir", help="Data dir of the running server (default: ./hookyard-data)")
@click.option("--url", help="Server URL (default: from the config, else http://127.0.0.1:8000)")
@click.option("--write-key", envvar="HOOKYARD_WRITE_KEY",
              help="Write key of a Segment source (default: $HOOKYARD_WRITE_KEY, config, data"
                   " dir; the variable keeps it out of the process list)")
@click.option("--admin-token", envvar="HOOKYARD_ADMIN_TOKEN",
              help="Admin token to read deliveries (default: $HOOKYARD_ADMIN_TOKEN, config, data"
                   " dir; the variable keeps it out of the process list)")
@click.option("--source", help="Source whose write key is used (default: the first Segment one)")
@click.option("--destination", "destinations", multiple=True,
              help="Send only to this destination (repeatable; default: every connected one,"
                   " real vendors included)")
@click.option("--user-id", default="hookyard-send-test", show_default=True)
@click.option("--wait", default=10.0, show_default=True, type=click.FloatRange(min=0),
              callback=lambda ctx, param, value: _finite_wait(value),
              help="Seconds to wait for deliveries")
def send_test(config_path: str | None, data_dir: str | None, url: str | None,
              write_key: str | None, admin_token: str | None, source: str | None,
              destinations: tuple[str, ...], user_id: str, wait: float) -> None:
    """Send a sample identify and track to a running server and show where each went.

    They go to every destination connected to the source, real vendors included (a test
    subscriber in Novu, tags in Pushwoosh): --destination NAME sends them to that one only."""
    try:
        context = click.get_current_context()
        from_env = (context.get_parameter_source("admin_token")
                    is click.core.ParameterSource.ENVIRONMENT)
        if source and context.get_parameter_source("write_key") is click.core.ParameterSource.ENVIRONMENT:
            write_key = None  # --source names the key; a $HOOKYARD_WRITE_KEY left in the shell
            # does not win over it (the re-check: the events went to another source)
        target = resolve(config_path, data_dir, url, write_key, admin_token, source, from_env)
        unknown = [d for d in destinations if target.destinations and d not in target.destinations]
        if unknown:
            raise ConfigError(f"no destination named {unknown[0]!r} connected to the source in"
                              f" the config (destinations: {', '.join(target.destinations)})")
        also = [d for d in target.ignoring if d not in destinations]
        if destinations and also:
            raise ConfigError(
                f"{', '.join(also)} ignore{'s' if len(also) == 1 else ''} the events'"
                " integrations (honor_integrations = false), so --destination cannot keep the"
                " test events from it: send without --destination, or to a server whose"
                " config does not ignore them")
        events = asyncio.run(run(target, samples(user_id, destinations, target.destinations),
                                 wait, click.echo))
    except HookyardError as exc:
        raise click.ClickException(str(exc)) from None
    dead = report(target, events, click.echo)
    if dead:
        raise click.ClickException(
            f"{dead} deliver{'y' if dead == 1 else 'ies'} failed (dead letters:"
            f" `{' '.join(('hookyard dlq list', target.commands_args)).strip()}`)")
