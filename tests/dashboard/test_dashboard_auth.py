"""Dashboard authentication over plain HTTP (httpx): redirects, login form, session cookie,
Bearer token, CSRF on every form POST."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from hookyard.testing.server import HookyardServer

from .kit import ADMIN, BEARER, KEY, csrf_of, login


@pytest.fixture
def client(server: HookyardServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=10) as c:
        yield c


def test_anonymous_pages_redirect_to_login(client: httpx.Client) -> None:
    root = client.get("/")
    assert root.status_code == 303 and root.headers["location"] == "/ui/events"
    page = client.get("/ui/events?source=web")
    assert page.status_code == 303
    assert page.headers["location"] == "/ui/login?next=%2Fui%2Fevents%3Fsource%3Dweb"
    for path in ("/ui/sources", "/ui/subscribers/u1", "/ui/dead-letters", "/ui/plugins"):
        assert client.get(path).status_code == 303, path
    login_page = client.get("/ui/login")
    assert login_page.status_code == 200 and 'type="password"' in login_page.text


def test_anonymous_post_is_401(client: httpx.Client) -> None:
    assert client.post("/ui/dead-letters/retry", data={}).status_code == 401
    assert client.post("/ui/sources/web/write-key").status_code == 401


def test_bearer_token(client: httpx.Client) -> None:
    assert client.get("/ui/events", headers=BEARER).status_code == 200
    wrong = client.get("/ui/events", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "WWW-Authenticate" in wrong.headers
    # another scheme is not the dashboard's (a proxy's Basic auth): the sign-in page, no 401
    basic = client.get("/ui/events", headers={"Authorization": f"Basic {ADMIN}"})
    assert basic.status_code == 303 and basic.headers["location"].startswith("/ui/login")
    # a Bearer client needs no CSRF token: a browser never adds that header on its own
    retry = client.post("/ui/dead-letters/retry", headers=BEARER, data={})
    assert retry.status_code == 303 and retry.headers["location"].startswith("/ui/dead-letters")


def test_a_proxys_basic_auth_does_not_hide_the_session(client: httpx.Client) -> None:
    """Behind a reverse proxy protected by Basic auth the browser sends that header with every
    request: the session cookie still signs the operator in."""
    assert login(client).status_code == 303
    proxy = {"Authorization": "Basic cHJveHl1c2VyOnB3"}
    assert client.get("/ui/events", headers=proxy).status_code == 200


def test_bad_login(client: httpx.Client) -> None:
    wrong = login(client, token="not-the-token")
    assert wrong.status_code == 401
    assert "Wrong admin token" in wrong.text and "not-the-token" not in wrong.text
    assert "hookyard_session" not in client.cookies
    # a POST without the form's nonce cookie (a cross-site login) is refused
    client.cookies.clear()
    forged = client.post("/ui/login", data={"token": ADMIN, "csrf": "guess", "next": "/ui/events"})
    assert forged.status_code == 403 and "hookyard_session" not in client.cookies


def test_login_sets_a_strict_httponly_cookie(client: httpx.Client) -> None:
    ok = login(client, next_path="/ui/plugins")
    assert ok.status_code == 303 and ok.headers["location"] == "/ui/plugins"
    cookie = next(h for h in ok.headers.get_list("set-cookie") if h.startswith("hookyard_session="))
    attrs = cookie.lower()
    assert "httponly" in attrs and "samesite=strict" in attrs and "path=/" in attrs
    assert ADMIN not in cookie
    page = client.get("/ui/plugins")
    assert page.status_code == 200 and "profiles" in page.text
    # a tampered cookie is no session
    value = client.cookies["hookyard_session"]
    client.cookies.set("hookyard_session", value[:-2] + ("AA" if not value.endswith("AA") else "BB"))
    assert client.get("/ui/plugins").status_code == 303


def test_login_never_redirects_off_site(client: httpx.Client) -> None:
    for target in ("https://evil.example/", "//evil.example/x", "/ui/\\evil", "javascript:x"):
        client.cookies.clear()
        ok = login(client, next_path=target)
        assert ok.status_code == 303 and ok.headers["location"] == "/ui/events", target


def test_csrf_required_on_post_with_cookie(client: httpx.Client) -> None:
    login(client)
    without = client.post("/ui/dead-letters/retry", data={})
    assert without.status_code == 403 and "CSRF" in without.text
    wrong = client.post("/ui/dead-letters/retry", data={"csrf": "x" * 43})
    assert wrong.status_code == 403
    token = csrf_of(client.get("/ui/events").text)
    ok = client.post("/ui/dead-letters/retry", data={"csrf": token})
    assert ok.status_code == 303
    key = client.post("/ui/sources/web/write-key", headers={"X-CSRF-Token": token})
    assert key.status_code == 200 and key.text == KEY
    assert key.headers["cache-control"] == "no-store"
    assert client.post("/ui/sources/web/write-key").status_code == 403


def test_logout(client: httpx.Client, server: HookyardServer) -> None:
    login(client)
    token = csrf_of(client.get("/ui/events").text)
    assert client.post("/ui/logout", data={}).status_code == 403  # CSRF here too
    copy = client.cookies["hookyard_session"]  # captured before the logout
    out = client.post("/ui/logout", data={"csrf": token})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert client.get("/ui/events").status_code == 303
    # the copy no longer opens the dashboard either (it is signed, not looked up: it stayed
    # valid for its 12 hours, found by an outside audit), also after a restart
    with httpx.Client(base_url=str(client.base_url), cookies={"hookyard_session": copy}) as c:
        assert c.get("/ui/events").status_code == 303
    from hookyard.dashboard.auth import REVOKED_SESSIONS, SessionAuth

    revoked = server.runtime.data_dir / REVOKED_SESSIONS
    assert SessionAuth(ADMIN).session_id(copy) is not None  # signed right, unexpired...
    assert SessionAuth(ADMIN, revoked_file=revoked).session_id(copy) is None  # ...but logged out


def test_session_of_another_admin_token_is_refused(server: HookyardServer) -> None:
    from hookyard.dashboard.auth import SessionAuth

    forged = SessionAuth("some-other-admin-token").new_session()
    with httpx.Client(base_url=server.url, cookies={"hookyard_session": forged}) as c:
        assert c.get("/ui/events").status_code == 303


def test_api_keeps_its_own_auth(client: httpx.Client) -> None:
    login(client)
    assert client.get("/api/logs").status_code == 401  # the session cookie is not an API key
    assert client.get("/api/logs", headers=BEARER).status_code == 200
