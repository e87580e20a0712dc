"""Dashboard links to records with odd ids, long lists on a subscriber page, unknown pages and
"Discard all" of every destination (an outside audit in a real browser found each broken)."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator

import httpx
import pytest
from hookyard.testing import sample_identify, sample_track
from hookyard.testing.server import HookyardServer

from .kit import BEARER

ODD_IDS = ("a/../b", "..", ".", " lead", "q?x=1#f", "100%", "line1\nline2")
# (a line break: Starlette's path convertor matched none, so no route took such a link; found
# by the web-surfaces audit)


@pytest.fixture(scope="module")
def client(server: HookyardServer) -> Iterator[httpx.Client]:
    for uid in (*ODD_IDS, "b", "\u202eeciffo-", "admin\u200b", "nul\x00x"):
        ident = sample_identify(userId=uid, messageId=f"id-{uid}",
                                traits={"name": f"user {uid}", "greeting": "مرحبا 🎉", "gone": None})
        assert server.post("/v1/identify", ident).status_code == 200
    batch = [sample_track(userId="busy", messageId=f"busy-{i}") for i in range(60)]
    assert server.post("/v1/batch", {"batch": batch}).status_code == 200
    server.wait_idle()
    with httpx.Client(base_url=server.url, headers=BEARER, timeout=10) as c:
        yield c


def hrefs(page: str) -> list[str]:
    return [html.unescape(h) for h in re.findall(r'href="([^"]+)"', page)]


@pytest.mark.parametrize("uid", ODD_IDS)
def test_a_subscriber_link_opens_that_subscriber(client: httpx.Client, uid: str) -> None:
    """``a/../b`` must not open subscriber ``b``; ``..`` and ``.`` cannot be path segments."""
    listing = client.get("/ui/subscribers", params={"q": uid.strip()}).text
    links = [h for h in hrefs(listing) if h.startswith("/ui/subscribers/")]
    assert links, listing
    pages = [client.get(httpx.URL(link)) for link in links]
    titles = [re.search(r"<h1>Subscriber <code>(.*?)</code>", p.text, re.S) for p in pages]
    assert uid in [html.unescape(t.group(1)) for t in titles if t], links


def test_the_event_link_of_an_odd_message_id_opens_that_event(client: httpx.Client) -> None:
    page = client.get("/ui/events", params={"user_id": "a/../b"}).text
    [link] = {h for h in hrefs(page) if h.startswith("/ui/events/")}
    assert link == "/ui/events/id-a%2F..%2Fb"
    assert "id-a/../b" in client.get(link).text


def test_an_id_with_a_line_break_opens_its_records(client: httpx.Client) -> None:
    page = client.get("/ui/events", params={"user_id": "line1\nline2"}).text
    [link] = {h for h in hrefs(page) if h.startswith("/ui/events/")}
    assert link == "/ui/events/id-line1%0Aline2"
    assert client.get(link).status_code == 200
    api = client.get("/api/subscribers/line1%0Aline2")
    assert api.status_code == 200 and api.json()["distinct_id"] == "line1\nline2"
    assert client.get("/api/subscribers/line1%0Aline2/events").status_code == 200


def test_characters_that_reorder_or_hide_text_are_shown_escaped(client: httpx.Client) -> None:
    """Found by the web-surfaces audit: a userId of U+202E + 'eciffo-' read '-office' and
    reversed its line; 'admin' + U+200B looked like 'admin'."""
    for uid, shown in (("\u202eeciffo-", "\\u202eeciffo-"), ("admin\u200b", "admin\\u200b"),
                       ("nul\x00x", "nul\\u0000x")):  # a NUL went into the page (judge audit)
        page = client.get("/ui/events", params={"user_id": uid}).text
        assert shown in page and uid not in page
        [link] = {h for h in hrefs(page) if h.startswith("/ui/events/")}
        detail = client.get(httpx.URL(link)).text
        assert shown in detail and uid not in detail
    assert "مرحبا" in client.get("/ui/subscribers/b").text  # right-to-left text as written


def test_every_answer_says_nosniff_and_api_answers_are_not_stored(client: httpx.Client) -> None:
    """Found by the web-surfaces audit: /api, /docs, /metrics and the static files had no
    nosniff, /api answers (customer data) no Cache-Control, /docs no frame or script policy."""
    for path in ("/api/subscribers", "/api/nope", "/docs", "/openapi.json", "/metrics",
                 "/ui/static/app.css", "/healthz"):
        assert client.get(path).headers.get("x-content-type-options") == "nosniff", path
    assert client.get("/api/subscribers").headers["cache-control"] == "no-store"
    assert httpx.get(f"{client.base_url}/api/subscribers").headers["cache-control"] == "no-store"
    docs = client.get("/docs").headers
    assert docs["x-frame-options"] == "DENY" and "frame-ancestors 'none'" in docs[
        "content-security-policy"]


def test_a_user_id_with_spaces_around_it_is_filtered_as_it_is(client: httpx.Client) -> None:
    page = client.get("/ui/events", params={"user_id": " lead"}).text
    assert page.count('class="detail"') == 1


def test_values_are_shown_as_written(client: httpx.Client) -> None:
    page = client.get("/ui/subscribers/b").text
    assert "مرحبا 🎉" in page and "null" in page and "\\u0645" not in page


def test_a_subscriber_page_says_when_it_shows_only_the_newest(client: httpx.Client) -> None:
    page = client.get("/ui/subscribers/busy").text
    assert page.count('<tr><td>User Registered</td>') == 50
    assert "The newest 50 are shown" in page and "/ui/events?user_id=busy" in page
    assert "The newest 50 are shown" not in client.get("/ui/subscribers/b").text


def test_an_unknown_page_is_a_404_with_the_menu(client: httpx.Client) -> None:
    r = client.get("/ui/no-such-page")
    assert r.status_code == 404 and 'href="/ui/events"' in r.text and "no dashboard page" in r.text
    assert client.get("/ui/events/").status_code == 404  # no id: a 404, whatever is stored
    assert client.post("/ui/no-such-page", data={}).status_code == 404
    for path in ("/ui/dead-letters/retry", "/ui/logout"):  # POST-only pages
        r = client.get(path)
        assert r.status_code == 405 and 'href="/ui/events"' in r.text, path
        assert r.headers["allow"] == "POST", path


def test_a_dead_letters_user_links_to_that_users_events(client: httpx.Client,
                                                       server: HookyardServer) -> None:
    """The user of a dead letter may be an anonymousId, which no profile store holds: the link
    goes to the user's stored events (userId or anonymousId), never to a subscriber's 404."""
    anon = sample_track(userId=None, anonymousId="anon/dl 1", messageId="anon-dl")
    assert server.post("/v1/track", anon).status_code == 200
    server.wait_idle()
    page = client.get("/ui/dead-letters?destination=forward").text
    [link] = {h for h in hrefs(page) if "anon" in h and "user_id=" in h}
    events = client.get(httpx.URL(link))
    assert events.status_code == 200 and 'href="/ui/events/anon-dl"' in events.text


def test_discard_all_of_any_destination(client: httpx.Client, server: HookyardServer) -> None:
    """With no destination picked, "Discard all" sends ``all`` (the API refuses an unfiltered
    discard without it); the form of one destination sends only the destination."""
    page = client.get("/ui/dead-letters").text
    assert page.count('name="all" value="1"') == 1
    assert 'name="all"' not in client.get("/ui/dead-letters?destination=forward").text
    done = client.post("/ui/dead-letters/discard", data={"destination": "", "all": "1"})
    assert done.status_code == 303, done.text
    assert "dead letter(s) discarded" in client.get(done.headers["location"]).text
    assert 'class="dead-letter"' not in client.get("/ui/dead-letters").text


@pytest.mark.parametrize("cursor", ["%C2%B2", "%D9%A3", "-1", "99999999999999999999999"])
def test_a_cursor_that_is_not_ascii_digits_is_a_400(client: httpx.Client, cursor: str) -> None:
    """``str.isdigit`` takes "²" and "٣", which ``int`` refuses: that was a 500."""
    for page in ("/ui/events", "/ui/logs", "/ui/dead-letters"):
        assert client.get(f"{page}?cursor={cursor}").status_code == 400, page


# -- hostile requests a fuzzing audit found answered 500, or never ------------------------------
def test_a_non_ascii_session_cookie_is_no_session(server: HookyardServer) -> None:
    """``hmac.compare_digest`` refuses str with non-ASCII characters: every page was a 500,
    before login, for anyone."""
    cookie = "hookyard_session=1.2.\u00e9".encode("latin-1")
    with httpx.Client(base_url=server.url, timeout=10) as anonymous:
        for method, path in (("GET", "/ui/login"), ("GET", "/ui/events"), ("POST", "/ui/logout")):
            r = anonymous.request(method, path, headers={"Cookie": cookie})
            assert r.status_code < 500, (path, r.status_code)


@pytest.mark.parametrize("bad", ["²", "١", "１", "9" * 5000, "0"])
def test_a_dead_letter_form_id_that_is_not_ascii_digits_is_a_400(client: httpx.Client,
                                                                 bad: str) -> None:
    for action in ("retry", "discard"):
        assert client.post(f"/ui/dead-letters/{action}", data={"id": bad}).status_code == 400


def test_a_form_body_that_stalls_is_a_408(server: HookyardServer,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The dashboard's forms read their body as ingest does: a Content-Length over the limit
    is refused before the body, and a body that stops coming is answered (it waited forever)."""
    import socket

    from hookyard import body_deadline

    monkeypatch.setattr(body_deadline, "BODY_TIMEOUT_SECONDS", 0.5)
    host, port = server.url.removeprefix("http://").split(":")

    def answer(request: bytes) -> bytes:
        with socket.create_connection((host, int(port))) as conn:
            conn.settimeout(10)
            conn.sendall(request)
            return conn.recv(65536).split(b"\r\n")[0]

    start = b"POST /ui/login HTTP/1.1\r\nHost: a\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    assert answer(start + b"Content-Length: 100\r\n\r\ncsrf=a").split(b" ")[1] == b"408"
    assert answer(start + b"Content-Length: 99999999\r\n\r\n").split(b" ")[1] == b"413"


def test_a_client_gone_mid_body_leaves_no_traceback(server: HookyardServer,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Starlette's ClientDisconnect from a form or an admin body went up as "Exception in ASGI
    application" with a traceback: anyone could fill the log through /ui/login."""
    import logging
    import socket
    import time

    from .kit import ADMIN

    uvicorn_log = logging.getLogger("uvicorn.error")
    monkeypatch.setattr(uvicorn_log, "disabled", False)
    seen: list[logging.LogRecord] = []
    catch = logging.Handler(logging.ERROR)
    catch.emit = seen.append  # type: ignore[method-assign]
    uvicorn_log.addHandler(catch)

    host, port = server.url.removeprefix("http://").split(":")
    for path, extra in (("/ui/login", b""), ("/api/replay", b"Authorization: Bearer " + ADMIN.encode() + b"\r\n")):
        with socket.create_connection((host, int(port))) as conn:
            conn.sendall(b"POST " + path.encode() + b" HTTP/1.1\r\nHost: a\r\n" + extra
                         + b"Content-Type: application/x-www-form-urlencoded\r\n"
                         + b"Content-Length: 100\r\n\r\n0123456789")
            time.sleep(0.2)
    time.sleep(0.5)
    uvicorn_log.removeHandler(catch)
    assert not seen, [r.getMessage() for r in seen]
