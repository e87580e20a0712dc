"""Shared parts of the delivery-engine tests: a test destination plugin and small helpers.

The ``recorder`` destination is a real connector registered the way third-party plugins are
(a pluggy plugin object handed to the runtime). Its ``map_event`` resolves field mappings with
the core helper (``hookyard.fields.resolve_fields``), so a missing required field is a
"skipped: field X missing" reason; its ``deliver`` posts to a real loopback peer
(``hookyard.testing.fake_server``) through the engine's ``HttpClient``:

* ``per_item = false`` (default): one ``POST {base_url}/batch`` with ``{"items": [...]}`` per
  ``deliver`` call, every delivery gets that request's outcome;
* ``per_item = true``: one ``POST {base_url}/item`` per delivery, each classified on its own;
* ``explode = true``: ``map_event`` raises, like a plugin with a bug;
* ``misbehave = "..."``: ``deliver`` hangs, raises or answers nonsense (see :func:`misbehave`).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
from hookyard import hookimpl
from hookyard.connectors import Connector, DestinationContext
from hookyard.deliveries import Delivery, DeliveryResult, MapResult
from hookyard.errors import PermanentError, RetryableError
from hookyard.events import Event, event_type
from hookyard.fields import resolve_fields
from hookyard.http import HttpClient
from hookyard.testing.cluster import wait_for
from hookyard.testing.fake_server import FakeServer, RecordedRequest
from hookyard.testing.server import HookyardServer, basic_auth

BATCH_SIZE = 5
FIELDS = {"user": "$.userId", "email": "$.traits.email", "event": "$.event", "seq": "$.properties.seq"}
FAST = {  # delivery policy for tests: retries in tens of milliseconds
    "retry_initial_seconds": 0.05,
    "retry_max_seconds": 0.2,
    "connect_timeout_seconds": 1.0,
    "total_timeout_seconds": 2.0,
}


class RecorderSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Destination ``recorder`` (tests only)."""

    base_url: str
    fields: dict[str, str] = {}
    required: list[str] = msgspec.field(default_factory=lambda: ["user"])
    per_item: bool = False
    explode: bool = False  # map_event raises (a plugin bug)
    misbehave: str = ""  # deliver: "hang", "raise", "permanent", "retryable", "none", "short"


class RecorderPlugin:
    """A minimal HTTP destination connector, registered per runtime by the tests."""

    @hookimpl
    def register_connectors(self) -> list[Connector]:
        return [Connector(name="recorder", kind="destination", settings=RecorderSettings,
                          batch_size=BATCH_SIZE, description="test destination")]

    @hookimpl
    def map_event(self, destination: DestinationContext, event: Event,
                  raw: dict[str, Any]) -> MapResult:
        settings: RecorderSettings = destination.settings
        if settings.explode:
            raise RuntimeError("recorder exploded")
        body = resolve_fields(raw, FIELDS, settings.fields, required=tuple(settings.required))
        body["messageId"] = raw["messageId"]
        path = "/item" if settings.per_item else "/batch"
        return MapResult.send(Delivery(kind=event_type(event), path=path, body=body))

    @hookimpl
    async def deliver(self, destination: DestinationContext, deliveries: list[Delivery],
                      client: HttpClient) -> list[DeliveryResult]:
        settings: RecorderSettings = destination.settings
        if settings.misbehave:
            return await misbehave(settings.misbehave, deliveries)
        base = settings.base_url.rstrip("/")
        if settings.per_item:
            results = []
            for d in deliveries:
                result, _ = await client.send("POST", base + d.path, json=d.body)
                results.append(result)
            return results
        result, _ = await client.send("POST", base + "/batch",
                                      json={"items": [d.body for d in deliveries]})
        return [result] * len(deliveries)


async def misbehave(how: str, deliveries: list[Delivery]) -> list[DeliveryResult]:
    """The ways a buggy deliver hook can answer."""
    if how == "hang":
        await asyncio.sleep(30)
    if how == "raise":
        raise KeyError("oops")
    if how == "permanent":
        raise PermanentError("account suspended", http_status=403)
    if how == "retryable":
        raise RetryableError("busy, try later", http_status=503, retry_after=0.01)
    if how == "none":
        return [None] * len(deliveries)  # type: ignore[list-item]
    return []  # "short": fewer results than deliveries


PLUGIN = RecorderPlugin()


def recorder(url: str, *, name: str = "rec", sources: tuple[str, ...] = ("web",),
             delivery: dict[str, Any] | None = None, **settings: Any) -> dict[str, Any]:
    """A ``[[destinations]]`` table for the recorder, with the fast test policy."""
    return {"name": name, "plugin": "recorder", "sources": list(sources),
            "settings": {"base_url": url, **settings}, "delivery": {**FAST, **(delivery or {})}}


def track(user: str, seq: int, **extra: Any) -> dict[str, Any]:
    """A small track event carrying a per-user sequence number."""
    return {"type": "track", "userId": user, "event": "Step", "messageId": f"{user}-{seq}",
            "properties": {"seq": seq}, **extra}


def items(req: RecordedRequest) -> list[dict[str, Any]]:
    """The deliveries carried by one request of the recorder."""
    body = req.json()
    return body["items"] if "items" in body else [body]


class Peer:
    """A fake-server handler that fails chosen messages and records what it accepted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.accepted: list[dict[str, Any]] = []
        self.failures: dict[str, list[tuple[int, Any, dict[str, str]]]] = {}
        self.default: tuple[int, Any, dict[str, str]] = (200, {"ok": True}, {})

    def fail(self, message_id: str, *answers: tuple[int, Any, dict[str, str]]) -> None:
        """Answer the next requests carrying ``message_id`` with ``answers`` in order."""
        self.failures.setdefault(message_id, []).extend(answers)

    def __call__(self, req: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
        batch = items(req)
        with self.lock:
            for it in batch:
                queued = self.failures.get(it["messageId"])
                if queued:
                    return queued.pop(0)
            status, body, headers = self.default
            if 200 <= status < 300:
                self.accepted.extend(batch)
            return status, body, headers

    def accepted_ids(self) -> list[str]:
        with self.lock:
            return [it["messageId"] for it in self.accepted]


def wait_until(check: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``check`` every 20 ms until it returns something truthy; return it."""
    return wait_for(check, timeout, what, interval=0.02)


def api(server: HookyardServer) -> httpx.Client:
    """A keep-alive admin client for ``server`` (a new httpx client per call costs ~50 ms)."""
    client: httpx.Client | None = getattr(server, "_kit_client", None)
    if client is None:
        client = httpx.Client(base_url=server.url, headers=server.admin_headers, timeout=10)
        server._kit_client = client  # type: ignore[attr-defined]
    return client


def admin(server: HookyardServer, path: str, method: str = "GET", **kw: Any) -> httpx.Response:
    """An operator API call (admin token) over a keep-alive client."""
    return api(server).request(method, path, **kw)


def preview(server: HookyardServer, dest: str, event: Any) -> dict[str, Any]:
    """``POST /api/destinations/{dest}/preview`` of ``event``: what the destination would do."""
    r = admin(server, f"/api/destinations/{dest}/preview", "POST", json=event)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def send(server: HookyardServer, path: str, body: Any) -> httpx.Response:
    """POST an event (or batch) with the first source's write key, over a keep-alive client."""
    headers = basic_auth(server.write_key())
    return api(server).post(path, json=body, headers=headers)


def trace(server: HookyardServer, message_id: str) -> list[dict[str, Any]]:
    """``GET /api/deliveries?message_id=`` of an event: its outbox rows with their attempts."""
    r = api(server).get("/api/deliveries", params={"message_id": message_id})
    assert r.status_code == 200, r.text
    rows: list[dict[str, Any]] = r.json()["deliveries"]
    return rows


def states(server: HookyardServer) -> dict[str, int]:
    """How many outbox rows are in each state."""
    rows = server.runtime.db.read_sync(
        lambda c: c.execute("SELECT state, count(*) FROM outbox GROUP BY state").fetchall())
    return {r[0]: r[1] for r in rows}


def dead_letters(server: HookyardServer, **params: Any) -> list[dict[str, Any]]:
    r = api(server).get("/api/dead-letters", params={"limit": 500, **params})
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["items"]
    return found


# -- helper processes (map process, deliver process) --------------------------------------
def forwarded_ids(peer: FakeServer) -> list[str]:
    return [e["messageId"] for body in peer.json_bodies("/v1/batch") for e in body["batch"]]


def post_batches(server: HookyardServer, users: int, per_user: int, tag: str) -> list[str]:
    events = [track(f"u{u}", seq, messageId=f"{tag}-{u}-{seq}")
              for seq in range(per_user) for u in range(users)]
    for start in range(0, len(events), 100):
        assert server.post("/v1/batch", {"batch": events[start:start + 100]}).status_code == 200
    return [e["messageId"] for e in events]


def state(pid: int) -> str | None:
    """The process's state letter (``Z``: a zombie), None when it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def children_running(pid: int, module: str) -> list[int]:
    """Live processes whose parent is ``pid`` and whose command line names ``module``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid and module.encode() in cmdline and state(int(entry.name)) not in (None, "Z"):
            found.append(int(entry.name))
    return found


FORWARDER_TOML = (
    '[[sources]]\nname = "web"\nplugin = "segment"\nwrite_key = "test-write-key"\n'
    '[[destinations]]\nname = "fwd"\nplugin = "segment"\nsources = ["web"]\n'
    '[destinations.settings]\nwrite_key = "fwd-key"\nbase_url = "http://127.0.0.1:9"\n'
)
"""A Segment forwarder to a closed port, for tests of whole ``hookyard`` processes."""


def spawn_hookyard(tmp_path: Path, command: str, server_toml: str) -> tuple[subprocess.Popen[bytes], Path]:
    """``hookyard <command>`` (serve, worker) with :data:`FORWARDER_TOML` in a subprocess;
    returns the process and its log file."""
    config = tmp_path / "hookyard.toml"
    config.write_text(f'[server]\nadmin_token = "t-admin-0123456789"\n{server_toml}{FORWARDER_TOML}')
    log = tmp_path / f"{command}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "hookyard", command, "--config", str(config),
             "--data-dir", str(tmp_path / "data")], stdout=out, stderr=subprocess.STDOUT)
    return proc, log


def kill_leaves_no_helpers(proc: subprocess.Popen[bytes], modules: list[str]) -> None:
    """kill -9 ``proc`` once a child runs each of ``modules``; then every one must exit by
    itself (its input from the killed parent closes)."""
    children = [wait_until(lambda m=m: children_running(proc.pid, m),  # type: ignore[misc]
                           timeout=30, what=m) for m in modules]
    proc.kill()
    proc.wait(timeout=10)
    wait_until(lambda: all(state(c) in (None, "Z") for found in children for c in found),
               timeout=15, what="the orphaned helper processes to exit")
