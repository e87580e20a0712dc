"""Several ``hookyard serve`` processes on one database, for scale-out tests and benchmarks.

    with temp_schema() as storage, FakeServer() as fake:
        with Cluster(3, storage, fake.url, tmp_path) as cluster:   # 3 nodes, one PostgreSQL
            cluster.post(0, "/v1/batch", {"batch": [...]})         # ingest on node 0
            cluster.wait_delivered(count)

Every node is a real subprocess listening on its own loopback port with its own data dir, the
same write key and admin token, one Segment source ``web`` and one Segment-forwarder
destination ``seg`` pointed at ``destination_url`` (a fake destination). ``storage`` is the
``[storage]`` table: ``{}`` runs a single SQLite node.
"""

from __future__ import annotations

import json
import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from .server import HookyardProcess, basic_auth

WRITE_KEY = "wk_cluster_0123456789"
ADMIN_TOKEN = "adm_cluster_0123456789"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))


def node_config(storage: dict[str, Any], destination_url: str, *, profiles: bool = False,
                **delivery: Any) -> str:
    """The TOML config every node of a cluster runs: source ``web`` -> Segment forwarder ``seg``
    (and, with ``profiles``, the built-in profile store ``profiles`` too)."""
    lines = ["[server]", f"admin_token = {_toml(ADMIN_TOKEN)}", 'log_level = "warning"', "",
             "[storage]"]
    lines += [f"{k} = {_toml(v)}" for k, v in storage.items()]
    lines += ["", "[[sources]]", 'name = "web"', 'plugin = "segment"',
              f"write_key = {_toml(WRITE_KEY)}", ""]
    if profiles:
        lines += ["[[destinations]]", 'name = "profiles"', 'plugin = "profiles"',
                  'sources = ["web"]', ""]
    lines += ["[[destinations]]", 'name = "seg"', 'plugin = "segment"', 'sources = ["web"]',
              "[destinations.settings]", 'write_key = "wk_forward"',
              f"base_url = {_toml(destination_url)}", "[destinations.delivery]"]
    lines += [f"{k} = {_toml(v)}" for k, v in delivery.items()]
    return "\n".join(lines) + "\n"


class Cluster:
    """``count`` hookyard nodes sharing ``storage`` (see the module docstring)."""

    def __init__(self, count: int, storage: dict[str, Any], destination_url: str, work_dir: Path,
                 *, profiles: bool = False, **delivery: Any) -> None:
        toml = node_config(storage, destination_url, profiles=profiles, **delivery)
        self.nodes = [HookyardProcess(toml, work_dir / f"node{i}") for i in range(count)]
        self.clients: list[httpx.Client] = []

    def start(self) -> Cluster:
        with ThreadPoolExecutor(len(self.nodes)) as pool:
            list(pool.map(lambda n: n.start(), self.nodes))
        headers = basic_auth(WRITE_KEY)
        self.clients = [httpx.Client(base_url=n.url, headers=headers, timeout=30) for n in self.nodes]
        return self

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        for node in self.nodes:
            if node.proc is not None and node.proc.poll() is None:
                try:
                    node.terminate(timeout=20)
                except Exception:  # noqa: BLE001 - a node that will not stop is killed
                    node.kill()

    def __enter__(self) -> Cluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def post(self, node: int, path: str, body: Any) -> httpx.Response:
        return self.clients[node].post(path, json=body)

    def pid(self, node: int) -> int:
        proc = self.nodes[node].proc
        assert proc is not None
        return proc.pid

    def metric(self, node: int, name: str, **labels: str) -> float:
        """One sample of a node's /metrics (0 when absent)."""
        text = httpx.get(f"{self.nodes[node].url}/metrics", timeout=10).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        pattern = re.compile(rf"^{re.escape(name)}(\{{[^}}]*\}})? (\S+)$", re.MULTILINE)
        for m in pattern.finditer(text):
            got = ",".join(sorted((m.group(1) or "{}")[1:-1].split(",")))
            if got == want or (not want and not m.group(1)):
                return float(m.group(2))
        return 0.0

    def api(self, node: int, path: str) -> Any:
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        return httpx.get(f"{self.nodes[node].url}{path}", headers=headers, timeout=10).json()


def wait_for(check: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``check()`` until it returns something true; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)
