"""Outbound HTTP for deliver hooks: one shared aiohttp session per destination.

Plugins never create their own clients; the engine gives each destination an
:class:`HttpClient` and closes it at shutdown. aiohttp was chosen over httpx because against the
same loopback peer on a 2-core machine httpx's AsyncClient made 250–500 requests/s and aiohttp
2,200–4,600. The choice stays behind this module.

:meth:`HttpClient.send` removes the credentials a request carried (``Authorization`` and similar
headers) from the response body and error it keeps: a destination that echoes them in an error
page must not put them in the outbox, the operator API or the dashboard. (The delivery worker
also replaces every configured secret in every attempt's outcome: see
:mod:`hookyard.delivery.scrub`.)

An answer's body is read up to :data:`MAX_RESPONSE_BYTES` (after decompression): the rest is
not read, and the connection is closed (a peer answering 100 MB, or a gzip bomb, took the
worker's memory with it; delivery adversity audit).

Inside a ``deliver`` call the host sets :func:`send_deadline`: a request that could not be
answered before the call's time runs out is not started (a ``not_sent`` result, retried without
counting an attempt), where the call's results were all thrown away when it overran, those of
the requests that had been answered too (the same audit: a Novu call of 100 identifies, 10 at
a time, to a peer answering in 6 s).

Redirects are never followed: aiohttp would re-send a POST as a body-less ``GET`` to the new
location (custom headers included), and the peer's ``200`` there would mark an event delivered
that never arrived. A 3xx is a permanent failure whose error names the ``Location``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import contextvars
import functools
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from .deliveries import DeliveryResult, classify_http
from .delivery.scrub import Scrubber

_encoder = msgspec.json.Encoder()
MAX_RESPONSE_BYTES = 1_000_000
"""The most of an answer's body that is read (a Novu bulk answer of 100 results is ~10 KB;
only 2,000 characters of a body are kept for operators)."""
FIRST_WAVE_SECONDS = 1.0
"""Requests a ``deliver`` call starts this early are always sent, their timeout cut to the
time the call has left (a lease as short as allowed leaves the call no more than one timeout)."""
_deadline: contextvars.ContextVar[tuple[float, float] | None] = contextvars.ContextVar(
    "hookyard_send_deadline", default=None)
NOT_STARTED = "not sent: the deliver call's time would run out before an answer (sent again)"


@contextlib.contextmanager
def send_deadline(seconds: float) -> Any:
    """Within this block (a ``deliver`` call: :func:`hookyard.delivery.calling.call_deliver`),
    :meth:`HttpClient.send` starts no request that could not be answered in ``seconds``."""
    now = time.monotonic()
    token = _deadline.set((now, now + seconds))
    try:
        yield
    finally:
        _deadline.reset(token)
CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "x-api-key", "api-key",
                      "x-auth-token", "x-access-token"}


def credentials(headers: Mapping[str, str] | None) -> list[str]:
    """The secret values a request carries in its credential headers (whole value, token,
    and for Basic the decoded user and password), longest first."""
    values = _credential_values(headers)
    return list(_secrets_of(values)) if values else []


def _credential_values(headers: Mapping[str, str] | None) -> tuple[str, ...]:
    return tuple(v for k, v in (headers or {}).items() if k.lower() in CREDENTIAL_HEADERS)


def _scrubber_of(headers: Mapping[str, str] | None) -> Scrubber | None:
    """The scrubber of the credentials ``headers`` carry, None without any."""
    values = _credential_values(headers)
    return _scrubber(_secrets_of(values)) if values else None


@functools.lru_cache(maxsize=256)
def _scrubber(secrets: tuple[str, ...]) -> Scrubber | None:
    """Made once per set of credentials: a destination sends the same ones with every request,
    and a scrubber works out each secret's encoded forms when it is made (~10 us: made for every
    answer, it cost single deliveries 10-15 % of their speed)."""
    return Scrubber(secrets) if secrets else None


@functools.lru_cache(maxsize=256)
def _secrets_of(values: tuple[str, ...]) -> tuple[str, ...]:
    """A destination sends the same credentials with every request: parsed once (``credentials``
    runs for every answer whose body is kept, successes included)."""
    found: set[str] = set()
    for value in values:
        scheme, _, token = value.partition(" ")
        found.update((value, token.strip()))
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(token.strip()).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                continue
            found.update((user, password))
    return tuple(sorted((s for s in found if len(s) >= 6), key=len, reverse=True))


def redirect_error(resp: HttpResponse) -> str:
    """The error of a 3xx answer: redirects are not followed (the request went to a wrong URL)."""
    location = resp.headers.get("Location")
    where = f"redirect to {location}; " if location else ""
    return (f"HTTP {resp.status} ({where}redirects are not followed:"
            " fix the destination's URL setting)")


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        return msgspec.json.decode(self.body) if self.body else None


class HttpClient:
    """A keep-alive HTTP client with connect/total timeouts (seconds)."""

    def __init__(
        self, *, connect_timeout: float = 5.0, total_timeout: float = 15.0, limit: int = 100
    ) -> None:
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout)
        self._limit = limit
        self._session: aiohttp.ClientSession | None = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=self._limit)
            self._session = aiohttp.ClientSession(
                timeout=self._timeout, connector=connector, auto_decompress=True
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> HttpResponse:
        """Send one request; network errors and timeouts raise (see :meth:`send`). A redirect
        is returned as it is, never followed. ``timeout``: the client's own when None."""
        hdrs = headers
        if json is not None:
            data = _encoder.encode(json)
            hdrs = {"Content-Type": "application/json", **(headers or {})}
        async with self._get_session().request(
            method, url, data=data, headers=hdrs, allow_redirects=False,
            timeout=timeout or self._timeout,  # (None would be no timeout at all)
        ) as resp:
            chunks, size = [], 0
            while size <= MAX_RESPONSE_BYTES:
                chunk = await resp.content.read(MAX_RESPONSE_BYTES + 1 - size)
                if not chunk:
                    break
                chunks.append(chunk)
                size += len(chunk)
            if size > MAX_RESPONSE_BYTES:  # the rest is not read: the connection goes
                resp.close()
            return HttpResponse(resp.status, resp.headers, b"".join(chunks)[:MAX_RESPONSE_BYTES])

    async def send(
        self,
        method: str,
        url: str,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[DeliveryResult, HttpResponse | None]:
        """Send one request and classify it with the common HTTP rules.

        Connection errors and timeouts become retryable results instead of exceptions.
        """
        timeout = None
        window = _deadline.get()
        if window is not None:
            started, deadline = window
            now = time.monotonic()
            left, total = deadline - now, self._timeout.total or 0.0
            if total and left < total:
                if now - started > FIRST_WAVE_SECONDS or left <= 0.05:
                    return DeliveryResult.not_sent(NOT_STARTED), None
                timeout = aiohttp.ClientTimeout(  # not rounded up to a whole second, as
                    total=left, sock_connect=self._timeout.sock_connect,  # aiohttp does from 5 s
                    ceil_threshold=float("inf"))
        try:
            resp = await self.request(method, url, json=json, data=data, headers=headers,
                                      timeout=timeout)
        except TimeoutError:
            return DeliveryResult.retryable("timeout"), None
        except aiohttp.ClientResponseError as exc:  # the answer could not be parsed: aiohttp
            # raises it with a status 400 of its own, which read as the peer's (adversity audit)
            reason = " ".join(str(exc.message).split())  # aiohttp's has lines and a caret
            return DeliveryResult.retryable(f"invalid HTTP answer: {reason}"), None
        except aiohttp.ClientError as exc:
            return DeliveryResult.retryable(f"connection error: {type(exc).__name__}: {exc}"), None
        result = classify_http(resp.status, resp.headers, resp.body)
        if 300 <= resp.status < 400:
            result = msgspec.structs.replace(result, error=redirect_error(resp))
        if result.response_body or result.error:  # only what is kept needs redacting
            scrubber = _scrubber_of(headers)  # a destination may echo them in an error body
            if scrubber is not None:
                result = scrubber.result(result)
        return result, resp

    async def close(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
