"""Property tests of the Segment wire parser (``hookyard.tracking_api``) and of FQL on hostile
events: whatever JSON (or bytes) a client sends, the parser answers typed events or a clear
``BadRequest``/``NotFound`` (a 4xx), never another exception.

tests/test_fql.py already fuzzes FQL expression text and fixed expressions over small events;
here the expressions are generated from the grammar (so they parse) and the events are the
nastiest JSON hypothesis can make (deep nesting, huge ints, NaN-free floats, unicode keys).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hookyard.connectors import ParsedEvent, RefusedEvent
from hookyard.errors import BadRequest, NotFound, RequestError
from hookyard.events import EVENT_CLASSES, EVENT_TYPES
from hookyard.fql import FQLSyntaxError, compile_fql
from hookyard.tracking_api import (
    BATCH_CALLS,
    SHORT_CALLS,
    body_write_key,
    parse_call,
    parse_webhook,
)
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

CALLS = list(EVENT_TYPES) + list(BATCH_CALLS) + list(SHORT_CALLS)
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------ strategies

SCALARS = (
    st.none() | st.booleans() | st.integers() | st.integers(min_value=2**63, max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=25,
)
FIELD_NAMES = st.sampled_from([
    "type", "userId", "anonymousId", "messageId", "event", "properties", "traits", "context",
    "integrations", "timestamp", "sentAt", "groupId", "previousId", "name", "category",
    "version", "writeKey", "batch",
])
FIELD_VALUES = JSON | st.sampled_from(EVENT_TYPES) | st.sampled_from(["u1", "", "Signed Up"])
# objects shaped like Segment events, with any value in any field: the parser's real inputs
EVENTISH = st.dictionaries(FIELD_NAMES, FIELD_VALUES, max_size=8)
BODIES = JSON | EVENTISH | st.fixed_dictionaries({"batch": st.lists(EVENTISH | JSON, max_size=4)})


def encode(value: Any) -> bytes:
    return msgspec.json.encode(value)


def check_events(events: list[Any], call: str = "batch") -> None:
    if SHORT_CALLS.get(call, call) not in BATCH_CALLS:  # only a batch may be empty (as Segment)
        assert events, "a successful parse returns at least one event"
    for parsed in events:
        if isinstance(parsed, RefusedEvent):  # an invalid event of a batch, refused alone
            assert (SHORT_CALLS.get(call, call) in BATCH_CALLS or call == "webhook") and parsed.reason
            continue
        assert type(parsed.event) in EVENT_CLASSES.values()
        assert isinstance(parsed.raw, bytes)
        msgspec.json.decode(parsed.raw)  # what is stored is valid JSON
        assert parsed.event.user_id is not None or parsed.event.anonymous_id is not None


# ------------------------------------------------------------------------------ the parser


@FAST
@given(st.sampled_from(CALLS), BODIES)
def test_parse_call_any_json_is_typed_events_or_bad_request(call: str, body: Any) -> None:
    try:
        events = parse_call(call, encode(body))
    except BadRequest as exc:
        assert exc.status == 400 and exc.reason
        return
    check_events(events, call)
    if SHORT_CALLS.get(call, call) not in BATCH_CALLS:
        assert len(events) == 1
        assert events[0].event.__struct_config__.tag == SHORT_CALLS.get(call, call)
        assert b'"writeKey"' not in events[0].raw  # the key is never stored


@FAST
@given(st.binary(max_size=200) | st.text(max_size=200).map(str.encode))
@example(b'{"userId": "\xff\xfe"}')  # invalid UTF-8 inside a string
@example(b"[" * 100_000)  # nesting deeper than any decoder's recursion limit
@example(b'{"batch": ' + b"[" * 100_000)
@example(b'{"userId": "u", "type": "track", "event": "e"' + b" " * 10)  # truncated
@example(b"\x1f\x8b\x08\x00")  # gzip magic that was not announced as gzip
def test_parse_call_any_bytes_is_typed_events_or_bad_request(body: bytes) -> None:
    for call in ("track", "identify", "batch"):
        try:
            check_events(parse_call(call, body), call)
        except BadRequest as exc:
            assert exc.reason


@FAST
@given(st.text(max_size=30), EVENTISH)
def test_unknown_call_is_not_found(call: str, body: Any) -> None:
    if call in CALLS:
        return
    with pytest.raises(NotFound):
        parse_call(call, encode(body))


@FAST
@given(BODIES | st.lists(EVENTISH, max_size=5), st.booleans())
@example([], False)
@example(b"[" * 100_000, True)
def test_parse_webhook_any_json_is_typed_events_or_bad_request(body: Any,
                                                               require_user_id: bool) -> None:
    raw = body if isinstance(body, bytes) else encode(body)
    try:
        events = parse_webhook(raw, require_user_id=require_user_id)
    except BadRequest as exc:
        assert exc.reason
        return
    assert events, "an empty array is refused"
    check_events(events, "webhook")
    if require_user_id:
        assert all(p.event.user_id is not None for p in events if isinstance(p, ParsedEvent))


@FAST
@given(st.binary(max_size=300) | BODIES.map(encode))
def test_body_write_key_never_raises(body: bytes) -> None:
    key = body_write_key(body)
    assert key is None or isinstance(key, str)


VALID = st.fixed_dictionaries(
    {"type": st.sampled_from(EVENT_TYPES),
     # a blank userId is no user (refused alone): valid events have a real one
     "userId": st.text(min_size=1, max_size=10).filter(lambda s: not s.isspace()),
     "messageId": st.uuids().map(str), "event": st.text(min_size=1, max_size=10),
     "groupId": st.text(min_size=1, max_size=5), "previousId": st.text(min_size=1, max_size=5)},
    optional={"properties": st.dictionaries(st.text(max_size=5), JSON, max_size=3),
              "traits": st.dictionaries(st.text(max_size=5), JSON, max_size=3),
              "context": st.dictionaries(st.text(max_size=5), JSON, max_size=3),
              "unknownField": JSON},
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(VALID, min_size=1, max_size=4))
def test_valid_events_parse_and_keep_every_field(events: list[dict[str, Any]]) -> None:
    parsed = parse_call("batch", encode({"batch": events}))
    assert [p.event.__struct_config__.tag for p in parsed] == [e["type"] for e in events]
    for p, sent in zip(parsed, events):
        assert p.event.messageId == sent["messageId"]
        assert json.loads(p.raw) == sent  # unknown fields kept, nothing added
    for ev in events:
        [single] = parse_call(ev["type"], encode(ev))
        assert json.loads(single.raw) == ev


# ------------------------------------------------------------------------------ FQL


_FIRST = ["type", "userId", "event", "properties", "traits", "context", "a", "`odd key`", "x\\.y"]
PATHS = st.builds(lambda first, rest: [first, *rest], st.sampled_from(_FIRST),
                  st.lists(st.sampled_from([*_FIRST, "0", "12"]), max_size=3))
LITERALS = (st.integers(-10**20, 10**20).map(str) | st.floats(-1e9, 1e9).map(lambda f: f"{f:.3f}")
            | st.text(alphabet=st.characters(exclude_categories=["Cs"]), max_size=8)
            .map(json.dumps) | st.sampled_from(["null", "true", "false"]))
FUNCTIONS = ["length", "lowercase", "uppercase", "typeof"]


def _values() -> st.SearchStrategy[str]:
    base = PATHS.map(".".join) | LITERALS
    return st.recursive(
        base,
        lambda inner: (
            st.builds(lambda f, v: f"{f}({v})", st.sampled_from(FUNCTIONS), inner)
            | st.builds(lambda a, b: f"contains({a}, {b})", inner, inner)
            | st.builds(lambda a, b: f"match({a}, {b})", inner, inner)
            | st.lists(inner, max_size=3).map(lambda xs: "[" + ", ".join(xs) + "]")
        ),
        max_leaves=6,
    )


def _conditions() -> st.SearchStrategy[str]:
    ops = st.sampled_from(["=", "!=", "<", "<=", ">", ">=", "in"])
    atom = (
        st.builds(lambda a, o, b: f"{a} {o} {b}", _values(), ops, _values())
        | _values().map(lambda v: f"{v} exists")
        | st.builds(lambda v, n: f"{v} is {n}null", _values(), st.sampled_from(["", "not "]))
        | _values()
    )
    return st.recursive(
        atom,
        lambda inner: (
            st.builds(lambda a, o, b: f"({a}) {o} ({b})", inner, st.sampled_from(["and", "or"]),
                      inner)
            | inner.map(lambda c: f"not ({c})") | inner.map(lambda c: f"!({c})")
        ),
        max_leaves=8,
    )


HOSTILE_EVENTS = st.dictionaries(FIELD_NAMES | st.text(max_size=6), JSON, max_size=8)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_conditions(), HOSTILE_EVENTS)
def test_grammar_generated_filters_compile_and_answer_a_bool(expression: str,
                                                             event: dict[str, Any]) -> None:
    try:
        predicate = compile_fql(expression)
    except FQLSyntaxError as exc:  # only the nesting limit may refuse a grammatical expression
        assert "deep" in str(exc).lower() or "nest" in str(exc).lower(), (expression, exc)
        return
    assert type(predicate(event)) is bool


@pytest.mark.parametrize("expression", [
    "not " * 5000 + "true",
    "(" * 5000 + "true" + ")" * 5000,
    "[" * 5000 + "]" * 5000,
    "length(" * 3000 + "x" + ")" * 3000,
], ids=["not", "parentheses", "lists", "functions"])
def test_deeply_nested_filters_are_refused_cleanly(expression: str) -> None:
    with pytest.raises(FQLSyntaxError):
        compile_fql(expression)


def test_parser_errors_are_request_errors() -> None:
    """The ingest endpoint turns exactly these into 4xx answers (never a 500)."""
    assert issubclass(BadRequest, RequestError) and issubclass(NotFound, RequestError)
