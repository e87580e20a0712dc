"""Helpers shared by the storage tests: parsed events and API log lines."""

from __future__ import annotations

from typing import Any

import msgspec
from hookyard.connectors import ParsedEvent
from hookyard.events import Event
from hookyard.inbox import LogEntry
from hookyard.times import now_iso


def parsed(raw: dict[str, Any]) -> ParsedEvent:
    """An event as the Segment source hands it to ingest."""
    return ParsedEvent(event=msgspec.convert(raw, Event), raw=msgspec.json.encode(raw))  # type: ignore[arg-type]


def log_entry(events: int) -> LogEntry:
    return LogEntry(now_iso(), "web", "POST", "/v1/batch", 200, events, None, 1.5)
