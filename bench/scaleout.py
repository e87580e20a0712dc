"""Scale-out benchmark: events/s ingested and delivered by 1, 2 and 3 hookyard nodes on one
PostgreSQL, with one node on SQLite (the default) beside them, in one run.

    python bench/scaleout.py                  # 20,000 events per configuration
    python bench/scaleout.py --events 5000 --nodes 1,3

Each configuration starts real ``hookyard serve`` processes (a fresh PostgreSQL schema, or a
fresh SQLite file), one Segment source and one Segment-forwarder destination pointed at a fake
destination in this process (hookyard.testing.fake_server, answers 200 at once). A load
generator in its own process (aiohttp, closed loop) posts ``/v1/batch`` requests of
``--batch`` events without messageId (hookyard gives each a new one) for ``--users`` users,
round-robin over the nodes. Measured:

* ingest events/s: events acknowledged / time the load generator took;
* delivered events/s: events / time from the first request to the last event the
  destination received (ingest, routing and delivery overlap);
* CPU seconds per 1,000 events of the hookyard nodes, PostgreSQL, the load generator and this
  process (the fake destination): where the machine's cores went.

Only 127.0.0.1 is used. Run it on a quiet machine: every number is CPU-bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from hookyard.testing.cluster import WRITE_KEY, Cluster, wait_for
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.postgres import pg_unavailable, temp_schema
from hookyard.testing.server import basic_auth

TICKS = os.sysconf("SC_CLK_TCK")


# -- load generator (runs in its own process: python bench/scaleout.py --loadgen ...) -----------
def bodies(batch: int, users: int, count: int = 64) -> list[bytes]:
    """``count`` different /v1/batch bodies of ``batch`` track events (no messageId)."""
    out = []
    for b in range(count):
        events = [{"type": "track", "userId": f"user-{(b * batch + i) % users}", "event": "Bench Event",
                   "properties": {"plan": "pro", "i": i}, "timestamp": "2026-01-01T00:00:00.000Z"}
                  for i in range(batch)]
        out.append(json.dumps({"batch": events}).encode())
    return out


async def loadgen(urls: list[str], requests: int, batch: int, users: int, connections: int) -> dict[str, Any]:
    import aiohttp

    payloads = bodies(batch, users)
    headers = {**basic_auth(WRITE_KEY), "Content-Type": "application/json"}
    todo = iter(range(requests))
    bad = 0
    latencies: list[float] = []

    async def worker(session: aiohttp.ClientSession, k: int) -> None:
        nonlocal bad
        for n in todo:
            url = urls[(n + k) % len(urls)] + "/v1/batch"
            t0 = time.perf_counter()
            async with session.post(url, data=payloads[n % len(payloads)], headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    bad += 1
            latencies.append(time.perf_counter() - t0)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=connections)) as session:
        started = time.perf_counter()
        await asyncio.gather(*(worker(session, k) for k in range(connections)))
        seconds = time.perf_counter() - started
    latencies.sort()
    return {"requests": requests, "bad": bad, "seconds": seconds,
            "p50_ms": latencies[len(latencies) // 2] * 1000,
            "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000}


# -- CPU accounting -------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its waited-for children (0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(f) for f in fields[11:15]) / TICKS


def postgres_cpu() -> float:
    total = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "postgres":
                    total += cpu_seconds(int(entry.name))
            except OSError:
                pass
    return total


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# -- one configuration ----------------------------------------------------------------------------
def run_one(label: str, nodes: int, storage: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    requests = args.events // args.batch
    events = requests * args.batch
    with FakeServer() as fake, tempfile.TemporaryDirectory(prefix="hy-bench-") as tmp:
        cluster = Cluster(nodes, storage, fake.url, Path(tmp), concurrency=8)
        with cluster:
            warm = [cluster.post(i, "/v1/track", {"type": "track", "userId": "warm", "event": "w"})
                    for i in range(nodes)]
            assert all(r.status_code == 200 for r in warm)
            wait_for(lambda: fake_count(fake) >= nodes, 30, "warm-up deliveries")
            fake.clear()
            pids = [cluster.pid(i) for i in range(nodes)]
            cpu0 = [sum(cpu_seconds(p) for p in pids), postgres_cpu(), own_cpu()]
            started = time.perf_counter()
            cmd = [sys.executable, __file__, "--loadgen", ",".join(n.url for n in cluster.nodes),
                   "--requests", str(requests), "--batch", str(args.batch), "--users",
                   str(args.users), "--connections", str(args.connections)]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
            out, _ = proc.communicate(timeout=600)
            load = json.loads(out)
            gen_cpu = load.pop("cpu")
            wait_for(lambda: fake_count(fake) >= events, 600, f"{events} deliveries", 0.05)
            delivered_at = time.perf_counter() - started
            cpu1 = [sum(cpu_seconds(p) for p in pids), postgres_cpu(), own_cpu()]
            time.sleep(0.3)
            extra = fake_count(fake) - events
    per_k = 1000 / events
    return {
        "config": label, "nodes": nodes, "events": events,
        "ingest_eps": events / load["seconds"], "delivered_eps": events / delivered_at,
        "p50_ms": load["p50_ms"], "p99_ms": load["p99_ms"], "refused": load["bad"],
        "duplicates": extra,
        "cpu_nodes": (cpu1[0] - cpu0[0]) * per_k, "cpu_pg": (cpu1[1] - cpu0[1]) * per_k,
        "cpu_loadgen": gen_cpu * per_k, "cpu_fake": (cpu1[2] - cpu0[2]) * per_k,
    }


def fake_count(fake: FakeServer) -> int:
    return sum(len(body["batch"]) for body in fake.json_bodies())


def table(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    head = (f"{'storage':<12}{'nodes':>6}{'ingest ev/s':>13}{'delivered ev/s':>16}{'p50 ms':>8}"
            f"{'p99 ms':>8}{'dup':>5}   CPU s/1k events: nodes / postgres / loadgen / fake")
    lines = [f"{args.events} events per run, /v1/batch of {args.batch}, {args.users} users, "
             f"{args.connections} client connections, {os.cpu_count()} cores", head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['config']:<12}{r['nodes']:>6}{r['ingest_eps']:>13,.0f}{r['delivered_eps']:>16,.0f}"
            f"{r['p50_ms']:>8.1f}{r['p99_ms']:>8.1f}{r['duplicates']:>5}   "
            f"{r['cpu_nodes']:.3f} / {r['cpu_pg']:.3f} / {r['cpu_loadgen']:.3f} / {r['cpu_fake']:.3f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--batch", type=int, default=20, help="events per /v1/batch request")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--nodes", default="1,2,3", help="PostgreSQL node counts to run")
    parser.add_argument("--no-sqlite", action="store_true")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--loadgen", help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.loadgen:
        result = asyncio.run(loadgen(args.loadgen.split(","), args.requests, args.batch,
                                     args.users, args.connections))
        result["cpu"] = own_cpu()
        print(json.dumps(result))
        return
    rows = []
    if not args.no_sqlite:
        rows.append(run_one("SQLite", 1, {}, args))
        print(table(rows, args), flush=True)
    reason = pg_unavailable()
    if reason:
        print(f"PostgreSQL skipped: {reason}")
    else:
        for n in [int(x) for x in args.nodes.split(",") if x]:
            with temp_schema(f"hy_bench_{uuid.uuid4().hex[:4]}") as storage:
                rows.append(run_one("PostgreSQL", n, storage, args))
            print(table(rows, args), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
