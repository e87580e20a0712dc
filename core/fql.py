"""FQL, the Filter Query Language of Segment destination filters, evaluated on raw event dicts.

``compile_fql(expr)`` parses once (a hand-written tokenizer and recursive-descent parser) and
returns a predicate built from nested closures (no ``eval``). The predicate never raises: a
missing field is ``null``, comparing values of different types is false, and functions given
the wrong type answer a neutral value (``length(null)`` is 0). See docs/filters.md.

Grammar (lowest precedence first)::

    or    := and ("or" and)*
    and   := unary ("and" unary)*
    unary := ("not" | "!") unary | cmp
    cmp   := value [ ("=" | "!=" | "<" | "<=" | ">" | ">=" | "in") value
                   | "exists" | "is" ["not"] "null" ]
    value := string | number | true | false | null | "[" [value ("," value)*] "]"
           | path | function "(" [value ("," value)*] ")" | "(" or ")"
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any, NamedTuple

from hookyard.errors import ConfigError

__all__ = ["FQLSyntaxError", "compile_fql", "evaluate"]

Getter = Callable[[Any], Any]  # event -> value
Predicate = Callable[[dict[str, Any]], bool]

KEYWORDS = {"and", "or", "not", "in", "is", "exists", "null", "true", "false"}
LITERALS: dict[str, Any] = {"null": None, "true": True, "false": False}
MAX_DEPTH = 64  # nesting limit, so hostile input cannot exhaust the Python stack
_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_STRING = re.compile(r"""(["'])((?:\\.|(?!\1)[^\\])*)\1""", re.S)
_SEGMENT = re.compile(r"`([^`]*)`|((?:[A-Za-z0-9_-]|\\.)+)", re.S)  # `quoted` or a\ b-c_1
_UNESCAPE = re.compile(r"\\(.)", re.S)
_GLOB = re.compile(r"\\(.)|\[([!^]?)(\]?(?:\\.|[^][])*)\]|(.)", re.S)  # \x, [class], char
_GLOB_RANGE = re.compile(r"(\\.|.)(?:-(\\.|.))?", re.S)  # a, a-z, \]
_OPERATORS = ("!=", "<=", ">=", "=", "<", ">", "!", "(", ")", "[", "]", ",")
_KINDS = ((bool, "bool"), ((int, float), "number"), (str, "string"), ((list, tuple), "list"))
_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}
_ORDER = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


_SHOWN = 80
"""An expression up to this long is quoted whole in a syntax error; a longer one around the
problem only (one line of a log, not a whole filter)."""
_AROUND = 30


def _where(expression: str, position: int) -> str:
    if len(expression) <= _SHOWN:
        return f"in: {expression}"
    start, end = max(0, position - _AROUND), min(len(expression), position + _AROUND)
    return (f"near: {'...' if start else ''}{expression[start:end]}"
            f"{'...' if end < len(expression) else ''}")


class FQLSyntaxError(ConfigError):
    """An expression does not parse; ``position`` is the 0-based offset of the problem."""

    def __init__(self, detail: str, position: int, expression: str) -> None:
        super().__init__(f"FQL syntax error at position {position}: {detail}"
                         f" {_where(expression, position)}")
        self.detail = detail
        self.position = position
        self.expression = expression


class Token(NamedTuple):
    kind: str  # "str" | "num" | "kw" | "path" | "op" | "eof"
    value: Any  # str, int/float, keyword/operator text, or tuple of path segments
    pos: int


# ---------------------------------------------------------------- tokenizer


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
        elif ch in "\"'":
            if not (m := _STRING.match(text, i)):
                raise FQLSyntaxError("unterminated string", i, text)
            tokens.append(Token("str", _UNESCAPE.sub(_escape, m[2]), i))
            i = m.end()
        elif m := _NUMBER.match(text, i):
            whole = m[1] is None and m[2] is None and len(m[0]) < 300
            tokens.append(Token("num", int(m[0]) if whole else float(m[0]), i))
            i = m.end()
        elif ch.isascii() and (ch.isalpha() or ch in "_\\`"):
            start, segments, plain = i, [], True
            while m := _SEGMENT.match(text, i):  # segments joined by dots
                quoted, bare = m.groups()
                plain = plain and bare is not None and "\\" not in bare
                segments.append(quoted if bare is None else _UNESCAPE.sub(r"\1", bare))
                i = m.end()
                if not text.startswith(".", i):
                    break
                i += 1
            else:
                quote = text.startswith("`", i)
                detail = "unterminated `quoted` field name" if quote else "expected a field name"
                raise FQLSyntaxError(detail, i, text)
            if plain and len(segments) == 1 and segments[0] in KEYWORDS:
                tokens.append(Token("kw", segments[0], start))
            else:
                tokens.append(Token("path", tuple(segments), start))
        else:
            op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
            if op is None:
                raise FQLSyntaxError(f"unexpected character {ch!r}", i, text)
            tokens.append(Token("op", op, i))
            i += len(op)
    tokens.append(Token("eof", None, n))
    return tokens


def _escape(m: re.Match[str]) -> str:
    return _ESCAPES.get(m[1], m[1])


# ---------------------------------------------------------------- value semantics


def _kind(v: Any) -> str:
    """The FQL type of a value: null, bool, number, string, list, object (or unknown)."""
    if v is None:
        return "null"
    if isinstance(v, dict):
        return "object"
    return next((name for types, name in _KINDS if isinstance(v, types)), "unknown")


def _same(a: Any, b: Any) -> bool:
    """Strict equality: same type (ints and floats are both numbers) and equal, deeply."""
    stack = [(a, b)]
    while stack:
        x, y = stack.pop()
        kind = _kind(x)
        if kind != _kind(y):
            return False
        if kind == "list":
            if len(x) != len(y):
                return False
            stack.extend(zip(x, y))
        elif kind == "object":
            if len(x) != len(y) or any(not isinstance(k, str) or k not in y for k in x):
                return False
            stack.extend((x[k], y[k]) for k in x)
        elif kind == "unknown":
            if x is not y:
                return False
        elif x != y:
            return False
    return True


def _ordered(a: Any, b: Any, op: str) -> bool:
    kind = _kind(a)
    return kind in ("number", "string") and kind == _kind(b) and bool(_ORDER[op](a, b))


def _lookup(event: Any, path: tuple[str, ...]) -> Any:
    cur = event
    for seg in path:
        if isinstance(cur, dict):
            cur = cur.get(seg)
        elif isinstance(cur, list) and seg.isascii() and seg.isdigit() and len(seg) < 10:
            idx = int(seg)
            cur = cur[idx] if idx < len(cur) else None
        else:
            return None
    return cur


GlobToken = tuple[bool, list[tuple[str, str]]] | None  # None is "*", else (negate, ranges)


def _glob_tokens(pattern: str) -> list[GlobToken]:
    """``*`` any run, ``?`` one char, ``[abc]``/``[a-z]``/``[!a]`` a class, ``\\x`` literal x."""
    toks: list[GlobToken] = []
    for m in _GLOB.finditer(pattern):
        escaped, negate, body, ch = m.groups()
        if body is not None:
            ranges = [(lo[-1], (hi or lo)[-1]) for lo, hi in _GLOB_RANGE.findall(body)]
            toks.append((bool(negate), ranges))
        elif ch in ("*", "?"):
            toks.append(None if ch == "*" else (True, []))
        else:
            toks.append((False, [(escaped or ch, escaped or ch)]))
    return toks


def _glob(s: str, toks: list[GlobToken]) -> bool:
    """Whole-string glob match, iterative with star backtracking (no regex, no recursion)."""
    i = j = 0
    star, mark = -1, 0
    while i < len(s):
        tok = toks[j] if j < len(toks) else (False, [])  # past the end: matches no char
        if tok is None:
            star, mark, j = j, i, j + 1
        elif any(lo <= s[i] <= hi for lo, hi in tok[1]) != tok[0]:
            i, j = i + 1, j + 1
        elif star >= 0:
            mark += 1
            i, j = mark, star + 1
        else:
            return False
    return all(tok is None for tok in toks[j:])


_glob_cached = lru_cache(maxsize=256)(_glob_tokens)


def _match(s: Any, pattern: Any) -> bool:
    if not isinstance(s, str) or not isinstance(pattern, str):
        return False
    return _glob(s, _glob_cached(pattern))


def _contained(item: Any, seq: Any) -> bool:
    return _kind(seq) == "list" and any(_same(item, x) for x in seq)


def _length(v: Any) -> int:
    if isinstance(v, str):  # bytes, like Segment: "ア" is 3
        return len(v.encode("utf-8", "surrogatepass"))
    return len(v) if isinstance(v, list | tuple | dict) else 0


FUNCTIONS: dict[str, tuple[int, Callable[..., Any]]] = {
    "length": (1, _length),
    "lowercase": (1, lambda v: v.lower() if isinstance(v, str) else None),
    "uppercase": (1, lambda v: v.upper() if isinstance(v, str) else None),
    "typeof": (1, _kind),
    "contains": (2, lambda s, sub: isinstance(s, str) and isinstance(sub, str) and sub in s),
    "match": (2, _match),
}


# ---------------------------------------------------------------- parser + compiler


def _list_of(items: list[Getter]) -> Getter:
    return lambda e: [item(e) for item in items]


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0
        self.depth = 0

    def error(self, detail: str, tok: Token | None = None) -> FQLSyntaxError:
        return FQLSyntaxError(detail, (tok or self.peek()).pos, self.text)

    def peek(self) -> Token:
        return self.tokens[self.i]

    def next(self) -> Token:
        tok = self.tokens[self.i]
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return tok

    def accept(self, kind: str, value: Any) -> bool:
        tok = self.peek()
        if tok.kind == kind and tok.value == value:
            self.next()
            return True
        return False

    def expect(self, kind: str, value: str) -> None:
        if not self.accept(kind, value):
            raise self.error(f"expected '{value}'")

    def parse(self) -> Getter:
        node = self.or_()
        if self.peek().kind != "eof":
            raise self.error("expected 'and', 'or' or the end of the expression")
        return node

    def or_(self) -> Getter:
        parts = [self.and_()]
        while self.accept("kw", "or"):
            parts.append(self.and_())
        return parts[0] if len(parts) == 1 else lambda e: any(p(e) is True for p in parts)

    def and_(self) -> Getter:
        parts = [self.unary()]
        while self.accept("kw", "and"):
            parts.append(self.unary())
        return parts[0] if len(parts) == 1 else lambda e: all(p(e) is True for p in parts)

    def unary(self) -> Getter:
        tok = self.peek()
        if self.accept("kw", "not") or self.accept("op", "!"):
            self.enter(tok)
            inner = self.unary()
            self.depth -= 1
            return lambda e: inner(e) is not True
        return self.cmp()

    def enter(self, tok: Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.error(f"expression nested deeper than {MAX_DEPTH} levels", tok)

    def cmp(self) -> Getter:
        left = self.value()
        tok = self.peek()
        if self.accept("kw", "exists"):
            return lambda e: left(e) is not None
        if self.accept("kw", "is"):
            negate = self.accept("kw", "not")
            self.expect("kw", "null")
            return (lambda e: left(e) is not None) if negate else (lambda e: left(e) is None)
        if tok.kind == "op" and tok.value in ("=", "!=", "<", "<=", ">", ">="):
            self.next()
            right, op = self.value(), tok.value
            if op == "=":
                return lambda e: _same(left(e), right(e))
            if op == "!=":
                return lambda e: not _same(left(e), right(e))
            return lambda e: _ordered(left(e), right(e), op)
        if self.accept("kw", "in"):
            right = self.value()
            return lambda e: _contained(left(e), right(e))
        return left

    def value(self) -> Getter:
        tok = self.next()
        if tok.kind in ("str", "num") or (tok.kind == "kw" and tok.value in LITERALS):
            const = LITERALS.get(tok.value) if tok.kind == "kw" else tok.value
            return lambda e: const
        if tok.kind == "op" and tok.value in ("(", "["):
            self.enter(tok)
            if tok.value == "(":
                inner = self.or_()
                self.expect("op", ")")
            else:
                inner = _list_of(self.arguments("]"))
            self.depth -= 1
            return inner
        if tok.kind == "path":
            path: tuple[str, ...] = tok.value
            if not self.accept("op", "("):
                return lambda e: _lookup(e, path)
            if len(path) != 1 or path[0] not in FUNCTIONS:
                raise self.error(f"unknown function {'.'.join(path)!r}", tok)
            arity, fn = FUNCTIONS[path[0]]
            self.enter(tok)
            args = self.arguments(")")
            self.depth -= 1
            if len(args) != arity:
                raise self.error(f"{path[0]}() takes {arity} argument(s), got {len(args)}", tok)
            return lambda e: fn(*[arg(e) for arg in args])
        what = "end of expression" if tok.kind == "eof" else repr(str(tok.value))
        raise self.error(f"expected a field, value or '(' but found {what}", tok)

    def arguments(self, close: str) -> list[Getter]:
        items: list[Getter] = []
        if self.accept("op", close):
            return items
        items.append(self.value())
        while self.accept("op", ","):
            items.append(self.value())
        self.expect("op", close)
        return items


def compile_fql(expression: str) -> Predicate:
    """Parse ``expression`` once; return a predicate that never raises on any event dict."""
    node = _Parser(expression).parse()

    def predicate(event: dict[str, Any]) -> bool:
        try:
            return node(event) is True
        except Exception:  # noqa: BLE001 - only reachable with non-JSON objects in the event
            return False

    return predicate


_compile_cached = lru_cache(maxsize=256)(compile_fql)


def evaluate(expression: str, event: dict[str, Any]) -> bool:
    """Compile (cached) and evaluate ``expression`` against ``event``."""
    return _compile_cached(expression)(event)
