"""Shared pieces of the benchmarks: processes on loopback ports, sample bodies, result tables.

Every server a benchmark measures runs in its own process (``hookyard serve``, a bare uvicorn
app), and so does the load generator, so no two share one interpreter's CPU accounting or GIL.
Only 127.0.0.1 is ever used.
"""

from __future__ import annotations

import base64
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import msgspec

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
WRITE_KEY = "wk_bench_0123456789"
ADMIN_TOKEN = "adm_bench_0123456789"
TIMESTAMP = "2026-01-01T00:00:00.000Z"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def basic_auth(write_key: str = WRITE_KEY) -> str:
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


# -- sample events ---------------------------------------------------------------------------
def track_event(i: int = 0, *, message_id: str | None = None, users: int = 1000) -> dict[str, Any]:
    """A typical ``track`` call (about 400 bytes of JSON), as Segment's libraries send it
    (they always set a random ``messageId``; pass ``"@MID@"`` to let the load generator
    put a fresh one in every request)."""
    ev: dict[str, Any] = {
        "type": "track",
        "userId": f"user-{i % users}",
        "event": "Order Completed",
        "properties": {"orderId": f"o-{i}", "total": 42.5, "currency": "EUR",
                       "products": [{"sku": "sku-1", "price": 42.5, "quantity": 1}]},
        "context": {"library": {"name": "analytics-python", "version": "2.3.2"},
                    "ip": "127.0.0.1", "locale": "en-US"},
        "timestamp": TIMESTAMP,
    }
    if message_id is not None:
        ev["messageId"] = message_id
    return ev


def batch_body(events: Sequence[dict[str, Any]]) -> bytes:
    return msgspec.json.encode({"batch": list(events), "sentAt": TIMESTAMP})


# -- processes -------------------------------------------------------------------------------
def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Wait until ``url`` answers any HTTP status (the server is accepting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} came up")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except urllib.error.HTTPError:
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up within {timeout} s")


@dataclass
class Proc:
    """A child process we started (and are the only ones to stop)."""

    popen: subprocess.Popen[bytes]
    log_path: Path
    log: IO[bytes] = field(repr=False)

    def stop(self, timeout: float = 20.0) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        self.log.close()

    def tail(self, n: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


def spawn(args: list[str], log_path: Path, env: dict[str, str] | None = None) -> Proc:
    """Start ``python <args>`` with stdout/stderr to ``log_path``."""
    log = open(log_path, "ab")  # noqa: SIM115 - closed by Proc.stop
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    popen = subprocess.Popen([sys.executable, *args], stdout=log, stderr=subprocess.STDOUT,
                             env=full_env, cwd=ROOT)
    return Proc(popen, log_path, log)


@contextmanager
def temp_dir(prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=f"hookyard-bench-{prefix}-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclass
class Served:
    """A server process we started: its base URL and pid (for its CPU time)."""

    url: str
    pid: int

    def cpu_seconds(self) -> float:
        """User + system CPU time the process (all its threads) used so far."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextmanager
def uvicorn_app(app: str, log_dir: Path) -> Iterator[Served]:
    """Serve ``module:attr`` with uvicorn's defaults as ``hookyard serve`` uses them (one
    process, uvloop + httptools when installed, no access log)."""
    port = free_port()
    proc = spawn(["-m", "uvicorn", app, "--host", HOST, "--port", str(port), "--log-level",
                  "warning", "--no-access-log", "--no-server-header"],
                 log_dir / f"{app.replace(':', '_')}.log")
    url = f"http://{HOST}:{port}"
    try:
        wait_http(f"{url}/healthz", proc=proc.popen)
        yield Served(url, proc.popen.pid)
    finally:
        proc.stop()


@contextmanager
def hookyard_serve(data_dir: Path, *, workers: bool, config: Path | None = None) -> Iterator[Served]:
    """``hookyard serve`` on a free loopback port with ``data_dir``.

    Without ``config`` the default configuration is used (one Segment source -> profile store)
    with the benchmark's write key.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    if config is None:
        (data_dir / "write_key").write_text(WRITE_KEY + "\n")
    port = free_port()
    args = ["-m", "hookyard", "serve", "--host", HOST, "--port", str(port),
            "--data-dir", str(data_dir)]
    if config is not None:
        args += ["--config", str(config)]
    if not workers:
        args.append("--no-workers")
    proc = spawn(args, data_dir.parent / f"{data_dir.name}-serve.log")
    url = f"http://{HOST}:{port}"
    try:
        wait_http(f"{url}/healthz", proc=proc.popen)
        yield Served(url, proc.popen.pid)
    except BaseException:
        print(proc.tail(), file=sys.stderr)
        raise
    finally:
        proc.stop()


# -- results ---------------------------------------------------------------------------------
PROBLEMS: list[str] = []
"""What made a run's figures invalid (refused requests, events acknowledged but not stored or
not delivered): their verdicts say INVALID and the command exits with status 1."""


def invalid(reason: str) -> None:
    """Note (and print) a correctness failure of this run."""
    PROBLEMS.append(reason)
    print(f"  ERROR: {reason}", flush=True)


def exit_status() -> int:
    if PROBLEMS:
        print(f"\nINVALID run: {'; '.join(PROBLEMS)}")
    return 1 if PROBLEMS else 0


@dataclass
class Row:
    """One line of a result table."""

    bench: str
    case: str
    values: dict[str, str]


def fmt_int(x: float) -> str:
    return f"{x:,.0f}"


def fmt_ms(us: float) -> str:
    return f"{us / 1000:.2f}"


def fmt_ratio(x: float | None) -> str:
    return "" if x is None else f"{x:.2f}x"


def print_table(rows: list[Row], columns: list[str], title: str = "") -> None:
    head = ["bench", "case", *columns]
    cells = [[r.bench, r.case, *(r.values.get(c, "") for c in columns)] for r in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h) for i, h in enumerate(head)]
    if title:
        print(f"\n{title}")
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for c in cells:
        print("| " + " | ".join(
            v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(c, widths))
        ) + " |")
    sys.stdout.flush()
