"""Segment events as msgspec Structs: a tagged union on ``type``.

The Structs follow the Segment spec (https://segment.com/docs/connections/spec/common/). They are
used to *validate* incoming events and to give plugins typed access. Unknown extra fields are not
lost: the inbox keeps every event's raw JSON, and hooks receive it beside the typed event.

Decoders and encoders are module-level objects, built once and reused on the hot path.
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec

JSON = dict[str, Any]

EVENT_TYPES = ("identify", "track", "page", "screen", "group", "alias")


MAX_MESSAGE_ID = 256
"""Characters a ``messageId`` may have (Segment's own limit is 100; its libraries send 36-50).
The SQLite writer keeps recent ones in memory for its dedupe, and PostgreSQL indexes them."""
MAX_ID = 512
"""Characters a ``userId``, ``anonymousId``, ``groupId`` or ``previousId`` may have: they are
keys of indexes (PostgreSQL refuses an index entry over ~2.7 KB, and 512 characters are at most
2 KB of UTF-8), and ids, not documents. Checked by the decoder (``Expected `str` of length <=
512 - at `$.userId```), at no cost to ingest."""
MessageId = Annotated[str, msgspec.Meta(max_length=MAX_MESSAGE_ID)]
Id = Annotated[str, msgspec.Meta(max_length=MAX_ID)]
Int64 = Annotated[int, msgspec.Meta(ge=-(2**63), le=2**63 - 1)]
"""An id sent as a JSON number: a 64-bit integer (a 4,000-digit one passed the text limits and
was refused by PostgreSQL's index, as a 503)."""


class _Common(msgspec.Struct, kw_only=True, tag_field="type", omit_defaults=True):
    """Fields every Segment call may carry."""

    # a number too: Segment's Node libraries pass a numeric messageId through (a database row
    # id); the inbox keeps it as text (hookyard.inbox.event_rows), the stored event as sent
    messageId: MessageId | Int64 | None = None
    userId: Id | Int64 | None = None
    anonymousId: Id | Int64 | None = None
    context: JSON | None = None
    integrations: JSON | None = None
    timestamp: str | None = None
    sentAt: str | None = None
    receivedAt: str | None = None
    originalTimestamp: str | None = None
    version: int | float | str | None = None
    # a source's write key sent in the body (Segment's API accepts it there): decoded only so
    # the host sees it, escaped names included, and strips it; never stored nor forwarded
    writeKey: Any = None

    @property
    def user_id(self) -> str | None:
        """``userId`` as a string, or None when missing, empty or only whitespace (a blank id
        would make one profile of unrelated people)."""
        return _id_text(self.userId)

    @property
    def anonymous_id(self) -> str | None:
        """``anonymousId`` as a string, or None when missing, empty or only whitespace."""
        return _id_text(self.anonymousId)


def _id_text(value: str | int | None) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value if not value.isspace() else None
    return str(value)


class Identify(_Common, tag="identify"):
    """Who the user is: ``traits`` describe them. An identify without top-level traits takes
    ``context.traits`` (RudderStack's Python library sends them only there)."""

    traits: JSON | None = None

    def __post_init__(self) -> None:
        if not self.traits and self.context:
            traits = self.context.get("traits")
            if isinstance(traits, dict) and traits:
                self.traits = traits


class Track(_Common, tag="track"):
    """What the user did: ``event`` is the action's name, ``properties`` its details."""

    event: str
    properties: JSON | None = None


class Page(_Common, tag="page"):
    """A web page view."""

    name: str | None = None
    category: str | None = None
    properties: JSON | None = None


class Screen(_Common, tag="screen"):
    """A mobile screen view."""

    name: str | None = None
    category: str | None = None
    properties: JSON | None = None


class Group(_Common, tag="group"):
    """The user belongs to a group (account, company, team)."""

    groupId: Id | Int64 | float  # Python's libraries send group(uid, 1.5) as it is
    traits: JSON | None = None


class Alias(_Common, tag="alias"):
    """Merge two user identities: ``previousId`` becomes ``userId``."""

    previousId: Id | Int64 | float


Event = Identify | Track | Page | Screen | Group | Alias
EVENT_CLASSES: dict[str, type[Event]] = {
    "identify": Identify,
    "track": Track,
    "page": Page,
    "screen": Screen,
    "group": Group,
    "alias": Alias,
}

any_event_decoder = msgspec.json.Decoder(Event)
event_decoders = {name: msgspec.json.Decoder(cls) for name, cls in EVENT_CLASSES.items()}
raw_dict_decoder = msgspec.json.Decoder(dict[str, Any])
encoder = msgspec.json.Encoder()


def event_from_dict(raw: JSON) -> Event:
    """Build the typed event from a raw event dict (which must carry ``type``)."""
    return msgspec.convert(raw, Event)


def validate_event(event: Event) -> str | None:
    """Return why ``event`` is not a valid Segment event, or None when it is."""
    if event.user_id is None and event.anonymous_id is None:
        return "userId or anonymousId is required"
    if isinstance(event, Track) and not event.event:
        return "event is required for track"
    if isinstance(event, Alias) and event.user_id is None:
        return "userId is required for alias"
    return None


def event_type(event: Event) -> str:
    """The Segment ``type`` of a typed event."""
    return event.__struct_config__.tag  # type: ignore[return-value]
