"""Novu destination, hook level: settings and ``map_event`` (no server, no HTTP)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hookyard.config import parse_config
from hookyard.deliveries import Delivery, MapResult
from hookyard.errors import ConfigError
from hookyard.runtime import Runtime
from hookyard.testing import (
    destination_context,
    map_with,
    registry,
    sample_alias,
    sample_group,
    sample_identify,
    sample_page,
    sample_screen,
    sample_track,
)
from hookyard_novu.mapping import NO_USER_ID, split_name, subscriber_fields, valid_topic_key
from hookyard_novu.settings import NovuSettings

REG = registry()
SETTINGS: dict[str, Any] = {"api_key": "nv-secret", "workflows": {"User Registered": "welcome"}}


def mapped(raw: dict[str, Any], **settings: Any) -> MapResult:
    return map_with(destination_context("novu", {**SETTINGS, **settings}, reg=REG), raw, REG)


def one(raw: dict[str, Any], **settings: Any) -> Delivery:
    result = mapped(raw, **settings)
    assert result.filtered is None, result.filtered
    [delivery] = result.deliveries
    assert "nv-secret" not in msgspec.json.encode(delivery).decode()  # never stored
    return delivery


# -- settings ---------------------------------------------------------------------------------
def test_settings_defaults_and_regions() -> None:
    s = NovuSettings(api_key="k")
    assert (s.api_url, s.region, s.workflows, s.send_unmapped) == (
        "https://api.novu.co",
        "us",
        {},
        "skip",
    )
    assert s.base_url == "https://api.novu.co"  # filled in: previews show the full URL
    eu = msgspec.convert({"api_key": "k", "region": "eu"}, NovuSettings)
    assert eu.api_url == eu.base_url == "https://eu.api.novu.co"
    assert NovuSettings(api_key="k", region="eu", base_url="http://127.0.0.1:9/").api_url == (
        "http://127.0.0.1:9"
    )


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "missing required field `api_key`"),
        ({"api_key": ""}, "api_key"),
        ({"api_key": "   "}, "api_key must not be blank"),
        ({"api_key": "k", "region": "asia"}, "region"),
        ({"api_key": "k", "base_url": "api.novu.co"}, "base_url must start with http"),
        ({"api_key": "k", "send_unmapped": "retry"}, "send_unmapped"),
        ({"api_key": "k", "identify_fields": {"mobile": "mobile"}}, "identify_fields"),
        ({"api_key": "k", "workflows": {"Signed Up": ""}}, "workflows"),
        ({"api_key": "k", "apikey": "k"}, "unknown field `apikey`"),
    ],
)
def test_invalid_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=message.replace("$", r"\$")):
        msgspec.convert(settings, NovuSettings)


def config(settings: dict[str, Any], tmp_path: Any) -> dict[str, Any]:
    return {
        "server": {"data_dir": str(tmp_path)},
        "sources": [{"name": "web", "plugin": "segment", "write_key": "test-write-key"}],
        "destinations": [
            {"name": "novu", "plugin": "novu", "sources": ["web"], "settings": settings}
        ],
    }


def test_missing_api_key_stops_start_up(tmp_path: Any) -> None:
    with pytest.raises(ConfigError, match=r"destinations\[novu\]\.settings: .*api_key"):
        Runtime.build(parse_config(config({"workflows": {"A": "a"}}, tmp_path)))


def test_api_key_from_an_unset_environment_variable_stops_start_up(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HOOKYARD_TEST_NOVU_KEY", raising=False)
    with pytest.raises(ConfigError, match="HOOKYARD_TEST_NOVU_KEY, which is not set"):
        parse_config(config({"api_key": "env:HOOKYARD_TEST_NOVU_KEY"}, tmp_path))
    monkeypatch.setenv("HOOKYARD_TEST_NOVU_KEY", "from-env")
    rt = Runtime.build(parse_config(config({"api_key": "env:HOOKYARD_TEST_NOVU_KEY"}, tmp_path)))
    assert rt.destinations["novu"].context.settings.api_key == "from-env"
    assert rt.destinations["novu"].connector.batch_size == 100


# -- identify -----------------------------------------------------------------------------------
def test_identify_upserts_the_subscriber_with_name_split_and_data() -> None:
    raw = sample_identify()
    d = one(raw)
    assert (d.kind, d.method, d.path, d.ordering_key) == (
        "subscriber",
        "POST",
        "/v2/subscribers",
        "97980cfea0067",
    )
    assert d.body == {
        "subscriberId": "97980cfea0067",
        "firstName": "Peter",
        "lastName": "Gibbons",
        "email": "peter@example.com",
        "timezone": "Asia/Kolkata",
        "data": {"language": "hi", "plan": "premium", "logins": 5},
    }


def test_identify_reserved_traits_and_nulls() -> None:
    traits = {
        "firstName": "Peter",
        "lastName": None,
        "name": "Peter Gibbons",
        "email": None,
        "phone": 5551234,
        "avatar": "https://example.com/p.png",
        "company": None,
        "locale": "en-US",
        "title": "Engineer",
    }
    d = one(sample_identify(traits=traits))
    assert d.body == {
        "subscriberId": "97980cfea0067",
        "firstName": "Peter",
        "lastName": "Gibbons",  # lastName is null: taken from name
        "phone": "5551234",
        "avatar": "https://example.com/p.png",
        "email": None,  # explicitly null: cleared in Novu (left out, Novu kept the old one)
        "locale": "en-US",
        "data": {"company": None, "title": "Engineer"},  # Novu replaces data as a whole
    }


def test_identify_integers_past_2_53_go_as_text() -> None:
    big = {"id": 9223372036854775807, "n": [2**70, 5], "safe": 2**53 - 1, "neg": -(2**53)}
    d = one(sample_identify(traits={"account": big, "plan": "pro"}))
    assert d.body["data"]["account"] == {
        "id": "9223372036854775807", "n": [str(2**70), 5], "safe": 2**53 - 1, "neg": str(-(2**53))
    }


def test_identify_keeps_an_unused_name_in_data_and_omits_empty_data() -> None:
    d = one(sample_identify(traits={"firstName": "P", "lastName": "G", "name": "Peter G"}))
    assert d.body == {
        "subscriberId": "97980cfea0067",
        "firstName": "P",
        "lastName": "G",
        "data": {"name": "Peter G"},
    }
    d = one(sample_identify(traits={"email": "a@b.co"}))
    assert d.body == {"subscriberId": "97980cfea0067", "email": "a@b.co"}
    d = one(sample_identify(traits=None))
    assert d.body == {"subscriberId": "97980cfea0067"}


def test_identify_locale_and_timezone_fall_back_to_the_context() -> None:
    raw = sample_identify(
        traits={"email": "a@b.co"}, context={"locale": "de-DE", "timezone": "Europe/Berlin"}
    )
    assert one(raw).body == {
        "subscriberId": "97980cfea0067",
        "email": "a@b.co",
        "locale": "de-DE",
        "timezone": "Europe/Berlin",
    }


def test_identify_fields_overrides() -> None:
    raw = sample_identify(
        userId=42,
        traits={
            "mobile": "+15551234",
            "language": "hi",
            "contact": {"email": "c@d.co"},
            "phone": "+1999",
            "email": "peter@example.com",
        },
        context={"locale": "en-US"},
    )
    overrides = {
        "mobile": "phone",
        "language": "locale",
        "contact.email": "email",
        "$.context.app.name": "lastName",
    }
    d = one(raw, identify_fields=overrides)
    assert d.body == {
        "subscriberId": "42",
        "email": "c@d.co",  # the override wins over the reserved trait
        "phone": "+15551234",
        "locale": "hi",
        # the unused reserved traits and the nested object stay in data
        "data": {"contact": {"email": "c@d.co"}, "phone": "+1999", "email": "peter@example.com"},
    }


def test_unusable_values_are_not_sent_as_attributes() -> None:
    traits = {"email": {"work": "a@b.co"}, "phone": True, "firstName": "  ", "name": 7}
    d = one(sample_identify(traits=traits))
    assert d.body == {"subscriberId": "97980cfea0067", "data": traits}


def test_values_novu_would_refuse_stay_in_data() -> None:
    """Found by the vendor audit: Novu answers 422 to the whole request for an email, locale or
    time zone its validators (IsEmail, IsLocale, IsTimeZone) refuse, so one bad trait sent the
    identify, and every trigger carrying it, to the dead letters."""
    traits = {"email": "not-an-email", "locale": "+05:30", "timezone": "Mars/Olympus",
              "firstName": "Zoe"}
    raw = sample_identify(traits=traits, context={"locale": "pt_BR", "timezone": "UTC"})
    assert one(raw).body == {
        "subscriberId": "97980cfea0067", "firstName": "Zoe",
        "locale": "pt_BR", "timezone": "UTC",  # the context's, which Novu takes
        "data": {"email": "not-an-email", "locale": "+05:30", "timezone": "Mars/Olympus"},
    }
    spaced = sample_identify(traits={"email": "  Zoe.Nunez+tag@EXAMPLE.co.uk "})
    assert one(spaced).body["email"] == "Zoe.Nunez+tag@EXAMPLE.co.uk"
    assert one(sample_identify(traits={"locale": "en-x"})).body.get("locale") is None


@pytest.mark.parametrize(("email", "taken"), [
    ("peter@example.com", True), ("用户@例子.广告", True), ('"quoted name"@example.com', True),
    # the re-check, against class-validator 0.15 (validator.js isEmail) in Node: refused there
    ("a@b.c", False), ("john..doe@gmail.com", False), ("user@gmail.com.", False),
    ("first@my_company.com", False), ("x@example.c0m", False), (".a@example.com", False),
    ("u@e.x-y", False), ("a" * 65 + "@example.com", False), ("a@[1.2.3.4]", False),
])
def test_emails_are_checked_as_novus_is_email_does(email: str, taken: bool) -> None:
    body = one(sample_identify(traits={"email": email})).body
    assert (body.get("email") == email) is taken
    track = sample_track(event="User Registered", context={"traits": {"email": "bad@", "phone": "555"}})
    assert one(track).body["to"] == {"subscriberId": "97980cfea0067", "phone": "555"}


@pytest.mark.parametrize(
    ("name", "first", "last"),
    [
        ("Peter Gibbons", "Peter", "Gibbons"),
        ("  Peter   Gibbons ", "Peter", "Gibbons"),
        ("Jean Claude Van Damme", "Jean", "Claude Van Damme"),
        ("Cher", "Cher", None),
        ("", None, None),
        (None, None, None),
        (12, None, None),
    ],
)
def test_split_name(name: Any, first: str | None, last: str | None) -> None:
    assert split_name(name) == (first, last)


def test_only_the_missing_half_comes_from_name() -> None:
    fields, used = subscriber_fields(
        NovuSettings(api_key="k"), {"firstName": "Pete", "name": "Peter Gibbons"}, {}
    )
    assert fields == {"firstName": "Pete", "lastName": "Gibbons"} and used == {"firstName", "name"}


# -- track ------------------------------------------------------------------------------------------
def test_track_triggers_the_mapped_workflow_with_transaction_id() -> None:
    raw = sample_track(
        context={
            "traits": {"email": "peter@example.com", "name": "Peter Gibbons", "plan": "premium"}
        }
    )
    d = one(raw)
    assert (d.kind, d.path, d.ordering_key) == ("trigger", "/v1/events/trigger", "97980cfea0067")
    assert d.body == {
        "name": "welcome",
        "to": {
            "subscriberId": "97980cfea0067",
            "firstName": "Peter",
            "lastName": "Gibbons",
            "email": "peter@example.com",
        },
        "payload": {"plan": "Pro Annual", "accountType": "Facebook"},
        "transactionId": raw["messageId"],
    }


def test_track_without_properties_or_context_traits() -> None:
    raw = sample_track(properties=None, context=None)
    assert one(raw).body == {
        "name": "welcome",
        "to": {"subscriberId": "97980cfea0067"},
        "payload": {},
        "transactionId": raw["messageId"],
    }
    raw = sample_track(properties={"coupon": None, "total": 9.5})
    assert one(raw).body["payload"] == {"total": 9.5}


def test_unmapped_event_is_skipped_by_default() -> None:
    result = mapped(sample_track(event="Order Completed"))
    assert result.deliveries == []
    assert (
        result.filtered
        == "no Novu workflow mapped for event 'Order Completed' (settings.workflows)"
    )


def test_unmapped_event_is_a_permanent_error_under_the_error_policy() -> None:
    d = one(sample_track(event="Order Completed"), send_unmapped="error")
    assert (d.kind, d.path) == ("unmapped", "")
    assert d.body == {
        "event": "Order Completed",
        "error": "no Novu workflow mapped for event 'Order Completed' (settings.workflows)",
    }


def test_workflow_names_match_exactly() -> None:
    assert mapped(sample_track(event="user registered")).filtered is not None


# -- group ------------------------------------------------------------------------------------------
def test_group_subscribes_the_user_to_the_topic() -> None:
    d = one(sample_group())
    assert (d.kind, d.path, d.ordering_key) == (
        "topic_subscription",
        "/v2/topics/acme/subscriptions",
        "97980cfea0067",
    )
    assert d.body == {"subscriptions": ["97980cfea0067"], "name": "Acme Inc"}
    d = one(sample_group(groupId=1234, traits=None))
    assert (d.path, d.body) == (
        "/v2/topics/1234/subscriptions",
        {"subscriptions": ["97980cfea0067"]},
    )
    d = one(sample_group(groupId="team@acme.io"))
    assert d.path == "/v2/topics/team%40acme.io/subscriptions"


def test_group_with_an_invalid_topic_key_is_skipped() -> None:
    result = mapped(sample_group(groupId="Acme Inc/EU"))
    assert result.deliveries == [] and "not a valid Novu topic key" in (result.filtered or "")


@pytest.mark.parametrize(
    ("key", "valid"),
    [
        ("acme", True),
        ("org:acme_1-eu", True),
        ("a@b.co", True),
        ("a b", False),
        ("a/b", False),
        ("", False),
        ("ünï", False),
        ("a@" + "." * 30_000 + "@", False),  # refused by length, not by a quadratic match
        ("a@b." + "c" * 300, False),
    ],
)
def test_topic_keys(key: str, valid: bool) -> None:
    assert valid_topic_key(key) is valid


# -- skipped ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("sample", [sample_identify, sample_track, sample_group])
def test_missing_user_id_is_filtered_with_a_reason(sample: Any) -> None:
    result = mapped(sample(userId=None, anonymousId="anon-1"))
    assert (result.deliveries, result.filtered) == ([], NO_USER_ID)
    assert mapped(sample(userId="", anonymousId="anon-1")).filtered == NO_USER_ID


@pytest.mark.parametrize(
    ("sample", "kind"), [(sample_page, "page"), (sample_screen, "screen"), (sample_alias, "alias")]
)
def test_other_calls_are_skipped_with_a_reason(sample: Any, kind: str) -> None:
    result = mapped(sample())
    assert result.deliveries == []
    assert result.filtered == (
        "Novu takes identify (subscribers), track (workflow triggers) and group (topics) "
        f"calls, not {kind}"
    )


# -- docs/connectors/novu.md stays true ------------------------------------------------------------
DOC = Path(__file__).resolve().parents[3] / "docs" / "connectors" / "novu.md"


def test_documented_config_builds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    [block] = re.findall(r"^```toml\n(.*?)^```", DOC.read_text(), re.S | re.M)
    for var in re.findall(r'"env:([A-Z0-9_]+)"', block):
        monkeypatch.setenv(var, f"{var.lower()}-test-value")
    data = tomllib.loads(block)
    data["server"] = {"data_dir": str(tmp_path)}
    rt = Runtime.build(parse_config(data))
    settings = rt.destinations["novu"].context.settings
    assert settings.api_key == "novu_api_key-test-value"
    assert settings.identify_fields == {
        "mobile": "phone",
        "language": "locale",
        "profile.photo": "avatar",
    }


def test_documented_error_is_real(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        Runtime.build(parse_config(config({"workflows": {"A": "a"}}, tmp_path)))
    assert f"Error: {err.value}" in DOC.read_text()
