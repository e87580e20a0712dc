"""Profile store settings and the pure mapping from Segment events to profile changes.

Behaviour (reference documents 000/001):

* ``userId`` becomes ``distinct_id`` and is required: anonymous events are filtered, with the
  reason recorded.
* identify: every trait becomes a user property (merged into the existing ones).
* preferences: ``$locale`` takes ISO 639-1 codes only, ``$timezone`` IANA names only; any
  other value is ignored with a note.
* channels: ``$email``, ``$sms``, ``$whatsapp``, ``$slack``, ``$androidpush``, ``$iospush`` take
  their values from the traits named in the mapping. Values are appended, never overridden.
  001's defaults (``email`` -> ``$email``, ``phone`` -> ``$sms``) apply unless the mapping
  names that channel (``"$sms" = []`` switches one off); ``channels = {}`` switches both off.
  An email address is kept in lower case, a phone number without its spaces, dashes, dots and
  brackets, so one address is one channel value; a value that is neither is ignored with a note.
* track: stored as the user's event, name optionally prefixed ``segment : ``, at the event's
  time in UTC (corrected for the client's clock as Segment does); every workflow linked to the
  event records a run.
* identify and replay: an identify older than the one that last set a profile (a replay of a
  past window) fills in what is missing but never rolls newer values back.
"""

from __future__ import annotations

import re
import zoneinfo
from functools import lru_cache
from typing import Any

import msgspec

from ..deliveries import Delivery, MapResult
from ..events import Event, Identify, Track
from ..times import event_time, order_time

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
        """The channels to fill and their traits: 001's defaults, unless the mapping names that
        channel (an empty list switches it off); ``channels = {}`` switches every default off."""
        if self.channels is None:
            return DEFAULT_CHANNELS
        if not self.channels:
            return {}
        merged = {**DEFAULT_CHANNELS, **self.channels}
        return {channel: source for channel, source in merged.items() if source}

    @property
    def prefix(self) -> str:
        if self.event_prefix is True:
            return DEFAULT_PREFIX
        return self.event_prefix or ""


# Files of the system's zoneinfo directory that are not time zones: ``localtime`` is whatever
# the server's clock is set to, ``posixrules`` a default rule, ``Factory`` "zone unknown".
NOT_ZONES = frozenset({"localtime", "posixrules", "Factory"})


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(zoneinfo.available_timezones()) - NOT_ZONES


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


EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
PHONE_SEPARATORS = re.compile(r"[\s().\-]")
PHONE = re.compile(r"\+?[0-9]{5,15}")
PHONE_CHANNELS = ("$sms", "$whatsapp")


def _shown(value: Any) -> str:
    """``repr(value)`` for a note, cut to 120 characters: a client's 30 KB trait is not logged
    whole."""
    text = repr(value)
    return text if len(text) <= 120 else f"{text[:100]}... ({len(text)} characters)"


def _email(value: str) -> str | None:
    """An email address in lower case, within RFC 5321's lengths (64 before the ``@``, 254 in
    all), else None. The lengths are checked first: the pattern takes quadratic time on a
    long run of dots, and a 30 KB trait held the map process for seconds."""
    if len(value) > 254 or not EMAIL.fullmatch(value) or value.index("@") > 64:
        return None
    return value.lower()


MAX_CHANNEL_VALUE = 512
"""Characters a channel value may have: addresses are at most 254, phone numbers 16, push
tokens about 200; the values are keys of an index (PostgreSQL refuses entries over ~2.7 KB)."""


def channel_value(channel: str, value: str) -> str | None:
    """The value as the channel keeps it, or None when it cannot be one: an email address in
    lower case (``Peter@Example.com`` and ``peter@example.com`` are one address; a Slack
    email too), a phone number without separators (``+1 (555) 555-5555`` is
    ``+15555555555``); other channels' values (Slack user ids, push tokens) as they are."""
    if channel == "$email":
        return _email(value)
    if channel in PHONE_CHANNELS:
        number = PHONE_SEPARATORS.sub("", value)
        return number if PHONE.fullmatch(number) else None
    if channel == "$slack" and "@" in value:
        return _email(value) or value
    return value


def _channel_values(
    traits: dict[str, Any], channel: str, source: str | list[str], notes: list[str]
) -> list[str]:
    out = []
    for trait in [source] if isinstance(source, str) else source:
        value = traits.get(trait)
        values = value if isinstance(value, list) else [value]
        for v in values:
            if v is None or (isinstance(v, str) and not v.strip()):
                continue  # no value
            if isinstance(v, int) and not isinstance(v, bool) and channel in PHONE_CHANNELS:
                # a JSON number has lost the number's + (and any leading 0): it would be a
                # second value beside the same number sent as text
                notes.append(f"{channel} ignored: {_shown(v)} (trait {trait}) is a number; send phone"
                             " numbers as text, e.g. \"+15555555555\"")
                continue
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                notes.append(f"{channel} ignored: {_shown(v)} (trait {trait}) is not text")
                continue
            text = str(v).strip()
            if len(text) > MAX_CHANNEL_VALUE:
                notes.append(f"{channel} ignored: {_shown(v)} (trait {trait}) is longer than"
                             f" {MAX_CHANNEL_VALUE} characters")
                continue
            kept = channel_value(channel, text)
            if kept is None:
                kind = "an email address" if channel == "$email" else "a phone number"
                notes.append(f"{channel} ignored: {_shown(v)} (trait {trait}) is not {kind}")
            elif kept not in out:
                out.append(kept)
    return out


def map_identify(
    settings: ProfileSettings, event: Identify, distinct_id: str, raw: dict[str, Any]
) -> Delivery:
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
            notes.append(f"{pref} ignored: {_shown(traits[trait])} (trait {trait}) is not {kind}")
        else:
            preferences[pref] = value
    channels = {}
    for channel, source in settings.channel_map.items():
        values = _channel_values(traits, channel, source, notes)
        if values:
            channels[channel] = values
    body = {
        "distinct_id": distinct_id,
        "properties": traits,
        "channels": channels,
        "preferences": preferences,
        "notes": notes,
        "at": order_time(raw),  # an older identify (a replay) never rolls newer values back
    }
    return Delivery(kind="identify", body=body)


def map_track(settings: ProfileSettings, event: Track, distinct_id: str, raw: dict[str, Any]) -> Delivery:
    name = settings.prefix + event.event
    workflows = [w.name for w in settings.workflows if w.event in (event.event, name)]
    body = {
        "distinct_id": distinct_id,
        "event": name,
        "properties": event.properties or {},
        "timestamp": event_time(raw),
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
        return MapResult.send(map_identify(settings, event, distinct_id, raw))
    if isinstance(event, Track):
        return MapResult.send(map_track(settings, event, distinct_id, raw))
    return MapResult.skip(f"{raw.get('type')} events are not stored by the profile store")
