"""Configuration: one TOML file decoded into msgspec Structs, validated at start-up.

Every Struct forbids unknown fields, so a misspelt key stops boot with an error naming it.
Any string value of the form ``env:VAR_NAME`` is replaced by that environment variable (a
missing variable is a config error). Plugin settings (``[sources.settings]``,
``[destinations.settings]``) are validated by the connector's own settings Struct.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from .config_errors import explain_invalid
from .errors import ConfigError, did_you_mean
from .secret_files import new_secret, read_or_create_secret, usable_key

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")

# Range-checked values: a bad one is a config error at start-up naming the key (msgspec says
# "Expected `int` >= 1 - at `$.destinations[0].delivery.concurrency`"), not a server that
# never delivers or crashes later. Floats must also be finite (see _finite).
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[int, msgspec.Meta(ge=1)]
Seconds = Annotated[float, msgspec.Meta(gt=0)]
Days = Annotated[float, msgspec.Meta(ge=0)]


def _finite(settings: msgspec.Struct, prefix: str) -> None:
    """Refuse NaN and infinity in a settings Struct's floats (TOML reads ``nan`` and ``inf``;
    ``gt``/``ge`` reject NaN but not infinity). Raised from ``__post_init__``, msgspec adds where."""
    for field in settings.__struct_fields__:
        value = getattr(settings, field)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{prefix}.{field} must be a finite number, got {value}")


class ServerSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Port = 8000
    data_dir: str = "./hookyard-data"
    admin_token: str | None = None
    max_request_bytes: Positive = 512_000
    max_event_bytes: Positive = 32_768
    workers: bool = True
    # map events for the destinations in a helper process, on another core (SQLite only;
    # ignored on a one-core machine). See docs/delivery.md.
    map_process: bool = True
    # send the HTTP requests of destinations whose connector allows it (deliver_anywhere) from
    # a helper process, on another core (ignored on a one-core machine). See docs/delivery.md.
    deliver_process: bool = True
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"


class StorageSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # where the data lives: unset = SQLite file hookyard.db in the data dir; "sqlite:///path.db";
    # or "postgresql://user:password@host:5432/dbname" to run several nodes on one PostgreSQL
    # (see docs/scaling.md; "env:HOOKYARD_DATABASE_URL" keeps the password out of the file)
    url: str | None = None
    # PostgreSQL only: the schema that holds hookyard's tables (created if missing)
    schema: str = "public"
    # "full" fsyncs every (group) commit: survives power loss. "normal" survives a process
    # crash (kill -9) but a power cut may lose the last commits. See docs/configuration.md.
    synchronous: Literal["full", "normal"] = "full"
    # how long a finished delivery's outbox row and attempts are kept (days; 0 = forever)
    retention_days: Days = 7.0
    # how long API log lines are kept (days; 0 = forever)
    api_log_retention_days: Days = 7.0
    # how long received events are kept (days; 0 = forever, the default): an event stays while
    # any outbox row refers to it. Replay and messageId dedupe reach back as far as the inbox.
    inbox_retention_days: Days = 0.0
    # seconds a write may take before its waiters get "storage unavailable" (503) instead of
    # waiting on a database that does not answer (0 = wait forever)
    write_timeout_seconds: Annotated[float, msgspec.Meta(ge=0)] = 10.0
    # PostgreSQL only: how long serve and worker wait at start-up for a server that does not
    # take connections yet (down, starting up) before they exit (0 = exit at once); a wrong
    # password, role or database name stops them at once
    connect_wait_seconds: Annotated[float, msgspec.Meta(ge=0)] = 60.0

    def __post_init__(self) -> None:
        _finite(self, "storage")


HOOK_LEASE_SHARE = 0.9
"""The part of ``lease_seconds`` a ``deliver`` call has to answer (counted from the claim)."""


class DeliverySettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Per-destination delivery policy (``[destinations.delivery]``)."""

    concurrency: Positive = 8
    batch_size: Positive | None = None
    retry_initial_seconds: Seconds = 5.0
    retry_max_seconds: Seconds = 600.0
    give_up_after_seconds: Seconds = 86_400.0
    max_attempts: Positive = 20
    # failures in a row (none delivered) after which the destination is paused and probed
    # with one delivery at a time (hookyard.delivery.breaker); 0: never paused
    pause_after_failures: Annotated[int, msgspec.Meta(ge=0)] = 20
    connect_timeout_seconds: Seconds = 5.0
    total_timeout_seconds: Seconds = 15.0
    lease_seconds: Seconds = 60.0

    def __post_init__(self) -> None:
        _finite(self, "delivery")
        if self.retry_initial_seconds > self.retry_max_seconds:
            raise ValueError(
                f"delivery.retry_initial_seconds ({self.retry_initial_seconds:g}) is larger than"
                f" delivery.retry_max_seconds ({self.retry_max_seconds:g}), the longest wait"
            )


class SourceConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    plugin: str
    # required unless the source's connector authenticates otherwise (Connector.write_key)
    write_key: str | None = None
    # whether destinations obey the "integrations" object of this source's events (false for
    # events that Segment's Webhooks destination sends on: Segment has applied it already)
    honor_integrations: bool = True
    settings: dict[str, Any] = {}


class DestinationConfig(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    name: str
    plugin: str
    sources: list[str] = []
    enabled: bool = True
    filter: str | None = None
    trigger: str | None = None
    honor_integrations: bool = True  # each event's "integrations" switches (integration_flags)
    drop_fields: list[str] = []  # fields removed before map_event (fields.drop_path)
    settings: dict[str, Any] = {}
    delivery: DeliverySettings = msgspec.field(default_factory=DeliverySettings)


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    storage: StorageSettings = msgspec.field(default_factory=StorageSettings)
    sources: list[SourceConfig] = []
    destinations: list[DestinationConfig] = []

    @property
    def generated(self) -> bool:
        """Whether this is the default config made because no file was given (not a key a
        file can set: ``generated = true`` in a file printed its write key in full; docs
        audit)."""
        return isinstance(self, GeneratedConfig)


class GeneratedConfig(Config, kw_only=True):
    """The default config of ``hookyard serve`` without a file (:func:`default_config`)."""


ENV_VALUES: set[str] = set()
"""Every value this process read through ``env:`` (what :func:`hookyard.logs.config_secrets`
treats as secret whatever the setting's name: ``env:`` is how the docs say to pass secrets)."""


def resolve_env(value: Any, where: str = "", unset: dict[str, str] | None = None,
                missing: list[tuple[str, str]] | None = None) -> Any:
    """Replace every ``env:VAR`` string inside ``value`` by the variable's value (noted in
    :data:`ENV_VALUES`).

    ``unset``, for a command that sends nothing (``hookyard dlq``): a variable that is not set
    outside ``[storage]`` gets a placeholder instead of an error, noted there by name. Without
    it, a variable that is not set raises ConfigError, unless ``missing`` is given: then each
    is noted there as (setting, variable) and left as written (all of them are named at once)."""
    if isinstance(value, str) and value.startswith("env:"):
        var = value[4:]
        if not var.strip():
            raise ConfigError(f"{where or 'a setting'} is {value!r}: name the environment"
                              " variable after env: (env:VAR_NAME)")
        if var not in os.environ:
            if unset is None and missing is not None:
                missing.append((where or "a setting", var))
                return value
            if unset is None or where.startswith("storage"):
                raise ConfigError(_not_set(where or "a setting", var))
            return unset.setdefault(var, f"unset-{var}-{secrets.token_hex(8)}")
        ENV_VALUES.add(os.environ[var])
        return os.environ[var]
    if isinstance(value, str) and (shell := SHELL_VARIABLE.match(value)):
        raise ConfigError(f"{where or 'a setting'} is {value!r}, which is not expanded:"
                          f' hookyard reads environment variables as "env:{shell[1] or shell[2]}"')
    if isinstance(value, dict):
        return {k: resolve_env(v, f"{where}.{k}" if where else k, unset, missing)
                for k, v in value.items()}
    if isinstance(value, list):
        return [resolve_env(v, f"{where}[{_item_label(v, i)}]", unset, missing)
                for i, v in enumerate(value)]
    return value


SECTIONS = ("server", "storage", "sources", "destinations")
_SECTION_HEADER = re.compile(r'^[ \t]*\[\[?[ \t]*"?([^\].\s"]+)', re.M)


def _unknown_section(text: str, exc: tomllib.TOMLDecodeError) -> str:
    """A hint for a TOML error that a misspelt section header causes: ``[[destination]]``
    followed by ``[destinations.settings]`` is "Cannot declare ('destinations', 'settings')
    twice", at the later line, naming neither the typo nor its line (newcomer audit); no hint
    for another error (a stray ``[`` line of an array is no section: re-check)."""
    if not str(exc).startswith(("Cannot declare", "Cannot overwrite")):
        return ""
    for match in _SECTION_HEADER.finditer(text):
        if match[1] not in SECTIONS:
            line = text.count("\n", 0, match.start()) + 1
            return (f"; line {line}: [{match[1]}] is not a section of hookyard's config"
                    f"{did_you_mean(match[1], SECTIONS)}")
    return ""


SHELL_VARIABLE = re.compile(r"^\$(?:([A-Z_][A-Z0-9_]*)|\{([A-Za-z_]\w*)(?:[:]?[-=?+][^}]*)?\})$")
"""A value written as a shell variable (``"$SEGMENT_WRITE_KEY"``, ``"${API_KEY}"``): taken as
it is, it became the literal key and passed check-config (newcomer audit). A bare ``$name``
only in capitals: ``"$email"`` is a trait's name in Mixpanel's style (a channel mapping's
value)."""


def _not_set(where: str, var: str) -> str:
    return f"{where} refers to environment variable {var}, which is not set"


def _item_label(item: Any, index: int) -> str:
    """How an error names a list item: a source's or destination's name, else its index."""
    name = item.get("name") if isinstance(item, dict) else None
    return repr(name) if isinstance(name, str) and name else str(index)


_LIST_PATH = re.compile(r"\$\.(sources|destinations)\[(\d+)\]")


def _name_items(message: str, data: Any) -> str:
    """msgspec's ``$.sources[0]`` with the item's name after it: ``$.sources[0] ('web')``."""
    def named(match: re.Match[str]) -> str:
        items = data.get(match[1]) if isinstance(data, dict) else None
        index = int(match[2])
        item = items[index] if isinstance(items, list) and index < len(items) else None
        label = _item_label(item, index)
        return match[0] if label == str(index) else f"{match[0]} ({label})"
    return _LIST_PATH.sub(named, message)


def _convert(data: Any, type_: Any, where: str, raw: Any = None) -> Any:
    try:
        return msgspec.convert(data, type_)
    except msgspec.ValidationError as exc:
        message = explain_invalid(str(exc), type_, data if raw is None else raw)
        raise ConfigError(f"{where}: {_name_items(message, data)}") from None


_ADMIN_TOKEN_CHARACTERS = re.compile(r"[!-~]+")  # printable ASCII but space


def _empty_variable(raw: Any, resolved: str | None) -> str | None:
    """``is 'env:X' but environment variable X is empty`` when the setting as written,
    ``raw``, named a variable and its value, ``resolved``, is empty (a secret not filled in,
    to be named as such rather than as a too-short key); else None."""
    if isinstance(raw, str) and raw.startswith("env:") and not resolved:
        return f"is {raw!r} but environment variable {raw[4:]} is empty"
    return None


def parse_config(data: dict[str, Any], origin: str = "config",
                 unset_env: dict[str, str] | None = None) -> Config:
    """Validate a config dict (as read from TOML). Raises ConfigError naming the bad key.
    ``unset_env``: see :func:`resolve_env`."""
    missing: list[tuple[str, str]] = []
    try:
        resolved = resolve_env(data, "", unset_env, missing)
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    if len(missing) == 1:
        raise ConfigError(f"{origin}: {_not_set(*missing[0])}")
    if missing:  # all of them at once, not one per run (plugin-author audit)
        listed = ", ".join(f"{where} ({var})" for where, var in missing)
        raise ConfigError(f"{origin}: {len(missing)} settings refer to environment variables"
                          f" that are not set: {listed}")
    server = resolved.get("server") if isinstance(resolved, dict) else None
    if isinstance(server, dict) and isinstance(server.get("log_level"), str):  # "INFO" too
        resolved = {**resolved, "server": {**server, "log_level": server["log_level"].lower()}}
    config: Config = _convert(resolved, Config, origin, data)
    raw = data if isinstance(data, dict) else {}
    try:
        _check_addresses(config)
        _check_names(config)
        _check_retention(config.storage)
        _check_write_keys(config, raw.get("sources"))
        _check_leases(config)
        _check_admin_token(config.server.admin_token, (raw.get("server") or {}).get("admin_token"))
    except ConfigError as exc:
        raise ConfigError(f"{origin}: {exc}") from None
    return config


def _check_addresses(config: Config) -> None:
    if not config.server.host.strip():  # "" would listen on every interface
        raise ConfigError("server.host must not be empty: 127.0.0.1 (the default) for this"
                          " machine only, 0.0.0.0 for every interface")
    if not config.storage.schema.strip():
        raise ConfigError("storage.schema must not be empty (the PostgreSQL schema of hookyard's"
                          " tables; the default is public)")
    from .storage import check_url  # storage imports this module

    check_url(config.storage)


def _check_names(config: Config) -> None:
    """Names of the right shape, unique per kind; a destination's sources exist."""
    seen: set[tuple[str, str]] = set()
    for kind, items in (("source", config.sources), ("destination", config.destinations)):
        for item in items:
            if not NAME_RE.match(item.name):
                raise ConfigError(f"{kind} name {item.name!r} must start with a letter or digit,"
                                  " then letters, digits, '_', '-', '.' (64 at most)")
            if (kind, item.name) in seen:
                raise ConfigError(f"two {kind}s are named {item.name!r}")
            seen.add((kind, item.name))
    source_names = {s.name for s in config.sources}
    for dest in config.destinations:
        for s in dest.sources:
            if s not in source_names:
                raise ConfigError(
                    f"destination {dest.name!r} names unknown source {s!r}"
                    f" (sources: {', '.join(sorted(source_names)) or 'none'})"
                )


def _check_retention(storage: StorageSettings) -> None:
    if 0 < storage.inbox_retention_days < storage.retention_days:
        raise ConfigError(
            f"storage.inbox_retention_days ({storage.inbox_retention_days:g}) must be 0"
            f" (keep forever) or at least storage.retention_days ({storage.retention_days:g}):"
            " an event stays in the inbox while its deliveries are in the outbox"
        )


def _check_write_keys(config: Config, raw_sources: Any) -> None:
    """Each source's key (when it has one) usable in a Basic-auth header, and no two alike;
    ``raw_sources`` (as written, before ``env:`` was resolved) names an empty variable."""
    key_owner: dict[str, str] = {}
    for i, src in enumerate(config.sources):
        raw = raw_sources[i] if isinstance(raw_sources, list) and i < len(raw_sources) else None
        raw_key = raw.get("write_key") if isinstance(raw, dict) else None
        empty = _empty_variable(raw_key, src.write_key)
        if empty:
            raise ConfigError(f"source {src.name!r} write_key {empty}")
        if src.write_key is None:  # whether its plugin needs one is checked by Runtime.build
            continue
        if len(src.write_key) < 8:
            raise ConfigError(f"source {src.name!r} write_key must be at least 8 characters")
        if not usable_key(src.write_key):
            raise ConfigError(
                f"source {src.name!r} write_key may hold only printable ASCII without"
                " spaces or ':' (a Basic-auth user name ends at the first ':', and HTTP headers"
                " carry neither surrounding spaces nor other characters reliably)"
            )
        first = key_owner.setdefault(src.write_key, src.name)
        if first != src.name:
            raise ConfigError(
                f"sources {first!r} and {src.name!r} have the same write_key: a request"
                f" carrying it goes to {first!r}, so {src.name!r} would never receive an event"
            )


def _check_leases(config: Config) -> None:
    for dest in config.destinations:
        policy = dest.delivery
        if policy.lease_seconds * HOOK_LEASE_SHARE < policy.total_timeout_seconds:
            raise ConfigError(
                f"destination {dest.name!r}: delivery.lease_seconds"
                f" ({policy.lease_seconds:g}) is too short for delivery.total_timeout_seconds"
                f" ({policy.total_timeout_seconds:g}): a deliver call is given up at 90 % of the"
                " lease, before its HTTP timeout, and sent again although the destination may"
                f" have it. Use a lease of at least {policy.total_timeout_seconds / HOOK_LEASE_SHARE:.4g} s"
                " or a shorter total_timeout_seconds"
            )


def _check_admin_token(token: str | None, raw_token: Any) -> None:
    empty = _empty_variable(raw_token, (token or "").strip())
    if empty:
        raise ConfigError(f"server.admin_token {empty}: set it, or leave admin_token unset to"
                          " have one generated")
    if token and len(token.strip()) < 8:  # unset or empty: one is generated
        raise ConfigError(
            "server.admin_token must be at least 8 characters (it guards the read API and the"
            " dashboard); leave it unset to have one generated"
        )
    if token and not _ADMIN_TOKEN_CHARACTERS.fullmatch(token):
        # a client's "Bearer <token>" loses surrounding spaces, and a header carries other
        # characters unreliably: such a token would pass this check and lock everyone out
        raise ConfigError(
            "server.admin_token may hold only printable ASCII without spaces (it is sent as"
            " 'Authorization: Bearer <token>')"
        )


def load_config(path: str | Path, unset_env: dict[str, str] | None = None) -> Config:
    """Read and validate a TOML config file. ``unset_env``: see :func:`resolve_env`."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if text.startswith("\ufeff"):  # saved "UTF-8 with BOM" (Notepad): TOML has no BOM
            text = text[1:]
        data = tomllib.loads(text)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path} is a directory, not a TOML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): TOML files are UTF-8") from None
    except OSError as exc:  # permission denied, an unreadable device...
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}{_unknown_section(text, exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid TOML: arrays or tables nested too deeply") from None
    return parse_config(data, str(path), unset_env)


def default_config(data_dir: Path, *, create: bool = True) -> Config:
    """The config used when no file is given: one Segment source -> the profile store. With
    ``create=False`` (``hookyard preview``) nothing is written: the write key is read if it
    exists, else a throwaway one is used."""
    key_file = data_dir / "write_key"
    if create:
        write_key, _ = read_or_create_secret(key_file, "wk")
    else:
        write_key = (key_file.read_text().strip() if key_file.is_file() else "") or new_secret("wk")
    return GeneratedConfig(
        server=ServerSettings(data_dir=str(data_dir)),
        sources=[SourceConfig(name="default", plugin="segment", write_key=write_key)],
        destinations=[DestinationConfig(name="profiles", plugin="profiles", sources=["default"])],
    )
