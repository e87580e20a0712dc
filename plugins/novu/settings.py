"""Settings of the Novu destination (``[destinations.settings]``), validated at start-up by
msgspec: a missing or blank ``api_key`` stops boot with a config error naming the field."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]

SubscriberField = Literal["firstName", "lastName", "email", "phone", "avatar", "locale", "timezone"]
"""The Novu subscriber attributes a trait can fill (``data`` takes every other trait)."""

SUBSCRIBER_FIELDS: tuple[SubscriberField, ...] = (
    "firstName",
    "lastName",
    "email",
    "phone",
    "avatar",
    "locale",
    "timezone",
)

REGION_URLS = {"us": "https://api.novu.co", "eu": "https://eu.api.novu.co"}
"""Novu Cloud API roots by data region."""


class NovuSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Destination ``novu``.

    api_key:         Novu secret key (Dashboard > Settings > API Keys); sent as
                     ``Authorization: ApiKey <api_key>``. Use ``"env:NOVU_API_KEY"``.
    region:          Novu Cloud data region: ``"us"`` (https://api.novu.co) or ``"eu"``
                     (https://eu.api.novu.co).
    base_url:        API root; when not set, the region's Novu Cloud URL is filled in. Set
                     it for a self-hosted Novu (or a test fake): it overrides ``region``.
    workflows:       Segment track event name -> Novu workflow id (trigger identifier).
    identify_fields: trait -> Novu subscriber field, tried before the default traits (e.g.
                     ``{"mobile": "phone", "language": "locale"}``). A dotted trait reaches into
                     nested traits (``"contact.email"``); a ``$.`` path reads anywhere in the
                     event (``"$.context.locale"``).
    send_unmapped:   a track event with no workflow: ``"skip"`` (filtered with a reason) or
                     ``"error"`` (a permanent failure: a dead letter).
    bulk_min:        the fewest triggers sent together as one bulk trigger; fewer go as single
                     triggers, concurrently. Novu Cloud counts a bulk request as 100 of its
                     rate-limit tokens and a single trigger as 1, so a smaller bulk only costs
                     more (default 100: only full bulks). A self-hosted Novu without rate
                     limits may prefer fewer requests (e.g. ``2``).
    """

    api_key: NonEmpty
    region: Literal["us", "eu"] = "us"
    base_url: NonEmpty | None = None
    workflows: dict[NonEmpty, NonEmpty] = {}
    identify_fields: dict[NonEmpty, SubscriberField] = {}
    send_unmapped: Literal["skip", "error"] = "skip"
    bulk_min: Annotated[int, msgspec.Meta(ge=2, le=100)] = 100

    def __post_init__(self) -> None:
        if not self.api_key.strip():
            raise ValueError("api_key must not be blank")
        if self.base_url is None:
            self.base_url = REGION_URLS[self.region]
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must start with http:// or https://, not {self.base_url!r}")
        for event, workflow in self.workflows.items():
            if not event.strip() or not workflow.strip():
                raise ValueError(
                    f"workflows: blank event name or workflow id ({event!r} = {workflow!r})"
                )
        for trait in self.identify_fields:
            path = trait.removeprefix("$.")
            if not path or any(not part.strip() for part in path.split(".")):
                raise ValueError(f"identify_fields: {trait!r} is not a trait name or $. path")

    @property
    def api_url(self) -> str:
        """The API root requests go to: ``base_url``, else the region's Novu Cloud URL."""
        return (self.base_url or REGION_URLS[self.region]).rstrip("/")
