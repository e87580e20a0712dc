"""Test helpers for hookyard and connector plugins.

* :mod:`hookyard.testing.samples`: sample events and direct hook calls (no server).
* :mod:`hookyard.testing.server`: a real hookyard server on a loopback port.
* :mod:`hookyard.testing.fake_server`: a recording fake destination (real HTTP).
* :mod:`hookyard.testing.fixtures`: the pytest fixtures ``hookyard_server`` and
  ``fake_destination`` (installed as a pytest plugin).
"""

from .samples import (
    as_event,
    deliver_with,
    destination_context,
    ingest_request,
    map_with,
    registry,
    sample_alias,
    sample_group,
    sample_identify,
    sample_page,
    sample_screen,
    sample_track,
    source_context,
)

__all__ = [
    "as_event",
    "deliver_with",
    "destination_context",
    "ingest_request",
    "map_with",
    "registry",
    "sample_alias",
    "sample_group",
    "sample_identify",
    "sample_page",
    "sample_screen",
    "sample_track",
    "source_context",
]
