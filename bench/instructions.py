"""Instructions per ingest request through the app, counted by callgrind: a steady measure.

Throughput on a shared 2-core VM moves by +-15% between identical runs, too much to see a 5%
change. ``valgrind --tool=callgrind`` counts executed instructions instead: the same count run
after run, whatever else the machine does. This drives the real ASGI app (``create_app``: auth,
parsing, the group-committed SQLite writer and its fsync thread, on a fresh temp data dir)
without an HTTP server, in waves of concurrent requests, once with 1 wave and once with
``--waves``, and prints the difference per request and per event (start-up cancels out; the
request bodies of every wave are built in both runs, so building them cancels out too).

    python -m bench.instructions [single|batch] [--waves 61] [--app hookyard|bare]

``single``: waves of 32 ``POST /v1/track``; ``batch``: waves of 8 ``POST /v1/batch`` with 100
events each (the connection counts of bench/ingest.py). Needs valgrind (Debian: ``valgrind``);
takes 2-4 minutes per case. ``--app bare`` drives ``bench.apps:bare`` (the baseline of
bench/ingest.py) the same way, so the two counts compare the apps without the HTTP server.
Instructions are not time (cache misses, syscalls and the GIL's hand-offs do not show), so
confirm a change with bench/ingest.py too.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import re
import shutil
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from .common import WRITE_KEY, batch_body, track_event

CONNECTIONS = {"single": 32, "batch": 8}
EVENTS = {"single": 1, "batch": 100}


def _bodies(case: str, waves: int) -> list[list[bytes]]:
    def one(n: int) -> bytes:
        if case == "single":
            return json.dumps(track_event(n, message_id=f"{n:08d}-{uuid.uuid4()}")).encode()
        return batch_body([track_event(i, message_id=f"{n:08d}-{i}-{uuid.uuid4()}")
                           for i in range(EVENTS[case])])

    conns = CONNECTIONS[case]
    return [[one(w * conns + c) for c in range(conns)] for w in range(waves)]


def child(case: str, waves: int, built: int, which: str = "hookyard") -> None:
    """Drive the app: ``built`` waves of bodies are made, the first ``waves`` are sent."""
    from hookyard.app import create_app
    from hookyard.config import default_config
    from hookyard.runtime import Runtime

    data = Path(tempfile.mkdtemp(prefix="hookyard-instructions-"))
    try:
        (data / "write_key").write_text(WRITE_KEY + "\n")
        if which == "bare":
            from .apps import bare as app
        else:
            app = create_app(Runtime.build(default_config(data)), run_workers=False)
        path = "/v1/track" if case == "single" else "/v1/batch"
        auth = b"Basic " + base64.b64encode(f"{WRITE_KEY}:".encode())
        bodies = _bodies(case, built)

        async def post(body: bytes) -> None:
            scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(),
                     "query_string": b"", "root_path": "", "scheme": "http",
                     "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 1),
                     "http_version": "1.1", "asgi": {"version": "3.0"},
                     "headers": [(b"host", b"bench"), (b"authorization", auth),
                                 (b"content-type", b"application/json"),
                                 (b"content-length", str(len(body)).encode())]}
            messages = [{"type": "http.request", "body": body, "more_body": False}]
            status: list[int] = []

            async def receive() -> dict[str, Any]:
                if messages:
                    return messages.pop()
                await asyncio.Event().wait()  # no disconnect before the answer
                raise AssertionError("unreachable")

            async def send(message: dict[str, Any]) -> None:
                if message["type"] == "http.response.start":
                    status.append(message["status"])

            await app(scope, receive, send)
            if status != [200]:
                raise SystemExit(f"answered {status}, not 200")

        async def run() -> None:
            async with app.router.lifespan_context(app):
                for wave in bodies[:waves]:
                    await asyncio.gather(*(post(b) for b in wave))

        asyncio.run(run())
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _count(case: str, waves: int, built: int, work: Path, which: str = "hookyard") -> int:
    out = work / f"callgrind.{which}.{case}.{waves}"
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-m",
         "bench.instructions", "--child", case, str(waves), str(built), which],
        capture_output=True, text=True,
    )
    found = re.search(r"Collected : ([\d,]+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise SystemExit(f"callgrind run failed:\n{proc.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def measure(case: str, waves: int, which: str = "hookyard") -> tuple[float, float]:
    """Instructions per request and per event (``waves`` waves minus one wave)."""
    with tempfile.TemporaryDirectory(prefix="hookyard-callgrind-") as work:
        one = _count(case, 1, waves, Path(work), which)
        many = _count(case, waves, waves, Path(work), which)
    per_request = (many - one) / ((waves - 1) * CONNECTIONS[case])
    return per_request, per_request / EVENTS[case]


def main() -> None:
    if len(sys.argv) in (5, 6) and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), *sys.argv[5:])
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("cases", nargs="*", choices=[*CONNECTIONS, []], metavar="CASE",
                   help="single, batch (default: both)")
    p.add_argument("--waves", type=int, default=61, help="waves in the long run (default 61)")
    p.add_argument("--app", choices=["hookyard", "bare"], default="hookyard",
                   help="the app driven: hookyard (default) or bench.apps:bare")
    a = p.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    for case in a.cases or list(CONNECTIONS):
        per_request, per_event = measure(case, max(2, a.waves), a.app)
        print(f"{a.app:8} {case:6}  {per_request:>12,.0f} instructions/request  {per_event:>10,.0f} /event",
              flush=True)


if __name__ == "__main__":
    main()
