"""The single-file binary: built with scripts/build-binary (PyInstaller), started with an empty
environment from a directory without the source tree, it ingests an identify and serves the
subscriber back on the admin API.

A cold build takes under a minute on 2 cores (about 40 s of CPU): it starts at collection, at a low
priority, while the other tests run (tests/conftest.py); the script caches the binary keyed by a hash of
the sources, so an unchanged tree reuses it (see scripts/build-binary).
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hookyard.testing import sample_identify
from hookyard.testing.server import basic_auth, free_port, wait_until_up

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.binary
def test_single_binary_ingests_and_serves(tmp_path: Path, binary_build: Any) -> None:
    if importlib.util.find_spec("PyInstaller") is None or binary_build is None:
        pytest.skip("PyInstaller is not installed: pip install -e '.[binary]' to build the binary")
    code, output, binary = binary_build.wait()  # started at collection (tests/conftest.py)
    assert code == 0, output[-6000:]
    run_dir = tmp_path / "elsewhere"  # no source tree, no Python packages, empty environment
    run_dir.mkdir()
    env = {"PATH": "/usr/bin:/bin"}
    listed = subprocess.run(
        [str(binary), "plugins"], cwd=run_dir, env=env, capture_output=True, text=True, timeout=60
    )
    assert listed.returncode == 0, listed.stderr
    for name in ("profiles", "segment", "pushwoosh", "novu"):
        assert name in listed.stdout

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with open(tmp_path / "serve.log", "wb") as log:
        proc = subprocess.Popen(
            [
                str(binary),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--data-dir",
                "data",
            ],
            cwd=run_dir,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_until_up(url, timeout=60)
        write_key = (run_dir / "data" / "write_key").read_text().strip()
        admin = {
            "Authorization": f"Bearer {(run_dir / 'data' / 'admin_token').read_text().strip()}"
        }
        event = sample_identify(userId="binary-user")
        answer = httpx.post(
            f"{url}/v1/identify", json=event, headers=basic_auth(write_key), timeout=10
        )
        assert answer.status_code == 200 and answer.json() == {"success": True}
        deadline = time.monotonic() + 20
        while True:
            got = httpx.get(f"{url}/api/subscribers/binary-user", headers=admin, timeout=10)
            if got.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert got.status_code == 200, got.text
        assert got.json()["distinct_id"] == "binary-user"
        assert got.json()["properties"]["email"] == "peter@example.com"
    finally:
        proc.terminate()
        code = proc.wait(timeout=30)
    log_text = (tmp_path / "serve.log").read_text()
    # uvicorn re-raises the SIGTERM it handled once shutdown is complete: -15 is a clean exit
    assert code in (0, -signal.SIGTERM), log_text[-3000:]
    assert "Application shutdown complete" in log_text
