"""A destination whose plugin changed under the same name: its waiting deliveries are mapped
again by the new plugin before they are sent.

An outbox row holds the request its destination's plugin made (a Novu trigger, a Segment
batch item). A config that kept a destination's name but gave it another plugin had the new
connector send the old one's requests: Novu triggers posted to Segment's ``/v1/batch``,
answered 200 and counted delivered, the events lost (delivery adversity audit). The plugin of
each destination is now kept (``destination_plugins``); at start-up a destination whose plugin
differs from the one recorded has the requests of its rows still to send (pending, in flight,
dead letters) cleared, and a cleared row is mapped again when it is claimed (as a dead letter
of a failed ``map_event`` is).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping

STILL_TO_SEND = ("pending", "inflight", "dead")


def note_plugins(conn: sqlite3.Connection, plugins: Mapping[str, str]) -> dict[str, tuple[str, int]]:
    """Record the plugin of each destination (name -> plugin); for each whose recorded plugin
    was another, clear the requests of its rows still to send. Returns those destinations:
    name -> (the plugin before, rows cleared)."""
    changed: dict[str, tuple[str, int]] = {}
    for name, plugin in plugins.items():
        row = conn.execute("SELECT plugin FROM destination_plugins WHERE name = ?",
                           (name,)).fetchone()
        if row is not None and row[0] != plugin:
            before = conn.total_changes
            conn.execute(
                "UPDATE outbox SET request = NULL WHERE destination = ? AND state IN"
                f" ({', '.join('?' * len(STILL_TO_SEND))})", (name, *STILL_TO_SEND))
            changed[name] = (row[0], conn.total_changes - before)
        if row is None or row[0] != plugin:
            conn.execute("INSERT INTO destination_plugins (name, plugin) VALUES (?, ?)"
                         " ON CONFLICT (name) DO UPDATE SET plugin = excluded.plugin",
                         (name, plugin))
    return changed
