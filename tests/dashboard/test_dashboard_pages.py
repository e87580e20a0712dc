"""Dashboard pages over plain HTTP (Bearer token): content, escaping, masked secrets, filters,
paging, dead-letter forms, and bad parameters answered 4xx."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator

import httpx
import pytest
from hookyard.inbox import INSERT_EVENT
from hookyard.testing import sample_identify, sample_track
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer
from hookyard.times import now_iso

from .kit import ADMIN, BEARER, FORWARD_KEY, KEY

XSS = "<script>alert('x')</script>"
PAGES = ("/ui/sources", "/ui/events", "/ui/logs", "/ui/subscribers", "/ui/destinations",
         "/ui/dead-letters", "/ui/plugins")


@pytest.fixture(scope="module")
def loaded(server: HookyardServer) -> Iterator[HookyardServer]:
    """The server after an identify (carrying its writeKey, as analytics.js sends it), a track
    with markup in its name, a batch of 55 tracks and one refused request."""
    ident = sample_identify(writeKey=KEY)
    assert server.post("/v1/identify", ident).status_code == 200
    assert server.post("/v1/track", sample_track(event=XSS, messageId="xss-1")).status_code == 200
    batch = {"batch": [sample_track(type="track", messageId=f"bulk-{i}") for i in range(55)]}
    assert server.post("/v1/batch", batch).status_code == 200
    assert server.post("/v1/track", sample_track(), write_key="wrong-write-key").status_code == 401
    server.wait_idle()
    yield server


@pytest.fixture
def client(loaded: HookyardServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=loaded.url, headers=BEARER, timeout=10) as c:
        yield c


def test_no_page_shows_a_secret_or_raw_markup(client: httpx.Client) -> None:
    message_ids = re.findall(r'href="/ui/events/([^"?]+)"', client.get("/ui/events").text)
    pages = [*PAGES, "/ui/subscribers/97980cfea0067", "/ui/events/xss-1",
             *(f"/ui/events/{m}" for m in message_ids[:3])]
    for path in pages:
        page = client.get(path)
        assert page.status_code == 200, path
        for secret in (KEY, ADMIN, FORWARD_KEY):
            assert secret not in page.text, (path, secret)
        assert XSS not in page.text, path
        assert "default-src 'self'" in page.headers["content-security-policy"]
    detail = client.get("/ui/events/xss-1").text
    assert "&lt;script&gt;alert(" in detail
    sources = client.get("/ui/sources").text
    assert "copy-key" in sources and "/v1/track" in sources
    # a key under 24 characters is not shown at all (19 here); a longer one only at its ends
    assert "••••••••" in sources and "das•" not in sources and "•0001" not in sources
    from hookyard.dashboard.render import mask
    assert mask("wk_8jSAw9c_BjWE1UVPGQ2oPZ2FQZ3mV_C6") == "wk_••••••••V_C6"
    assert mask("seg-key-0001") == mask("a" * 23) == "••••••••"


def test_event_detail_shows_raw_event_mapping_and_attempts(client: httpx.Client) -> None:
    page = client.get("/ui/events/xss-1").text
    assert 'data-destination="profiles"' in page and 'data-destination="forward"' in page
    assert "Mapped request: POST /v1/batch" in page  # the forwarder's mapped request
    assert "b-permanent" in page and "<td>400</td>" in page  # the attempt: status + latency
    assert re.search(r"<td>\d+(\.\d)? ms</td>", page)
    assert "Pro Annual" in page  # the raw event


def test_events_filters_and_paging(client: httpx.Client) -> None:
    first = client.get("/ui/events").text
    assert first.count('class="event-row"') == 50
    older = re.search(r'href="/ui/events\?(cursor=\d+)"', first)
    assert older, "no link to older events"
    second = client.get(f"/ui/events?{older.group(1)}").text
    assert second.count('class="event-row"') == 7 and 'data-refresh' not in second
    assert 'class="newest" href="/ui/events"' in second and 'class="newest"' not in first
    typed = client.get(f"/ui/events?type=track&{older.group(1)}").text
    assert 'class="newest" href="/ui/events?type=track"' in typed  # the filters stay
    assert client.get("/ui/events?type=identify").text.count('class="event-row"') == 1
    failed = client.get("/ui/events?status=failed").text  # every event is a dead letter at the peer
    assert failed.count('class="event-row"') == 50
    assert 'class="event-row"' not in client.get("/ui/events?status=delivered").text
    assert client.get("/ui/events?user_id=97980cfea0067").text.count('class="event-row"') == 50
    for bad in ("status=nope", "type=nope", "source=nope", "cursor=abc", "cursor=-1"):
        assert client.get(f"/ui/events?{bad}").status_code == 400, bad


def test_api_log_lists_refusals(client: httpx.Client) -> None:
    refused = client.get("/ui/logs?status=401").text
    assert refused.count('class="log-row"') == 1 and "invalid write key" in refused
    assert "wrong-write-key" not in refused
    assert client.get("/ui/logs?status=200").text.count('class="log-row"') == 3
    assert client.get("/ui/logs?status=abc").status_code == 400


def test_subscribers_search_and_profile(client: httpx.Client) -> None:
    for q in ("peter@example.com", "97980"):
        rows = client.get("/ui/subscribers", params={"q": q}).text
        assert rows.count('class="subscriber-row"') == 1 and "Peter Gibbons" in rows, q
    assert 'class="subscriber-row"' not in client.get("/ui/subscribers?q=nobody").text
    profile = client.get("/ui/subscribers/97980cfea0067").text
    for expected in ("peter@example.com", "$locale", "Asia/Kolkata", "welcome", "User Registered"):
        assert expected in profile, expected
    assert client.get("/ui/subscribers/nobody").status_code == 404
    assert client.get("/ui/subscribers?destination=forward").status_code == 404
    # a search SQLite cannot run (a LIKE pattern of 50,000 bytes) is refused, not a 500
    assert client.get("/ui/subscribers", params={"q": "_" * 25_000}).status_code == 400


def test_destinations_health(client: httpx.Client) -> None:
    page = client.get("/ui/destinations").text
    rows = dict(re.findall(r'data-destination="(\w+)">.*?badge b-(\w+)', page, re.S))
    assert rows == {"profiles": "healthy", "forward": "failing"}


def test_unknown_things_are_404(client: httpx.Client) -> None:
    assert client.get("/ui/events/no-such-message").status_code == 404
    assert client.post("/ui/dead-letters/explode", data={}).status_code == 404
    assert client.post("/ui/sources/nope/write-key").status_code == 404
    assert client.post("/ui/dead-letters/retry", data={"id": "x"}).status_code == 400
    assert client.post("/ui/dead-letters/retry", data={"destination": "nope"}).status_code == 400
    assert client.post("/ui/dead-letters/retry", content=b"{}",
                       headers={"Content-Type": "application/json"}).status_code == 415


def test_discard_one_dead_letter(client: httpx.Client, peer: FakeServer) -> None:
    page = client.get("/ui/dead-letters?destination=forward").text
    ids = re.findall(r'class="dead-letter" data-id="(\d+)"', page)
    assert len(ids) == 50
    # the status once: it said "HTTP 400 · HTTP 400: fake failure 400" (newcomer audit)
    assert "HTTP 400: fake failure 400" in page and "HTTP 400 · HTTP 400" not in page
    assert "HTTP 400 · HTTP 400" not in client.get("/ui/destinations").text
    done = client.post("/ui/dead-letters/discard", data={"id": ids[0],
                                                          "back_destination": "forward"})
    assert done.status_code == 303
    assert done.headers["location"] == "/ui/dead-letters?destination=forward&done=discard&count=1"
    after = client.get(done.headers["location"]).text
    assert "1 dead letter(s) discarded." in after and f'data-id="{ids[0]}"' not in after


def test_an_event_nested_deeper_than_ingest_now_allows_is_shown_as_a_notice(
        loaded: HookyardServer, client: httpx.Client) -> None:
    """Ingest refuses events nested over 100 levels (hookyard.nesting); before that limit it
    took ~1,000 (Python 3.11) to ~10,000 (3.13), and the event's page then failed with a 500."""
    deep = '{"a": ' * 900 + "1" + "}" * 900  # as deep as ingest took on every Python
    raw = ('{"type": "track", "userId": "deep-u", "event": "Deep", "messageId": "deep-1",'
           f' "properties": {deep}}}').encode()
    row = ("web", "deep-1", "track", "deep-u", None, "Deep", now_iso(), raw, 0)
    loaded.runtime.db.write_sync(lambda conn: conn.execute(INSERT_EVENT, row))
    page = client.get("/ui/events/deep-1")
    assert page.status_code == 200
    # Python 3.11 cannot indent it (3.13 can: its json encodes indented JSON in C)
    assert "nested too deeply to show here" in page.text or sys.version_info >= (3, 12)


def test_an_event_too_deep_to_decode_is_listed_with_an_error(
        loaded: HookyardServer, client: httpx.Client) -> None:
    """Deeper than this Python's decoder goes (before the nesting limit, Python 3.13 took
    10,000 levels; 3.11 decodes 1,000): listed with an error, not a 500."""
    deep = "[" * 20_000 + "]" * 20_000
    raw = ('{"type": "track", "userId": "deep-u", "event": "Deep", "messageId": "deep-2",'
           f' "properties": {{"a": {deep}}}}}').encode()
    row = ("web", "deep-2", "track", "deep-u", None, "Deep", now_iso(), raw, 0)
    loaded.runtime.db.write_sync(lambda conn: conn.execute(INSERT_EVENT, row))
    listed = client.get("/api/events", params={"message_id": "deep-2"})
    assert listed.status_code == 200
    (item,) = listed.json()["items"]
    assert item["event"]["error"] == "the stored event is nested too deeply to decode"
    assert client.get("/ui/events/deep-2").status_code == 200
