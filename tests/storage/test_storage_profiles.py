"""The profile store on both backends: ``profiles.db`` beside SQLite storage, tables in the
same database with PostgreSQL, where every node reads what any node delivered."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hookyard.profiles.plugin as prof
import pytest
from hookyard.plugins import maybe_await
from hookyard.runtime import Runtime
from hookyard.testing import deliver_with, map_with, sample_identify, sample_track
from storage_kit import make_runtime

SETTINGS = {"workflows": [{"name": "welcome", "event": "User Registered"}]}
PROFILES = [{"name": "profiles", "plugin": "profiles", "sources": ["web"], "settings": SETTINGS}]


@pytest.fixture
def nodes(storage_settings: dict[str, Any], tmp_path: Path) -> Iterator[Callable[[], Runtime]]:
    """Runtimes ("nodes") on one database, each with its own data dir, started like a server."""
    opened: list[Runtime] = []
    shared = storage_settings or {"url": f"sqlite:///{tmp_path / 'shared.db'}"}

    def make() -> Runtime:
        rt = make_runtime(shared, tmp_path / f"node{len(opened)}", destinations=PROFILES)

        async def start() -> None:
            for result in rt.pm.hook.startup(runtime=rt):
                await maybe_await(result)

        asyncio.run(start())
        opened.append(rt)
        return rt

    yield make
    for rt in opened:
        rt.pm.hook.shutdown(runtime=rt)
        rt.close()


def sync(rt: Runtime, raw: dict[str, Any]) -> None:
    ctx = rt.destinations["profiles"].context
    result = map_with(ctx, raw)
    assert [o.outcome for o in deliver_with(ctx, result.deliveries)] == ["ok"] * len(result.deliveries)


def test_the_store_lives_with_the_storage(nodes: Callable[[], Runtime]) -> None:
    rt = nodes()
    sync(rt, sample_identify(userId="u1", messageId="i1",
                             traits={"email": "a@example.com", "plan": "pro", "locale": "de"}))
    sync(rt, sample_identify(userId="u1", messageId="i2", traits={"email": "b@example.com"}))
    sync(rt, sample_track(userId="u1", messageId="t1", event="User Registered",
                          properties={"plan": "pro"}))
    sync(rt, sample_track(userId="u1", messageId="t1", event="User Registered"))  # redelivery
    store = prof.store_for(rt.destinations["profiles"].context)
    found = store.subscriber("profiles", "u1")
    assert found is not None
    assert found["properties"]["plan"] == "pro"
    assert found["channels"] == {"$email": ["a@example.com", "b@example.com"]}  # appended, in order
    events, _ = store.events("profiles", "u1", before=None, limit=10)
    assert [(e["event"], e["messageId"]) for e in events] == [("User Registered", "t1")]
    runs, _ = store.workflow_runs("profiles", distinct_id="u1", workflow=None, before=None, limit=10)
    assert [r["workflow"] for r in runs] == ["welcome"]
    matches, _ = store.subscribers("profiles", query="B@EXAMPLE", after=None, limit=10)
    assert [m["distinct_id"] for m in matches] == ["u1"]  # the search ignores case on both
    on_file = (Path(rt.config.server.data_dir) / "profiles.db").exists()
    assert on_file == (rt.db.dialect == "sqlite")


def test_every_postgresql_node_sees_the_same_profiles(nodes: Callable[[], Runtime]) -> None:
    a = nodes()
    if a.db.dialect != "postgresql":
        pytest.skip("SQLite: one node, its profiles.db")
    b = nodes()
    sync(a, sample_identify(userId="u1", messageId="i1", traits={"email": "a@example.com"}))
    sync(b, sample_identify(userId="u2", messageId="i2", traits={"email": "b@example.com"}))
    sync(b, sample_identify(userId="u1", messageId="i3", traits={"email": "c@example.com"}))
    for rt in (a, b):
        store = prof.store_for(rt.destinations["profiles"].context)
        items, _ = store.subscribers("profiles", query=None, after=None, limit=10)
        assert [i["distinct_id"] for i in items] == ["u1", "u2"]
        u1 = store.subscriber("profiles", "u1")
        assert u1 is not None and u1["channels"]["$email"] == ["a@example.com", "c@example.com"]
