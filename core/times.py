"""Timestamps as the Segment spec writes them: ISO-8601, UTC, milliseconds, ``Z``.

Shared by the core (replay windows) and connectors (the Segment forwarder's corrected
``timestamp``, Pushwoosh's dates). The ingest hot path formats ``receivedAt`` with its own
cached variant, :func:`hookyard.inbox.now_iso`.
"""

from __future__ import annotations

from datetime import UTC, datetime


def iso_utc(when: datetime) -> str:
    """``2026-01-01T10:00:00.123Z``: an aware ``when`` in UTC, to the millisecond."""
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_iso(value: str) -> datetime | None:
    """An aware datetime from an ISO-8601 date or time, or None when ``value`` is not one.

    Surrounding spaces are ignored, ``Z`` or ``z`` means UTC, a time without an offset is
    taken as UTC; an explicit offset is kept (``astimezone(UTC)`` to convert).
    """
    text = value.strip()
    if not text:
        return None
    if text.endswith(("z", "Z")):
        text = text[:-1] + "+00:00"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
