"""Delivery throughput: inbox -> outbox -> a fast loopback peer, against a bare aiohttp loop.

For each case (``single``: the Segment forwarder with ``batch_size = 1``, one event per
``POST /v1/batch``; ``batch``: its default 100 events per request):

1. ``hookyard serve --no-workers`` (fresh temp data dir, ``synchronous = FULL``) ingests N
   events with random messageIds from 1,000 users through ``/v1/batch``; then it stops.
2. The peer (``bench.apps:peer``, its own uvicorn process) answers 200 to everything.
3. ``hookyard worker`` starts on that data dir: its router maps the inbox into the outbox and
   one worker per destination (concurrency 8, the default) delivers. Time runs from the
   worker's start-up line to the last recorded attempt; the outbox must end with N ``done``
   rows and the peer must have received N events.
4. The baseline, in its own process too: an aiohttp session (same connector settings as
   ``hookyard.http.HttpClient``) posts the same request bodies (built from the same inbox rows
   exactly as the forwarder builds them) to the same peer with the same concurrency, the whole
   list again until at least three seconds have passed (a single pass can take 50 ms).

Targets (issue): engine >= 0.7x baseline, and >= 20,000 events/s batched on one worker.

    python -m bench.delivery [--events 50000] [--single-events 20000] [--concurrency 8]

An outbox or a peer short of any event makes the run INVALID (exit status 1).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from .common import (
    ADMIN_TOKEN,
    HOST,
    PROBLEMS,
    WRITE_KEY,
    Row,
    basic_auth,
    batch_body,
    exit_status,
    fmt_int,
    fmt_ratio,
    hookyard_serve,
    invalid,
    print_table,
    spawn,
    temp_dir,
    track_event,
    uvicorn_app,
)

TARGET_RATIO = 0.7
TARGET_BATCHED = 20_000
DOWNSTREAM_KEY = "wk_downstream_0123456789"
COLUMNS = ["events", "requests", "seconds", "events/s", "route ev/s", "cpu us/event", "vs baseline",
           "target"]

CONFIG = """\
[server]
admin_token = "{admin}"

[[sources]]
name = "web"
plugin = "segment"
write_key = "{key}"

[[destinations]]
name = "peer"
plugin = "segment"
sources = ["web"]
[destinations.settings]
write_key = "{downstream}"
base_url = "{peer}"
[destinations.delivery]
concurrency = {concurrency}
{batch_line}
"""


@dataclass
class Case:
    name: str
    events: int
    batch: int  # events per delivery request


@dataclass
class EngineRun:
    seconds: float
    route_seconds: float
    cpu_s: float
    map_cpu_s: float  # the worker's helper processes (map process, deliver process)
    done: int
    requests: int


@dataclass
class BaselineRun:
    seconds: float
    requests: int
    failures: int
    rounds: int = 1  # times the whole body list was posted (short runs are repeated)


# -- pre-fill --------------------------------------------------------------------------------
async def _ingest(url: str, events: int, per_request: int = 100, concurrency: int = 4) -> None:
    import aiohttp

    headers = {"Authorization": basic_auth(), "Content-Type": "application/json"}
    starts = iter(range(0, events, per_request))

    async def one(session: aiohttp.ClientSession) -> None:
        for start in starts:
            n = min(per_request, events - start)
            body = batch_body([track_event(start + i, message_id=str(uuid.uuid4()))
                               for i in range(n)])
            async with session.post(f"{url}/v1/batch", data=body, headers=headers) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"ingest answered {resp.status}: {await resp.text()}")

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(*(one(session) for _ in range(concurrency)))


def _db(data: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data / 'hookyard.db'}?mode=ro", uri=True, timeout=10)


def _request_bodies(data: Path, batch: int) -> list[bytes]:
    """The bodies the forwarder sends for the inbox, in id order: the stored event plus type,
    messageId and receivedAt, ``batch`` per ``{"batch": [...], "sentAt": ...}``."""
    from hookyard.inbox import decode_row
    from hookyard_segment.forwarder import batch_body as forwarder_body
    from hookyard_segment.forwarder import sent_at

    conn = _db(data)
    try:
        rows = conn.execute(
            "SELECT id, source, message_id, type, received_at, raw FROM inbox ORDER BY id"
        ).fetchall()
    finally:
        conn.close()
    encoded = [msgspec.json.encode(decode_row(r)) for r in rows]
    sent = sent_at()
    return [forwarder_body(encoded[i:i + batch], sent) for i in range(0, len(encoded), batch)]


# -- the engine --------------------------------------------------------------------------------
def _wait_for_line(log: Path, text: str, proc: object, timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return time.time()
        if getattr(proc, "poll")() is not None:  # noqa: B009
            raise RuntimeError(f"hookyard worker exited:\n{log.read_text(errors='replace')[-2000:]}")
        time.sleep(0.01)
    raise RuntimeError(f"hookyard worker did not start within {timeout} s")


def _progress(data: Path) -> tuple[int, int, int]:
    """(outbox rows, done rows, rows still pending or in flight), counted at the end."""
    conn = _db(data)
    try:
        total, done, busy = conn.execute(
            "SELECT count(*), sum(state = 'done'), sum(state IN ('pending', 'inflight'))"
            " FROM outbox"
        ).fetchone()
        return int(total), int(done or 0), int(busy or 0)
    finally:
        conn.close()


def _unfinished(data: Path) -> tuple[int, int]:
    """(outbox rows, rows still pending or in flight), polled while the worker runs: through
    the rowid and the (destination, state) index, so the poll does not read the whole outbox
    every 50 ms on the cores the worker needs (a full count took about 2 ms per 10,000 rows)."""
    conn = _db(data)
    try:
        (rows,) = conn.execute("SELECT coalesce(max(id), 0) FROM outbox").fetchone()
        (busy,) = conn.execute(
            "SELECT count(*) FROM outbox WHERE destination = 'peer' AND state IN ('pending', 'inflight')"
        ).fetchone()
        return int(rows), int(busy)
    finally:
        conn.close()


def _run_engine(data: Path, config: Path, events: int, timeout: float) -> EngineRun:
    log = data.parent / f"{data.name}-worker.log"
    proc = spawn(["-m", "hookyard", "worker", "--config", str(config), "--data-dir", str(data)], log)
    try:
        started = _wait_for_line(log, "hookyard worker: delivering", proc.popen)
        cpu0 = _cpu(proc.popen.pid)
        deadline = time.monotonic() + timeout
        while True:
            total, busy = _unfinished(data)
            if total >= events and busy == 0:
                break
            if time.monotonic() > deadline:
                print(f"  timeout: {_progress(data)[1]} of {events} delivered after {timeout:g} s")
                break
            time.sleep(0.05)
        cpu_end = _cpu(proc.popen.pid)
        cpu, map_cpu = cpu_end[0] - cpu0[0], cpu_end[1] - cpu0[1]
    finally:
        proc.stop()
    conn = _db(data)
    try:
        last, requests = conn.execute(
            "SELECT max(at), count(DISTINCT at) FROM attempts WHERE outcome = 'ok'"
        ).fetchone()
        routed = conn.execute("SELECT max(created_at) FROM outbox").fetchone()[0]
    finally:
        conn.close()
    # routed before the start-up line was read (a small run): the routing took no visible time
    return EngineRun((last or time.time()) - started, max(0.0, (routed or started) - started),
                     cpu, map_cpu,
                     _progress(data)[1], int(requests or 0))


def _cpu(pid: int) -> tuple[float, float]:
    """CPU seconds of the worker and of its child processes (the map and deliver processes)."""
    from .common import Served

    children = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rpartition(")")[2].split()[1]) == pid:
                    children += Served("", int(entry.name)).cpu_seconds()
            except (OSError, ValueError, IndexError):
                continue
    return Served("", pid).cpu_seconds(), children


# -- the baseline ------------------------------------------------------------------------------
async def _post_all(url: str, bodies: list[bytes], concurrency: int,
                    min_seconds: float = 3.0) -> BaselineRun:
    """Post every body once, ``concurrency`` at a time; again while under ``min_seconds``."""
    import aiohttp

    headers = {"Authorization": basic_auth(DOWNSTREAM_KEY), "Content-Type": "application/json"}
    failures = 0

    async def one(session: aiohttp.ClientSession, todo: Iterator[bytes]) -> None:
        nonlocal failures
        for body in todo:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                if resp.status != 200:
                    failures += 1

    timeout = aiohttp.ClientTimeout(total=15, sock_connect=5)
    connector = aiohttp.TCPConnector(limit=100)
    rounds = 0
    async with aiohttp.ClientSession(timeout=timeout, connector=connector,
                                     auto_decompress=True) as session:
        started = time.perf_counter()
        while rounds == 0 or time.perf_counter() - started < min_seconds:
            todo = iter(bodies)
            await asyncio.gather(*(one(session, todo) for _ in range(concurrency)))
            rounds += 1
        seconds = time.perf_counter() - started
    return BaselineRun(seconds, len(bodies) * rounds, failures, rounds)


def _run_baseline(url: str, bodies: list[bytes], concurrency: int, work: Path) -> BaselineRun:
    """The baseline loop in a child process, like the engine."""
    path = work / "baseline-bodies.json"
    path.write_bytes(msgspec.json.encode([b.decode() for b in bodies]))
    out = work / "baseline-result.json"
    proc = spawn(["-m", "bench.delivery", "--baseline-child", str(path), url, str(concurrency),
                  str(out)], work / "baseline.log")
    try:
        if proc.popen.wait(timeout=300) != 0:
            raise RuntimeError(f"baseline failed:\n{proc.tail()}")
    finally:
        proc.stop()
    return BaselineRun(**json.loads(out.read_text()))


def _baseline_child(bodies_path: str, url: str, concurrency: str, out: str) -> None:
    bodies = [b.encode() for b in msgspec.json.decode(Path(bodies_path).read_bytes())]
    try:
        from uvloop import run as arun
    except ImportError:
        arun = asyncio.run  # type: ignore[assignment]
    res = arun(_post_all(url, bodies, int(concurrency)))
    Path(out).write_text(json.dumps(res.__dict__))


# -- driver ----------------------------------------------------------------------------------
def _peer_stats(url: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{url}/stats", timeout=5) as resp:
        return json.loads(resp.read())  # type: ignore[no-any-return]


def _run_case(case: Case, peer: str, work: Path, concurrency: int, timeout: float) -> list[Row]:
    data = work / case.name.replace(" ", "-")
    data.mkdir()
    config = work / f"{data.name}.toml"
    config.write_text(CONFIG.format(
        admin=ADMIN_TOKEN, key=WRITE_KEY, downstream=DOWNSTREAM_KEY, peer=peer,
        concurrency=concurrency, batch_line=f"batch_size = {case.batch}",
    ))
    t = time.perf_counter()
    with hookyard_serve(data, workers=False, config=config) as hook:
        asyncio.run(_ingest(hook.url, case.events))
    print(f"  {case.name}: ingested {case.events:,} events in {time.perf_counter() - t:.1f} s",
          flush=True)
    before = _peer_stats(peer)
    engine = _run_engine(data, config, case.events, timeout)
    after = _peer_stats(peer)
    received = after["events"] - before["events"]
    engine_requests = after["requests"] - before["requests"]
    if engine.done != case.events or received < case.events:
        invalid(f"delivery {case.name}: {engine.done} of {case.events} done,"
                f" the peer got {received}")
    bodies = _request_bodies(data, case.batch)
    before = _peer_stats(peer)
    base = _run_baseline(f"{peer}/v1/batch", bodies, concurrency, work)
    got = _peer_stats(peer)["events"] - before["events"]
    if base.failures or got != case.events * base.rounds:
        invalid(f"delivery {case.name} baseline: {base.failures} failed requests, the peer"
                f" got {got} events")
    eng_rate = engine.done / engine.seconds if engine.seconds > 0 else 0.0
    base_rate = case.events * base.rounds / base.seconds
    route_rate = case.events / engine.route_seconds if engine.route_seconds > 0 else 0.0
    ratio = eng_rate / base_rate
    print(f"  {case.name}: engine {eng_rate:,.0f} events/s ({engine.seconds:.2f} s, routing done"
          f" after {engine.route_seconds:.2f} s), baseline {base_rate:,.0f} events/s"
          f" ({base.seconds:.2f} s): {ratio:.2f}x", flush=True)
    target = f">= {TARGET_RATIO}x: {'met' if ratio >= TARGET_RATIO else 'MISSED'}"
    if case.batch > 1:
        target += f"; >= {TARGET_BATCHED:,} ev/s: {'met' if eng_rate >= TARGET_BATCHED else 'MISSED'}"
    if any(p.startswith(f"delivery {case.name}") for p in PROBLEMS):
        target = "INVALID (see the errors above)"
    bench = f"delivery {case.name}"
    return [
        Row(bench, "baseline aiohttp loop", {
            "events": fmt_int(case.events * base.rounds), "requests": fmt_int(base.requests),
            "seconds": f"{base.seconds:.2f}", "events/s": fmt_int(base_rate),
        }),
        Row(bench, "hookyard worker", {
            "events": fmt_int(engine.done), "requests": fmt_int(engine_requests),
            "seconds": f"{engine.seconds:.2f}", "events/s": fmt_int(eng_rate),
            "route ev/s": fmt_int(route_rate) if route_rate else "",
            "cpu us/event": f"{engine.cpu_s / max(1, engine.done) * 1e6:.0f}"
                            f" + {engine.map_cpu_s / max(1, engine.done) * 1e6:.0f}",
            "vs baseline": fmt_ratio(ratio), "target": target,
        }),
    ]


def run(events: int = 50_000, single_events: int = 20_000, concurrency: int = 8,
        timeout: float = 120.0) -> list[Row]:
    print(f"delivery: {single_events:,} events one per request, {events:,} in batches of 100,"
          f" concurrency {concurrency}, peer on {HOST}")
    cases = [Case("single", single_events, 1), Case("batch 100", events, 100)]
    rows: list[Row] = []
    with temp_dir("delivery") as work, uvicorn_app("bench.apps:peer", work) as peer:
        for case in cases:
            if case.events > 0:
                rows += _run_case(case, peer.url, work, concurrency, timeout)
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--events", type=int, default=50_000, help="events of the batched case")
    p.add_argument("--single-events", type=int, default=20_000,
                   help="events of the one-per-request case")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds to wait per case")


def from_args(a: argparse.Namespace) -> list[Row]:
    return run(a.events, a.single_events, a.concurrency, a.timeout)


def main() -> None:
    if len(sys.argv) == 6 and sys.argv[1] == "--baseline-child":
        _baseline_child(*sys.argv[2:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_arguments(p)
    rows = from_args(p.parse_args())
    print_table(rows, COLUMNS, "delivery")
    raise SystemExit(exit_status())


if __name__ == "__main__":
    main()
