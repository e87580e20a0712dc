"""Run a real hookyard server on a loopback port, in a thread or a subprocess, for tests."""

from __future__ import annotations

import base64
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from ..app import create_app
from ..config import parse_config
from ..http_protocol import http_protocol
from ..runtime import Runtime


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def basic_auth(write_key: str) -> dict[str, str]:
    """The ``Authorization`` header Segment libraries send for a write key."""
    token = base64.b64encode(f"{write_key}:".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def wait_until_up(url: str, timeout: float = 15.0,
                  proc: subprocess.Popen[bytes] | None = None, log: Path | None = None) -> None:
    """Wait for ``/healthz``; when ``proc`` (the server's process) exits meanwhile, fail at
    once with the end of its ``log`` (a config error, a port in use) instead of timing out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:] if log is not None else ""
            raise RuntimeError(f"hookyard exited with {proc.returncode} before it started:\n{tail}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"hookyard did not start at {url} within {timeout} s")


class HookyardServer:
    """A hookyard app served by uvicorn in a background thread (same process).

    ``[server] map_process`` and ``deliver_process`` default to false here: the router maps
    and the workers deliver in the test's process (no helper processes per test server); a
    config may turn them on."""

    def __init__(self, config: dict[str, Any], data_dir: Path, plugins: list[object] | None = None) -> None:
        config = dict(config)
        server = dict(config.get("server", {}))
        server.setdefault("data_dir", str(data_dir))
        server.setdefault("port", free_port())
        server.setdefault("host", "127.0.0.1")
        server.setdefault("admin_token", "test-admin-token")
        server.setdefault("map_process", False)
        server.setdefault("deliver_process", False)
        config["server"] = server
        self.config = parse_config(config)
        self.data_dir = Path(self.config.server.data_dir)  # what a startup hook made is here
        self.runtime = Runtime.build(self.config, plugins)
        self.url = f"http://{self.config.server.host}:{self.config.server.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self._client: httpx.Client | None = None

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.runtime.admin_token}"}

    def write_key(self, source: str | None = None) -> str:
        if source is None:
            return next(iter(self.runtime.sources.values())).write_key
        return self.runtime.sources[source].write_key

    def start(self) -> HookyardServer:
        app = create_app(self.runtime)
        cfg = uvicorn.Config(app, host=self.config.server.host, port=self.config.server.port,
                             log_level="warning", lifespan="on", server_header=False,
                             http=http_protocol())  # the protocol ``hookyard serve`` runs
        self._server = uvicorn.Server(cfg)
        self._thread = threading.Thread(target=self._server.run, daemon=True)
        self._thread.start()
        wait_until_up(self.url)
        return self

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=20)

    def __enter__(self) -> HookyardServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- conveniences ------------------------------------------------------------------------
    def post(self, path: str, body: Any, *, write_key: str | None = None, **kw: Any) -> httpx.Response:
        headers = basic_auth(write_key or self.write_key())
        headers.update(kw.pop("headers", {}))
        return self.client.post(f"{self.url}{path}", json=body, headers=headers, **kw)

    def api(self, path: str, method: str = "GET", **kw: Any) -> httpx.Response:
        return self.client.request(method, f"{self.url}{path}", headers=self.admin_headers, **kw)

    @property
    def client(self) -> httpx.Client:
        """One keep-alive HTTP client per server (a new client per call costs ~50 ms)."""
        if self._client is None:
            self._client = httpx.Client(timeout=10)
        return self._client

    def wait_for_deliver_process(self, timeout: float = 30.0) -> None:
        """Wait until the deliver process (``[server] deliver_process = true``) sends the
        requests of the destinations that allow it: ``serve`` starts without waiting for it."""
        engine = self.runtime.engine
        deliverer = getattr(engine, "deliverer", None)
        if deliverer is None:
            raise AssertionError("no deliver process: set [server] deliver_process = true and"
                                 " use a connector with deliver_anywhere, installed as a plugin")
        deadline = time.monotonic() + timeout
        while not deliverer.ready:
            if time.monotonic() > deadline:
                raise AssertionError(f"the deliver process was not ready within {timeout:g} s")
            time.sleep(0.02)

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Wait until every inbox event is routed and no delivery is pending or in flight."""
        deadline = time.monotonic() + timeout
        db = self.runtime.db
        while time.monotonic() < deadline:
            def check(conn: Any) -> bool:
                if db.dialect == "postgresql":  # routed flags, not a cursor
                    return not conn.execute(
                        "SELECT 1 FROM inbox WHERE NOT routed UNION ALL SELECT 1 FROM outbox"
                        " WHERE state IN ('pending', 'inflight') LIMIT 1"
                    ).fetchall()
                last = conn.execute("SELECT max(id) FROM inbox").fetchone()[0] or 0
                cur = conn.execute("SELECT last_inbox_id FROM router_state").fetchone()
                busy = conn.execute(
                    "SELECT count(*) FROM outbox WHERE state IN ('pending', 'inflight')"
                ).fetchone()[0]
                return (cur[0] if cur else 0) >= last and busy == 0
            if db.read_sync(check):
                return
            time.sleep(0.05)
        raise AssertionError("deliveries still pending after timeout")


class HookyardProcess:
    """``hookyard serve`` in a subprocess (for kill -9 and restart tests)."""

    def __init__(self, config_toml: str, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.config_path = data_dir / "hookyard.toml"
        data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(config_toml)
        self.config = tomllib.loads(config_toml)
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HookyardProcess:
        cmd = [sys.executable, "-m", "hookyard", "serve", "--config", str(self.config_path),
               "--port", str(self.port), "--host", "127.0.0.1", "--data-dir", str(self.data_dir)]
        # the child writes to its own copy of the descriptor: ours is closed at once (left to
        # the garbage collector, it kept the file, and the filesystem it is on, busy)
        with open(self.data_dir / "server.log", "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                         env=os.environ.copy())
        wait_until_up(self.url, timeout=30, proc=self.proc, log=self.data_dir / "server.log")
        return self

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def terminate(self, timeout: float = 30) -> int:
        if self.proc is None:
            return 0
        self.proc.terminate()
        return self.proc.wait(timeout=timeout)

