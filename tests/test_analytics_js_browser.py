"""Segment's official browser library, analytics.js (``@segment/analytics-next``), in a real
headless Chromium: a page on one loopback origin loads the library and sends identify, track and
page to hookyard on another origin (so CORS is exercised), exactly as a website would. Skipped only
where Chromium, playwright or npm is missing."""

from __future__ import annotations

import functools
import http.server
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from hookyard.testing.server import HookyardServer

NODE_DIR = Path(__file__).parent / "node_clients"
UMD = NODE_DIR / "node_modules" / "@segment" / "analytics-next" / "dist" / "umd"
CHROMIUM = "/usr/bin/chromium"
KEY = "browser-write-key"
CONFIG = {
    "sources": [{"name": "web", "plugin": "segment", "write_key": KEY}],
    "destinations": [{"name": "profiles", "plugin": "profiles", "sources": ["web"]}],
}
PAGE = """<!doctype html><html><body><script src="index.js"></script><script>
const analytics = AnalyticsNext.AnalyticsBrowser.load({
  writeKey: "%(key)s", cdnURL: "%(static)s",
  cdnSettings: {integrations: {"Segment.io": {apiKey: "%(key)s", apiHost: "%(api)s/v1", protocol: "http"}}},
});
window.done = (async () => {
  await analytics.identify("ajs-user", {email: "ajs@example.com", firstName: "Ada"});
  await analytics.track("User Registered", {plan: "Pro Annual"});
  await analytics.page("Home");
  return "sent";
})();
</script></body></html>"""


@pytest.fixture
def static_site(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback web server for the page and the library bundle (the website's origin)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    pytest.importorskip("playwright.sync_api")
    if not UMD.exists():
        if shutil.which("npm") is None:
            pytest.skip("npm is not installed")
        subprocess.run(["npm", "ci", "--no-audit", "--no-fund"], cwd=NODE_DIR, check=True,
                       capture_output=True, timeout=180)
    site = tmp_path / "site"
    shutil.copytree(UMD, site, ignore=shutil.ignore_patterns("*.map", "*.gz"))
    handler = functools.partial(_QuietHandler, directory=str(site))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", site
    finally:
        httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


def test_analytics_js_in_chromium(static_site: tuple[str, Path], tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    origin, site = static_site
    with HookyardServer(CONFIG, tmp_path / "data") as server:
        api_host = server.url.removeprefix("http://")
        (site / "page.html").write_text(PAGE % {"key": KEY, "static": origin, "api": api_host})
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = browser.new_page()
                sent: list[str] = []
                page.on("request", lambda r: sent.append(r.url) if r.url.startswith(server.url) else None)
                page.goto(f"{origin}/page.html")
                assert page.evaluate("window.done") == "sent"
            finally:
                browser.close()
        assert sorted(u.removeprefix(server.url) for u in sent) == ["/v1/i", "/v1/p", "/v1/t"]
        logs = server.api("/api/logs?source=web").json()["items"]
        assert sorted((e["path"], e["status"]) for e in logs) == [("/v1/i", 200), ("/v1/p", 200), ("/v1/t", 200)]
        track = server.api("/api/events?type=track").json()["items"][0]["event"]
        assert track["context"]["library"]["name"] == "analytics.js"
        assert "writeKey" not in track
        server.wait_idle()
        profile = server.api("/api/subscribers/ajs-user").json()
        assert profile["channels"]["$email"] == ["ajs@example.com"]
