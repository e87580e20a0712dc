"""Hook-level tests of the built-in profile store (plugin ``profiles``): ``map_event`` and
``deliver`` called directly (through ``hookyard.testing``), no server. Behaviour of the
reference documents 000/001."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hookyard.profiles.plugin as prof
import msgspec
import pytest
from hookyard.connectors import DestinationContext
from hookyard.deliveries import MapResult
from hookyard.profiles.mapping import ProfileSettings
from hookyard.testing import (
    as_event,
    deliver_with,
    destination_context,
    map_with,
    sample_alias,
    sample_group,
    sample_identify,
    sample_page,
    sample_screen,
    sample_track,
)

UID = "97980cfea0067"
Make = Callable[..., DestinationContext]


@pytest.fixture
def make_ctx(tmp_path: Path) -> Iterator[Make]:
    """Factory: a ``profiles`` destination context on a temp data dir (store closed after)."""
    made: list[DestinationContext] = []

    def make(settings: dict[str, Any] | None = None, name: str = "profiles") -> DestinationContext:
        ctx = destination_context("profiles", settings or {}, name=name, data_dir=tmp_path)
        made.append(ctx)
        return ctx

    yield make
    for ctx in made:
        store = ctx.state.pop("store", None)
        if store is not None:
            store.close()


def sync(ctx: DestinationContext, raw: dict[str, Any]) -> MapResult:
    """map + deliver one event, as the engine would; returns the map result."""
    result = map_with(ctx, raw)
    if result.deliveries:
        outcomes = deliver_with(ctx, result.deliveries)
        assert [o.outcome for o in outcomes] == ["ok"] * len(result.deliveries)
    return result


def profile(ctx: DestinationContext, uid: str = UID) -> dict[str, Any]:
    found = prof.store_for(ctx).subscriber(ctx.name, uid)
    assert found is not None, f"no subscriber {uid!r}"
    return found


def events_of(ctx: DestinationContext, uid: str = UID) -> list[dict[str, Any]]:
    items, _ = prof.store_for(ctx).events(ctx.name, uid, before=None, limit=100)
    return items


def runs_of(ctx: DestinationContext) -> list[dict[str, Any]]:
    items, _ = prof.store_for(ctx).workflow_runs(ctx.name, distinct_id=None, workflow=None,
                                                 before=None, limit=100)
    return items


# -- the hooks themselves ------------------------------------------------------------------------
def test_register_connectors() -> None:
    [connector] = prof.register_connectors()
    assert (connector.name, connector.kind) == ("profiles", "destination")
    assert connector.settings is ProfileSettings
    assert connector.batch_size > 1


def test_map_event_hook_called_directly(make_ctx: Make) -> None:
    ctx = make_ctx()
    raw = sample_identify()
    result = prof.map_event(destination=ctx, event=as_event(raw), raw=raw)
    assert isinstance(result, MapResult) and result.filtered is None
    [delivery] = result.deliveries
    assert delivery.kind == "identify"
    assert delivery.body["distinct_id"] == UID
    msgspec.json.encode(delivery)  # stored in the outbox as JSON


def test_map_is_pure(make_ctx: Make, tmp_path: Path) -> None:
    ctx = make_ctx()
    map_with(ctx, sample_identify())
    map_with(ctx, sample_track())
    assert "store" not in ctx.state
    assert not (tmp_path / "profiles.db").exists()


# -- identify ------------------------------------------------------------------------------------
def test_identify_user_id_becomes_distinct_id_and_traits_properties(make_ctx: Make) -> None:
    ctx = make_ctx()
    raw = sample_identify()
    sync(ctx, raw)
    p = profile(ctx)
    assert p["distinct_id"] == UID
    assert p["properties"] == raw["traits"]


def test_numeric_user_id_is_a_string_distinct_id(make_ctx: Make) -> None:
    ctx = make_ctx()
    result = sync(ctx, sample_identify(userId=42))
    assert result.deliveries[0].body["distinct_id"] == "42"
    assert profile(ctx, "42")["distinct_id"] == "42"


def test_second_identify_merges_properties(make_ctx: Make) -> None:
    ctx = make_ctx()
    sync(ctx, sample_identify(traits={"name": "Peter", "plan": "free", "logins": 1}))
    sync(ctx, sample_identify(traits={"plan": "premium", "company": "Initech"}))
    assert profile(ctx)["properties"] == {
        "name": "Peter", "plan": "premium", "logins": 1, "company": "Initech",
    }


def test_identify_without_traits(make_ctx: Make) -> None:
    ctx = make_ctx()
    raw = sample_identify()
    raw.pop("traits")
    sync(ctx, raw)
    p = profile(ctx)
    assert p["properties"] == {} and p["channels"] == {}


# -- preferences ---------------------------------------------------------------------------------
PREFS = {"preferences": {"$locale": "language", "$timezone": "timezone"}}


def test_preferences_mapped_from_traits(make_ctx: Make) -> None:
    ctx = make_ctx(PREFS)
    sync(ctx, sample_identify())  # language "hi", timezone "Asia/Kolkata"
    assert profile(ctx)["preferences"] == {"$locale": "hi", "$timezone": "Asia/Kolkata"}


def test_no_preference_mapping_means_no_preferences(make_ctx: Make) -> None:
    ctx = make_ctx()
    sync(ctx, sample_identify())
    p = profile(ctx)
    assert p["preferences"] == {"$locale": None, "$timezone": None}
    assert p["properties"]["language"] == "hi"  # still a plain property


@pytest.mark.parametrize("value", ["hindi", "en-US", "eng", "xx", "", 5, None])
def test_invalid_locale_is_ignored_with_a_note(make_ctx: Make, value: Any,
                                               caplog: pytest.LogCaptureFixture) -> None:
    ctx = make_ctx(PREFS)
    traits = {"language": value, "timezone": "Europe/Paris", "email": "a@example.com"}
    result = map_with(ctx, sample_identify(traits=traits))
    body = result.deliveries[0].body
    assert "$locale" not in body["preferences"]
    assert body["preferences"]["$timezone"] == "Europe/Paris"
    if value is not None:
        assert any("$locale" in n and "ISO 639-1" in n for n in body["notes"])
    with caplog.at_level(logging.INFO, logger="hookyard.profiles"):
        deliver_with(ctx, result.deliveries)
    if value is not None:
        assert any("$locale ignored" in r.getMessage() for r in caplog.records)
    p = profile(ctx)
    assert p["preferences"] == {"$locale": None, "$timezone": "Europe/Paris"}
    assert p["properties"]["language"] == value  # the trait itself is still a property
    assert p["channels"] == {"$email": ["a@example.com"]}  # the rest of the identify applies


def test_invalid_locale_keeps_the_previous_valid_one(make_ctx: Make) -> None:
    ctx = make_ctx(PREFS)
    sync(ctx, sample_identify())
    sync(ctx, sample_identify(traits={"language": "hindi"}))
    assert profile(ctx)["preferences"]["$locale"] == "hi"


@pytest.mark.parametrize("value", ["IST", "+05:30", "India Standard Time", "asia/kolkata", 330])
def test_timezone_must_be_iana(make_ctx: Make, value: Any) -> None:
    ctx = make_ctx(PREFS)
    result = sync(ctx, sample_identify(traits={"language": "hi", "timezone": value}))
    assert any("$timezone" in n and "IANA" in n for n in result.deliveries[0].body["notes"])
    assert profile(ctx)["preferences"] == {"$locale": "hi", "$timezone": None}


# -- channels ------------------------------------------------------------------------------------
def test_default_channels_email_and_phone(make_ctx: Make) -> None:
    ctx = make_ctx()
    sync(ctx, sample_identify(traits={"email": "p@example.com", "phone": "+15555555555",
                                      "whatsapp": "+15550000000"}))
    assert profile(ctx)["channels"] == {"$email": ["p@example.com"], "$sms": ["+15555555555"]}


def test_empty_channel_mapping_switches_defaults_off(make_ctx: Make) -> None:
    ctx = make_ctx({"channels": {}})
    sync(ctx, sample_identify(traits={"email": "p@example.com", "phone": "+15555555555"}))
    p = profile(ctx)
    assert p["channels"] == {}
    assert p["properties"]["email"] == "p@example.com"


def test_custom_channel_mapping(make_ctx: Make) -> None:
    ctx = make_ctx({"channels": {
        "$email": "email",
        "$sms": [],  # a default switched off: an empty list
        "$whatsapp": "whatsapp",
        "$slack": ["slackEmail", "slackUserID"],
        "$androidpush": ["fcmAndroidpush", "xiaomiAndroidpush"],
        "$iospush": "apnsIospush",
    }})
    sync(ctx, sample_identify(traits={
        "email": "p@example.com",
        "phone": "+15555555555",  # "$sms" = []: not a channel
        "whatsapp": "+15551112222",
        "slackEmail": "p@slack.example.com",
        "slackUserID": "U012AB3CD",
        "fcmAndroidpush": "fcm-token-1",
        "xiaomiAndroidpush": "mi-token-1",
        "apnsIospush": "apns-token-1",
    }))
    assert profile(ctx)["channels"] == {
        "$email": ["p@example.com"],
        "$whatsapp": ["+15551112222"],
        "$slack": ["p@slack.example.com", "U012AB3CD"],
        "$androidpush": ["fcm-token-1", "mi-token-1"],
        "$iospush": ["apns-token-1"],
    }


def test_a_mapping_adds_to_the_default_channels(make_ctx: Make) -> None:
    """001: email -> Email and phone -> SMS by default, "you can add the mapping of other
    channels in the similar way": mapping $whatsapp keeps the defaults."""
    ctx = make_ctx({"channels": {"$whatsapp": "whatsapp"}})
    sync(ctx, sample_identify(traits={"email": "p@example.com", "phone": "+15555555555",
                                      "whatsapp": "+15550000000"}))
    assert profile(ctx)["channels"] == {"$email": ["p@example.com"], "$sms": ["+15555555555"],
                                        "$whatsapp": ["+15550000000"]}


def test_one_address_is_one_channel_value(make_ctx: Make) -> None:
    """An email address in any case, a phone number in any punctuation: one value."""
    ctx = make_ctx({"channels": {"$whatsapp": "phone"}})
    for email, phone in (("Peter@Example.com", "+1 (555) 555-5555"),
                         ("peter@example.com", "+1.555.555.5555"),
                         ("PETER@EXAMPLE.COM", "+15555555555")):
        sync(ctx, sample_identify(traits={"email": email, "phone": phone}))
    assert profile(ctx)["channels"] == {"$email": ["peter@example.com"],
                                        "$sms": ["+15555555555"], "$whatsapp": ["+15555555555"]}


def test_values_that_are_no_address_are_ignored_with_a_note(
    make_ctx: Make, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = make_ctx()
    with caplog.at_level(logging.INFO, logger="hookyard.profiles"):
        sync(ctx, sample_identify(traits={"email": "not-an-email", "phone": "call me maybe"}))
    p = profile(ctx)
    assert p["channels"] == {}
    assert p["properties"]["email"] == "not-an-email"  # the trait itself is kept
    assert "$email ignored: 'not-an-email' (trait email) is not an email address" in caplog.text
    assert "$sms ignored: 'call me maybe' (trait phone) is not a phone number" in caplog.text


def test_values_of_the_wrong_kind_are_ignored_with_a_note(
    make_ctx: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an outside audit: a phone sent as a JSON number (its + lost) became a second
    value beside the same number as text; true, {} and over-long addresses went in silently
    or were kept; a Slack email kept its case, so one person got two values."""
    ctx = make_ctx({"channels": {"$whatsapp": "phone", "$slack": "slackEmail"}})
    with caplog.at_level(logging.INFO, logger="hookyard.profiles"):
        sync(ctx, sample_identify(traits={"phone": "+15550001234", "slackEmail": "C2@Slack.com"}))
        sync(ctx, sample_identify(traits={"phone": 15550001234, "slackEmail": "c2@slack.com"}))
        sync(ctx, sample_identify(traits={"email": True, "phone": {"a": 1}}))
        sync(ctx, sample_identify(traits={"email": "a" * 65 + "@example.com", "phone": "  "}))
    assert profile(ctx)["channels"] == {"$sms": ["+15550001234"], "$whatsapp": ["+15550001234"],
                                        "$slack": ["c2@slack.com"]}
    assert "$sms ignored: 15550001234 (trait phone) is a number; send phone numbers as text" \
        in caplog.text
    assert "$email ignored: True (trait email) is not text" in caplog.text
    assert "$sms ignored: {'a': 1} (trait phone) is not text" in caplog.text
    assert f"$email ignored: '{'a' * 65}@example.com' (trait email) is not an email address" \
        in caplog.text


def test_a_huge_bad_address_is_cut_short_in_the_note(
    make_ctx: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an outside audit: ``a@`` and 30,000 dots took the address pattern seconds
    (quadratic), holding every destination's mapping, and the note logged all 30 KB."""
    ctx = make_ctx({"channels": {"$email": "email", "$androidpush": "token"}})
    with caplog.at_level(logging.INFO, logger="hookyard.profiles"):
        sync(ctx, sample_identify(traits={"email": "a@" + "." * 400 + "@"}))
        sync(ctx, sample_identify(traits={"email": "a@" + "." * 30_000 + "@",
                                          "token": "t" * 600}))
    assert profile(ctx)["channels"] == {}
    assert "$email ignored: 'a@......" in caplog.text
    assert "... (405 characters) (trait email) is not an email address" in caplog.text
    assert "... (30005 characters) (trait email) is longer than 512 characters" in caplog.text
    assert "$androidpush ignored: 'tttt" in caplog.text


def test_a_profile_has_bounded_properties_and_channel_values(
    make_ctx: Make, caplog: pytest.LogCaptureFixture
) -> None:
    """Found by an outside audit: 300 identifies with 900 new trait names each made one
    record of 270,000 properties (7.5 MB), decoded and written again by every identify, and
    the other users' profiles waited 30 s behind it. Channels grew without end as well."""
    from hookyard.profiles import store

    ctx = make_ctx({"channels": {"$iospush": "tokens"}})
    with caplog.at_level(logging.INFO, logger="hookyard.profiles"):
        for n in range(3):
            traits: dict[str, Any] = {f"k{n}_{i}": i for i in range(400)}
            traits["tokens"] = [f"token-{n}-{i}" for i in range(30)]
            sync(ctx, sample_identify(traits=traits))
        sync(ctx, sample_identify(traits={"k0_0": "updated", "new": 1}))
    p = profile(ctx)
    assert len(p["properties"]) == store.MAX_PROPERTIES
    assert p["properties"]["k0_0"] == "updated" and "new" not in p["properties"]
    assert "k2_0" in p["properties"] and "k2_399" not in p["properties"]
    assert len(p["channels"]["$iospush"]) == store.MAX_CHANNEL_VALUES
    assert "new properties not kept: a profile has at most 1000" in caplog.text
    assert "$iospush value not kept: a channel has at most 50 values" in caplog.text


def happened(day: str) -> dict[str, str]:
    """An event's own time, and its arrival a second later (never before it happened)."""
    return {"timestamp": f"{day}T00:00:00.000Z", "receivedAt": f"{day}T00:00:01.000Z"}


def test_an_older_identify_never_rolls_newer_values_back(make_ctx: Make) -> None:
    """A replay of a past window applies past identifies again: they fill in what is missing
    (and add channels), but the values of a newer identify stay."""
    ctx = make_ctx({"preferences": {"$locale": "lang", "$timezone": "tz"}})
    old = sample_identify(**happened("2026-01-01"), traits={
        "plan": "basic", "lang": "de", "tz": "Europe/Berlin", "email": "old@example.com",
        "first_seen": "jan"})
    new = sample_identify(**happened("2026-02-01"), traits={
        "plan": "premium", "lang": "fr", "email": "new@example.com"})
    sync(ctx, old)
    sync(ctx, new)
    sync(ctx, old)  # the replay
    p = profile(ctx)
    assert p["properties"] == {"plan": "premium", "lang": "fr", "email": "new@example.com",
                               "tz": "Europe/Berlin", "first_seen": "jan"}
    assert p["preferences"] == {"$locale": "fr", "$timezone": "Europe/Berlin"}
    assert p["channels"] == {"$email": ["old@example.com", "new@example.com"]}
    newest = sample_identify(**happened("2026-03-01"), traits={"plan": "pro"})
    sync(ctx, newest)
    assert profile(ctx)["properties"]["plan"] == "pro"


def test_a_blank_user_id_is_anonymous(make_ctx: Make) -> None:
    result = sync(make_ctx(), sample_identify(userId="   ", anonymousId="a-1"))
    assert result.deliveries == []
    assert result.filtered == "userId is required: anonymous events are not stored"


def test_localtime_is_no_time_zone(make_ctx: Make) -> None:
    ctx = make_ctx({"preferences": {"$timezone": "tz"}})
    for tz in ("localtime", "posixrules", "Factory"):
        sync(ctx, sample_identify(traits={"tz": tz}))
        assert profile(ctx)["preferences"]["$timezone"] is None


def test_channel_trait_holding_a_list(make_ctx: Make) -> None:
    ctx = make_ctx({"channels": {"$iospush": "apns"}})
    sync(ctx, sample_identify(traits={"apns": ["t1", "t2", "", None, True]}))
    assert profile(ctx)["channels"] == {"$iospush": ["t1", "t2"]}


def test_channel_values_are_appended_never_overridden(make_ctx: Make) -> None:
    ctx = make_ctx()
    sync(ctx, sample_identify(traits={"email": "old@example.com", "phone": "+15550000001"}))
    sync(ctx, sample_identify(traits={"email": "new@example.com"}))
    sync(ctx, sample_identify(traits={"email": "old@example.com"}))  # not added twice
    p = profile(ctx)
    assert p["channels"] == {"$email": ["old@example.com", "new@example.com"],
                             "$sms": ["+15550000001"]}
    assert p["properties"]["email"] == "old@example.com"  # properties do follow the last value


def test_identify_without_channel_trait_keeps_channels(make_ctx: Make) -> None:
    ctx = make_ctx()
    sync(ctx, sample_identify(traits={"email": "p@example.com"}))
    sync(ctx, sample_identify(traits={"plan": "x"}))
    assert profile(ctx)["channels"] == {"$email": ["p@example.com"]}


# -- track ---------------------------------------------------------------------------------------
def test_track_is_stored_with_properties_as_is(make_ctx: Make) -> None:
    ctx = make_ctx()
    props = {"plan": "Pro Annual", "accountType": "Facebook", "nested": {"a": [1, 2]}}
    raw = sample_track(properties=props)
    result = sync(ctx, raw)
    assert result.deliveries[0].kind == "track"
    [ev] = events_of(ctx)
    assert ev["event"] == "User Registered"
    assert ev["properties"] == props
    assert ev["messageId"] == raw["messageId"]
    assert ev["timestamp"] == raw["timestamp"]
    assert profile(ctx)["properties"] == {}  # a track alone creates the user, no properties


@pytest.mark.parametrize(
    ("fields", "expected"),
    [({"timestamp": "2026-01-01T05:30:00+05:30"}, "2026-01-01T00:00:00.000Z"),
     ({"timestamp": "2026-01-01T00:00:00"}, "2026-01-01T00:00:00.000Z"),
     ({"timestamp": "yesterday"}, "2026-01-02T00:00:00.000Z"),  # not a time: receivedAt
     # the client's clock 10 s ahead: corrected as Segment does (receivedAt - (sentAt - ts))
     ({"timestamp": None, "originalTimestamp": "2026-01-01T23:59:50.000Z",
       "sentAt": "2026-01-02T00:00:10.000Z"}, "2026-01-01T23:59:40.000Z")],
    ids=["offset", "no-zone", "not-a-time", "clock-skew"],
)
def test_track_time_is_stored_in_utc(
    make_ctx: Make, fields: dict[str, Any], expected: str
) -> None:
    ctx = make_ctx()
    raw = {**sample_track(receivedAt="2026-01-02T00:00:00.000Z"), **fields}
    raw = {k: v for k, v in raw.items() if v is not None}
    sync(ctx, raw)
    assert events_of(ctx)[0]["timestamp"] == expected


def test_a_replayed_track_is_stored_as_the_mapping_now_makes_it(make_ctx: Make) -> None:
    raw = sample_track()
    sync(make_ctx(name="p"), raw)
    ctx = make_ctx({"event_prefix": True}, name="p")  # the same store, a new prefix
    sync(ctx, raw)
    [ev] = events_of(ctx)
    assert ev["event"] == "segment : User Registered"


def test_track_without_properties(make_ctx: Make) -> None:
    ctx = make_ctx()
    raw = sample_track()
    raw.pop("properties")
    sync(ctx, raw)
    assert events_of(ctx)[0]["properties"] == {}


def test_prefix_off_by_default(make_ctx: Make) -> None:
    result = map_with(make_ctx(), sample_track())
    assert result.deliveries[0].body["event"] == "User Registered"


def test_prefix_on(make_ctx: Make) -> None:
    ctx = make_ctx({"event_prefix": True})
    props = sample_track()["properties"]
    sync(ctx, sample_track())
    [ev] = events_of(ctx)
    assert ev["event"] == "segment : User Registered"
    assert ev["properties"] == props  # only the name changes


def test_prefix_false_explicitly(make_ctx: Make) -> None:
    ctx = make_ctx({"event_prefix": False})
    assert map_with(ctx, sample_track()).deliveries[0].body["event"] == "User Registered"


def test_redelivered_track_is_stored_once(make_ctx: Make) -> None:
    ctx = make_ctx()
    result = map_with(ctx, sample_track())
    deliver_with(ctx, result.deliveries)
    deliver_with(ctx, result.deliveries)
    assert len(events_of(ctx)) == 1


# -- workflows -----------------------------------------------------------------------------------
WORKFLOWS = {"workflows": [{"name": "welcome", "event": "User Registered"},
                           {"name": "upsell", "event": "Plan Upgraded"}]}


def test_workflow_run_recorded_once_even_on_redelivery(make_ctx: Make) -> None:
    ctx = make_ctx(WORKFLOWS)
    raw = sample_track()
    result = map_with(ctx, raw)
    assert result.deliveries[0].body["workflows"] == ["welcome"]
    deliver_with(ctx, result.deliveries)
    deliver_with(ctx, result.deliveries)  # a redelivery (or a replay)
    [run] = runs_of(ctx)
    assert run["workflow"] == "welcome"
    assert run["distinct_id"] == UID
    assert run["event"] == "User Registered"
    assert run["messageId"] == raw["messageId"]
    assert run["payload"] == raw["properties"]


def test_each_matching_event_records_a_run(make_ctx: Make) -> None:
    ctx = make_ctx(WORKFLOWS)
    sync(ctx, sample_track())
    sync(ctx, sample_track(userId="u2"))
    sync(ctx, sample_track(event="Plan Upgraded"))
    sync(ctx, sample_track(event="Something Else"))
    runs = runs_of(ctx)
    assert sorted((r["workflow"], r["distinct_id"]) for r in runs) == [
        ("upsell", UID), ("welcome", UID), ("welcome", "u2"),
    ]


def test_workflows_match_with_the_prefix_on(make_ctx: Make) -> None:
    plain = make_ctx({"event_prefix": True, **WORKFLOWS}, name="a")
    prefixed = make_ctx({"event_prefix": True,
                         "workflows": [{"name": "welcome", "event": "segment : User Registered"}]},
                        name="b")
    for ctx in (plain, prefixed):
        sync(ctx, sample_track())
        [run] = runs_of(ctx)
        assert run["event"] == "segment : User Registered"


# -- skipped events ------------------------------------------------------------------------------
@pytest.mark.parametrize("make", [sample_identify, sample_track, sample_page],
                         ids=["identify", "track", "page"])
def test_anonymous_events_are_skipped_with_a_reason(make_ctx: Make,
                                                    make: Callable[..., Any]) -> None:
    ctx = make_ctx()
    result = map_with(ctx, make(userId=None, anonymousId="anon-1"))
    assert result.deliveries == []
    assert result.filtered is not None and "userId is required" in result.filtered


@pytest.mark.parametrize("make", [sample_page, sample_group, sample_screen, sample_alias],
                         ids=["page", "group", "screen", "alias"])
def test_other_calls_are_skipped(make_ctx: Make, make: Callable[..., Any]) -> None:
    result = map_with(make_ctx(), make())
    assert result.deliveries == []
    assert result.filtered is not None and "not stored" in result.filtered


# -- settings ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"channels": {"$fax": "fax"}}, "unknown channel '$fax'"),
        ({"channels": {"email": "email"}}, "unknown channel 'email'"),
        ({"preferences": {"$language": "language"}}, "unknown preference"),
        ({"bogus": True}, "bogus"),
        ({"workflows": [{"name": "welcome"}]}, "event"),
        ({"workflows": [{"name": "w", "event": "e", "extra": 1}]}, "extra"),
        ({"channels": {"$email": 5}}, "$.channels"),
        ({"event_prefix": 1}, "event_prefix"),
    ],
)
def test_invalid_settings_are_validation_errors(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError) as err:
        destination_context("profiles", settings)
    assert message in str(err.value)


def test_settings_defaults() -> None:
    settings = msgspec.convert({}, ProfileSettings)
    assert settings.prefix == ""
    assert settings.channel_map == {"$email": "email", "$sms": "phone"}
    assert settings.workflows == [] and settings.preferences == {}


def test_a_profiles_db_of_an_earlier_version_is_migrated(tmp_path: Path) -> None:
    """subscribers.identified_at is added to an existing profiles.db; a delivery routed before
    the upgrade (no "at") is applied as it was then: newer, never held back."""
    import sqlite3

    from hookyard.deliveries import Delivery
    from hookyard.profiles.store import ProfileStore

    path = tmp_path / "profiles.db"
    conn = sqlite3.connect(path)
    conn.executescript("""
        CREATE TABLE subscribers (destination TEXT, distinct_id TEXT, properties TEXT,
            locale TEXT, timezone TEXT, created_at FLOAT, updated_at FLOAT,
            PRIMARY KEY (destination, distinct_id));
        CREATE TABLE channels (destination TEXT, distinct_id TEXT, channel TEXT, value TEXT,
            added_at FLOAT, PRIMARY KEY (destination, distinct_id, channel, value));
        CREATE TABLE events (id INTEGER PRIMARY KEY, destination TEXT, distinct_id TEXT,
            message_id TEXT, event TEXT, properties TEXT, timestamp TEXT, received_at TEXT);
        CREATE UNIQUE INDEX events_message_id ON events (destination, message_id);
        CREATE TABLE workflow_runs (id INTEGER PRIMARY KEY, destination TEXT, workflow TEXT,
            distinct_id TEXT, event TEXT, message_id TEXT, payload TEXT, created_at FLOAT);
        INSERT INTO subscribers VALUES ('p', 'u1', '{"plan": "old"}', 'de', NULL, 1, 1);
    """)
    conn.close()
    store = ProfileStore.sqlite(path)
    try:
        def identify(plan: str, at: str | None) -> None:
            body = {"distinct_id": "u1", "properties": {"plan": plan}, "channels": {},
                    "preferences": {}, **({"at": at} if at else {})}
            store.apply("p", [Delivery(kind="identify", body=body)])

        identify("new", "2026-02-01T00:00:00.000Z")
        identify("replayed", "2026-01-01T00:00:00.000Z")
        assert (store.subscriber("p", "u1") or {})["properties"] == {"plan": "new"}
        identify("queued before the upgrade", None)
        found = store.subscriber("p", "u1") or {}
        assert found["properties"] == {"plan": "queued before the upgrade"}
        assert found["preferences"]["$locale"] == "de"
    finally:
        store.close()


def test_startup_warns_of_profiles_left_in_a_file_on_postgresql(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Found by the operations audit: an earlier build kept the profile store in profiles.db
    even on PostgreSQL storage; upgraded, it started with empty tables and said nothing."""
    import sqlite3

    from hookyard.profiles.store import ProfileStore

    path = tmp_path / "profiles.db"
    prof.left_behind(path, "profiles", lambda: True)  # no file: nothing to say
    ProfileStore.sqlite(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO subscribers (destination, distinct_id) VALUES ('profiles', 'u1')")
    with caplog.at_level(logging.WARNING, "hookyard.profiles"):
        prof.left_behind(path, "profiles", lambda: False)  # the tables were rebuilt
        assert caplog.text == ""
        prof.left_behind(path, "profiles", lambda: True)
    assert "holds 1 subscribers kept there by an earlier build" in caplog.text
    assert "hookyard replay --source <source> --destination profiles" in caplog.text


def test_deliver_answers_a_store_outage_retryable_without_a_traceback(
        make_ctx: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    """Found by the judge-style audit: with PostgreSQL stopped under load, the profile store's
    deliver logged 'deliver hook of profiles raised' at ERROR with a psycopg traceback."""
    import asyncio
    import sqlite3

    import psycopg
    from hookyard.errors import RetryableError

    ctx = make_ctx()
    store = prof.store_for(ctx)
    for failure in (sqlite3.OperationalError("database is locked"),
                    psycopg.OperationalError("connection failed: server closed the connection")):
        def apply(*_: Any, failure: Exception = failure) -> None:
            raise failure

        monkeypatch.setattr(store, "apply", apply)
        with pytest.raises(RetryableError, match="profile store unavailable: .*(locked|server closed)"):
            asyncio.run(prof.deliver(ctx, [], None))  # type: ignore[arg-type]
    monkeypatch.setattr(store, "apply", lambda *_: 1 / 0)
    with pytest.raises(ZeroDivisionError):  # a bug stays a bug
        asyncio.run(prof.deliver(ctx, [], None))  # type: ignore[arg-type]


def test_notes_of_values_not_kept_do_not_flood_the_log(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Soak audit: an identify with language "en-US" logged a line each, 98.7 % of an hour's
    log. Ten per kind of note a minute are logged, the rest counted in one line."""
    from hookyard.profiles import notes

    clock = [1000.0]
    monkeypatch.setattr(notes.time, "monotonic", lambda: clock[0])
    caplog.set_level(logging.INFO, logger="hookyard.profiles")
    kept = notes.Notes()
    for i in range(25):
        kept.note("profiles", f"u{i}", "$locale ignored: 'en-US' (trait language) is not an ISO"
                  " 639-1 code")
    kept.note("profiles", "u1", "$email ignored: 'x' (trait email) is not an email address")
    assert caplog.text.count("$locale ignored") == 10
    assert caplog.text.count("$email ignored") == 1
    clock[0] += 61
    kept.note("profiles", "u99", "$locale ignored: 'de-DE' (trait language) is not an ISO"
              " 639-1 code")
    assert "profile store profiles: 15 more notes like '$locale' in the last 61 s" in caplog.text
    assert "profile u99: $locale ignored: 'de-DE'" in caplog.text
