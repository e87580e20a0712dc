"""Authentication: constant-time key comparison, per-source write keys, and the admin token on
every operator route (``/api/*`` and the dashboard under ``/ui``)."""

from __future__ import annotations

import ast
import base64
import hmac
import inspect
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hookyard import app as app_module
from hookyard import tracking_api
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer, basic_auth
from starlette.routing import Mount, Route

ROOT = Path(__file__).resolve().parents[2]
WEB_KEY, APP_KEY, ADMIN = "web-source-key-1", "app-source-key-2", "security-admin-token"


@pytest.fixture
def server(hookyard_server: Callable[..., HookyardServer],
           fake_destination: Callable[[], FakeServer]) -> HookyardServer:
    fake = fake_destination()
    return hookyard_server({
        "server": {"admin_token": ADMIN},
        "sources": [{"name": "web", "plugin": "segment", "write_key": WEB_KEY},
                    {"name": "app", "plugin": "segment", "write_key": APP_KEY}],
        "destinations": [
            {"name": "profiles", "plugin": "profiles", "sources": ["web", "app"]},
            {"name": "app-only", "plugin": "segment", "sources": ["app"],
             "settings": {"write_key": "forward-key-3", "base_url": fake.url}},
        ],
    })


# ------------------------------------------------------------------ constant-time comparison


def _calls_compare_digest(fn: Callable[..., Any]) -> bool:
    tree = ast.parse(inspect.getsource(fn).strip() if not inspect.isclass(fn)
                     else inspect.getsource(fn))
    return any(isinstance(n, ast.Attribute) and n.attr == "compare_digest"
               for n in ast.walk(tree))


def test_write_keys_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    assert _calls_compare_digest(tracking_api.keys_match)
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tracking_api.hmac, "compare_digest", spy)
    assert tracking_api.keys_match("secret-key", "secret-key")
    assert not tracking_api.keys_match("secret-kez", "secret-key")
    assert not tracking_api.keys_match("s", "secret-key")
    assert not tracking_api.keys_match("clé-\udcff", "secret-key")  # unencodable input
    assert not tracking_api.keys_match(None, "secret-key")
    assert len(seen) == 4  # every presented key went through compare_digest


def test_admin_token_is_compared_in_constant_time(server: HookyardServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    assert _calls_compare_digest(app_module.AdminAuth)
    calls: list[int] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(app_module.hmac, "compare_digest", spy)
    assert server.api("/api/logs").status_code == 200
    assert httpx.get(f"{server.url}/api/logs", headers={"Authorization": "Bearer nope"},
                     timeout=10).status_code == 401
    assert len(calls) >= 2


def test_wrong_admin_tokens_are_slowed_counted_and_logged(
        server: HookyardServer, caplog: pytest.LogCaptureFixture) -> None:
    """Found by an outside audit: /api/* answered 1,200 wrong tokens a second, with nothing in
    the log or the metrics (the dashboard login waited and logged; the API was the faster way
    to guess the same token). A missing token is a client not set up: answered at once."""
    import logging
    import time

    url = f"{server.url}/api/logs"
    with caplog.at_level(logging.WARNING, logger="hookyard.security"):
        started = time.monotonic()
        for _ in range(3):
            r = httpx.get(url, headers={"Authorization": "Bearer guess-1234"}, timeout=10)
            assert r.status_code == 401
        assert time.monotonic() - started >= 3 * 0.25
    started = time.monotonic()
    assert httpx.get(url, timeout=10).status_code == 401
    assert time.monotonic() - started < 0.25
    lines = [r.getMessage() for r in caplog.records if r.name == "hookyard.security"]
    assert lines == ["wrong admin token refused (api; 1 since the last such line, from 127.0.0.1)"]
    metrics = server.api("/metrics").text
    assert 'hookyard_admin_tokens_refused_total{surface="api"} 3.0' in metrics


@pytest.mark.parametrize("where", ["api", "dashboard bearer", "login"])
def test_parallel_guesses_from_one_address_take_turns(server: HookyardServer, where: str) -> None:
    """Found by the web-surfaces audit: 200 guesses at a time got 385 answers a second, the
    right one answered at once beside the waiting wrong ones; a wrong Bearer on a dashboard
    page was answered at once. Each address's checks now take turns, a wrong one holding the
    turn for its delay: the right token waits behind the wrong ones sent before it."""
    import asyncio
    import re as re_module
    import time

    async def guess(client: httpx.AsyncClient, token: str) -> int:
        if where == "api":
            return (await client.get("/api/logs", headers={"Authorization": f"Bearer {token}"})).status_code
        if where == "dashboard bearer":
            return (await client.get("/ui/events", headers={"Authorization": f"Bearer {token}"})).status_code
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as own:  # its own nonce
            page = await own.get("/ui/login")
            csrf = re_module.search(r'name="csrf" value="([^"]+)"', page.text)
            assert csrf is not None
            answer = await own.post("/ui/login", data={"token": token, "csrf": csrf[1], "next": "/ui/"})
        return 200 if answer.status_code == 303 else answer.status_code

    async def main() -> tuple[list[int], float]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            started = time.monotonic()
            codes = await asyncio.gather(*(guess(client, f"guess-{i:04d}") for i in range(5)),
                                         guess(client, ADMIN))
            return list(codes), time.monotonic() - started

    codes, took = asyncio.run(main())
    assert codes[:5] == [401] * 5 and codes[5] == 200
    assert took >= 3 * 0.25 * 0.9  # the wrong ones took turns, not all at once


def test_an_address_under_guessing_gets_a_quick_429_and_others_no_wait(
        server: HookyardServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the final re-check: 50 parallel guesses from one address kept an admin's right
    token behind the same address waiting 12 s. Past MAX_WAITING waiting checks an address is
    answered 429 at once, unchecked; an address without wrong tokens is checked at once."""
    import asyncio
    import time

    from hookyard import refused_tokens

    monkeypatch.setattr(refused_tokens, "MAX_WAITING", 3)

    async def main() -> list[int]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            answers = await asyncio.gather(*(client.get(
                "/api/logs", headers={"Authorization": f"Bearer guess-{i:04d}"}) for i in range(10)))
            return [a.status_code for a in answers]

    codes = asyncio.run(main())
    assert codes.count(429) >= 5 and set(codes) == {401, 429}
    refused = httpx.get(f"{server.url}/api/logs", headers={"Authorization": "Bearer x-guess-1"})
    assert refused.status_code in (401, 429)
    started = time.monotonic()  # the admin from another address: at once
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport, timeout=10) as other:
        ok = other.get(f"{server.url}/api/logs", headers={"Authorization": f"Bearer {ADMIN}"})
    assert ok.status_code == 200 and time.monotonic() - started < 0.2


SECRET_NAMES = r"(write_key|writeKey|admin_token|api_key|apiKey|token|secret|password)"
EQUALITY = re.compile(rf"(\b{SECRET_NAMES}\b\s*[!=]=)|([!=]=\s*[\w.]*\b{SECRET_NAMES}\b)")


def test_no_secret_is_compared_with_equality_operators() -> None:
    """A static guard: secrets are only compared through keys_match / compare_digest."""
    offenders = []
    for path in sorted([*ROOT.joinpath("core").rglob("*.py"),
                        *ROOT.joinpath("plugins").rglob("*.py")]):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if EQUALITY.search(code) and "None" not in code and "is None" not in code:
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


# ------------------------------------------------------------------ per-source keys


def _sources_of(server: HookyardServer, user: str) -> list[str]:
    return [r[0] for r in server.runtime.db.read_sync(lambda c: c.execute(
        "SELECT source FROM inbox WHERE user_id = ? ORDER BY id", (user,)).fetchall())]


def test_a_write_key_writes_only_to_its_own_source(server: HookyardServer) -> None:
    ev = {"userId": "u-web", "event": "E"}
    assert server.post("/v1/track", ev, write_key=WEB_KEY).status_code == 200
    # the other source's key in the body does not override the header's key
    assert server.post("/v1/track", {**ev, "writeKey": APP_KEY}, write_key=WEB_KEY).status_code == 200
    r = httpx.post(f"{server.url}/connector/segment/", json={**ev, "type": "track"},
                   headers={"Authorization": f"Bearer {WEB_KEY}"}, timeout=10)
    assert r.status_code == 200
    assert _sources_of(server, "u-web") == ["web", "web", "web"]
    # a wrong header key is refused even when the body names a valid key
    bad = httpx.post(f"{server.url}/v1/track", json={**ev, "writeKey": APP_KEY},
                     headers=basic_auth("not-a-key-at-all"), timeout=10)
    assert bad.status_code == 401
    server.wait_idle()
    app_only = server.runtime.db.read_sync(lambda c: c.execute(
        "SELECT count(*) FROM outbox WHERE destination = 'app-only'").fetchone()[0])
    assert app_only == 0  # web's events never reach a destination that only app feeds


def test_write_keys_cannot_read(server: HookyardServer) -> None:
    for headers in ({"Authorization": f"Bearer {WEB_KEY}"}, basic_auth(WEB_KEY),
                    {"Authorization": f"Bearer {APP_KEY}"}):
        for path in ("/api/events", "/api/logs", "/ui/events"):
            r = httpx.get(f"{server.url}{path}", headers=headers, timeout=10,
                          follow_redirects=False)
            assert _refused(r), (path, headers, r.status_code)


# ------------------------------------------------------------------ the admin token


PUBLIC = {"/openapi.json", "/docs", "/healthz", "/readyz", "/metrics", "/", "/ui", "/ui/",
          "/ui/login"}


def _refused(r: httpx.Response) -> bool:
    """401/403, or the dashboard's redirect to its login page: never the resource itself."""
    if r.status_code in (401, 403):
        return True
    return r.status_code in (302, 303, 307) and "/ui/login" in r.headers.get("location", "")


def _operator_routes(server: HookyardServer) -> Iterator[tuple[str, str]]:
    """(method, concrete path) of every non-public, non-ingest route of the live app."""
    ingest = {route.pattern for route in server.runtime.routes}
    app = server._server.config.app  # type: ignore[union-attr]
    for route in app.routes:
        if isinstance(route, Mount):
            if route.path.startswith("/ui/static"):
                continue
            yield "GET", route.path + "/anything"
            continue
        if not isinstance(route, Route) or route.path in PUBLIC or route.path in ingest:
            continue
        path = re.sub(r"\{[^}]+\}", "x", route.path)
        for method in sorted(route.methods or {"GET"}):
            if method != "HEAD":
                yield method, path


def test_every_operator_route_refuses_without_the_admin_token(
        server: HookyardServer, monkeypatch: pytest.MonkeyPatch) -> None:
    from hookyard import refused_tokens

    monkeypatch.setattr(refused_tokens, "FAILED_TOKEN_DELAY", 0.001)  # hundreds of wrong tokens
    routes = list(_operator_routes(server))
    assert any(p.startswith("/api/") for _, p in routes) and any(p.startswith("/ui/") for _, p in routes)
    bad_credentials: list[dict[str, str]] = [
        {},
        {"Authorization": "Bearer wrong-token"},
        {"Authorization": f"Bearer {ADMIN[:-1]}"},  # a prefix of the token
        {"Authorization": f"Bearer {ADMIN}x"},  # the token and more
        {"Authorization": "Basic " + base64.b64encode(f"{ADMIN}:".encode()).decode()},
        {"Authorization": f"Token {ADMIN}"},
        {"Cookie": "hookyard_session=forged"},
    ]
    with httpx.Client(base_url=server.url, timeout=10, follow_redirects=False) as http:
        for method, path in routes:
            for headers in bad_credentials:
                r = http.request(method, path, headers=headers, json={})
                assert _refused(r), (method, path, headers, r.status_code, r.text[:200])
            r = http.request(method, path, params={"token": ADMIN, "admin_token": ADMIN})
            assert _refused(r), (method, path, "token in the query string", r.status_code)
        assert http.get("/api/logs", headers={"Authorization": f"Bearer {ADMIN}"}).status_code == 200


@pytest.mark.parametrize("path", ["/api/logs/", "/api//logs", "/%61pi/logs", "/api/./logs",
                                  "/api/%2e%2e/api/logs", "/API/logs", "//api/logs"])
def test_path_tricks_do_not_bypass_the_admin_token(server: HookyardServer, path: str) -> None:
    with httpx.Client(base_url=server.url, timeout=10, follow_redirects=False) as http:
        r = http.send(http.build_request("GET", httpx.URL(server.url + path)))
    assert r.status_code != 200 or "items" not in r.text, (path, r.status_code, r.text[:200])
