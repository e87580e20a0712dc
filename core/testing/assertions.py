"""Assertions on the requests a fake destination recorded.

    [req] = assert_requests(fake, 1, path="/hook", headers={"content-type": "application/json"})
    assert_request(req, json={"batch": [...]}, headers={"x-signature": ...})

Every mismatch of a request is reported in one ``AssertionError`` that shows the request, so a
failing test says what arrived instead of only ``False``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from .fake_server import FakeServer, RecordedRequest

ANY = ...
"""As a header value: the header must be present, with any value."""

_UNSET: Any = object()


def _describe(request: RecordedRequest) -> str:
    body = request.body[:300] + (b"..." if len(request.body) > 300 else b"")
    query = f"?{request.query}" if request.query else ""
    return f"{request.method} {request.path}{query} headers={request.headers} body={body!r}"


def assert_request(
    request: RecordedRequest,
    *,
    method: str | None = None,
    path: str | None = None,
    query: str | None = None,
    headers: Mapping[str, Any] | None = None,
    json: Any = _UNSET,
    body: bytes | None = None,
) -> RecordedRequest:
    """Check one recorded request and return it.

    ``headers`` are matched case-insensitively and only the ones given are checked (``ANY``:
    present with any value); ``json`` is compared with the decoded body, ``body`` with the
    exact bytes.
    """
    problems: list[str] = []
    if method is not None and request.method != method.upper():
        problems.append(f"method is {request.method}, expected {method.upper()}")
    if path is not None and request.path != path:
        problems.append(f"path is {request.path!r}, expected {path!r}")
    if query is not None and request.query != query:
        problems.append(f"query is {request.query!r}, expected {query!r}")
    for name, expected in (headers or {}).items():
        got = request.headers.get(name.lower())
        if got is None:
            problems.append(f"header {name!r} is missing")
        elif expected is not ANY and got != expected:
            problems.append(f"header {name!r} is {got!r}, expected {expected!r}")
    if body is not None and request.body != body:
        problems.append("body bytes differ from the expected bytes")
    if json is not _UNSET:
        try:
            decoded = request.json()
        except msgspec.DecodeError as exc:
            problems.append(f"body is not JSON: {exc}")
        else:
            if decoded != json:
                problems.append(f"JSON body is {decoded!r}, expected {json!r}")
    if problems:
        raise AssertionError(
            "recorded request does not match:\n  - "
            + "\n  - ".join(problems)
            + f"\n  request: {_describe(request)}"
        )
    return request


def assert_requests(
    fake: FakeServer,
    count: int,
    *,
    path: str | None = None,
    timeout: float = 10.0,
    settle: float = 0.2,
    **expect: Any,
) -> list[RecordedRequest]:
    """Wait for ``count`` requests (to ``path``), check that no more arrive within ``settle``
    seconds, check each with :func:`assert_request` (``**expect``) and return them in order."""
    got = fake.wait_for(count, timeout=timeout, path=path) if count else []
    if settle > 0:
        time.sleep(settle)
    got = fake.requests if path is None else fake.requests_to(path)
    if len(got) != count:
        seen = "\n  ".join(_describe(r) for r in got)
        where = f" to {path}" if path else ""
        raise AssertionError(
            f"expected exactly {count} request(s){where}, got {len(got)}:\n  {seen}"
        )
    return [assert_request(r, path=path, **expect) for r in got]
