"""Profile store settings and the pure mapping from Segment events to profile changes.

Behaviour (reference documents 000/001):

* ``userId`` becomes ``distinct_id`` and is required: anonymous events are filtered, with the
  reason recorded.
* identify: every trait becomes a user property (merged into the existing ones).
* preferences: ``$locale`` takes ISO 639-1 codes only, ``$timezone`` IANA names only; any
  other value is ignored with a note.
* channels: ``$email``, ``$sms``, ``$whatsapp``, ``$slack``, ``$androidpush``, ``$iospush`` take
  their values from the traits named in the mapping. Values are appended, never overridden.
  With no mapping configured, 001's defaults apply (``email`` -> ``$email``, ``phone`` ->
  ``$sms``); ``channels = {}`` switches them off.
* track: stored as the user's event, name optionally prefixed ``segment : ``; every workflow
  linked to the event records a run.
"""

from __future__ import annotations

import zoneinfo
from functools import lru_cache
from typing import Any

import msgspec

from ..deliveries import Delivery, MapResult
from ..events import Event, Identify, Track

ISO_639_1 = frozenset(
    "aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy"
    " da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu"
    " hy hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb"
    " lg li ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om"
    " or os pa pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw"
    " ta te tg th ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu".split()
)
CHANNELS = ("$email", "$sms", "$whatsapp", "$slack", "$androidpush", "$iospush")
PREFERENCES = ("$locale", "$timezone")
DEFAULT_CHANNELS: dict[str, str | list[str]] = {"$email": "email", "$sms": "phone"}
DEFAULT_PREFIX = "segment : "


class WorkflowLink(msgspec.Struct, forbid_unknown_fields=True):
    """A workflow triggered by an event name."""

    name: str
    event: str


class ProfileSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Settings of a ``profiles`` destination (``[destinations.settings]``)."""

    event_prefix: bool | str = False
    preferences: dict[str, str] = {}
    channels: dict[str, str | list[str]] | None = None
    workflows: list[WorkflowLink] = []

    def __post_init__(self) -> None:
        for key in self.preferences:
            if key not in PREFERENCES:
                raise ValueError(f"unknown preference {key!r}: use {', '.join(PREFERENCES)}")
        for key in self.channels or {}:
            if key not in CHANNELS:
                raise ValueError(f"unknown channel {key!r}: use {', '.join(CHANNELS)}")

    @property
    def channel_map(self) -> dict[str, str | list[str]]:
        return DEFAULT_CHANNELS if self.channels is None else self.channels

    @property
    def prefix(self) -> str:
        if self.event_prefix is True:
            return DEFAULT_PREFIX
        return self.event_prefix or ""


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones())


def valid_locale(value: Any) -> str | None:
    """An ISO 639-1 code (case-insensitive), or None."""
    if isinstance(value, str) and value.strip().lower() in ISO_639_1:
        return value.strip().lower()
    return None


def valid_timezone(value: Any) -> str | None:
    """An IANA time zone name, or None."""
    if isinstance(value, str) and value in _timezones():
        return value
    return None


def _channel_values(traits: dict[str, Any], source: str | list[str]) -> list[str]:
    out = []
    for trait in [source] if isinstance(source, str) else source:
        value = traits.get(trait)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if isinstance(v, (str, int)) and not isinstance(v, bool) and str(v).strip():
                out.append(str(v).strip())
    return out


def map_identify(settings: ProfileSettings, event: Identify, distinct_id: str) -> Delivery:
    traits = event.traits or {}
    notes: list[str] = []
    preferences: dict[str, str] = {}
    for pref, trait in settings.preferences.items():
        if trait not in traits or traits[trait] is None:
            continue
        check = valid_locale if pref == "$locale" else valid_timezone
        value = check(traits[trait])
        if value is None:
            kind = "an ISO 639-1 code" if pref == "$locale" else "an IANA time zone"
            notes.append(f"{pref} ignored: {traits[trait]!r} (trait {trait}) is not {kind}")
        else:
            preferences[pref] = value
    channels = {}
    for channel, source in settings.channel_map.items():
        values = _channel_values(traits, source)
        if values:
            channels[channel] = values
    body = {
        "distinct_id": distinct_id,
        "properties": traits,
        "channels": channels,
        "preferences": preferences,
        "notes": notes,
    }
    return Delivery(kind="identify", body=body)


def map_track(settings: ProfileSettings, event: Track, distinct_id: str, raw: dict[str, Any]) -> Delivery:
    name = settings.prefix + event.event
    workflows = [w.name for w in settings.workflows if w.event in (event.event, name)]
    body = {
        "distinct_id": distinct_id,
        "event": name,
        "properties": event.properties or {},
        "timestamp": event.timestamp or event.originalTimestamp or raw.get("receivedAt"),
        "received_at": raw.get("receivedAt"),
        "message_id": raw.get("messageId"),
        "workflows": workflows,
    }
    return Delivery(kind="track", body=body)


def map_profile_event(settings: ProfileSettings, event: Event, raw: dict[str, Any]) -> MapResult:
    """The profile changes for one event, or why it is filtered."""
    distinct_id = event.user_id
    if distinct_id is None:
        return MapResult.skip("userId is required: anonymous events are not stored")
    if isinstance(event, Identify):
        return MapResult.send(map_identify(settings, event, distinct_id))
    if isinstance(event, Track):
        return MapResult.send(map_track(settings, event, distinct_id, raw))
    return MapResult.skip(f"{raw.get('type')} events are not stored by the profile store")
