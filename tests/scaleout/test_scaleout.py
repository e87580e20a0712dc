"""Three nodes on one PostgreSQL share ingest and delivery: nothing lost, nothing delivered
twice, every user's events in order; a node killed mid-delivery leaves its leased rows to the
others once the lease expires."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psycopg
from hookyard.testing import sample_track
from hookyard.testing.cluster import Cluster, wait_for
from hookyard.testing.fake_server import FakeServer

USERS = 12
PER_USER = 40  # 480 events


def sent(fake: FakeServer) -> list[dict[str, Any]]:
    """Every event the destination received, in arrival order."""
    return [e for body in fake.json_bodies() for e in body["batch"]]


def db(storage: dict[str, str]) -> psycopg.Connection[Any]:
    conn = psycopg.connect(storage["url"], autocommit=True)
    conn.execute(f'SET search_path TO "{storage["schema"]}"')
    return conn


def test_three_nodes_share_the_load_without_losing_or_repeating_events(
    pg_storage: dict[str, str], fake_destination: Any, tmp_path: Path
) -> None:
    fake = fake_destination()
    cluster = Cluster(3, pg_storage, fake.url, tmp_path, batch_size=5, concurrency=4,
                      lease_seconds=30, retry_initial_seconds=0.05, retry_max_seconds=0.2)
    with cluster:
        # 50 ms per answer: a node's concurrency (4) is then what limits delivery, so every
        # node has to take part (with an instant peer one node may claim everything first)
        fake.hang(0.05)

        def send(node: int) -> None:
            """Node ``node`` ingests the events of every third user, in order, 4 users a batch."""
            users = [u for u in range(USERS) if u % 3 == node]
            for seq in range(PER_USER):
                batch = [sample_track(messageId=f"u{u}-{seq}", userId=f"u{u}",
                                      properties={"seq": seq}) for u in users]
                assert cluster.post(node, "/v1/batch", {"batch": batch}).status_code == 200
                if seq % 10 == 0:  # the same events again, through another node: deduped
                    assert cluster.post((node + 1) % 3, "/v1/batch", {"batch": batch}).status_code == 200

        with ThreadPoolExecutor(3) as pool:
            list(pool.map(send, range(3)))
        total = USERS * PER_USER
        wait_for(lambda: len(sent(fake)) >= total, 40, f"{total} deliveries")
        time.sleep(0.5)  # anything extra (a duplicate) would arrive now
        events = sent(fake)
        ids = [e["messageId"] for e in events]
        assert len(ids) == total and len(set(ids)) == total  # none lost, none twice
        for u in range(USERS):
            seqs = [e["properties"]["seq"] for e in events if e["userId"] == f"u{u}"]
            assert seqs == list(range(PER_USER)), f"user u{u} out of order"
        per_node = [cluster.metric(i, "hookyard_deliveries_total", destination="seg", outcome="ok")
                    for i in range(3)]
        # work is shared, not necessarily evenly (per-user order lets only one delivery of a user
        # be in flight at a time), but at least two nodes do a real share of it
        assert sum(per_node) == total and sum(n >= total // 10 for n in per_node) >= 2, per_node
        accepted = [cluster.metric(i, "hookyard_events_accepted_total", source="web") for i in range(3)]
        assert all(n > 0 for n in accepted), accepted
        with db(pg_storage) as conn:
            assert conn.execute("SELECT count(*) FROM inbox").fetchone()[0] == total
            assert conn.execute("SELECT count(*) FROM outbox WHERE state <> 'done'").fetchone()[0] == 0


def test_rows_leased_by_a_killed_node_are_delivered_by_the_others_after_the_lease(
    pg_storage: dict[str, str], fake_destination: Any, tmp_path: Path
) -> None:
    fake = fake_destination()
    lease = 3.0
    cluster = Cluster(3, pg_storage, fake.url, tmp_path, batch_size=2, concurrency=2,
                      lease_seconds=lease, total_timeout_seconds=1.0,
                      retry_initial_seconds=0.05, retry_max_seconds=0.2)
    with cluster, db(pg_storage) as conn:
        fake.hang(30)  # every node's deliveries stay in flight
        for node in range(3):
            batch = [sample_track(messageId=f"n{node}-{i}", userId=f"user{node}-{i % 4}")
                     for i in range(8)]
            assert cluster.post(node, "/v1/batch", {"batch": batch}).status_code == 200

        def leases() -> dict[str, int]:
            rows = conn.execute("SELECT lease_owner, count(*) FROM outbox WHERE state = 'inflight'"
                                " GROUP BY lease_owner").fetchall()
            return {owner: n for owner, n in rows}

        owners = wait_for(lambda: (lambda x: x if len(x) >= 2 else None)(leases()), 15,
                          "deliveries leased by two nodes")
        victim = next(i for i in range(3) if any(f":{cluster.pid(i)}:" in o for o in owners))
        owner = next(o for o in owners if f":{cluster.pid(victim)}:" in o)
        cluster.nodes[victim].kill()
        killed_at = time.time()
        held = conn.execute("SELECT id, message_id, lease_until FROM outbox WHERE lease_owner = %s"
                            " AND state = 'inflight'", (owner,)).fetchall()
        assert held, "the killed node held no lease"
        fake.reset()  # the destination answers again

        def all_done() -> bool:
            return conn.execute("SELECT count(*) FROM outbox WHERE state <> 'done'").fetchone()[0] == 0

        wait_for(all_done, 30, "every delivery done after the kill")
        for oid, message_id, lease_until in held:
            state, owner_now, attempts, updated = conn.execute(
                "SELECT state, lease_owner, attempts, updated_at FROM outbox WHERE id = %s", (oid,)
            ).fetchone()
            assert state == "done" and owner_now is None
            assert updated >= lease_until > killed_at - lease, message_id  # only after expiry
        ok = {e["messageId"] for body in fake.json_bodies() for e in body["batch"]}
        assert ok >= {f"n{n}-{i}" for n in range(3) for i in range(8)}  # nothing lost
        assert conn.execute("SELECT count(*) FROM inbox").fetchone()[0] == 24


def test_every_node_serves_the_profiles_any_node_delivered(
    pg_storage: dict[str, str], fake_destination: Any, tmp_path: Path
) -> None:
    """The profile store lives in PostgreSQL too: /api/subscribers is the same on every node."""
    fake = fake_destination()
    with Cluster(3, pg_storage, fake.url, tmp_path, profiles=True) as cluster:
        for u in range(USERS):  # each user identified through another node
            body = {"userId": f"u{u}", "messageId": f"id-{u}", "traits": {"email": f"u{u}@example.com"}}
            assert cluster.post(u % 3, "/v1/identify", body).status_code == 200
        with db(pg_storage) as conn:
            wait_for(lambda: conn.execute("SELECT count(*) FROM outbox WHERE destination = 'profiles'"
                                          " AND state = 'done'").fetchone()[0] == USERS,
                     20, "profile deliveries")
        for node in range(3):
            page = cluster.api(node, "/api/subscribers?limit=100")
            assert sorted(s["distinct_id"] for s in page["subscribers"]) == sorted(
                f"u{u}" for u in range(USERS))
            one = cluster.api(node, "/api/subscribers/u7")
            assert one["channels"]["$email"] == ["u7@example.com"]
        assert (tmp_path / "node0" / "hookyard.toml").exists()  # the nodes' data dirs...
        assert not any((tmp_path / f"node{i}" / "profiles.db").exists() for i in range(3))  # ...hold no store
