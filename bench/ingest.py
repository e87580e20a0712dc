"""Ingest throughput: ``hookyard serve`` against a bare Starlette endpoint, in the same run.

Cases, each with the same load generator, connection count and body against every server:

* ``single``: ``POST /v1/track``, one ~400-byte track event per request, Basic auth write key;
* ``batch``:  ``POST /v1/batch`` with ``--batch`` (100) such events per request.

Servers, one process each with uvicorn's defaults (one worker, uvloop, httptools):

* ``bare``: ``bench.apps:bare`` parses the JSON and answers 200 (no auth, no validation, no disk);
* ``hookyard``: ``hookyard serve --no-workers`` with the default config (one Segment source ->
  profile store) and a fresh temp data dir: auth, typed validation, group-committed SQLite
  inbox with ``synchronous=FULL`` (fsync), acknowledged after commit;
* ``hookyard sync=normal``: the same as ``hookyard`` with ``[storage] synchronous = "normal"``
  (no fsync per commit: survives kill -9, not a power cut), to show what the fsync costs;
* ``hookyard+workers``: the same with the router and delivery workers running (every event also
  goes through the profile store while ingest is measured).

Every event carries a fresh random ``messageId`` (the load generator writes one into each event
of each request, as Segment's libraries do), so every request stores new rows. Afterwards the
inbox is counted and must hold every acknowledged event.

Targets (issue): single ingest >= 0.8x bare Starlette; batch >= 50,000 events/s.

    python -m bench.ingest [--duration 5] [--connections 32] [--batch-connections 8]
"""

from __future__ import annotations

import argparse
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import msgspec

from .common import (
    PROBLEMS,
    WRITE_KEY,
    Row,
    Served,
    basic_auth,
    batch_body,
    exit_status,
    fmt_int,
    fmt_ms,
    fmt_ratio,
    hookyard_serve,
    invalid,
    print_table,
    temp_dir,
    track_event,
    uvicorn_app,
)
from .loadgen import MID, LoadResult, run_load, tool

SINGLE_TARGET = 0.8
BATCH_TARGET = 50_000
COLUMNS = ["req/s", "events/s", "p50 ms", "p99 ms", "cpu us/event", "vs bare", "target"]


@dataclass
class Case:
    name: str
    path: str
    body: Path
    events: int
    connections: int


@dataclass
class Measured:
    server: str
    case: Case
    result: LoadResult
    cpu_s: float  # server process CPU time (all threads) during the measured run
    acked_events: int = 0  # warm-up included, for the inbox check
    round: int = 0

    @property
    def events_per_s(self) -> float:
        return self.result.rps * self.case.events

    @property
    def cpu_us_per_event(self) -> float:
        done = self.result.ok * self.case.events
        return self.cpu_s / done * 1e6 if done else 0.0


def _cases(work: Path, batch: int, connections: int, batch_connections: int) -> list[Case]:
    single = work / "single.json"
    single.write_bytes(msgspec.json.encode(track_event(1, message_id=MID.decode())))
    many = work / "batch.json"
    many.write_bytes(batch_body([track_event(i, message_id=MID.decode()) for i in range(batch)]))
    return [
        Case("single", "/v1/track", single, 1, connections),
        Case(f"batch {batch}", "/v1/batch", many, batch, batch_connections),
    ]


HEADERS = {"Authorization": basic_auth(), "Content-Type": "application/json"}
NORMAL = "hookyard sync=normal"
# the default config (one Segment source -> profile store), with fsync off for commits
NORMAL_CONFIG = """\
[storage]
synchronous = "normal"

[[sources]]
name = "default"
plugin = "segment"
write_key = "{key}"

[[destinations]]
name = "profiles"
plugin = "profiles"
sources = ["default"]
"""


def _measure(name: str, server: Served, case: Case, duration: float, warmup: float,
             round_: int = 0) -> Measured:
    target = server.url + case.path
    warm = run_load(target, case.body, HEADERS, case.connections, warmup)
    cpu = server.cpu_seconds()
    res = run_load(target, case.body, HEADERS, case.connections, duration)
    cpu = server.cpu_seconds() - cpu
    if warm.bad_status or res.bad_status:  # a refused request is no throughput
        invalid(f"{name} {case.name}: {warm.bad_status + res.bad_status} non-2xx answers")
    if res.socket_errors:
        print(f"  warning: {name} {case.name}: {res.socket_errors} socket errors")
    m = Measured(name, case, res, cpu, (warm.ok + res.ok) * case.events, round_)
    print(f"  {name:<20} {case.name:<10} {res.rps:>8,.0f} req/s {m.events_per_s:>8,.0f} events/s"
          f"  p50 {fmt_ms(res.p50_us):>6} ms  p99 {fmt_ms(res.p99_us):>6} ms"
          f"  cpu {m.cpu_us_per_event:>5.0f} us/event", flush=True)
    return m


def _inbox_count(data_dir: Path) -> int:
    conn = sqlite3.connect(f"file:{data_dir / 'hookyard.db'}?mode=ro", uri=True, timeout=10)
    try:
        return int(conn.execute("SELECT count(*) FROM inbox").fetchone()[0])
    finally:
        conn.close()


def _check_inbox(name: str, data: Path, measured: list[Measured]) -> None:
    stored = _inbox_count(data)
    acked = sum(m.acked_events for m in measured)
    if stored < acked:
        invalid(f"{name}: {acked} events acknowledged but {stored} in the inbox")


def _median(results: list[Measured]) -> dict[tuple[str, str], tuple[Measured, float | None]]:
    """Per (server, case): its median round by throughput (the lower middle one of an even
    count), and the median of its per-round ratios to bare Starlette's round of the same
    turn (they ran side by side, so the machine's load hit both alike)."""
    rounds: dict[tuple[str, str], list[Measured]] = {}
    for m in results:
        rounds.setdefault((m.server, m.case.name), []).append(m)
    out: dict[tuple[str, str], tuple[Measured, float | None]] = {}
    for (server, case), ms in rounds.items():
        middle = sorted(ms, key=lambda m: m.result.rps)[(len(ms) - 1) // 2]
        bare = {m.round: m for m in rounds[("bare starlette", case)]}
        ratios = sorted(m.result.rps / bare[m.round].result.rps for m in ms
                        if m.round in bare and bare[m.round].result.rps)
        paired = server != "bare starlette" and server != "hookyard+workers" and ratios
        ratio = ratios[(len(ratios) - 1) // 2] if paired else None
        if server == "hookyard+workers":  # measured alone, after the others: medians only
            base = sorted(m.result.rps for m in rounds[("bare starlette", case)])
            ratio = middle.result.rps / base[(len(base) - 1) // 2] if base else None
        out[(server, case)] = (middle, ratio)
    return out


def run(duration: float = 5.0, warmup: float = 1.0, batch: int = 100, connections: int = 32,
        batch_connections: int = 8, rounds: int = 3, with_workers: bool = True) -> list[Row]:
    """Run every case against every server; return the table rows.

    bare, hookyard and hookyard sync=normal (--no-workers) run side by side and are measured in turns, case by case,
    ``rounds`` times, so load from elsewhere on the machine hits both alike; each cell is the
    median round, each ratio the median of the rounds' paired ratios. hookyard with workers comes last, alone (its router keeps working after a run).
    """
    print(f"ingest: load generator {tool()}, {rounds} rounds of {duration:g} s per case"
          f" (+{warmup:g} s warm-up)")
    results: list[Measured] = []
    with temp_dir("ingest") as work:
        cases = _cases(work, batch, connections, batch_connections)
        data = work / "hookyard"
        normal_data = work / "hookyard-normal"
        normal_config = work / "normal.toml"
        normal_config.write_text(NORMAL_CONFIG.format(key=WRITE_KEY))
        with uvicorn_app("bench.apps:bare", work) as bare, \
                hookyard_serve(data, workers=False) as hook, \
                hookyard_serve(normal_data, workers=False, config=normal_config) as normal:
            for n in range(rounds):
                for case in cases:
                    results.append(_measure("bare starlette", bare, case, duration, warmup, n))
                    results.append(_measure("hookyard", hook, case, duration, warmup, n))
                    results.append(_measure(NORMAL, normal, case, duration, warmup, n))
            _check_inbox("hookyard", data, [m for m in results if m.server == "hookyard"])
            _check_inbox(NORMAL, normal_data, [m for m in results if m.server == NORMAL])
        if with_workers:
            data = work / "hookyard-workers"
            with hookyard_serve(data, workers=True) as hook:
                measured = [_measure("hookyard+workers", hook, case, duration, warmup, n)
                            for n in range(rounds) for case in cases]
                _check_inbox("hookyard+workers", data, measured)
            results += measured
    return _rows(_median(results))


def _rows(picked: dict[tuple[str, str], tuple[Measured, float | None]]) -> list[Row]:
    rows = []
    for (server, case_name), (m, ratio) in picked.items():
        target = ""
        if server == "hookyard" and PROBLEMS:
            target = "INVALID (see the errors above)"
        elif server == "hookyard":
            if m.case.events == 1:
                met = ratio is not None and ratio >= SINGLE_TARGET
                target = f">= {SINGLE_TARGET}x: {'met' if met else 'MISSED'}"
            else:
                met = m.events_per_s >= BATCH_TARGET
                target = f">= {BATCH_TARGET:,} ev/s: {'met' if met else 'MISSED'}"
        rows.append(Row(f"ingest {case_name}", server, {
            "req/s": fmt_int(m.result.rps),
            "events/s": fmt_int(m.events_per_s),
            "p50 ms": fmt_ms(m.result.p50_us),
            "p99 ms": fmt_ms(m.result.p99_us),
            "cpu us/event": f"{m.cpu_us_per_event:.0f}",
            "vs bare": fmt_ratio(ratio),
            "target": target,
        }))
    order = {"bare starlette": 0, "hookyard": 1, NORMAL: 2}
    rows.sort(key=lambda r: (r.bench, order.get(r.case, 3), r.case))
    return rows


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--duration", type=float, default=5.0, help="seconds measured per case")
    p.add_argument("--warmup", type=float, default=1.0, help="seconds of warm-up per case")
    p.add_argument("--batch", type=int, default=100, help="events per /v1/batch request")
    p.add_argument("--connections", type=int, default=32, help="connections, single case")
    p.add_argument("--batch-connections", type=int, default=8, help="connections, batch case")
    p.add_argument("--rounds", type=int, default=3,
                   help="measurements per case and server (the median counts)")
    p.add_argument("--no-workers-variant", action="store_true",
                   help="skip the run with delivery workers on")


def from_args(a: argparse.Namespace) -> list[Row]:
    return run(a.duration, a.warmup, a.batch, a.connections, a.batch_connections, a.rounds,
               not a.no_workers_variant)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    add_arguments(p)
    rows = from_args(p.parse_args())
    print_table(rows, COLUMNS, "ingest")
    raise SystemExit(exit_status())


if __name__ == "__main__":
    main()
