"""Fixtures of the dashboard tests: a real server with a fake Segment peer, and a browser."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer

from .kit import CHROMIUM, config


@pytest.fixture(scope="module")
def peer() -> Iterator[FakeServer]:
    """The forward destination's peer: answers 400 until a test says otherwise."""
    with FakeServer() as fake:
        fake.fail(400)
        yield fake


@pytest.fixture(scope="module")
def server(peer: FakeServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HookyardServer]:
    with HookyardServer(config(peer.url), tmp_path_factory.mktemp("dash")) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Debian's chromium driven by playwright (headless); skipped only where it is missing.

    Module scope: playwright's sync API keeps an event loop running in this thread, which
    ``asyncio.run`` (the CLI tests) must not find after the browser tests."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"Debian's chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()
