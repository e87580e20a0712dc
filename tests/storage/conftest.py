"""The storage backends as a fixture: every test here runs on SQLite and on PostgreSQL.

PostgreSQL tests use a schema of their own on ``$HOOKYARD_TEST_PG_URL`` (default: the local
server, ``postgresql://postgres@127.0.0.1:5432/test``) and are skipped, with the reason, only
when no server answers there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hookyard.config import parse_config
from hookyard.runtime import Runtime
from hookyard.testing.postgres import pg_unavailable, temp_schema

WRITE_KEY = "test-write-key"


@pytest.fixture(params=["sqlite", "postgresql"])
def storage_settings(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """``[storage]`` settings of an empty database of each backend."""
    if request.param == "sqlite":
        yield {}
        return
    reason = pg_unavailable()
    if reason:
        pytest.skip(reason)
    with temp_schema() as settings:
        yield settings


def make_runtime(storage: dict[str, str], data_dir: Path, **overrides: Any) -> Runtime:
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


@pytest.fixture
def runtime_factory(
    storage_settings: dict[str, str], tmp_path: Path
) -> Iterator[Callable[[], Runtime]]:
    """Runtimes on the same database: each one is a "node" with its own connections."""
    opened: list[Runtime] = []
    shared = storage_settings or {"url": f"sqlite:///{tmp_path / 'shared.db'}"}

    def make() -> Runtime:
        rt = make_runtime(shared, tmp_path / f"node{len(opened)}")
        opened.append(rt)
        return rt

    yield make
    for rt in opened:
        rt.close()


@pytest.fixture
def runtime(runtime_factory: Callable[[], Runtime]) -> Runtime:
    return runtime_factory()
