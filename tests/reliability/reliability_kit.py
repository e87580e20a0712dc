"""Shared helpers of the reliability suite: TOML configs, load senders, delivery counters and
the figures table printed at the end of the run (see ``conftest.py``)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import msgspec
from hookyard.testing.fake_server import FakeServer, RecordedRequest
from hookyard.testing.server import basic_auth

FIGURES: dict[str, dict[str, Any]] = {}


def record_figures(name: str, **values: Any) -> None:
    """Keep measured figures for the terminal summary (and the JSON file next to it)."""
    FIGURES.setdefault(name, {}).update(values)


# ------------------------------------------------------------------------------ config


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"no TOML for {value!r}")


def _table(header: str, data: dict[str, Any]) -> list[str]:
    lines = [header]
    subtables = []
    for key, value in data.items():
        if isinstance(value, dict) and key in ("settings", "delivery"):
            subtables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    name = header.strip("[]")
    for key, value in subtables:
        lines += _table(f"[{name}.{key}]", value)
    return lines


def toml_config(
    sources: list[dict[str, Any]],
    destinations: list[dict[str, Any]] = (),  # type: ignore[assignment]
    server: dict[str, Any] | None = None,
    storage: dict[str, Any] | None = None,
) -> str:
    """A hookyard TOML config (just enough TOML for sources, destinations and settings)."""
    lines: list[str] = []
    if server:
        lines += _table("[server]", server)
    if storage:
        lines += _table("[storage]", storage)
    for src in sources:
        lines += _table("[[sources]]", src)
    for dest in destinations:
        lines += _table("[[destinations]]", dest)
    return "\n".join(lines) + "\n"


def forwarder(name: str, url: str, sources: list[str], write_key: str = "fwd-key-0001",
              **delivery: Any) -> dict[str, Any]:
    """A Segment forwarder destination pointed at a loopback fake (``url`` = fake.url)."""
    policy = {"retry_initial_seconds": 0.1, "retry_max_seconds": 1.0, "lease_seconds": 30.0,
              **delivery}
    return {"name": name, "plugin": "segment", "sources": sources,
            "settings": {"write_key": write_key, "base_url": url}, "delivery": policy}


# ------------------------------------------------------------------------------ events


def track(user: str, seq: int, message_id: str | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "track", "messageId": message_id or str(uuid.uuid4()), "userId": user,
            "event": "Order Completed", "properties": {"seq": seq, **extra},
            "timestamp": "2026-01-01T00:00:00.000Z"}


class EventCounter:
    """A FakeServer handler for the Segment forwarder's ``/v1/batch`` requests: answers 200 and
    counts every messageId it accepted, in arrival order."""

    def __init__(self, fake: FakeServer, delay: float = 0.0) -> None:
        self.delay = delay  # seconds each answer takes (blocks the fake: requests queue up)
        self.lock = threading.Condition()
        self.accepted: list[dict[str, Any]] = []
        self.counts: Counter[str] = Counter()
        self.status: int | None = None  # when set: answer this status and accept nothing
        fake.set_handler(self)

    def __call__(self, rec: RecordedRequest) -> tuple[int, Any]:
        if self.status is not None:
            return self.status, {"success": False}
        if self.delay:
            time.sleep(self.delay)
        events = msgspec.json.decode(rec.body)["batch"]
        with self.lock:
            for ev in events:
                self.accepted.append(ev)
                self.counts[ev["messageId"]] += 1
            self.lock.notify_all()
        return 200, {"success": True}

    @property
    def total(self) -> int:
        with self.lock:
            return len(self.accepted)

    def wait_for_ids(self, ids: set[str], timeout: float) -> set[str]:
        """Wait until every id in ``ids`` was accepted; return the missing ones (empty: all)."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while True:
                missing = {i for i in ids if i not in self.counts}
                if not missing or time.monotonic() >= deadline:
                    return missing
                self.lock.wait(min(0.2, deadline - time.monotonic()))

    def wait_total(self, count: int, timeout: float) -> float | None:
        """Wait until ``count`` events were accepted; the monotonic time then, or None."""
        deadline = time.monotonic() + timeout
        with self.lock:
            while len(self.accepted) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self.lock.wait(min(0.2, left))
            return time.monotonic()


class LoadSender:
    """Threads posting events with unique messageIds as fast as they can; every messageId of a
    request answered 2xx is kept in ``acked``."""

    def __init__(self, url: str, write_key: str, threads: int = 4, batch: int = 20) -> None:
        self.url, self.write_key, self.batch = url, write_key, batch
        self.acked: set[str] = set()
        self.statuses: Counter[str] = Counter()
        self.stop_flag = threading.Event()
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                        for i in range(threads)]

    def start(self) -> LoadSender:
        for t in self.threads:
            t.start()
        return self

    def stop(self) -> None:
        self.stop_flag.set()
        for t in self.threads:
            t.join(timeout=15)

    def _run(self, n: int) -> None:
        headers = basic_auth(self.write_key)
        seq = 0
        with httpx.Client(base_url=self.url, headers=headers, timeout=5) as client:
            while not self.stop_flag.is_set():
                single = n % 2 == 0  # half the threads send single calls, half batches
                events = [track(f"user-{n}-{(seq + i) % 7}", seq + i)
                          for i in range(1 if single else self.batch)]
                seq += len(events)
                try:
                    if single:
                        r = client.post("/v1/track", json=events[0])
                    else:
                        r = client.post("/v1/batch", json={"batch": events})
                except httpx.HTTPError as exc:
                    with self.lock:
                        self.statuses[type(exc).__name__] += 1
                    time.sleep(0.02)
                    continue
                with self.lock:
                    self.statuses[str(r.status_code)] += 1
                    if 200 <= r.status_code < 300:
                        self.acked.update(e["messageId"] for e in events)


def inbox_ids(data_dir: Path) -> set[str]:
    """Every messageId in the inbox of a data dir (read straight from SQLite)."""
    conn = sqlite3.connect(f"file:{data_dir / 'hookyard.db'}?mode=ro", uri=True, timeout=10)
    try:
        return {r[0] for r in conn.execute("SELECT message_id FROM inbox")}
    finally:
        conn.close()


def wait_until(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()
