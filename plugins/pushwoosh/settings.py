"""Settings of the Pushwoosh destination and source (``[destinations.settings]``,
``[sources.settings]``), validated at start-up by msgspec."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

TagType = Literal["Integer", "String", "List", "Date", "Boolean", "Decimal", "Version"]
"""Pushwoosh tag types (their API numbers them 1-7 in this order: Integer, String, List, Date,
Boolean, Decimal, Version)."""

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]

DEFAULT_BASE_URL = "https://api.pushwoosh.com"


class PushwooshSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Destination ``pushwoosh``.

    api_key:       a Device API token (Pushwoosh Control Panel, Settings > API Access); sent as
                   ``Authorization: Token <api_key>``. Use ``"env:PUSHWOOSH_API_KEY"``.
    application:   the application code (``XXXXX-XXXXX``).
    base_url:      API root; tests point it at a loopback fake.
    user_id_field: the event field giving the Pushwoosh ``userId`` (a path, e.g.
                   ``"userId"`` or ``"traits.external_id"``).
    tag_types:     tag (or trait) name -> forced tag type; the value is coerced to it.
    tag_names:     trait name -> Pushwoosh tag name (``"address.city"`` for address parts).
    exclude_traits: traits never sent as tags, by name (``"address.city"`` for a part of one;
                   personal data: Pushwoosh's
                   own RudderStack integration leaves out ``email``, ``phone``, ``firstName``,
                   ``lastName``, ``name`` and ``address``).
    create_or_update_user_profile: identify -> ``/setTags`` ("Create or Update User Profile").
    track_events:  track -> ``/postEvent`` ("Track Events").
    """

    api_key: NonEmpty
    application: NonEmpty
    base_url: NonEmpty = DEFAULT_BASE_URL
    user_id_field: NonEmpty = "userId"
    tag_types: dict[str, TagType] = {}
    tag_names: dict[str, NonEmpty] = {}
    create_or_update_user_profile: bool = True
    track_events: bool = True
    exclude_traits: list[NonEmpty] = []

    def __post_init__(self) -> None:
        if not self.api_key.strip():
            raise ValueError("api_key must not be blank")
        if not self.application.strip():
            raise ValueError("application must not be blank")
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, not {self.base_url!r}")
        path = self.user_id_field.removeprefix("$.")
        if not path or any(not part.strip() for part in path.split(".")):
            raise ValueError(
                f"user_id_field must be a field path like 'userId' or 'traits.external_id', "
                f"not {self.user_id_field!r}"
            )


class PushwooshSourceSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Source ``pushwoosh``.

    events: comma-separated event names to accept, as in Pushwoosh's own "Events" field
            (e.g. ``"Email Sent, Push Delivered"``); blank accepts every event. Names are
            matched trimmed and case-insensitively. Other events are stored but not routed.
    """

    events: str = ""
