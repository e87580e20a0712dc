"""hookyard.fql: Segment's Filter Query Language on raw event dicts."""

from __future__ import annotations

from typing import Any

import pytest
from hookyard.errors import ConfigError
from hookyard.fql import FQLSyntaxError, _Parser, compile_fql, evaluate
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

EVENT: dict[str, Any] = {
    "type": "track",
    "event": "Order Completed",
    "userId": "u1",
    "anonymousId": "",
    "properties": {
        "total": 150,
        "price": 19.5,
        "plan": "Pro",
        "enabled": True,
        "features": ["discounts", "dark-mode"],
        "product 1": {"price": "19.99"},
        "nothing": None,
        "items": [{"sku": "A-1"}, {"sku": "B-2"}],
        "empty": {},
        "unicode": "ア",
    },
    "context": {
        "device": {"type": "ios"},
        "library": {"name": "analytics.js", "version": "1.0"},
    },
    "traits": {"email": "Peter@Example.COM"},
}


def ev(expression: str, event: dict[str, Any] | None = None) -> bool:
    return evaluate(expression, EVENT if event is None else event)


# ------------------------------------------------------------ reference examples


@pytest.mark.parametrize(
    ("expression", "event", "expected"),
    [
        ("length( userId ) < 1", {"type": "track"}, True),
        ("length( userId ) < 1", {"userId": ""}, True),
        ("length( userId ) < 1", {"userId": None}, True),
        ("length( userId ) < 1", {"userId": "u1"}, False),
        ("userId is null", {"type": "track"}, True),
        ("userId is null", {"userId": "u1"}, False),
        ('type = "track" or type = "identify"', {"type": "identify"}, True),
        ('type = "track" or type = "identify"', {"type": "page"}, False),
        ('(type = "track" or type = "identify") and userId exists', {"type": "track"}, False),
        ('(type = "track" or type = "identify") and userId exists', EVENT, True),
        (
            '(type = "track" or type = "identify") and userId exists',
            {"type": "page", "userId": "u"},
            False,
        ),
        ('event = "Order Completed" and properties.total > 100', EVENT, True),
        (
            'event = "Order Completed" and properties.total > 100',
            {"event": "Order Completed", "properties": {"total": 99}},
            False,
        ),
        ('match(event, "Email*")', {"event": "Email Opened"}, True),
        ('match(event, "Email*")', {"event": "Opened Email"}, False),
        ('not (context.device.type = "ios")', EVENT, False),
        ('not (context.device.type = "ios")', {"context": {"device": {"type": "android"}}}, True),
        ('not (context.device.type = "ios")', {}, True),
        ('contains(lowercase(traits.email), "@example.com")', EVENT, True),
        ('contains(lowercase(traits.email), "@example.com")', {"traits": {}}, False),
    ],
)
def test_reference_examples(expression: str, event: dict[str, Any], expected: bool) -> None:
    assert evaluate(expression, event) is expected


@pytest.mark.parametrize(
    ("expression", "expected"),
    [  # the examples table of Segment's FQL reference, on the same event
        ("event = 'Button Clicked'", True),
        ("event = 'Screen Tapped'", False),
        ("context.path.path = '/login'", False),
        ("type = 'identify' or type = 'track'", True),
        ("event = 'Button Clicked' and type = 'track'", True),
        ("match( context.library.version, '1.*' )", True),
        ("match( context.library.version, '2.*' )", False),
        ("type = 'track' and ( event = 'Click' or match( event, 'Button *' ) )", True),
        ("!contains( context.library.name, 'js' )", False),
        ("'dark-mode' in properties.features", True),
        ("'blink' in properties.features", False),
        ("!( type in ['track', 'identify'] )", False),
    ],
)
def test_segment_reference_table(expression: str, expected: bool) -> None:
    event = {
        "event": "Button Clicked",
        "type": "track",
        "context": {"library": {"name": "analytics.js", "version": "1.0"}},
        "properties": {"features": ["discounts", "dark-mode"]},
    }
    assert evaluate(expression, event) is expected


# ------------------------------------------------------------ fields and literals


def test_field_paths() -> None:
    assert ev('type = "track"')
    assert ev('context.device.type = "ios"')
    assert ev('context.library.name = "analytics.js"')
    assert ev('properties.items.1.sku = "B-2"')  # list index
    assert not ev('properties.items.9.sku = "B-2"')
    assert ev("properties.items.sku is null")  # a name on a list is missing
    assert ev("type.name is null")  # a name on a string is missing
    assert ev("properties.nothing is null")


def test_escaped_field_names() -> None:
    assert ev(r'properties.product\ 1.price = "19.99"')  # Segment's backslash escape
    assert ev('properties.`product 1`.price = "19.99"')  # backticks
    assert evaluate("`and` = 1", {"and": 1})  # a keyword as a field name
    assert evaluate("properties.`a.b` = 1", {"properties": {"a.b": 1}})
    assert evaluate("properties.my-field = 1", {"properties": {"my-field": 1}})


def test_literals() -> None:
    assert ev("properties.total = 150")
    assert ev("properties.total = 150.0")  # int/float numeric equality
    assert ev("properties.price = 19.5")
    assert evaluate("x = -2.5e1", {"x": -25})
    assert ev("properties.enabled = true")
    assert not ev("properties.enabled = false")
    assert ev("properties.nothing = null")
    assert ev("properties.missing = null")
    assert ev("properties.enabled")  # a bare boolean field is a condition
    assert not ev("properties.plan")  # ... only when it is exactly true
    assert ev("properties.features = ['discounts', 'dark-mode']")
    assert ev("properties.empty = []") is False  # an object is not a list
    assert evaluate("x = []", {"x": []})


def test_string_escapes() -> None:
    assert evaluate(r'x = "say \"hi\""', {"x": 'say "hi"'})
    assert evaluate(r"x = 'it\'s'", {"x": "it's"})
    assert evaluate(r'x = "a\\b"', {"x": "a\\b"})
    assert evaluate(r'x = "line\nnext\ttab"', {"x": "line\nnext\ttab"})


# ------------------------------------------------------------ operators


def test_equality_is_strict() -> None:
    assert not evaluate('x = "1"', {"x": 1})
    assert not evaluate("x = 1", {"x": True})  # bool is not a number
    assert not evaluate("x = true", {"x": 1})
    assert not evaluate("x = 0", {"x": None})
    assert not evaluate("x = null", {"x": 0})
    assert not evaluate("x = [1]", {"x": [True]})
    assert evaluate("a = b", {"a": {"k": [1, 2.0]}, "b": {"k": [1.0, 2]}})
    assert not evaluate("a = b", {"a": {"k": 1}, "b": {"k": 1, "j": 2}})


def test_not_equal_is_negated_equal() -> None:
    assert evaluate('x != "1"', {"x": 1})
    assert evaluate("x != null", {"x": 0})  # Segment's spelling of "exists"
    assert not evaluate("x != null", {})
    assert not evaluate("x != 1", {"x": 1.0})


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("properties.total > 100", True),
        ("properties.total >= 150", True),
        ("properties.total > 150", False),
        ("properties.total < 150.5", True),
        ("properties.total <= 150", True),
        ("properties.total < 150", False),
        ('properties.plan < "Q"', True),  # strings compare with strings
        ('properties.plan > "Q"', False),
        ('properties.total < "200"', False),  # incompatible types: false, not an error
        ('properties.total > "1"', False),
        ("properties.missing < 1", False),
        ("properties.missing >= 0", False),
        ("properties.enabled > 0", False),
        ("properties.features > 0", False),
        ("null < 1", False),
    ],
)
def test_ordering(expression: str, expected: bool) -> None:
    assert ev(expression) is expected


def test_boolean_operators_and_precedence() -> None:
    assert ev('type = "track" and userId = "u1"')
    assert not ev('type = "track" and userId = "u2"')
    assert ev('type = "page" or userId = "u1"')
    assert not ev('type = "page" or userId = "u2"')
    assert ev('type = "page" and userId = "x" or userId = "u1"')  # and binds tighter
    assert not ev('type = "page" and (userId = "x" or userId = "u1")')
    assert ev('not type = "page"')
    assert ev('! type = "page"')
    assert ev('!(type = "page")')
    assert ev('not not type = "track"')
    assert ev('not type = "page" and userId exists')
    assert not ev("properties.missing and true")  # null is not true
    assert ev("properties.missing or true")
    assert ev("not properties.missing")


def test_exists_and_is_null() -> None:
    assert ev("userId exists")
    assert ev("anonymousId exists")  # an empty string exists
    assert not ev("properties.nothing exists")  # null does not
    assert not ev("properties.missing exists")
    assert ev("properties.missing is null")
    assert ev("properties.plan is not null")
    assert not ev("properties.nothing is not null")
    assert ev("not properties.missing exists")


def test_in() -> None:
    assert ev('type in ["track", "identify"]')
    assert not ev('type in ["page"]')
    assert ev("properties.total in [1, 150.0]")
    assert ev("null in [properties.missing]")
    assert not ev('"x" in properties.plan')  # the right side must be a list
    assert not ev('"x" in properties.missing')


# ------------------------------------------------------------ functions


def test_length() -> None:
    assert ev("length(userId) = 2")
    assert ev("length(properties.features) = 2")
    assert ev("length(properties.product\\ 1) = 1")  # object: number of keys
    assert ev("length(properties.missing) = 0")
    assert ev("length(properties.nothing) = 0")
    assert ev("length(properties.total) = 0")
    assert ev("length(properties.unicode) = 3")  # bytes, as in Segment: "ア" is 3
    assert ev('length("") = 0')


def test_lowercase_uppercase_typeof() -> None:
    assert ev('lowercase(traits.email) = "peter@example.com"')
    assert ev('uppercase(properties.plan) = "PRO"')
    assert ev("lowercase(properties.missing) = null")
    assert ev("lowercase(properties.total) = null")
    assert ev('typeof(userId) = "string"')
    assert ev('typeof(properties.total) = "number"')
    assert ev('typeof(properties.enabled) = "bool"')
    assert ev('typeof(properties.features) = "list"')
    assert ev('typeof(properties.empty) = "object"')
    assert ev('typeof(properties.missing) = "null"')


def test_contains() -> None:
    assert ev('contains(event, "Completed")')
    assert not ev('contains(event, "completed")')  # case sensitive
    assert ev('contains(event, "")')
    assert not ev('contains(properties.missing, "x")')
    assert not ev('contains(properties.total, "1")')
    assert not ev("contains(event, properties.total)")
    assert not ev('contains(properties.features, "dark-mode")')  # strings only: use `in`


@pytest.mark.parametrize(
    ("value", "pattern", "expected"),
    [  # Segment's glob table, and a few more
        ("abcd", "a*d", True),
        ("", "*", True),
        ("abc", "ab", False),
        ("abcd", "a??d", True),
        ("abcd", "a?d", False),
        ("abcd", "*d", True),
        ("ab*d", "ab\\\\*d", True),
        ("abxd", "ab\\\\*d", False),
        ("abCd", "ab[cC]d", True),
        ("abcd", "ab[a-z]d", True),
        ("abcd", "ab[A-Z]d", False),
        ("abcd", "ab[!a-b]d", True),
        ("abad", "ab[!a-b]d", False),
        ("a]", "a[]]", True),
        ("a[", "a[", True),  # an unterminated class is a literal "["
        ("Email Opened", "Email*", True),
        ("Opened Email", "Email*", False),
        ("Opened Email", "*Email", True),
        ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaab", "*a*a*a*a*a*a*a*c", False),
        ("abc", "", False),
        ("", "", True),
    ],
)
def test_match(value: str, pattern: str, expected: bool) -> None:
    assert evaluate(f'match(x, "{pattern}")', {"x": value}) is expected


def test_match_non_strings() -> None:
    assert not evaluate('match(x, "*")', {})
    assert not evaluate('match(x, "*")', {"x": 1})
    assert not evaluate("match(x, y)", {"x": "a", "y": None})
    assert evaluate("match(x, y)", {"x": "abc", "y": "a*"})  # the pattern may be a field


# ------------------------------------------------------------ errors


@pytest.mark.parametrize(
    ("expression", "position", "detail"),
    [
        ("", 0, "expected a field"),
        ("type =", 6, "expected a field"),
        ('(type = "track"', 15, "expected ')'"),
        ('type = "track")', 14, "end of the expression"),
        ('type = "track" AND userId exists', 15, "end of the expression"),
        ('type = "track', 7, "unterminated string"),
        ("nope(userId)", 0, "unknown function 'nope'"),
        ("length(userId, 1)", 0, "takes 1 argument"),
        ("contains(userId)", 0, "takes 2 argument"),
        ("userId is 1", 10, "expected 'null'"),
        ("userId = 1 = 1", 11, "end of the expression"),
        ("userId # 1", 7, "unexpected character '#'"),
        ("properties. = 1", 11, "expected a field name"),
        ("`open = 1", 0, "unterminated `quoted`"),
        ("x = [1, 2", 9, "expected ']'"),
        ("userId = \\", 9, "expected a field name"),
    ],
)
def test_syntax_errors_name_the_position(expression: str, position: int, detail: str) -> None:
    with pytest.raises(FQLSyntaxError) as info:
        compile_fql(expression)
    err = info.value
    assert err.position == position
    assert detail in str(err)
    assert str(err).startswith(f"FQL syntax error at position {position}: ")
    assert str(err).endswith(f" in: {expression}")


def test_a_long_expression_is_quoted_around_the_problem() -> None:
    expression = " or ".join(f'event = "Event number {i}"' for i in range(20)) + " or ("
    with pytest.raises(FQLSyntaxError) as info:
        compile_fql(expression)
    message = str(info.value)
    assert message.startswith(f"FQL syntax error at position {len(expression)}: ")
    assert message.endswith(f' near: ...{expression[-30:]}')
    assert len(message) < 150


def test_syntax_error_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"at position 16: expected '\)'"):
        compile_fql('(type = "track" userId exists')


def test_too_deep_nesting_is_a_syntax_error() -> None:
    with pytest.raises(FQLSyntaxError, match="nested deeper"):
        compile_fql("(" * 500 + "true" + ")" * 500)
    with pytest.raises(FQLSyntaxError, match="nested deeper"):
        compile_fql("not " * 500 + "true")
    assert compile_fql("(" * 30 + "true" + ")" * 30)({})


def test_long_flat_chains_evaluate() -> None:
    assert evaluate(" or ".join(["x = 1"] * 3000 + ["x = 2"]), {"x": 2})
    assert not evaluate(" and ".join(["x = 2"] * 3000 + ["x = 1"]), {"x": 2})


def test_compiled_predicate_is_reusable() -> None:
    predicate = compile_fql('type = "track" and properties.total > 100')
    assert predicate(EVENT)
    assert not predicate({"type": "track", "properties": {"total": 5}})
    assert not predicate({})


def test_exotic_values_do_not_raise() -> None:
    class Weird:
        def __eq__(self, other: object) -> bool:
            raise RuntimeError("no")

        __hash__ = object.__hash__

    event: dict[str, Any] = {"x": Weird(), "y": (1, 2), "z": float("nan"), "s": "\ud800"}
    for expression in [
        "x = 1",
        "x = x",
        "x exists",
        "length(x) = 0",
        "y = [1, 2]",
        "z = z",
        "z < 1",
        "length(s) = 3",
        'match(s, "*")',
        "x in [1]",
    ]:
        assert compile_fql(expression)(event) in (True, False)
    assert evaluate("y = [1, 2]", event)
    assert not evaluate("z = z", event)  # NaN is equal to nothing


# ------------------------------------------------------------ properties

JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=20,
)
FIELDS = st.sampled_from(["type", "event", "userId", "properties", "context", "traits", "x"])
EVENTS = st.dictionaries(FIELDS, JSON, max_size=6) | st.fixed_dictionaries(
    {
        "type": st.sampled_from(["track", "identify"]),
        "userId": JSON,
        "properties": JSON,
        "context": st.fixed_dictionaries({"device": st.dictionaries(st.just("type"), JSON)}),
    }
)
EXPRESSIONS = [
    "length( userId ) < 1",
    "userId is null",
    "userId is not null",
    'type = "track" or type = "identify"',
    '(type = "track" or type = "identify") and userId exists',
    'event = "Order Completed" and properties.total > 100',
    'match(event, "Email*")',
    "match(userId, event)",
    'not (context.device.type = "ios")',
    'contains(lowercase(traits.email), "@example.com")',
    "contains(userId, event)",
    "properties = context",
    "properties != traits.x",
    "x < userId or x >= properties or x <= 1.5 or x > -1",
    "length(properties) > length(context) and length(x) = 0",
    'typeof(x) = "list" and uppercase(event) = lowercase(userId)',
    "userId in properties or [userId, x] = [event, type]",
    "properties.0.a.1 = x.b",
    "!properties and not context.device and x",
    "userId",
]
COMPILED = [(e, compile_fql(e), _Parser(e).parse()) for e in EXPRESSIONS]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(EVENTS)
def test_compiled_expressions_never_raise(event: dict[str, Any]) -> None:
    for _, predicate, node in COMPILED:
        assert predicate(event) in (True, False)
        assert type(predicate(event)) is bool
        node(event)  # the unguarded closures do not raise either on JSON-like values


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=60))
def test_arbitrary_text_compiles_or_raises_syntax_error(text: str) -> None:
    try:
        predicate = compile_fql(text)
    except FQLSyntaxError as err:
        assert 0 <= err.position <= len(text)
    else:
        assert callable(predicate)
        assert predicate({}) in (True, False)


FQL_ALPHABET = st.sampled_from(
    [
        "type",
        "userId",
        "properties.x",
        '"a"',
        "'b'",
        "1",
        "-2.5",
        "null",
        "true",
        "and",
        "or",
        "not",
        "!",
        "=",
        "!=",
        "<",
        ">=",
        "(",
        ")",
        "[",
        "]",
        ",",
        "in",
        "is",
        "exists",
        "length(",
        "match(",
        "contains(",
        "lowercase(",
        " ",
        "`",
        "\\",
        ".",
        "*",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(FQL_ALPHABET, max_size=25).map("".join), EVENTS)
def test_fql_like_text_compiles_or_raises_syntax_error(text: str, event: dict[str, Any]) -> None:
    try:
        predicate = compile_fql(text)
    except FQLSyntaxError as err:
        assert 0 <= err.position <= len(text)
    else:
        assert type(predicate(event)) is bool
        _Parser(text).parse()(event)
