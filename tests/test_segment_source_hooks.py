"""Hook-level tests of the Segment source: ``authenticate``, ``parse_events`` and
``register_connectors`` of ``hookyard_segment.plugin`` called directly, no server."""

from __future__ import annotations

import base64
from typing import Any

import hookyard_segment.plugin as seg
import msgspec
import pytest
from hookyard.connectors import IngestRequest, ParsedEvent, RefusedEvent
from hookyard.errors import BadRequest, NotFound
from hookyard.events import Alias, Group, Identify, Page, Screen, Track
from hookyard.testing import (
    ingest_request,
    sample_alias,
    sample_group,
    sample_identify,
    sample_page,
    sample_screen,
    sample_track,
    source_context,
)

KEY = "test-write-key"
SOURCE = source_context("segment", KEY, name="web")
SAMPLES = {
    "identify": (sample_identify, Identify),
    "track": (sample_track, Track),
    "page": (sample_page, Page),
    "screen": (sample_screen, Screen),
    "group": (sample_group, Group),
    "alias": (sample_alias, Alias),
}


def basic(user: str, password: str = "") -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def v1(call: str, body: bytes | dict[str, Any],
       headers: dict[str, str] | None = None) -> IngestRequest:
    return ingest_request(f"/v1/{call}", body, headers, {"call": call})


def webhook(body: bytes | dict[str, Any] | list[Any],
            headers: dict[str, str] | None = None) -> IngestRequest:
    data = body if isinstance(body, bytes) else msgspec.json.encode(body)
    auth = headers if headers is not None else bearer(KEY)
    return ingest_request("/connector/segment/", data, auth)


def parse(req: IngestRequest) -> list[ParsedEvent]:
    result: list[ParsedEvent] = seg.parse_events(source=SOURCE, request=req)
    return result


def raw_of(parsed: ParsedEvent) -> dict[str, Any]:
    return msgspec.json.decode(parsed.raw)


# -- register_connectors -------------------------------------------------------------------------
def test_register_connectors_declares_source_and_forwarder() -> None:
    connectors = {(c.kind, c.name): c for c in seg.register_connectors()}
    source = connectors[("source", "segment")]
    assert "/v1/{call}" in source.paths
    assert "/connector/segment/" in source.paths
    assert source.description
    assert ("destination", "segment") in connectors


# -- authenticate --------------------------------------------------------------------------------
def test_basic_auth_with_write_key_as_user_name_is_accepted() -> None:
    result = seg.authenticate(source=SOURCE, request=v1("identify", sample_identify(), basic(KEY)))
    assert result.accepted and result.reason == ""


def test_basic_auth_password_is_ignored() -> None:
    req = v1("track", sample_track(), basic(KEY, "whatever"))
    assert seg.authenticate(source=SOURCE, request=req).accepted


def test_basic_auth_wrong_key_is_refused_with_reason() -> None:
    req = v1("identify", sample_identify(), basic("nope-key"))
    result = seg.authenticate(source=SOURCE, request=req)
    assert not result.accepted
    assert "invalid write key" in result.reason


def test_a_proxys_bearer_token_does_not_hide_the_body_write_key() -> None:
    body = {**sample_track(), "writeKey": KEY}
    assert seg.authenticate(source=SOURCE, request=v1("track", body, bearer("proxy-token"))).accepted


def test_a_body_write_key_is_found_beside_a_nan() -> None:
    body = msgspec.json.encode({**sample_track(), "writeKey": KEY, "properties": {"a": "__N__"}})
    req = v1("track", body.replace(b'"__N__"', b"NaN"))
    assert seg.authenticate(source=SOURCE, request=req).accepted
    [parsed] = parse(req)
    assert raw_of(parsed)["properties"] == {"a": None} and "writeKey" not in raw_of(parsed)


def test_a_byte_order_mark_before_the_body_is_ignored() -> None:
    """Fuzz audit: a body starting with a UTF-8 BOM (Windows tools write one) was refused as
    'invalid character (byte 0)'; RFC 8259 lets a reader ignore it."""
    body = b"\xef\xbb\xbf" + msgspec.json.encode({**sample_track(), "writeKey": KEY})
    req = v1("track", body)
    assert seg.authenticate(source=SOURCE, request=req).accepted
    [parsed] = parse(req)
    assert raw_of(parsed)["event"] == sample_track()["event"] and "writeKey" not in raw_of(parsed)


def test_an_event_whose_type_is_not_its_paths_says_so() -> None:
    with pytest.raises(BadRequest, match="its type is not 'track', as its path says"):
        parse(v1("track", {**sample_track(), "type": "identify"}))


def test_a_bearer_write_key_is_accepted_on_the_tracking_api() -> None:
    """Customer.io's Segment-protocol library sends keys starting pk_/sk_ as a Bearer token."""
    assert seg.authenticate(source=SOURCE, request=v1("track", sample_track(), bearer(KEY))).accepted
    wrong = seg.authenticate(source=SOURCE, request=v1("track", sample_track(), bearer("nope-key")))
    assert not wrong.accepted and wrong.reason == "invalid write key"


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic"}, {"Authorization": "Basic !!!not-base64"},
     {"Authorization": "Digest abc"}],
    ids=["none", "empty-basic", "garbage-basic", "other-scheme"],
)
def test_missing_key_is_refused_with_reason(headers: dict[str, str]) -> None:
    result = seg.authenticate(source=SOURCE, request=v1("identify", sample_identify(), headers))
    assert not result.accepted
    assert "missing write key" in result.reason


def test_write_key_in_body_is_accepted() -> None:
    body = {**sample_identify(), "writeKey": KEY}
    assert seg.authenticate(source=SOURCE, request=v1("identify", body)).accepted


def test_wrong_write_key_in_body_is_refused() -> None:
    body = {**sample_identify(), "writeKey": "other-key"}
    result = seg.authenticate(source=SOURCE, request=v1("identify", body))
    assert not result.accepted and "invalid write key" in result.reason


def test_non_string_write_key_in_body_counts_as_missing() -> None:
    body = {**sample_identify(), "writeKey": 12345678}
    result = seg.authenticate(source=SOURCE, request=v1("identify", body))
    assert not result.accepted and "missing write key" in result.reason


@pytest.mark.parametrize(
    "body",
    [
        b'{"writeKey": "\xff\xfe", "userId": "u"}',
        b'{"writeKey": "' + KEY.encode() + b'", "a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
    ids=["invalid-utf8", "deeply-nested"],
)
def test_undecodable_body_write_key_is_refused_not_raised(body: bytes) -> None:
    """authenticate answers accepted or refused; an exception here becomes a 500 at ingest."""
    result = seg.authenticate(source=SOURCE, request=v1("track", body))
    assert isinstance(result.accepted, bool)


def test_batch_body_write_key_is_accepted() -> None:
    body = {"batch": [sample_track()], "writeKey": KEY}
    assert seg.authenticate(source=SOURCE, request=v1("batch", body)).accepted


def test_webhook_bearer_is_accepted() -> None:
    req = webhook(sample_identify())
    assert req.path_params == {}
    assert seg.authenticate(source=SOURCE, request=req).accepted


def test_webhook_wrong_bearer_is_refused() -> None:
    result = seg.authenticate(source=SOURCE, request=webhook(sample_identify(), bearer("nope")))
    assert not result.accepted and "invalid write key" in result.reason


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer   "}, {"Authorization": "Token x"}],
                         ids=["none", "blank-bearer", "other-scheme"])
def test_webhook_needs_bearer(headers: dict[str, str]) -> None:
    result = seg.authenticate(source=SOURCE, request=webhook(sample_identify(), headers))
    assert not result.accepted
    assert "Bearer" in result.reason
    assert result.challenge == 'Bearer realm="hookyard"'  # the 401's WWW-Authenticate


def test_webhook_takes_the_tracking_apis_basic_auth_too() -> None:
    """Fuzz audit: a right key sent as Basic (the tracking API's way) was refused as 'missing
    Authorization: Bearer', although the header was there."""
    assert seg.authenticate(source=SOURCE, request=webhook(sample_identify(), basic(KEY))).accepted
    wrong = seg.authenticate(source=SOURCE, request=webhook(sample_identify(), basic("nope")))
    assert not wrong.accepted and wrong.reason == "invalid write key"


def test_webhook_does_not_accept_a_body_write_key() -> None:
    body = {**sample_identify(), "writeKey": KEY}
    assert not seg.authenticate(source=SOURCE, request=webhook(body, {})).accepted


# -- parse_events: single calls ------------------------------------------------------------------
@pytest.mark.parametrize("call", list(SAMPLES))
def test_parse_each_call_type(call: str) -> None:
    make, cls = SAMPLES[call]
    body = make(extraField={"kept": True})
    body.pop("type")  # the path names the call; Segment libraries do send type, but need not
    [parsed] = parse(v1(call, body, basic(KEY)))
    assert isinstance(parsed.event, cls)
    assert parsed.event.messageId == body["messageId"]
    assert parsed.event.user_id == "97980cfea0067"
    assert parsed.filtered is None
    assert raw_of(parsed)["extraField"] == {"kept": True}  # unknown fields are kept in raw


def test_parse_keeps_typed_fields() -> None:
    [track] = parse(v1("track", sample_track(), basic(KEY)))
    assert isinstance(track.event, Track)
    assert track.event.event == "User Registered"
    assert track.event.properties == {"plan": "Pro Annual", "accountType": "Facebook"}
    [ident] = parse(v1("identify", sample_identify(), basic(KEY)))
    assert isinstance(ident.event, Identify) and ident.event.traits is not None
    assert ident.event.traits["language"] == "hi"
    [group] = parse(v1("group", sample_group(), basic(KEY)))
    assert isinstance(group.event, Group) and group.event.groupId == "acme"
    [alias] = parse(v1("alias", sample_alias(), basic(KEY)))
    assert isinstance(alias.event, Alias) and alias.event.previousId == "anon-1"


def test_anonymous_event_is_parsed_on_the_tracking_api() -> None:
    [parsed] = parse(v1("track", sample_track(userId=None, anonymousId="anon-7"), basic(KEY)))
    assert parsed.event.user_id is None and parsed.event.anonymous_id == "anon-7"


def test_write_key_is_stripped_from_stored_raw() -> None:
    body = {**sample_identify(), "writeKey": KEY}
    [parsed] = parse(v1("identify", body))
    raw = raw_of(parsed)
    assert "writeKey" not in raw
    assert KEY.encode() not in parsed.raw
    assert raw["traits"] == body["traits"]


def test_unknown_call_is_not_found() -> None:
    with pytest.raises(NotFound) as err:
        parse(v1("nonsense", sample_track(), basic(KEY)))
    assert err.value.status == 404
    assert "nonsense" in err.value.reason and "identify" in err.value.reason


# -- parse_events: batch -------------------------------------------------------------------------
def test_batch_parses_every_event_and_merges_top_level_context() -> None:
    body = {
        "batch": [
            sample_identify(context={"ip": "10.0.0.1"}),
            sample_track(context={}),
            sample_page(),
        ],
        "context": {"library": {"name": "analytics-python"}, "ip": "192.0.2.1"},
        "integrations": {"All": True},
        "sentAt": "2026-01-01T00:00:01.000Z",
        "writeKey": KEY,
    }
    parsed = parse(v1("batch", body))
    assert [type(p.event) for p in parsed] == [Identify, Track, Page]
    raws = [raw_of(p) for p in parsed]
    # the event's own context wins over the batch's, the rest is merged in
    assert raws[0]["context"] == {"library": {"name": "analytics-python"}, "ip": "10.0.0.1"}
    assert raws[1]["context"] == {"library": {"name": "analytics-python"}, "ip": "192.0.2.1"}
    assert all(r["integrations"] == {"All": True} for r in raws)
    assert all(r["sentAt"] == "2026-01-01T00:00:01.000Z" for r in raws)
    assert all("writeKey" not in r for r in raws)


def test_import_is_an_alias_of_batch() -> None:
    parsed = parse(v1("import", {"batch": [sample_track(), sample_alias()]}, basic(KEY)))
    assert [type(p.event) for p in parsed] == [Track, Alias]


def test_batch_without_defaults_keeps_raw_bytes_verbatim() -> None:
    event = msgspec.json.encode(sample_track())
    body = b'{"batch": [' + event + b"]}"
    [parsed] = parse(v1("batch", body, basic(KEY)))
    assert parsed.raw == event


def test_an_invalid_batch_event_is_refused_alone() -> None:
    """The others are stored (the host answers 200 listing it): Segment's libraries drop a
    whole batch answered 400, so refusing the batch would lose every valid event in it."""
    item = sample_track()
    item.pop("type")
    req = v1("batch", {"batch": [sample_track(), item]}, basic(KEY))
    good, refused = seg.parse_events(source=SOURCE, request=req)
    assert isinstance(good, ParsedEvent) and isinstance(refused, RefusedEvent)
    assert "type must be one of" in refused.reason


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"batch": "nope"}, "invalid batch"),
        ({"batch": None}, "invalid batch"),
        ({"nobatch": []}, "invalid batch"),
    ],
)
def test_invalid_batch_is_bad_request(body: dict[str, Any], reason: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse(v1("batch", body, basic(KEY)))
    assert err.value.status == 400
    assert reason in err.value.reason


def test_more_than_ten_thousand_events_in_a_request_is_413() -> None:
    """Re-check: 500 KB of {} is 166,000 events, 0.4 s of the event loop and a 16 MB answer."""
    from hookyard.errors import PayloadTooLarge

    many = b'{"batch": [' + b", ".join([b"{}"] * 10_001) + b"]}"
    with pytest.raises(PayloadTooLarge, match="10001 events in one request: at most 10000"):
        parse(v1("batch", many, basic(KEY)))
    with pytest.raises(PayloadTooLarge):
        parse(webhook(b"[" + b", ".join([b"{}"] * 10_001) + b"]"))
    assert len(parse(v1("batch", many.replace(b"{}, ", b"", 1), basic(KEY)))) == 10_000


def test_malformed_batch_defaults_are_left_out_not_the_batch() -> None:
    """Fuzz audit: a batch-level sentAt of 123 or a context that is a list refused the whole
    batch (400: the Segment libraries drop it); they are only the events' defaults."""
    event = sample_track()
    body = {"batch": [event], "sentAt": 123, "context": ["x"], "integrations": 1}
    [parsed] = parse(v1("batch", body, basic(KEY)))
    assert isinstance(parsed, ParsedEvent)
    assert raw_of(parsed) == event
    mixed = {"batch": [sample_track()], "sentAt": 123, "context": {"app": {"name": "a"}}}
    [parsed] = parse(v1("batch", mixed, basic(KEY)))
    assert raw_of(parsed)["context"]["app"] == {"name": "a"} and "sentAt" not in raw_of(parsed)


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        (1, "the event is not a valid Segment event"),
        ({"type": "launch", "userId": "u"}, "type must be one of"),
        ({"type": "track", "userId": "u"}, "the event is not a valid Segment event"),
        ({"type": "identify"}, "userId or anonymousId is required"),
        # found by an outside audit: a 30 KB messageId was kept in the SQLite dedupe's memory,
        # and PostgreSQL refused it in its index (503: the client retried it forever); a
        # 20 KB userId stopped routing there
        ({"type": "identify", "userId": "u", "messageId": "m" * 257},
         "Expected str of length <= 256 - at $.messageId"),
        ({"type": "identify", "userId": "u" * 513}, "Expected str of length <= 512 - at $.userId"),
        ({"type": "page", "anonymousId": "a" * 513}, "Expected str of length <= 512 - at $.anonymousId"),
        ({"type": "group", "userId": "u", "groupId": "g" * 513},
         "Expected str of length <= 512 - at $.groupId"),
        ({"type": "alias", "userId": "u", "previousId": "p" * 513},
         "Expected str of length <= 512 - at $.previousId"),
    ],
)
def test_invalid_batch_event_is_refused_with_its_reason(item: Any, reason: str) -> None:
    [refused] = seg.parse_events(source=SOURCE, request=v1("batch", {"batch": [item]}, basic(KEY)))
    assert isinstance(refused, RefusedEvent) and reason in refused.reason


# -- parse_events: malformed input ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("call", "body", "reason"),
    [
        ("identify", b"", "malformed JSON"),
        ("identify", b"{", "malformed JSON"),
        ("identify", b'{"userId": "u",}', "malformed JSON"),
        ("batch", b"{not json", "malformed JSON"),
        ("identify", b"null", "Expected object"),
        ("identify", b"[]", "Expected object"),
        ("identify", b'"str"', "Expected object"),
        ("identify", b'{"userId": "u", "traits": "not an object"}', "$.traits"),
        ("identify", b'{"userId": "u", "traits": [1, 2]}', "$.traits"),
        ("track", b'{"userId": "u", "event": 5}', "$.event"),
        ("track", b'{"userId": "u", "event": "e", "properties": 3}', "$.properties"),
        ("track", b'{"userId": "u"}', "event"),
        ("track", b'{"userId": "u", "event": ""}', "event is required"),
        ("group", b'{"userId": "u"}', "groupId"),
        ("alias", b'{"previousId": "a"}', "userId"),
        ("identify", b'{"userId": ["u"]}', "$.userId"),
        ("identify", b'{"traits": {}}', "userId or anonymousId is required"),
        ("identify", b'{"userId": "", "anonymousId": ""}', "userId or anonymousId is required"),
        ("identify", b'{"userId": "u", "timestamp": 5}', "$.timestamp"),
        ("track", b'{"type": "identify", "userId": "u", "event": "e"}', "$.type"),
        ("identify", b'{"userId": "u", "traits": {"n": 1e400}}', "Number out of range"),
    ],
)
def test_malformed_or_invalid_body_is_bad_request_with_reason(call: str, body: bytes,
                                                              reason: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse(v1(call, body, basic(KEY)))
    assert err.value.status == 400
    assert reason in err.value.reason
    assert "`" not in err.value.reason


@pytest.mark.parametrize(
    "body",
    [
        b'{"userId": "u\xff\xfe", "traits": {}}',
        b'{"userId": "u", "traits": {"a": ' + b'{"a": ' * 5000 + b"1" + b"}" * 5001 + b"}",
    ],
    ids=["invalid-utf8", "deeply-nested"],
)
def test_undecodable_body_is_bad_request(body: bytes) -> None:
    """The hookspec: malformed JSON -> BadRequest with a reason (never a bare exception)."""
    with pytest.raises(BadRequest) as err:
        parse(v1("identify", body, basic(KEY)))
    assert err.value.reason


_BAD_BYTE_IN_AN_UNKNOWN_FIELD = [
    ("track", b'{"userId":"u","event":"x","extra":"\xff"}'),
    ("batch", b'{"batch":[{"type":"track","userId":"u","event":"x","extra":"\xff"}]}'),
    ("batch", b'{"batch":[{"type":"track","userId":"u","event":"x","x":"\xff"}],"context":{}}'),
    ("track", b'{"userId":"u","event":"x","writeKey":"k","extra":"\xff"}'),
]


@pytest.mark.parametrize(("call", "body"), _BAD_BYTE_IN_AN_UNKNOWN_FIELD)
def test_invalid_utf8_in_a_field_no_struct_names_is_refused(call: str, body: bytes) -> None:
    """msgspec skips unknown fields without checking their bytes: such an event would be
    stored, then fail every read of it (the router, /api/events)."""
    with pytest.raises(BadRequest, match="invalid UTF-8 at byte"):
        parse(v1(call, body, basic(KEY)))
    with pytest.raises(BadRequest, match="invalid UTF-8"):
        parse(webhook(b'[{"type":"track","userId":"u","event":"x","extra":"\xff"}]'))


@pytest.mark.parametrize(
    ("escaped", "stored"),
    [
        (rb"Great deal \ud83c", "Great deal \ufffd"),  # JSON.stringify of an emoji cut in two
        (rb"\udf89 tail", "\ufffd tail"),
        (rb"\ud83c\ud83c\udf89", "\ufffd\U0001f389"),  # a lone half, then a whole pair
        (rb"\\ud83c", "\\ud83c"),  # an escaped backslash: not an escape at all
        (rb"\\\ud83c", "\\\ufffd"),
    ],
)
def test_a_lone_surrogate_escape_becomes_the_replacement_character(
    escaped: bytes, stored: str
) -> None:
    body = b'{"batch":[{"type":"track","userId":"u","event":"Viewed","properties":{"t":"' + \
        escaped + b'"}},{"type":"track","userId":"u","event":"Good"}]}'
    first, second = parse(v1("batch", body, basic(KEY)))
    assert raw_of(first)["properties"]["t"] == stored
    assert second.event.event == "Good"
    [parsed] = parse(webhook(b'{"type":"track","userId":"u","event":"' + escaped + b'"}'))
    assert parsed.event.event == stored


def test_huge_integers_are_kept() -> None:
    big = 10**40
    [parsed] = parse(v1("identify", {"userId": 2**63 - 1, "traits": {"n": big}}, basic(KEY)))
    assert parsed.event.user_id == str(2**63 - 1)
    assert raw_of(parsed)["traits"]["n"] == big


def test_a_numeric_id_beyond_64_bits_is_refused() -> None:
    """An id is a key of indexes: as a JSON number it is a 64-bit integer (a 4,000-digit one
    passed the text ids' length limit, and PostgreSQL's index refused it as a 503)."""
    with pytest.raises(BadRequest, match=r"Expected int <= 9223372036854775807 - at \$.userId"):
        parse(v1("identify", {"userId": 10**40}, basic(KEY)))


# -- parse_events: webhook -----------------------------------------------------------------------
def test_webhook_single_event() -> None:
    [parsed] = parse(webhook(sample_track()))
    assert isinstance(parsed.event, Track) and parsed.event.user_id == "97980cfea0067"


def test_webhook_array_of_events() -> None:
    parsed = parse(webhook([sample_identify(), sample_track(), sample_group()]))
    assert [type(p.event) for p in parsed] == [Identify, Track, Group]


@pytest.mark.parametrize(
    "body",
    [sample_track(userId=None, anonymousId="anon-1"), sample_identify(userId=None),
     sample_track(userId="", anonymousId="anon-1")],
    ids=["anonymous-track", "no-ids", "empty-userId"],
)
def test_webhook_without_user_id_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(BadRequest) as err:
        parse(webhook(body))
    assert err.value.status == 400
    assert err.value.reason == "userId is required"


def test_webhook_array_refuses_only_the_events_without_user_id() -> None:
    """Segment does not retry a 400: one anonymous page view must not lose its batch."""
    parsed = parse(webhook([sample_track(), sample_track(userId=None, anonymousId="a")]))
    assert isinstance(parsed[0], ParsedEvent) and parsed[0].event.user_id == "97980cfea0067"
    assert parsed[1] == RefusedEvent("userId is required")


def test_webhook_array_refuses_an_invalid_event_alone() -> None:
    good, refused = seg.parse_events(
        source=SOURCE, request=webhook([sample_track(), {"type": "track", "userId": "u"}]))
    assert isinstance(good, ParsedEvent) and isinstance(refused, RefusedEvent)
    assert refused.reason.startswith("the event is not a valid Segment event")
    [alone] = seg.parse_events(source=SOURCE, request=webhook(b"[1]"))
    assert isinstance(alone, RefusedEvent)


def test_single_event_error_names_its_subject() -> None:
    with pytest.raises(BadRequest) as err:
        parse(webhook({"event": "x", "userId": "u"}))
    assert err.value.reason.startswith("the event is not a valid Segment event: ")


def test_webhook_needs_the_type_field() -> None:
    body = sample_track()
    body.pop("type")
    with pytest.raises(BadRequest) as err:
        parse(webhook(body))
    assert "type must be one of" in err.value.reason


@pytest.mark.parametrize(
    ("body", "reason"),
    [(b"[]", "empty array"), (b"[1,", "malformed JSON"), (b"{", "malformed JSON"),
     (b"null", "not a valid Segment event")],
)
def test_webhook_malformed_body(body: bytes, reason: str) -> None:
    with pytest.raises(BadRequest) as err:
        parse(webhook(body))
    assert reason in err.value.reason


def test_webhook_array_refuses_an_anonymous_alias_alone() -> None:
    alias = {"type": "alias", "previousId": "p", "anonymousId": "x"}
    parsed = parse(webhook([sample_identify(), alias]))
    assert parsed[1] == RefusedEvent("userId is required")


def test_malformed_single_event_reason_reads_well() -> None:
    for body in (b'{"userId":', b"{"):
        with pytest.raises(BadRequest) as err:
            parse(webhook(body))
        assert err.value.reason == "malformed JSON: Input data was truncated"


@pytest.mark.parametrize("name", ["writeKey", "write\\u004bey"])
def test_a_write_key_in_the_body_is_never_stored(name: str) -> None:
    """Neither through the webhook nor under an escaped name on the tracking API."""
    body = f'{{"type":"identify","userId":"x","{name}":"secret-key-1","traits":{{"n":"J\\u00f6"}}}}'
    for parsed in (parse(webhook(body.encode())), parse(v1("identify", body.encode()))):
        assert b"secret-key-1" not in parsed[0].raw
        assert msgspec.json.decode(parsed[0].raw)["traits"] == {"n": "Jö"}


def test_a_nested_sent_at_does_not_hide_the_batch_sent_at() -> None:
    body = {"batch": [{"type": "identify", "userId": "u", "traits": {"sentAt": 1}}],
            "sentAt": "2026-01-01T00:00:00.000Z"}
    [parsed] = parse(v1("batch", body))
    raw = raw_of(parsed)
    assert raw["sentAt"] == "2026-01-01T00:00:00.000Z" and raw["traits"] == {"sentAt": 1}


def _nested(levels: int, kind: str = "object") -> bytes:
    """A JSON value ``levels`` deep (objects or arrays)."""
    if kind == "object":
        return b'{"a": ' * (levels - 1) + b"{}" + b"}" * (levels - 1)
    return b"[" * levels + b"]" * levels


@pytest.mark.parametrize("kind", ["object", "array"])
def test_an_event_may_nest_100_levels_and_no_more(kind: str) -> None:
    """hookyard.nesting: one limit on every Python (the decoder alone allowed ~1,000 levels
    on 3.11, ~1,500 on 3.12 and ~10,000 on 3.13; the dashboard's JSON view then failed)."""
    def body(levels: int) -> bytes:  # the event is level 1, traits 2, "deep" 3...
        return b'{"userId": "u", "traits": {"deep": ' + _nested(levels - 2, kind) + b"}}"

    assert parse(v1("identify", body(100), basic(KEY)))[0].event.user_id == "u"
    with pytest.raises(BadRequest, match=r"nested too deeply \(more than 100 levels"):
        parse(v1("identify", body(101), basic(KEY)))


def test_brackets_inside_strings_are_not_nesting() -> None:
    text = "{[" * 200
    event = parse(v1("track", {"userId": "u", "event": "E", "properties": {"t": text}}, basic(KEY)))
    assert event[0].event.properties == {"t": text}


@pytest.mark.parametrize("levels", [100, 2_000, 100_000])
def test_a_too_deep_event_in_a_batch_or_webhook_array_is_refused_alone(levels: int) -> None:
    """Judge audit: past the decoder's own limit (about 1,000 levels) the whole batch was a 400
    (malformed JSON), which the Segment libraries drop with the events beside it."""
    deep = b'{"type": "track", "userId": "u", "event": "E", "properties": ' + _nested(levels) + b"}"
    ok = msgspec.json.encode(sample_track())
    for request in (v1("batch", b'{"batch": [' + ok + b"," + deep + b"," + ok + b"]}", basic(KEY)),
                    webhook(b"[" + ok + b"," + deep + b", " + ok + b"]")):
        stored, refused, after = parse(request)
        assert isinstance(stored, ParsedEvent) and isinstance(after, ParsedEvent)
        assert isinstance(refused, RefusedEvent) and "nested too deeply" in refused.reason
    with pytest.raises(BadRequest, match="nested too deeply"):  # alone: refused
        parse(v1("track", deep, basic(KEY)))


def test_finding_the_too_deep_events_reads_brackets_not_strings() -> None:
    from hookyard.nesting import deep_items_emptied

    tricky = b'{"type": "track", "userId": "u", "event": "E", "properties": {"s": "[[[\\"{{"}}'
    deep = b'{"p": ' + b"[" * 3_000 + b"]" * 3_000 + b"}"
    assert deep_items_emptied(b'{"batch": [' + tricky + b", " + deep + b"]}", batch=True) == (
        b'{"batch": [' + tricky + b",{}]}", [1])
    assert deep_items_emptied(b"[[" + b"[" * 300 + b"]" * 300 + b"]]") == (b"[{}]", [0])
    assert deep_items_emptied(b"[" + tricky + b"]") is None  # nothing too deep
    assert deep_items_emptied(deep) is None  # not an array of events
    assert deep_items_emptied(b'{"context": ' + deep + b', "batch": []}', batch=True) is None
    # re-check: a single event with a "batch" field of its own was changed and stored
    assert deep_items_emptied(b'{"event": "x", "batch": [0, ' + deep + b"]}") is None
    assert deep_items_emptied(b'[0, ' + deep + b"]", batch=True) is None


def test_a_nan_beside_a_too_deep_event_refuses_neither_the_batch() -> None:
    """Re-check: a NaN before the too deep event refused the whole batch, naming the NaN."""
    deep = b'{"type": "track", "userId": "u", "event": "E", "p": ' + _nested(2_000, "array") + b"}"
    nan = msgspec.json.encode({**sample_track(), "properties": {"n": "__N__"}}).replace(
        b'"__N__"', b"NaN")
    ok = msgspec.json.encode(sample_track())
    for body in (b'{"batch": [' + nan + b", " + deep + b", " + ok + b"]}",
                 b'{"batch": [' + deep + b", " + nan + b"]}"):
        events = parse(v1("batch", body, basic(KEY)))
        assert [type(e).__name__ for e in events if isinstance(e, RefusedEvent)] == ["RefusedEvent"]
        assert any(isinstance(e, ParsedEvent) and raw_of(e)["properties"] == {"n": None}
                   for e in events)


def test_a_batch_context_that_makes_its_events_too_deep_refuses_them() -> None:
    """The batch's context is merged into each event (level 2): 99 more levels are too many."""
    context = b'{"deep": ' + _nested(99) + b"}"
    body = b'{"batch": [' + msgspec.json.encode(sample_track()) + b'], "context": ' + context + b"}"
    (refused,) = parse(v1("batch", body, basic(KEY)))
    assert isinstance(refused, RefusedEvent) and "with the batch's context" in refused.reason


@pytest.mark.parametrize("call", ["batch", "track", None])  # None: the webhook
def test_bare_nan_and_infinity_are_read_as_null(call: str | None) -> None:
    """Python's json.dumps writes them (not JSON): one lost its whole batch."""
    event = {"type": "track", "userId": "u1", "event": "E", "messageId": "m-nan",
             "properties": {"a": "NaN", "b": "__NAN__", "c": "__INF__", "d": "__NINF__"}}
    one = msgspec.json.encode(event).replace(b'"__NAN__"', b"NaN").replace(
        b'"__INF__"', b"Infinity").replace(b'"__NINF__"', b"-Infinity")
    if call is None:
        req = webhook(one)
    else:
        req = v1(call, b'{"batch": [' + one + b"]}" if call == "batch" else one, basic(KEY))
    [parsed] = parse(req)
    assert raw_of(parsed)["properties"] == {"a": "NaN", "b": None, "c": None, "d": None}


def test_malformed_json_beside_a_nan_keeps_its_own_reason() -> None:
    with pytest.raises(BadRequest, match=r"malformed JSON: .* \(byte 17\)"):
        parse(v1("track", b'{"type":"track", NaN}', basic(KEY)))


def test_reading_nan_as_null_takes_linear_time() -> None:
    """An unclosed string full of escaped quotes beside a NaN: the first pattern tried it
    again from each quote (1.3 s for 20 KB, minutes for 500 KB, on the event loop)."""
    import time

    body = b'{"batch": [{"a": NaN, "b": "' + b'\\"' * 200_000
    started = time.process_time()
    with pytest.raises(BadRequest, match="malformed JSON"):
        parse(v1("batch", body, basic(KEY)))
    assert time.process_time() - started < 2  # ~0.03 s; quadratic would be minutes


def test_an_identify_with_traits_only_in_context_is_stored_with_them_as_traits() -> None:
    """rudder-sdk-python sends them only there: a destination's field path such as
    traits.external_id, a filter on traits and the read API saw none."""
    event = {"type": "identify", "userId": "u1", "context": {"traits": {"external_id": "e9"}}}
    [parsed] = parse(v1("identify", event, basic(KEY)))
    assert raw_of(parsed)["traits"] == {"external_id": "e9"}
    assert raw_of(parsed)["context"] == {"traits": {"external_id": "e9"}}
    both = {**event, "traits": {"email": "a@example.com"}}  # top-level traits win, unchanged
    [parsed] = parse(v1("identify", both, basic(KEY)))
    assert raw_of(parsed)["traits"] == {"email": "a@example.com"}
    keyed = {**event, "writeKey": KEY}  # both rewrites at once: no key, the traits
    [parsed] = parse(v1("identify", keyed, basic(KEY)))
    assert "writeKey" not in raw_of(parsed) and raw_of(parsed)["traits"] == {"external_id": "e9"}


def test_an_event_that_a_nan_makes_invalid_gets_the_real_reason() -> None:
    """Read as null, "event": NaN is a track without a name: that is the reason, not the
    malformed JSON of the bytes as sent."""
    with pytest.raises(BadRequest, match="the event is not a valid Segment event"):
        parse(v1("track", b'{"type":"track","userId":"u","event":NaN}', basic(KEY)))


def test_an_events_sent_at_null_takes_the_batchs() -> None:
    """Segment reads null as no value: the batch's sentAt applies, and so does the clock fix."""
    event = {**sample_track(), "sentAt": None}
    body = {"batch": [event], "sentAt": "2026-01-01T00:00:10.000Z"}
    [parsed] = parse(v1("batch", body, basic(KEY)))
    assert raw_of(parsed)["sentAt"] == "2026-01-01T00:00:10.000Z"


def test_a_webhook_events_time_is_segments() -> None:
    """Segment fixed its timestamp for the client's clock already; with its sentAt (an hour
    fast here) kept, every destination corrected it again, by the skew and by the webhook's
    delay. The tracking API keeps sentAt: there the correction is hookyard's to make."""
    from hookyard.times import event_time

    event = {**sample_track(), "timestamp": "2026-12-04T10:00:00.000Z",
             "sentAt": "2026-12-04T11:00:05.000Z", "receivedAt": "2026-12-04T10:00:05.123Z"}
    [parsed] = parse(webhook(event))
    stored = {**raw_of(parsed), "receivedAt": "2026-12-05T02:00:00.000Z"}  # as hookyard reads it
    assert "sentAt" not in stored and event_time(stored) == "2026-12-04T10:00:00.000Z"
    [direct] = parse(v1("track", event, basic(KEY)))
    assert raw_of(direct)["sentAt"] == "2026-12-04T11:00:05.000Z"
