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

Redirects are never followed: aiohttp would re-send a POST as a body-less ``GET`` to the new
location (custom headers included), and the peer's ``200`` there would mark an event delivered
that never arrived. A 3xx is a permanent failure whose error names the ``Location``.
"""

from __future__ import annotations

import base64
import binascii
import functools
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import msgspec

from .deliveries import DeliveryResult, classify_http
from .delivery.scrub import Scrubber

_encoder = msgspec.json.Encoder()
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
    ) -> HttpResponse:
        """Send one request; network errors and timeouts raise (see :meth:`send`). A redirect
        is returned as it is, never followed."""
        hdrs = headers
        if json is not None:
            data = _encoder.encode(json)
            hdrs = {"Content-Type": "application/json", **(headers or {})}
        async with self._get_session().request(
            method, url, data=data, headers=hdrs, allow_redirects=False
        ) as resp:
            body = await resp.read()
            return HttpResponse(resp.status, resp.headers, body)

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
        try:
            resp = await self.request(method, url, json=json, data=data, headers=headers)
        except TimeoutError:
            return DeliveryResult.retryable("timeout"), None
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
