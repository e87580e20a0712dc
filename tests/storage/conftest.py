"""The storage backends as a fixture: every test here runs on SQLite and on PostgreSQL.

PostgreSQL tests use a schema of their own on ``$HOOKYARD_TEST_PG_URL`` (default: the local
server, ``postgresql://postgres@127.0.0.1:5432/test``) and are skipped, with the reason, only
when no server answers there.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hookyard.runtime import Runtime
from hookyard.testing.postgres import pg_unavailable, temp_schema
from storage_kit import make_runtime


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
