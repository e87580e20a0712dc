"""The dashboard in a real headless browser (Debian's chromium driven by playwright): log in,
watch ingested events arrive on the live page, open an event, its subscriber, then fix a failing
destination and retry its dead letters. Screenshots are saved under the test's tmp dir."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hookyard.testing import sample_identify, sample_track
from hookyard.testing.fake_server import FakeServer
from hookyard.testing.server import HookyardServer

from .kit import ADMIN, KEY, config


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[HookyardServer, FakeServer]]:
    with FakeServer() as peer:
        peer.fail(400)
        with HookyardServer(config(peer.url), tmp_path / "data") as server:
            yield server, peer


@pytest.fixture
def page(browser: Any, setup: tuple[HookyardServer, FakeServer]) -> Iterator[Any]:
    server, _ = setup
    context = browser.new_context(base_url=server.url)
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=server.url)
    context.set_default_timeout(10_000)
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(str(exc)))
    tab.on("console", lambda msg: errors.append(msg.text) if msg.type == "error"
           and not msg.text.startswith("Failed to load resource") else None)  # 401 on bad login
    yield tab
    context.close()
    assert not errors, f"JavaScript errors: {errors}"


def test_click_through(page: Any, setup: tuple[HookyardServer, FakeServer], tmp_path: Path) -> None:
    from playwright.sync_api import expect

    server, peer = setup
    shots = tmp_path / "screenshots"
    shots.mkdir()

    def shot(name: str) -> None:
        page.screenshot(path=str(shots / f"{name}.png"), full_page=True)

    # anonymous -> login form; a wrong token is refused, the right one lands on live events
    page.goto("/")
    expect(page).to_have_url(f"{server.url}/ui/login?next=%2Fui%2Fevents")
    page.fill("#token", "wrong-token")
    page.click("button[type=submit]")
    expect(page.locator(".flash.error")).to_have_text("Wrong admin token.")
    page.fill("#token", ADMIN)
    page.click("button[type=submit]")
    expect(page).to_have_url(f"{server.url}/ui/events")
    expect(page.locator("td.empty")).to_be_visible()

    # ingest while the page is open: auto-refresh shows the events, newest first
    track = sample_track()
    assert server.post("/v1/identify", sample_identify()).status_code == 200
    assert server.post("/v1/track", track).status_code == 200
    rows = page.locator("tr.event-row")
    expect(rows).to_have_count(2)
    expect(rows.first).to_contain_text("User Registered")
    server.wait_idle()
    page.reload()
    expect(rows.first.locator(".badge")).to_have_text("failed")  # the peer answers 400
    page.select_option("select[name=type]", "identify")
    page.click("form.filters button[type=submit]")
    expect(rows).to_have_count(1)
    page.go_back()
    shot("1-live-events")

    # event detail: raw event, each destination's mapped request, every attempt
    rows.first.locator("a.detail").click()
    expect(page).to_have_url(f"{server.url}/ui/events/{track['messageId']}")
    expect(page.locator("pre.raw-event")).to_contain_text('"event": "User Registered"')
    forward = page.locator("section.delivery[data-destination=forward]")
    expect(forward.locator("h3 .badge")).to_have_text("dead")
    expect(forward.locator("tr.attempt")).to_have_count(1)
    expect(forward.locator("tr.attempt")).to_contain_text("400")
    forward.locator("summary", has_text="Mapped request").click()
    expect(forward.locator("pre.json")).to_contain_text('"path": "/v1/batch"')
    profiles = page.locator("section.delivery[data-destination=profiles]")
    expect(profiles.locator("h3 .badge")).to_have_text("done")
    shot("2-event-detail")

    # the subscriber of the event: properties, channels, preferences, events, workflow runs
    page.locator("dd.user a").click()
    expect(page).to_have_url(f"{server.url}/ui/subscribers/97980cfea0067")
    expect(page.locator("table.properties")).to_contain_text("Peter Gibbons")
    expect(page.locator("table.channels")).to_contain_text("peter@example.com")
    expect(page.locator("table.preferences")).to_contain_text("Asia/Kolkata")
    expect(page.locator("table.user-events")).to_contain_text("User Registered")
    expect(page.locator("table.workflow-runs")).to_contain_text("welcome")
    shot("3-subscriber")

    # search by email finds the same subscriber
    page.click("nav >> text=Subscribers")
    page.fill("input[name=q]", "peter@example")
    page.click("form.filters button[type=submit]")
    expect(page.locator("tr.subscriber-row")).to_have_count(1)

    # dead letters: fix the peer, retry one, then retry all
    page.click("nav >> text=Destinations")
    expect(page.locator("tr[data-destination=forward] .badge")).to_have_text("failing")
    page.click("nav >> text=Dead letters")
    letters = page.locator("tr.dead-letter")
    expect(letters).to_have_count(2)
    shot("4-dead-letters")
    peer.reset()  # the peer answers 200 from now on
    peer.clear()
    letters.first.locator("button.retry").click()
    expect(page.locator(".flash.ok")).to_have_text("1 dead letter(s) queued for delivery again.")
    peer.wait_for(1)
    page.click("button.retry-all")
    expect(page.locator(".flash.ok")).to_contain_text("queued for delivery again")
    peer.wait_for(2)
    server.wait_idle()
    page.reload()
    expect(page.locator("td.empty")).to_have_text("No dead letters.")
    page.goto(f"/ui/events/{track['messageId']}")
    expect(forward.locator("h3 .badge")).to_have_text("done")
    expect(forward.locator("tr.attempt")).to_have_count(2)
    shot("5-after-retry")

    # sources: the key is masked in the page and copied through the button
    page.click("nav >> text=Sources")
    assert KEY not in page.content()
    page.click("button.copy-key")
    expect(page.locator("button.copy-key + .copied")).to_be_visible()
    assert page.evaluate("navigator.clipboard.readText()") == KEY
    page.click("button.copy-curl")
    expect(page.locator("button.copy-curl + .copied")).to_be_visible()
    copied = page.evaluate("navigator.clipboard.readText()")
    assert f'-u "{KEY}:"' in copied and f"{server.url}/v1/track" in copied
    shot("6-sources")

    page.click("button:has-text('Log out')")
    expect(page).to_have_url(f"{server.url}/ui/login")
    assert len(list(shots.iterdir())) == 6


def sign_in(page: Any, path: str = "/ui/events") -> None:
    page.goto(path)
    page.fill("#token", ADMIN)
    page.click("button[type=submit]")


def test_long_values_and_a_narrow_screen_do_not_widen_the_page(
    page: Any, setup: tuple[HookyardServer, FakeServer]
) -> None:
    """A 20 KB trait without spaces wraps in its cell; at 375 px a table scrolls in its own
    box and the page itself does not scroll sideways."""
    server, _ = setup
    long = "x" * 20_000
    uid = "u-" + "y" * 300
    assert server.post("/v1/identify", sample_identify(userId=uid, traits={"blob": long})).status_code == 200
    server.wait_idle()
    sign_in(page)
    for width in (1280, 375):
        page.set_viewport_size({"width": width, "height": 800})
        for path in ("/ui/events", "/ui/subscribers", f"/ui/subscribers/{uid}"):
            page.goto(path)
            assert page.evaluate("document.documentElement.scrollWidth") <= width, (width, path)


def test_the_live_page_says_when_its_session_ended(
    page: Any, setup: tuple[HookyardServer, FakeServer]
) -> None:
    """Signed out in another tab: the live table stops refreshing and says so, instead of
    going stale without a word."""
    from playwright.sync_api import expect

    sign_in(page)
    other = page.context.new_page()
    other.goto("/ui/sources")
    other.click("button:has-text('Log out')")
    expect(page.locator(".refresh-stopped")).to_contain_text("signed out", timeout=10_000)
    assert not page.locator("#autorefresh").is_checked()
