"""Secrets never reach stored attempt outcomes: a destination that sends its key in a custom
header (``X-Acme-Key``, which the HTTP client does not know as a credential) to a peer that
echoes it in 200, 302, 400 and 500 answers, and a deliver hook whose error quotes its key. The
response bodies and errors seen by ``/api/dead-letters``, ``/api/deliveries`` and stored in the
outbox and attempts tables hold ``[redacted]`` instead of any configured secret (the
destination's own settings, nested ones included, and every other configured secret)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import httpx
import msgspec
import pytest
from hookyard import hookimpl
from hookyard.connectors import Connector, DestinationContext
from hookyard.deliveries import Delivery, DeliveryResult, MapResult
from hookyard.errors import RetryableError
from hookyard.events import Event, event_type
from hookyard.http import HttpClient
from hookyard.testing.cluster import wait_for
from hookyard.testing.fake_server import FakeServer, RecordedRequest
from hookyard.testing.server import HookyardServer, basic_auth

API_KEY = "ak_9Zq7Lw3Xv5Nt2Rb8"
NESTED_KEY = "nk_4Hd8Pq2Ms6Vy1Tc3"  # settings.headers["X-Acme-Partner-Key"]
OTHER_KEY = "ok_7Gf2Kx9Bn4Wr6Jp1"  # another destination's key
WRITE_KEY = "wk_3Ye8Qa5Lm1Zs7Dv2"
ADMIN = "adm_6Nc1Ru4Hw8Ft3Xk9"
SECRETS = [API_KEY, NESTED_KEY, OTHER_KEY, WRITE_KEY, ADMIN]
STATUS = {"fine": 200, "moved": 302, "bad": 400, "down": 500, "long": 400}


class AcmeSettings(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    base_url: str
    api_key: str
    headers: dict[str, str] = {}


class AcmePlugin:
    """Sends each delivery alone, its key in ``X-Acme-Key``; raises quoting the key for
    events named ``boom``."""

    @hookimpl
    def register_connectors(self) -> list[Connector]:
        return [Connector(name="acme", kind="destination", settings=AcmeSettings, batch_size=1,
                          description="test destination")]

    @hookimpl
    def map_event(self, destination: DestinationContext, event: Event,
                  raw: dict[str, Any]) -> MapResult:
        return MapResult.send(Delivery(kind=event_type(event), path="/hook",
                                       body={"id": raw["messageId"]}))

    @hookimpl
    async def deliver(self, destination: DestinationContext, deliveries: list[Delivery],
                      client: HttpClient) -> list[DeliveryResult]:
        s: AcmeSettings = destination.settings
        results = []
        for d in deliveries:
            if d.body["id"].startswith("boom"):
                raise RetryableError(f"acme refused key {s.api_key}")
            headers = {"X-Acme-Key": s.api_key, **s.headers}
            result, _ = await client.send("POST", s.base_url + d.path, json=d.body, headers=headers)
            results.append(result)
        return results


def echo(rec: RecordedRequest) -> tuple[int, Any, dict[str, str]]:
    """Echo the key it was sent (plain and as a Basic header) and other configured secrets."""
    key = rec.headers.get("x-acme-key", "")
    kind = rec.json()["id"].split("-")[0]
    basic = base64.b64encode(f"{key}:".encode()).decode()
    text = (f"key {key} refused (Basic {basic}); partner {rec.headers.get('x-acme-partner-key')};"
            f" known: {OTHER_KEY} {WRITE_KEY} {ADMIN}")
    if kind == "long":  # clipped (2,000 characters) in the middle of the key
        text = "x" * 1990 + key
    headers = {"Location": f"/login?key={key}"} if kind == "moved" else {}
    return STATUS[kind], text.encode(), headers


def leaks(text: str) -> list[str]:
    forms = {s: [s, s[:10], base64.b64encode(f"{s}:".encode()).decode()[:12]] for s in SECRETS}
    return [f"{s} as {f!r}" for s, found in forms.items() for f in found if f in text]


@pytest.fixture
def server(hookyard_server: Callable[..., HookyardServer],
           fake_destination: Callable[[], FakeServer]) -> HookyardServer:
    fake = fake_destination()
    fake.set_handler(echo)
    fast = {"retry_initial_seconds": 0.05, "retry_max_seconds": 0.1, "max_attempts": 2}
    return hookyard_server({
        "server": {"admin_token": ADMIN},
        "sources": [{"name": "web", "plugin": "segment", "write_key": WRITE_KEY}],
        "destinations": [
            {"name": "acme", "plugin": "acme", "sources": ["web"], "delivery": fast,
             "settings": {"base_url": fake.url, "api_key": API_KEY,
                          "headers": {"X-Acme-Partner-Key": NESTED_KEY}}},
            {"name": "other", "plugin": "acme", "sources": [], "delivery": fast,
             "settings": {"base_url": fake.url, "api_key": OTHER_KEY}},
        ]}, plugins=[AcmePlugin()])


def test_echoed_secrets_are_redacted_in_every_stored_outcome(server: HookyardServer) -> None:
    ids = [f"{kind}-1" for kind in [*STATUS, "boom"]]
    with httpx.Client(base_url=server.url, timeout=10) as http:
        for mid in ids:
            event = {"type": "track", "userId": mid, "event": "E", "messageId": mid}
            assert http.post("/v1/track", json=event, headers=basic_auth(WRITE_KEY)).status_code == 200
        admin = {"Authorization": f"Bearer {ADMIN}"}

        def dead() -> list[dict[str, Any]] | None:
            items: list[dict[str, Any]] = http.get("/api/dead-letters", headers=admin).json()["items"]
            return items if len(items) == len(ids) - 1 else None  # all but "fine"

        wait_for(dead, 15, "dead letters", interval=0.05)
        answers = {"dead-letters": http.get("/api/dead-letters", headers=admin).text}
        for mid in ids:
            answers[mid] = http.get("/api/deliveries", params={"message_id": mid},
                                    headers=admin).text
    for where, text in answers.items():
        assert not leaks(text), f"{where}: {leaks(text)}"
    traced = {mid: msgspec.json.decode(answers[mid])["deliveries"][0] for mid in ids}
    assert traced["fine-1"]["state"] == "done"
    assert traced["fine-1"]["response_body"].startswith("key [redacted] refused (Basic [redacted]")
    assert traced["bad-1"]["response_body"] == (
        "key [redacted] refused (Basic [redacted]ODo=); partner [redacted];"
        " known: [redacted] [redacted] [redacted]")
    assert traced["down-1"]["attempts"] == 2 and "[redacted]" in traced["down-1"]["response_body"]
    assert traced["moved-1"]["last_error"].startswith("HTTP 302 (redirect to /login?key=[redacted];")
    assert traced["long-1"]["response_body"] == "x" * 1990 + "[redacted]…"
    assert traced["boom-1"]["last_error"] == (
        "gave up after 2 attempts: acme refused key [redacted]")
    assert [a["error"] for a in traced["boom-1"]["attempts_log"]] == [
        "acme refused key [redacted]", "gave up after 2 attempts: acme refused key [redacted]"]
    stored = server.runtime.db.read_sync(lambda c: (
        c.execute("SELECT * FROM outbox").fetchall(), c.execute("SELECT * FROM attempts").fetchall()))
    assert len(stored[0]) == len(ids) and len(stored[1]) == len(ids) + 2
    assert not leaks(repr(stored))


def test_scrubber_forms() -> None:
    from hookyard.delivery.scrub import Scrubber

    scrub = Scrubber(["short", "key-0123456789", "", "tok-abcdefghij"])
    assert scrub.text(None) is None and scrub.text("") == ""
    assert scrub.text("short key-0123456789!") == "short [redacted]!"  # shorter than 6: kept
    b64 = base64.b64encode(b"key-0123456789:pw").decode()
    assert scrub.text(f"Basic {b64}").startswith("Basic [redacted]")
    assert scrub.text("x" * 10 + "tok-abc…") == "x" * 10 + "[redacted]…"
    assert scrub.text("x" * 10 + "tok…") == "x" * 10 + "tok…"  # too little of it to matter
    ok = DeliveryResult.ok(200)
    assert scrub.result(ok) is ok
    plain = DeliveryResult.permanent("HTTP 400", response_body="nothing secret")
    assert scrub.result(plain) is plain
    echoed = DeliveryResult.retryable("HTTP 500 tok-abcdefghij", response_body="key-0123456789")
    assert (scrub.result(echoed).error, scrub.result(echoed).response_body) == (
        "HTTP 500 [redacted]", "[redacted]")
    assert Scrubber([]).result(echoed) is echoed


@pytest.mark.parametrize("before", ["", "a", "ab", "api:", "user12:"])
@pytest.mark.parametrize("after", ["", ":", ":password"])
def test_a_secret_is_redacted_base64_encoded_at_any_offset(before: str, after: str) -> None:
    """``Basic base64(user:key)`` puts the key 0, 1 or 2 bytes after a 3-byte boundary: each
    alignment encodes it differently, and each is recognised (only the key's own alignment at
    the start of the value was, and a log line showed ``base64("api:" + key)`` whole)."""
    import base64

    from hookyard.delivery.scrub import Scrubber

    secret = "WRITEKEY-abcdef123"
    encoded = base64.b64encode(f"{before}{secret}{after}".encode()).decode()
    cleaned = Scrubber([secret]).text(f"sent Authorization: Basic {encoded}")
    assert cleaned is not None and "[redacted]" in cleaned and encoded not in cleaned


@pytest.mark.parametrize("echo", [
    "token=ab%2Bcd%2Fef%3D%3Dgh",  # a query string or form quoted back
    "token=ab%2Bcd/ef%3D%3Dgh",
    '{"sent": "ab+cd\\/ef==gh"}',  # JSON that escapes its slashes (PHP's json_encode)
    "token=ab%2bcd%2fef%3d%3dgh",  # lower-case hex (.NET's HttpUtility.UrlEncode; the re-check)
])
def test_a_secret_is_redacted_url_encoded_or_json_escaped(echo: str) -> None:
    """Left from the security audit: a peer that echoed a key URL-encoded kept it whole in the
    stored response body."""
    from hookyard.delivery.scrub import Scrubber

    cleaned = Scrubber(["ab+cd/ef==gh"]).text(f"400 bad request: {echo}")
    assert cleaned is not None and "[redacted]" in cleaned and "gh" not in cleaned


def test_a_secret_is_redacted_as_go_or_ascii_json_escapes_it() -> None:
    """The re-check: Go escapes &, < and > in JSON strings, and an ASCII-only encoder writes
    \\u00e9 for a non-ASCII character: both kept the key whole."""
    from hookyard.delivery.scrub import Scrubber

    secret = "k&e<y>-\u00e9-123456"
    for echo in ('{"key": "k\\u0026e\\u003cy\\u003e-\\u00e9-123456"}',
                 '{"key": "k&e<y>-\\u00e9-123456"}'):
        cleaned = Scrubber([secret]).text(echo)
        assert cleaned == '{"key": "[redacted]"}', cleaned
