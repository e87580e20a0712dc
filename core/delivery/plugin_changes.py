"""A destination whose plugin changed under the same name: its waiting deliveries are mapped
again by the new plugin before they are sent.

An outbox row holds the request its destination's plugin made (a Novu trigger, a Segment
batch item). A config that kept a destination's name but gave it another plugin had the new
connector send the old one's requests: Novu triggers posted to Segment's ``/v1/batch``,
answered 200 and counted delivered, the events lost (delivery adversity audit). Each row now
names the plugin that made its request (``outbox.plugin``); the worker maps a claimed row
made by another plugin again before sending it, so a plugin change is safe across a restart,
a rolling restart of several PostgreSQL nodes, an upgrade, and a replay run with another
config. Rows made before rows named their plugin had their requests cleared by the schema's
migration, and are mapped again the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

log = logging.getLogger("hookyard.delivery")
LOG_EVERY = 60.0


class PluginChanges:
    """Says, at most once a minute per destination, how many claimed deliveries were made by
    another plugin (or by an older hookyard) and are mapped again."""

    def __init__(self, destination: str, plugin: str) -> None:
        self.destination, self.plugin = destination, plugin
        self.counts: dict[str, int] = {}
        self.logged_at = -LOG_EVERY

    def to_map_again(self, claimed: Sequence[tuple[Any, ...]]) -> list[int]:
        """The ids of the claimed rows (id, request, attempts, created_at, plugin) to map
        again: those without a request (a failed ``map_event``'s dead letter queued again, a
        request cleared by the migration) and those another plugin made; counted for the log."""
        again = []
        for row in claimed:
            other = row[4] is not None and row[4] != self.plugin
            if row[1] is None or other:
                again.append(row[0])
                if other or row[4] is None:  # None: queued by an older hookyard
                    label = f"the {row[4]} plugin" if other else "an older hookyard"
                    self.counts[label] = self.counts.get(label, 0) + 1
        if again:
            self._log()
        return again

    def _log(self) -> None:
        now = time.monotonic()
        if self.counts and now - self.logged_at >= LOG_EVERY:
            made = ", ".join(f"{count} by {label}" for label, count in sorted(self.counts.items()))
            log.warning("destination %s: deliveries made by another plugin or version (%s) are"
                        " mapped again by %s before they are sent (its plugin was changed, a"
                        " replay ran with another config, or hookyard was upgraded)",
                        self.destination, made, self.plugin,
                        extra={"destination": self.destination})
            self.counts.clear()
            self.logged_at = now
