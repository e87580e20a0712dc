"""An event's ``integrations`` object: Segment's per-event switches for destinations.

A Segment client turns destinations off for one event with ``"integrations": {"Novu": false}``,
or off for all but some with ``{"All": false, "Pushwoosh": true}`` (consent tools do this).
Segment matches the keys against its destinations' names; hookyard matches them, ignoring
case, against a destination's configured ``name`` and its plugin's name, so ``"Novu": false``
stops every destination of the ``novu`` plugin and ``"novu-eu": false`` that one destination.

* a key naming the destination decides: ``false`` turns it off; ``true`` or an object (a
  destination's options, as analytics.js sends for ``"Segment.io"``) keeps it on. The
  destination's own name wins over its plugin's (``{"Novu": false, "novu-eu": true}`` keeps
  ``novu-eu`` on), and of two keys for the same name the later one, which after a batch's
  defaults are merged in is the event's own;
* otherwise ``"All": false`` turns it off, except for a destination that hands the object on
  to a router which applies it (``Connector.forwards_integrations``: the Segment forwarder);
* anything else, or no ``integrations`` at all, keeps it on.

``honor_integrations = false`` ignores the object: on a ``[[destinations]]`` entry for that
destination, on a ``[[sources]]`` entry for that source's events (events that Segment's
Webhooks destination relays have had it applied by Segment).
"""

from __future__ import annotations

from typing import Any


def switched_off(flags: Any, names: tuple[str, ...], obey_all: bool) -> str | None:
    """Why ``flags`` (an event's ``integrations`` value) turns off a destination known by
    ``names`` (case-folded: its own name first, then its plugin's and the plugin's other
    names), or None. ``obey_all``: whether ``"All": false`` applies."""
    if not isinstance(flags, dict) or not flags:
        return None
    own = other = None  # the last (key, value) naming the destination, by its own name / else
    everything: Any = None
    for key, value in flags.items():
        if not isinstance(key, str):
            continue
        folded = key.casefold()
        if folded == names[0]:
            own = (key, value)
        elif folded in names:
            other = (key, value)
        elif folded == "all":
            everything = value
    decided = own or other
    if decided is not None:
        key, value = decided
        return f"integrations: {key} is false" if value is False else None
    if everything is False and obey_all:
        return "integrations: All is false"
    return None
