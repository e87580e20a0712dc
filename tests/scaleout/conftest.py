"""Scale-out tests: several ``hookyard serve`` processes on one PostgreSQL (skipped, with the
reason, only where no PostgreSQL server answers; see hookyard.testing.postgres)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from hookyard.testing.postgres import pg_unavailable, temp_schema


@pytest.fixture
def pg_storage() -> Iterator[dict[str, str]]:
    reason = pg_unavailable()
    if reason:
        pytest.skip(reason)
    with temp_schema("hy_scaleout") as storage:
        yield storage
