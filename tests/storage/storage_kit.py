"""Helpers shared by the storage tests: runtimes, parsed events and API log lines."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
from hookyard.config import parse_config
from hookyard.connectors import ParsedEvent
from hookyard.events import Event
from hookyard.inbox import LogEntry
from hookyard.runtime import Runtime
from hookyard.times import now_iso

WRITE_KEY = "test-write-key"


def parsed(raw: dict[str, Any]) -> ParsedEvent:
    """An event as the Segment source hands it to ingest."""
    return ParsedEvent(event=msgspec.convert(raw, Event), raw=msgspec.json.encode(raw))  # type: ignore[arg-type]


def log_entry(events: int) -> LogEntry:
    return LogEntry(now_iso(), "web", "POST", "/v1/batch", 200, events, None, 1.5)


def make_runtime(storage: dict[str, Any], data_dir: Path, **overrides: Any) -> Runtime:
    """A runtime with source ``web`` and destination ``seg`` (Segment forwarder), opened."""
    config = {
        "server": {"data_dir": str(data_dir), "admin_token": "test-admin-token"},
        "storage": storage,
        "sources": [{"name": "web", "plugin": "segment", "write_key": WRITE_KEY}],
        "destinations": [{"name": "seg", "plugin": "segment", "sources": ["web"],
                          "settings": {"write_key": "wk", "base_url": "http://127.0.0.1:9"}}],
        **overrides,
    }
    rt = Runtime.build(parse_config(config))
    rt.open()
    return rt
