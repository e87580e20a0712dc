"""What a connector plugin declares, and the objects the host hands to its hooks.

A plugin's ``register_connectors`` hook returns :class:`Connector` objects. At start-up the host
pairs each configured source/destination with its connector and builds a :class:`SourceContext`
or :class:`DestinationContext`; those contexts are what the step hooks receive, so a hook can be
called in a unit test by building one by hand (see ``hookyard.testing``).
"""

from __future__ import annotations

import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import msgspec

from .errors import BASIC_CHALLENGE, BEARER_CHALLENGE
from .events import Event

ConnectorKind = Literal["source", "destination"]


class NoSettings(msgspec.Struct, forbid_unknown_fields=True):
    """Settings type of a connector that takes no settings."""


@dataclass(frozen=True)
class Connector:
    """One source or destination type offered by a plugin.

    name:       the ``plugin = "..."`` value users write in the config (e.g. ``"novu"``).
    kind:       ``"source"`` (auth + parse hooks) or ``"destination"`` (map + deliver hooks).
    settings:   a msgspec Struct type validating ``[sources.settings]`` /
                ``[destinations.settings]``; use ``forbid_unknown_fields=True``.
    paths:      sources only: the HTTP paths (Starlette patterns) it ingests on, e.g.
                ``("/v1/{call}",)``. Several sources may share a path; the write key decides.
                At least one, each starting with '/', none of the host's own (``/api``...).
    batch_size: destinations only: how many deliveries the engine may pass to one ``deliver``
                call (1 = no batching).
    raw_bodies: destinations only: ``deliver`` gets each ``Delivery.body`` as ``msgspec.Raw``,
                the stored JSON not parsed (``msgspec.json.decode`` it to look inside). For a
                connector that sends the body as it is: msgspec and ``HttpClient.send(json=...)``
                encode a Raw verbatim, which saves parsing and re-encoding every body.
    description: one line shown by ``hookyard plugins``.
    deliver_anywhere: destinations only: ``deliver`` needs nothing but its arguments (the
                settings, the deliveries, the HTTP client): no ``destination.state`` a
                ``startup`` hook prepared, no files or databases of this host. The engine may
                then call it in its helper process, on another core
                (``hookyard.delivery.deliver_process``; docs/delivery.md).
    forwards_integrations: destinations only: the destination hands each event's
                ``integrations`` object on to a router that applies it (the Segment forwarder),
                so ``"All": false`` does not stop it here; only a ``false`` under its own name
                does (:mod:`hookyard.integration_flags`).
    integration_names: destinations only: more keys of an event's ``integrations`` that name
                this connector, besides its ``name`` and the destination's (the Segment
                forwarder: ``"Segment.io"``, the name analytics.js uses).
    write_key:  sources only: whether ``authenticate`` checks the source's ``write_key``
                (default). False for a source that checks something else, such as a vendor's
                signature with a secret from its settings: ``write_key`` is then optional in
                the config, not shown as the source's key, and ``source.write_key`` is "".
    """

    name: str
    kind: ConnectorKind
    settings: type[msgspec.Struct] = NoSettings
    paths: tuple[str, ...] = ()
    batch_size: int = 1
    raw_bodies: bool = False
    description: str = ""
    deliver_anywhere: bool = False  # fields before it may be given by position
    forwards_integrations: bool = False
    integration_names: tuple[str, ...] = ()
    write_key: bool = True


@dataclass
class SourceContext:
    """A configured source, as the ``authenticate`` and ``parse_events`` hooks see it."""

    name: str
    plugin: str
    write_key: str
    settings: Any = field(default_factory=NoSettings)


@dataclass
class DestinationContext:
    """A configured destination, as the ``map_event`` and ``deliver`` hooks see it.

    ``state`` is a per-destination dict the plugin may use to keep resources it opened
    (a database handle, a cache); the host never reads it.
    """

    name: str
    plugin: str
    settings: Any = field(default_factory=NoSettings)
    sources: tuple[str, ...] = ()
    data_dir: Path = Path(".")
    state: dict[str, Any] = field(default_factory=dict)


@dataclass
class IngestRequest:
    """An HTTP request to an ingest path, already size-checked and gunzipped.

    ``headers`` keys are lower case. ``path_params`` come from the matched path pattern.
    ``client`` is the peer's IP address (a proxy's, behind one: its ``X-Forwarded-For`` header
    says more), None when the server does not know it.
    """

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    path_params: dict[str, str] = field(default_factory=dict)
    query: dict[str, str] = field(default_factory=dict)
    client: str | None = None


_HEADER_CONTROL = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
"""What uvicorn refuses in a header value (its HEADER_VALUE_RE): every control character but
the tab. A value holding one is not sent at all: the client gets an empty reply."""


def header_value_problem(text: str) -> str | None:
    """Why ``text`` cannot be an HTTP header value as uvicorn sends it, or None."""
    if _HEADER_CONTROL.search(text):
        return "holds a control character (CR, LF, NUL, DEL...)"
    if text != text.strip(" \t"):
        return "begins or ends with white space"
    if not text.isascii():
        try:
            text.encode("latin-1")
        except UnicodeEncodeError:
            return "is not Latin-1 text"
    return None


@dataclass(frozen=True)
class AuthResult:
    """The answer of an ``authenticate`` hook: accepted, or refused with a reason (401).

    challenge: the 401's ``WWW-Authenticate`` header, the scheme the client should use
    (RFC 9110 11.6.1): ``Basic realm="hookyard"`` unless the source asks for another, such as
    ``Bearer realm="hookyard"`` (:data:`BEARER_CHALLENGE`). One a header cannot carry (empty, a
    control character, white space around it, not Latin-1: :func:`header_value_problem`)
    raises ValueError here, in the plugin's own tests.
    """

    accepted: bool
    reason: str = ""
    challenge: str = BASIC_CHALLENGE

    def __post_init__(self) -> None:
        challenge = self.challenge
        if challenge is BASIC_CHALLENGE:  # the default: nothing to check
            return
        if not isinstance(challenge, str) or not challenge.strip():
            raise ValueError(f"AuthResult challenge must be a scheme such as {BEARER_CHALLENGE!r},"
                             f" not {challenge!r}")
        problem = header_value_problem(challenge)
        if problem:
            raise ValueError(f"AuthResult challenge {problem}: {challenge!r}")

    @classmethod
    def accept(cls) -> AuthResult:
        return cls(True)

    @classmethod
    def refuse(cls, reason: str, challenge: str = BASIC_CHALLENGE) -> AuthResult:
        return cls(False, reason, challenge)


@dataclass
class ParsedEvent:
    """One event produced by a ``parse_events`` hook.

    raw:      the event's JSON object as bytes (kept verbatim in the inbox, unknown fields too).
    event:    the typed, validated event.
    filtered: a reason when the source accepts the event but must not route it (it is still
              stored and answered 2xx, e.g. a Pushwoosh event not in the source's list).
    sent_bytes: the event's size as the client sent it, when ``raw`` holds more (a batch's
              shared ``context`` or ``sentAt`` merged in); ``[server] max_event_bytes`` applies
              to it. None: ``len(raw)``.
    checked:  leave it out. hookyard's own parsers set it to the ``raw`` they made from JSON
              they validated; any other ``raw`` is checked by the host before it is stored (a
              JSON object whose ``type`` and ids agree with ``event``: a 503 naming the
              problem otherwise, not an event acknowledged and then undecodable).
    """

    raw: bytes
    event: Event
    filtered: str | None = None
    sent_bytes: int | None = None
    checked: bytes | None = field(default=None, repr=False, compare=False)


@dataclass
class RefusedEvent:
    """An event of a multi-event body that a ``parse_events`` hook refuses alone: it is not
    stored, the other events are, and the 2xx answer lists it
    (``"refused": [{"index": i, "error": reason}]``). When every event of a body is refused the
    host answers 400 with the first reason. Raise ``BadRequest`` instead to refuse the whole
    request (a body that is not JSON, a single event a client must fix)."""

    reason: str


_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_FRAMING = {"content-length", "transfer-encoding", "connection", "content-type"}


class Reply(Exception):  # noqa: N818 - raised to answer, not an error
    """Raised by a ``parse_events`` hook to answer the request itself, storing nothing: a
    vendor's verification handshake (echo a ``challenge``), a ping that needs a particular
    body, a payload the source acknowledges on purpose without an event.

    ``status`` is 200-599. ``body``: a dict or list is sent as JSON, a str as UTF-8 text, bytes
    as they are (``content_type`` overrides the type). ``headers`` are added to the answer.
    The request is logged in the API log with ``status`` and no events."""

    def __init__(self, status: int = 200, body: Any = None, *, content_type: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        if not isinstance(status, int) or not 200 <= status <= 599:
            raise ValueError(f"Reply status must be an int from 200 to 599, not {status!r}")
        if isinstance(body, dict | list):
            payload, kind = msgspec.json.encode(body), "application/json"
        elif isinstance(body, str):
            payload, kind = body.encode(), "text/plain; charset=utf-8"
        elif isinstance(body, bytes) or body is None:
            payload, kind = body or b"", "application/octet-stream"
        else:
            raise TypeError(f"Reply body must be a dict, list, str, bytes or None, not"
                            f" {type(body).__name__}")
        if not isinstance(headers, dict | None) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in (headers or {}).items()):
            raise TypeError("Reply headers must be a dict of str to str")
        for text in (content_type or "", *(headers or {}).values()):
            problem = header_value_problem(text)  # CR/LF would split the answer
            if problem:
                raise ValueError(f"Reply header value {problem}: {text!r}")
        for name in headers or {}:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"Reply header name {name!r} is not an HTTP token")
            if name.lower() in _FRAMING:
                raise ValueError(f"Reply may not set {name}: the host frames the answer"
                                 " (give the type as content_type=)")
        super().__init__(f"reply {status}")
        self.status = status
        self.body: bytes = payload
        self.content_type = content_type or (kind if payload else None)
        self.headers: dict[str, str] = dict(headers or {})


def settings_lines(settings: type[msgspec.Struct]) -> list[str]:
    """Each setting of a connector's settings Struct as a user writes it in the config:
    ``key: type (constraints) = default``, ``key: type (constraints, required)`` when it has
    no default, or ``key: type (optional)`` when it defaults to None, which a TOML file cannot
    write: the key is left out (``hookyard plugins --settings``)."""
    lines = []
    for f in msgspec.structs.fields(settings):
        tp, notes = f.type, _constraints(f.type)
        default: str | None
        if f.default is None:
            tp, default = _without_none(tp), None
            notes = [*_constraints(tp), "optional"]
        elif f.default is not msgspec.NODEFAULT:
            default = _shown(f.default, repr(f.default))
        elif f.default_factory is not msgspec.NODEFAULT:
            made = f.default_factory()
            default = _shown(made, type(made).__name__)
        else:
            default, notes = None, [*notes, "required"]
        line = f"{f.encode_name}: {_type_name(tp)}"
        if notes:
            line += f" ({', '.join(notes)})"
        lines.append(line if default is None else f"{line} = {default}")
    return lines


def _without_none(tp: Any) -> Any:
    """``str`` for ``str | None``; any other type as it is."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) not in (typing.Union, types.UnionType) or type(None) not in args:
        return tp
    rest = [a for a in args if a is not type(None)]
    return rest[0] if len(rest) == 1 else typing.Union[tuple(rest)]  # noqa: UP007


_CONSTRAINTS = ("ge", "gt", "le", "lt", "min_length", "max_length", "pattern")


def _constraints(tp: Any) -> list[str]:
    """``["min_length=16"]``: the ``msgspec.Meta`` constraints of an ``Annotated`` type."""
    if typing.get_origin(tp) is not typing.Annotated:
        return []
    return [f"{name}={getattr(meta, name)!r}" for meta in typing.get_args(tp)[1:]
            if isinstance(meta, msgspec.Meta) for name in _CONSTRAINTS
            if getattr(meta, name, None) is not None]


def _shown(value: Any, otherwise: str) -> str:
    """``value`` as JSON (as it would be written in the config), else ``otherwise``."""
    try:
        return msgspec.json.encode(value).decode()
    except (TypeError, msgspec.EncodeError):
        return otherwise


def _type_name(tp: Any) -> str:
    """``str``, ``int | None``, ``list[str]``, ``'us' | 'eu'``... as a user reads a type
    (no module paths, no ``Annotated`` constraints)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        return f"{getattr(origin, '__name__', origin)}[{', '.join(_type_name(a) for a in args)}]"
    if tp is type(None):
        return "None"
    return tp.__name__ if isinstance(tp, type) else str(tp)
