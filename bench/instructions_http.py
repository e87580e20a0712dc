"""Instructions per single-event ingest request *through uvicorn's HTTP protocol*, counted by
callgrind: what ``bench/ingest.py`` runs (uvloop, httptools, the same protocol classes and
settings as ``hookyard serve`` and the bare baseline), minus the kernel's sockets.

``bench/instructions.py`` calls the ASGI app directly, on asyncio's own loop: it leaves out
uvicorn (common to both servers), uvloop, hookyard's ``HardenedProtocol`` (hookyard only) and
``tune_gc`` (hookyard only). Here each of 32 connections is a protocol instance on a fake
transport: the raw request bytes go in through ``data_received``, and when the response body
has been written the connection sends its next request (a closed loop, as wrk's). The count
of a run of ``R`` requests minus a run of 32 is divided by ``R - 32``.

    python -m bench.instructions_http [--app hookyard|bare|both] [--requests 1952]
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

from .common import WRITE_KEY, track_event

CONNECTIONS = 32


class _Transport(asyncio.Transport):
    """What uvicorn's protocol needs of a transport; a written response body starts the
    connection's next request."""

    def __init__(self, loop: asyncio.AbstractEventLoop, client: _Client) -> None:
        super().__init__()
        self.loop, self.client, self.closing = loop, client, False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 9300), "peername": ("127.0.0.1", 40000)}.get(name, default)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if bytes(data).endswith(b"}"):  # the JSON body: the answer is complete
            self.client.answered(bytes(data))

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0


class _Client:
    def __init__(self, loop: asyncio.AbstractEventLoop, protocol: Any, bodies: list[bytes],
                 left: list[int], done: asyncio.Future[None]) -> None:
        self.loop, self.protocol, self.bodies, self.left, self.done = loop, protocol, bodies, left, done
        self.auth = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()

    def send_next(self) -> None:
        if not self.bodies:
            return
        body = self.bodies.pop()
        head = (f"POST /v1/track HTTP/1.1\r\nHost: 127.0.0.1:9300\r\nAuthorization: {self.auth}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
        self.protocol.data_received(head + body)

    def answered(self, body: bytes) -> None:
        if not body.startswith(b'{"success":true'):
            raise SystemExit(f"answered {body[:200]!r}")
        self.left[0] -= 1
        if self.left[0] == 0:
            self.done.set_result(None)
        else:
            self.loop.call_soon(self.send_next)  # as the next read of the socket would


def child(which: str, requests: int, built: int) -> None:
    import uvicorn
    import uvloop
    from uvicorn.server import ServerState

    data = Path(tempfile.mkdtemp(prefix="hookyard-instructions-"))
    bodies = [json.dumps(track_event(n, message_id=f"{n:08d}-{uuid.uuid4()}")).encode()
              for n in range(built)][:requests]
    try:
        if which == "bare":
            from .apps import bare as app
            config = uvicorn.Config(app, log_level="warning", access_log=False, server_header=False)
        else:
            from hookyard.app import create_app
            from hookyard.config import default_config
            from hookyard.http_protocol import http_protocol
            from hookyard.runtime import Runtime
            from hookyard.serving import tune_gc

            (data / "write_key").write_text(WRITE_KEY + "\n")
            app = create_app(Runtime.build(default_config(data)), run_workers=False)
            config = uvicorn.Config(app, log_level="warning", access_log=False,
                                    server_header=False, log_config=None,
                                    http="httptools" if which == "hookyard-plain" else http_protocol())
        config.load()

        async def run() -> None:
            loop = asyncio.get_running_loop()
            state = ServerState()
            state.default_headers = [(b"date", b"Thu, 01 Jan 2026 00:00:00 GMT")]
            done: asyncio.Future[None] = loop.create_future()
            left = [len(bodies)]
            clients = []
            for c in range(CONNECTIONS):
                protocol = config.http_protocol_class(  # type: ignore[operator]
                    config=config, server_state=state, app_state={}, _loop=loop)
                client = _Client(loop, protocol, bodies[c::CONNECTIONS], left, done)
                protocol.connection_made(_Transport(loop, client))
                clients.append(client)
            for client in clients:
                client.send_next()
            await done

        async def main() -> None:
            if which == "bare":
                await run()
                return
            async with app.router.lifespan_context(app):  # type: ignore[union-attr]
                tune_gc()  # as ``hookyard serve`` does before it serves
                await run()

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    finally:
        shutil.rmtree(data, ignore_errors=True)


def _count(which: str, requests: int, built: int) -> int:
    proc = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-m",
         "bench.instructions_http", "--child", which, str(requests), str(built)],
        capture_output=True, text=True,
    )
    found = re.search(r"Collected : ([\d,]+)", proc.stderr)
    if proc.returncode != 0 or found is None:
        raise SystemExit(f"callgrind run failed:\n{proc.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def measure(which: str, requests: int) -> float:
    one = _count(which, CONNECTIONS, requests)
    many = _count(which, requests, requests)
    return (many - one) / (requests - CONNECTIONS)


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
        return
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--app", choices=["hookyard", "bare", "both", "hookyard-plain"], default="both",
                   help="hookyard-plain: hookyard with uvicorn's own httptools protocol instead of"
                   " hookyard.http_protocol's (what the hardening costs)")
    p.add_argument("--requests", type=int, default=1952, help="requests in the long run")
    a = p.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind)")
    counts = {}
    for which in (["bare", "hookyard"] if a.app == "both" else [a.app]):
        counts[which] = measure(which, max(CONNECTIONS * 2, a.requests))
        print(f"{which:8}  {counts[which]:>12,.0f} instructions/request", flush=True)
    if len(counts) == 2:
        print(f"bare / hookyard: {counts['bare'] / counts['hookyard']:.3f}")


if __name__ == "__main__":
    main()
