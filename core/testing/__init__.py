"""Test helpers for hookyard and connector plugins.

* :mod:`hookyard.testing.samples`: sample events and direct hook calls (no server).
* :mod:`hookyard.testing.server`: a real hookyard server on a loopback port.
* :mod:`hookyard.testing.fake_server`: a recording fake destination (real HTTP).
* :mod:`hookyard.testing.assertions`: ``assert_request``/``assert_requests`` on what it recorded.
* :mod:`hookyard.testing.fixtures`: the pytest fixtures ``hookyard_server`` and
  ``fake_destination`` (installed as a pytest plugin).

:mod:`hookyard.testing.cluster` (several nodes on one PostgreSQL) and
:mod:`hookyard.testing.postgres` (a throwaway PostgreSQL schema) serve hookyard's own tests and
benchmarks; plugin authors do not need them.
"""

from typing import TYPE_CHECKING, Any

from .assertions import ANY, assert_request, assert_requests
from .samples import (
    as_event,
    authenticate_with,
    deliver_with,
    destination_context,
    ingest_request,
    map_with,
    parse_with,
    registry,
    sample_alias,
    sample_group,
    sample_identify,
    sample_page,
    sample_screen,
    sample_track,
    source_context,
)

if TYPE_CHECKING:
    from .fake_server import FakeServer, RecordedRequest


def __getattr__(name: str) -> Any:
    """``FakeServer`` and ``RecordedRequest`` on first use: importing them loads uvicorn, which
    unit tests of hooks do not need."""
    if name in ("FakeServer", "RecordedRequest"):
        from . import fake_server

        return getattr(fake_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "ANY",
    "FakeServer",
    "RecordedRequest",
    "as_event",
    "assert_request",
    "assert_requests",
    "authenticate_with",
    "deliver_with",
    "destination_context",
    "ingest_request",
    "map_with",
    "parse_with",
    "registry",
    "sample_alias",
    "sample_group",
    "sample_identify",
    "sample_page",
    "sample_screen",
    "sample_track",
    "source_context",
]
