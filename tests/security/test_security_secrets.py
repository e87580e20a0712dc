"""Secrets never leak: write keys, the admin token and destination credentials (the Segment
forwarder's write key, Pushwoosh's api_key) appear in no log line (the server's stdout and
stderr), no API log entry, no operator API answer and no error message, even when a client
puts a key in a bad request and a destination echoes the credentials it was sent."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from hookyard.testing.fake_server import FakeServer, RecordedRequest
from hookyard.testing.server import HookyardProcess, basic_auth, wait_until_up

SECRETS = {
    "WEB_KEY": "wk-web-5f1c9a7e0b2d4c68",
    "APP_KEY": "wk-app-93b0d2e1f7a64c55",
    "ADMIN": "adm-tok-0c4e8b2f6a1d9e37",
    "FORWARD_KEY": "seg-fwd-7d2a6c0e4b8f1a93",
    "PUSHWOOSH_KEY": "pw-api-1e9b5d3f7c0a2e84",
}
CONFIG = """
[server]
admin_token = "env:SEC_ADMIN"
log_level = "debug"

[[sources]]
name = "web"
plugin = "segment"
write_key = "env:SEC_WEB_KEY"

[[sources]]
name = "app"
plugin = "segment"
write_key = "env:SEC_APP_KEY"

[[destinations]]
name = "segment-out"
plugin = "segment"
sources = ["web", "app"]
[destinations.settings]
write_key = "env:SEC_FORWARD_KEY"
base_url = "{segment_url}"
[destinations.delivery]
retry_initial_seconds = 0.05
max_attempts = 2

[[destinations]]
name = "pushwoosh"
plugin = "pushwoosh"
sources = ["web"]
[destinations.settings]
api_key = "env:SEC_PUSHWOOSH_KEY"
application = "ABCDE-12345"
base_url = "{pushwoosh_url}"
[destinations.delivery]
retry_initial_seconds = 0.05
max_attempts = 2
"""


class SplitLogProcess(HookyardProcess):
    """``hookyard serve`` with its stdout and stderr kept in separate files."""

    def start(self) -> SplitLogProcess:
        cmd = [sys.executable, "-m", "hookyard", "serve", "--config", str(self.config_path),
               "--port", str(self.port), "--host", "127.0.0.1", "--data-dir", str(self.data_dir)]
        env = os.environ.copy()
        env.update({f"SEC_{k}": v for k, v in SECRETS.items()})
        with open(self.data_dir / "stdout.log", "ab") as out, \
                open(self.data_dir / "stderr.log", "ab") as err:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=err, env=env)
        wait_until_up(self.url, timeout=30)
        return self


def _echo(rec: RecordedRequest) -> tuple[int, Any]:
    """A destination that refuses and echoes the credentials it was sent."""
    return 401, {"error": "unauthorized", "you_sent": rec.headers.get("authorization", ""),
                 "body": rec.body.decode("utf-8", "replace")[:500]}


def _forms(secret: str) -> list[str]:
    """A secret as it could appear: raw, in a Basic header, or as an env value."""
    return [secret, base64.b64encode(f"{secret}:".encode()).decode(),
            base64.b64encode(secret.encode()).decode().rstrip("=")]


def _leaks(text: str) -> list[str]:
    return [f"{name} ({form[:12]}...)" for name, secret in SECRETS.items()
            for form in _forms(secret) if form in text]


@pytest.fixture
def running(tmp_path: Path) -> Any:
    segment, pushwoosh = FakeServer().start(), FakeServer().start()
    segment.set_handler(_echo)
    pushwoosh.set_handler(_echo)
    proc = SplitLogProcess(CONFIG.format(segment_url=segment.url, pushwoosh_url=pushwoosh.url),
                           tmp_path / "data")
    proc.start()
    yield proc, segment, pushwoosh
    if proc.proc is not None and proc.proc.poll() is None:
        proc.terminate()
    segment.stop()
    pushwoosh.stop()


def test_secrets_appear_in_no_log_api_answer_or_error(running: Any) -> None:
    proc, segment, pushwoosh = running
    web, app, admin = SECRETS["WEB_KEY"], SECRETS["APP_KEY"], SECRETS["ADMIN"]
    answers: list[str] = []
    ids: list[str] = []
    with httpx.Client(base_url=proc.url, timeout=10) as http:
        def post(path: str, headers: dict[str, str], **kw: Any) -> httpx.Response:
            r = http.post(path, headers=headers, **kw)
            answers.append(r.text + str(dict(r.headers)))
            return r

        for i in range(3):  # good events that the destinations refuse (and echo)
            mid = f"secret-test-{i}"
            ids.append(mid)
            body = {"userId": f"u{i}", "event": "Signed Up", "messageId": mid}
            assert post("/v1/track", basic_auth(web), json=body).status_code == 200
        # keys inside bodies: a writeKey field (single and batch), a malformed body with a key
        assert post("/v1/identify", {}, json={"userId": "u9", "writeKey": web,
                                              "messageId": "wk-in-body"}).status_code == 200
        ids.append("wk-in-body")
        batch = {"writeKey": app, "batch": [{"type": "track", "userId": "u8", "event": "E",
                                             "messageId": "wk-in-batch", "writeKey": app}]}
        assert post("/v1/batch", {}, json=batch).status_code == 200
        ids.append("wk-in-batch")
        assert post("/v1/track", basic_auth(web),
                    content=f'{{"userId": "{app}", "writeKey": "{admin}", '.encode()).status_code == 400
        assert post("/v1/track", basic_auth(web),
                    json={"userId": 1, "event": {"k": admin}}).status_code == 400
        # wrong keys: the other source's on the webhook, the admin token as a write key, ...
        assert post("/v1/track", basic_auth(admin), json={"userId": "u"}).status_code == 401
        assert post("/v1/track", basic_auth(web + "x"), json={"userId": "u"}).status_code == 401
        assert post("/connector/segment/", {"Authorization": f"Bearer {web[:-1]}"},
                    json={"type": "track", "userId": "u", "event": "E"}).status_code == 401
        r = http.get("/api/logs", headers={"Authorization": f"Bearer {admin[:-1]}"})
        answers.append(r.text)
        assert r.status_code == 401

        _wait_for_dead_letters(http, admin, ids[:3])
        auth = {"Authorization": f"Bearer {admin}"}
        for path, params in [("/api/logs", {"limit": 100}), ("/api/events", {"limit": 100}),
                             ("/api/dead-letters", {"limit": 100}), ("/metrics", {}),
                             ("/openapi.json", {}), ("/ui/logs", {}), ("/ui/events", {}),
                             ("/ui/dead-letters", {}), ("/ui/destinations", {}),
                             ("/ui/sources", {})]:
            r = http.get(path, headers=auth, params=params)
            assert r.status_code == 200, (path, r.status_code)
            answers.append(f"{path}: {r.text}")
        for mid in ids:
            r = http.get("/api/deliveries", headers=auth, params={"message_id": mid})
            answers.append(f"deliveries {mid}: {r.text}")
            r = http.get(f"/ui/events/{mid}", headers=auth)
            answers.append(f"/ui/events/{mid}: {r.text}")
    assert segment.requests and pushwoosh.requests, "the destinations were never called"
    proc.terminate()
    stdout = (proc.data_dir / "stdout.log").read_text()
    stderr = (proc.data_dir / "stderr.log").read_text()
    assert "delivery" in stderr  # debug logging was on: the logs were there to leak into
    assert not _leaks(stdout), f"stdout leaks {_leaks(stdout)}"
    assert not _leaks(stderr), f"logs leak {_leaks(stderr)}"
    for text in answers:
        assert not _leaks(text), f"{_leaks(text)} in: {text[:300]}"


def _wait_for_dead_letters(http: httpx.Client, admin: str, ids: list[str]) -> None:
    """Wait until both destinations gave up on the refused events (2 attempts each)."""
    deadline = time.monotonic() + 20
    auth = {"Authorization": f"Bearer {admin}"}
    while time.monotonic() < deadline:
        states = []
        for mid in ids:
            trace = http.get("/api/deliveries", headers=auth, params={"message_id": mid}).json()
            states += [d["state"] for d in trace["deliveries"]]
        if states and all(s == "dead" for s in states):
            return
        time.sleep(0.1)
    raise AssertionError(f"deliveries not dead letters in time: {states}")


def test_http_client_redacts_the_credentials_a_request_carried() -> None:
    from hookyard.delivery.scrub import Scrubber
    from hookyard.http import credentials

    basic = "Basic " + base64.b64encode(b"seg-fwd-key-123:").decode()
    found = credentials({"Authorization": basic, "X-Api-Key": "xk-0987654321",
                         "Content-Type": "application/json"})
    assert "seg-fwd-key-123" in found and basic in found and "xk-0987654321" in found
    assert "application/json" not in found
    text = f'{{"you_sent": "{basic}", "key": "seg-fwd-key-123", "other": "xk-0987654321"}}'
    cleaned = Scrubber(found).text(text)
    assert cleaned is not None and not _leaks_any(cleaned, found)
    assert Scrubber(found).text(None) is None
    assert credentials({"Authorization": "Basic !!!not-base64"}) == ["Basic !!!not-base64",
                                                                     "!!!not-base64"]


def _leaks_any(text: str, secrets: list[str]) -> bool:
    return any(s in text for s in secrets)


def test_values_given_as_env_are_secret_whatever_the_setting_is_called(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``env:`` is how the docs say to pass secrets: such a value is redacted even under a
    name without key/token/secret/password; short values and plain URLs are not."""
    from hookyard.config import parse_config, resolve_env
    from hookyard.logs import config_secrets
    from hookyard.runtime import Runtime

    monkeypatch.setenv("HY_TEST_CREDENTIAL", "cr_5Tq8Wm2Xz7Lp4Nd")
    monkeypatch.setenv("HY_TEST_URL", "http://127.0.0.1:9/base")
    monkeypatch.setenv("HY_TEST_SHORT", "10")
    rt = Runtime.build(parse_config({
        "server": {"data_dir": str(tmp_path), "admin_token": "adm_0123456789"},
        "sources": [{"name": "web", "plugin": "segment", "write_key": "wk_0123456789"}],
        "destinations": [{"name": "seg", "plugin": "segment", "sources": ["web"], "settings": {
            "write_key": "env:HY_TEST_CREDENTIAL", "base_url": "env:HY_TEST_URL"}}],
    }))
    assert resolve_env({"a": "env:HY_TEST_SHORT"}) == {"a": "10"}
    secrets = config_secrets(rt)
    assert "cr_5Tq8Wm2Xz7Lp4Nd" in secrets
    assert "http://127.0.0.1:9/base" not in secrets and "10" not in secrets


@pytest.mark.parametrize("json_lines", [True, False])
def test_tracebacks_in_the_logs_are_redacted_too(json_lines: bool) -> None:
    """A plugin exception quoting a secret, logged with log.exception (as the router and the
    workers do): the traceback is redacted like the message, in both log formats."""
    import io
    import logging

    from hookyard.logs import JsonFormatter, RedactSecrets

    secret = "sekrit-api-key-0123456789"
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter("%(message)s"))
    handler.addFilter(RedactSecrets([secret]))
    log = logging.getLogger("hookyard.test.redact")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise ValueError(f"cannot map with key {secret}")
        except ValueError:
            log.exception("map_event failed for %s", secret, extra={"detail": f"k={secret}"})
        log.warning("stack", stack_info=True, extra={"detail": secret})
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert secret not in out
    assert "ValueError: cannot map with key [redacted]" in out


def test_text_logs_escape_control_characters_from_clients() -> None:
    """Found by an outside audit: a userId with ``\\r\\n`` and an escape code, logged by the
    profile store, forged a CRITICAL line of its own on a terminal's text log. The message is
    escaped; a traceback keeps its lines."""
    import io
    import logging

    from hookyard.logs import TextFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(TextFormatter())
    log = logging.getLogger("hookyard.test.inject")
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    log.propagate = False
    try:
        log.info("profile %s", "ux\r\n2026-12-05 09:00:00,000 CRITICAL forged\x1b[8m\u2028")
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    lines = stream.getvalue().splitlines()
    assert lines[0].endswith(r"profile ux\r\n2026-12-05 09:00:00,000 CRITICAL forged\x1b[8m\u2028")
    assert lines[1].endswith("failed") and lines[2] == "Traceback (most recent call last):"


def test_a_huge_exception_text_is_cut_in_the_log() -> None:
    """Found by an outside audit: a plugin exception carrying 10 MB of text made 20 MB of
    log for two requests. Message and traceback are cut to 16 KB, their ends kept."""
    import io
    import logging

    from hookyard.logs import ClipLongRecords, JsonFormatter

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(ClipLongRecords())
    log = logging.getLogger("hookyard.test.clip")
    log.addHandler(handler)
    log.propagate = False
    try:
        try:
            raise ValueError("x" * 10_000_000 + "END")
        except ValueError:
            log.exception("hook failed: %s", "y" * 1_000_000)
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    assert len(out) < 100_000 and "characters left out" in out and "END" in out
