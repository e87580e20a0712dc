"""pytest fixtures for hookyard and its plugin authors (registered through ``pytest11``).

    def test_my_connector(hookyard_server, fake_destination):
        fake = fake_destination()                    # a real HTTP server on 127.0.0.1
        server = hookyard_server({
            "sources": [{"name": "web", "plugin": "segment", "write_key": "test-write-key"}],
            "destinations": [{"name": "mine", "plugin": "webhook", "sources": ["web"],
                              "settings": {"url": fake.url + "/hook"}}],
        })
        server.post("/v1/track", sample_track())
        fake.wait_for(1)

Imports are lazy so installing hookyard never breaks an unrelated pytest run.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from .fake_server import FakeServer
    from .server import HookyardServer

DEFAULT_SOURCE = {"name": "web", "plugin": "segment", "write_key": "test-write-key"}


@pytest.fixture
def hookyard_server(tmp_path: Path) -> Iterator[Callable[..., HookyardServer]]:
    """Factory: ``hookyard_server(config_dict, plugins=[...])`` starts a real server on a loopback
    port with a temp data dir; it is stopped after the test. Without ``sources`` the config gets
    one Segment source ``web`` with write key ``test-write-key``."""
    from .server import HookyardServer

    started: list[HookyardServer] = []

    def start(config: dict[str, Any] | None = None, plugins: list[object] | None = None,
              data_dir: Path | None = None) -> HookyardServer:
        config = dict(config or {})
        config.setdefault("sources", [DEFAULT_SOURCE])
        server = HookyardServer(config, data_dir or tmp_path / f"data{len(started)}", plugins)
        started.append(server.start())
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def fake_destination() -> Iterator[Callable[[], FakeServer]]:
    """Factory: ``fake_destination()`` starts a recording fake HTTP peer on 127.0.0.1."""
    from .fake_server import FakeServer

    started: list[FakeServer] = []

    def start() -> FakeServer:
        server = FakeServer().start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
