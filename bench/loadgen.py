"""The HTTP load generator: ``wrk`` when installed, else an aiohttp client in its own process.

Both are closed-loop: ``connections`` keep-alive connections each send the same POST again as
soon as the previous answer arrived, for ``duration`` seconds. ``wrk`` (Debian package ``wrk``)
is a C program that needs a fraction of a core for tens of thousands of requests per second; the
aiohttp fallback saturates its own core at a few thousand, so it understates fast servers (the
bare baseline most) and the ratios it yields are on the generous side. The table says which one
ran.

Run alone: ``python -m bench.loadgen URL BODY_FILE -H 'Authorization: ...' -c 32 -d 5``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

MID = b"@MID@"  # in a body: replaced by a fresh random messageId (UUID format) in every request

WRK_SCRIPT = """
wrk.method = "POST"
local f = assert(io.open("{body}", "rb"))
local body = f:read("*a")
f:close()
{headers}
-- split the body at each @MID@: every request gets fresh messageIds, random like uuid4 in the
-- first 16 hex digits (so they land all over the inbox's unique index, as real ones do) and
-- unique by a counter in the last 12
local parts = {{}}
local from = 1
while true do
  local s, e = string.find(body, "@MID@", from, true)
  if not s then break end
  parts[#parts + 1] = string.sub(body, from, s - 1)
  from = e + 1
end
parts[#parts + 1] = string.sub(body, from)
math.randomseed({seed})
local salt = {salt}
local counter = 0
if #parts == 1 then
  wrk.body = body
else
  request = function()
    local out = {{parts[1]}}
    for i = 2, #parts do
      counter = counter + 1
      out[#out + 1] = string.format("%04x%04x-%04x-4%03x-%04x-%06x%06x",
        math.random(0, 65535), math.random(0, 65535), math.random(0, 65535),
        math.random(0, 4095), 32768 + math.random(0, 16383), salt, counter % 16777216)
      out[#out + 1] = parts[i]
    end
    return wrk.format(nil, nil, nil, table.concat(out))
  end
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT {{\\"requests\\":%d,\\"duration_us\\":%d,\\"bad_status\\":%d,"
    .. "\\"socket_errors\\":%d,\\"p50_us\\":%d,\\"p99_us\\":%d}}\\n",
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99)))
end
"""


@dataclass
class LoadResult:
    """What one load run measured (only 2xx answers count as requests done)."""

    tool: str
    requests: int
    seconds: float
    bad_status: int
    socket_errors: int
    p50_us: float
    p99_us: float

    @property
    def ok(self) -> int:
        return self.requests - self.bad_status

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


def tool() -> str:
    return "wrk" if shutil.which("wrk") else "aiohttp"


def _lua_quote(s: str) -> str:
    return s.replace("\\", "\\\\").replace('"', '\\"')


def run_wrk(url: str, body: Path, headers: dict[str, str], connections: int,
            duration: float) -> LoadResult:
    lines = [f'wrk.headers["{_lua_quote(k)}"] = "{_lua_quote(v)}"' for k, v in headers.items()]
    script = WRK_SCRIPT.format(body=_lua_quote(str(body)), headers="\n".join(lines),
                               seed=random.randrange(1 << 30), salt=random.randrange(1 << 24))
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as fh:
        fh.write(script)
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
             "-s", fh.name, url],
            capture_output=True, text=True, timeout=duration + 60, check=True,
        ).stdout
    finally:
        Path(fh.name).unlink(missing_ok=True)
    line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no result:\n{out}")
    d = json.loads(line[7:])
    return LoadResult("wrk", d["requests"], d["duration_us"] / 1e6, d["bad_status"],
                      d["socket_errors"], d["p50_us"], d["p99_us"])


async def _aiohttp_load(url: str, body: bytes, headers: dict[str, str], connections: int,
                        duration: float) -> LoadResult:
    import aiohttp

    latencies: list[float] = []
    bad = errors = 0
    parts = body.split(MID)

    def next_body() -> bytes:
        if len(parts) == 1:
            return body
        out = [parts[0]]
        for part in parts[1:]:
            out += [str(uuid.uuid4()).encode(), part]
        return b"".join(out)

    stop_at = time.perf_counter() + duration

    async def one(session: aiohttp.ClientSession) -> None:
        nonlocal bad, errors
        while time.perf_counter() < stop_at:
            t = time.perf_counter()
            try:
                async with session.post(url, data=next_body(), headers=headers) as resp:
                    await resp.read()
                    if resp.status >= 300:  # counted apart: never an ok request
                        bad += 1
                        continue
            except aiohttp.ClientError:
                errors += 1
                continue
            latencies.append(time.perf_counter() - t)

    connector = aiohttp.TCPConnector(limit=connections)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        started = time.perf_counter()
        await asyncio.gather(*(one(session) for _ in range(connections)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    n = len(latencies)

    def pct(p: float) -> float:
        return latencies[min(n - 1, int(n * p))] * 1e6 if n else 0.0

    return LoadResult("aiohttp", n + bad, elapsed, bad, errors, pct(0.50), pct(0.99))


def run_aiohttp(url: str, body: Path, headers: dict[str, str], connections: int,
                duration: float) -> LoadResult:
    """The aiohttp generator, in a child process (never in the process being measured)."""
    args = [sys.executable, "-m", "bench.loadgen", url, str(body), "-c", str(connections),
            "-d", str(duration), "--tool", "aiohttp", "--json"]
    for k, v in headers.items():
        args += ["-H", f"{k}: {v}"]
    out = subprocess.run(args, capture_output=True, text=True, timeout=duration + 60, check=True,
                         cwd=Path(__file__).resolve().parent.parent).stdout
    return LoadResult(**json.loads(out.strip().splitlines()[-1]))


def run_load(url: str, body: Path, headers: dict[str, str], connections: int,
             duration: float) -> LoadResult:
    if tool() == "wrk":
        return run_wrk(url, body, headers, connections, duration)
    return run_aiohttp(url, body, headers, connections, duration)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("url")
    p.add_argument("body", type=Path)
    p.add_argument("-H", "--header", action="append", default=[])
    p.add_argument("-c", "--connections", type=int, default=32)
    p.add_argument("-d", "--duration", type=float, default=5.0)
    p.add_argument("--tool", choices=["auto", "wrk", "aiohttp"], default="auto")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    headers = dict(h.split(": ", 1) for h in a.header)
    headers.setdefault("Content-Type", "application/json")
    which = tool() if a.tool == "auto" else a.tool
    if which == "wrk":
        res = run_wrk(a.url, a.body, headers, a.connections, a.duration)
    else:
        try:
            from uvloop import run as arun
        except ImportError:
            arun = asyncio.run  # type: ignore[assignment]
        res = arun(_aiohttp_load(a.url, a.body.read_bytes(), headers, a.connections,
                                        a.duration))
    if a.json:
        print(json.dumps(res.__dict__))
    else:
        print(f"{res.tool}: {res.rps:,.0f} req/s ok, p50 {res.p50_us / 1000:.2f} ms,"
              f" p99 {res.p99_us / 1000:.2f} ms, {res.bad_status} non-2xx,"
              f" {res.socket_errors} socket errors")


if __name__ == "__main__":
    main()
