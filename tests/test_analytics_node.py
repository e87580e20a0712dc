"""Segment's official Node.js library (``@segment/analytics-node``) pointed at a real hookyard
server: every call type arrives through ``/v1/batch`` with Basic auth and reaches the profile
store. The npm package is installed into ``tests/node_clients`` on first use (``.ci/run`` does it
too); the test is skipped only where Node.js or npm is absent."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest
from hookyard.testing.server import HookyardServer

HERE = Path(__file__).parent / "node_clients"
KEY = "node-write-key"
CONFIG = {
    "sources": [{"name": "node", "plugin": "segment", "write_key": KEY}],
    "destinations": [{"name": "profiles", "plugin": "profiles", "sources": ["node"]}],
}


def node_client() -> Path:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js and npm are not installed")
    if not (HERE / "node_modules" / "@segment" / "analytics-node").exists():
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=HERE, check=True,
                       capture_output=True, timeout=180)
    return HERE / "send.mjs"


def test_official_node_library_every_call(tmp_path: Path) -> None:
    script = node_client()
    prefix = uuid.uuid4().hex[:8]
    with HookyardServer(CONFIG, tmp_path) as server:
        done = subprocess.run(["node", str(script), server.url, KEY, prefix], cwd=HERE,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {"errors": []}
        types = {}
        for call in ("identify", "track", "group", "page", "screen", "alias"):
            items = server.api(f"/api/events?message_id={prefix}-{call}").json()["items"]
            assert len(items) == 1, call
            types[call] = items[0]["event"]
        assert all(types[c]["type"] == c for c in types)
        assert types["identify"]["traits"]["email"] == "node@example.com"
        assert types["track"]["context"]["library"]["name"] == "@segment/analytics-node"
        server.wait_idle()
        profile = server.api(f"/api/subscribers/{prefix}-user").json()
        assert "node@example.com" in profile["channels"]["$email"], profile
        assert profile["properties"]["plan"] == "pro", profile
        logs = server.api("/api/logs?source=node").json()["items"]
        assert logs and all(entry["path"] == "/v1/batch" and entry["status"] == 200 for entry in logs)


def test_official_node_library_wrong_key_is_refused(tmp_path: Path) -> None:
    script = node_client()
    with HookyardServer(CONFIG, tmp_path) as server:
        done = subprocess.run(["node", str(script), server.url, "not-the-key", "x"], cwd=HERE,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stdout + done.stderr
        assert server.api("/api/events").json()["items"] == []
        [entry, *_] = server.api("/api/logs").json()["items"]
        assert entry["status"] == 401
