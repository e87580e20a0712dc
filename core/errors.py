"""Every error hookyard raises on purpose, in one tree.

::

    HookyardError                      base of everything below
    ├── ConfigError                    bad settings: stops boot, never a delivery; also a
    │   │                              command's bad input (replay/preview of an unknown
    │   │                              destination: exit 1 on the CLI, 404 in the admin API)
    │   ├── SchemaMismatch             the database is newer than this hookyard (a downgrade),
    │   │                              or older and the command may not upgrade it
    │   └── FQLSyntaxError             a destination's filter/trigger does not parse
    │                                  (hookyard.fql)
    ├── RequestError                   a client sent something we refuse (never a 500)
    │   ├── BadRequest          400    malformed JSON, not a Segment event, userId missing
    │   ├── Unauthorized        401    missing or wrong key / admin token (WWW-Authenticate:
    │   │                              the scheme its source takes, BASIC_CHALLENGE by default)
    │   ├── NotFound            404    no such ingest call (e.g. /v1/nonsense)
    │   ├── RequestTimeout      408    the body did not arrive in time (a stalled client)
    │   ├── PayloadTooLarge     413    event > 32 KB, request > 500 KB (after gunzip too)
    │   ├── StorageUnavailable  503    the database cannot take writes right now
    │   └── SourceHookFailed    503    a source plugin's authenticate hook raised or answered
    │                                  the wrong type (its bug: the client retries, loses nothing)
    ├── PluginFailed                   a plugin's hook raised SystemExit, KeyboardInterrupt,
    │                                  GeneratorExit or CancelledError (sys.exit() in a hook):
    │                                  made an ordinary exception, so it is handled as any
    │                                  other plugin bug instead of ending the server
    └── DeliveryError                  raised by a deliver hook for all of its deliveries
        ├── RetryableError             408, 429, 5xx, connect errors, timeouts: try again
        │                              later with backoff (honours Retry-After)
        └── PermanentError             other 4xx, invalid mapping, oversize: dead letter now

A deliver hook normally *returns* :class:`hookyard.deliveries.DeliveryResult` objects, one per
delivery; raising ``RetryableError``/``PermanentError`` from it is the shorthand for "every
delivery of this call failed that way". Any other exception escaping a deliver hook is treated
as retryable (the plugin has a bug, the event must not be lost) and logged with its traceback.

Not errors, and so not in the tree: signals a plugin raises to steer the host, kept beside
what they steer.

* :class:`hookyard.fields.FieldMissing` (from ``map_event``): a required mapped field is
  absent; the event is skipped for that destination with the reason recorded.
* :class:`hookyard.connectors.Reply` (from ``parse_events``): answer the request with this
  status and body and store nothing (a vendor's verification handshake).

Internal ones that never leave their module's caller: ``hookyard.inbox.UndecodableEvent`` (a
stored event that cannot be read back: listed with an error, dead-lettered),
``hookyard.dashboard.auth.Refused`` (a dashboard page's HTTP answer) and
``hookyard.storage.pg_queue.LostRace`` (another node claimed the row first).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class HookyardError(Exception):
    """Base class of every error hookyard raises on purpose."""


class ConfigError(HookyardError):
    """The configuration is invalid. Raised at start-up so bad config stops boot."""


class SchemaMismatch(ConfigError):
    """The database's schema is not the one this hookyard knows: newer (written by a newer
    hookyard; downgrading is not supported), or older and the command is one that must not
    upgrade it (an operator command, while the old server may still be running)."""


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` with the closest of ``choices`` to a misspelt ``word``, or
    "" when none is close: the hint of a :class:`ConfigError` (unknown hook, setting...)."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


class RequestError(HookyardError):
    """A client request is refused. ``status`` is the HTTP status answered."""

    status = 400

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class BadRequest(RequestError):
    """400: the body is not valid JSON or not a valid event for this endpoint."""

    status = 400


class RequestTimeout(RequestError):
    """408: the client stopped sending its body (it must not hold memory and a connection)."""

    status = 408


BASIC_CHALLENGE = 'Basic realm="hookyard"'
BEARER_CHALLENGE = 'Bearer realm="hookyard"'


class Unauthorized(RequestError):
    """401: missing or wrong write key or admin token. ``challenge`` is the answer's
    ``WWW-Authenticate`` header: the scheme the client should use."""

    status = 401

    def __init__(self, reason: str, challenge: str = BASIC_CHALLENGE) -> None:
        super().__init__(reason)
        self.challenge = challenge


class NotFound(RequestError):
    """404: the path names no ingest call."""

    status = 404


class PayloadTooLarge(RequestError):
    """413: an event or a request is over the size limit."""

    status = 413


class StorageUnavailable(RequestError):
    """503: the database cannot commit (disk full, read-only); the client should retry."""

    status = 503


class SourceHookFailed(RequestError):
    """503: a source plugin's ``authenticate`` or ``parse_events`` hook failed (raised, or
    answered something of the wrong type), so the request could be neither accepted nor
    refused. Not a 401 or 400, which a client takes as final and drops its events for: a plugin
    bug must not lose them."""

    status = 503


class PluginFailed(HookyardError):
    """A plugin's hook raised an exception that is not an ``Exception`` (``SystemExit``,
    ``KeyboardInterrupt``, ``GeneratorExit``, or a ``CancelledError`` of its own):
    :meth:`hookyard.plugins.ConnectorRegistry.call` raises this instead, so the host's guards
    (dead letter, retry, 503) handle it like any other plugin bug. Before, one ``sys.exit()``
    in a ``map_event`` ended the server, and again at every restart."""

    NOT_EXCEPTIONS = (SystemExit, KeyboardInterrupt, GeneratorExit)
    """Raised by a plugin by mistake; ``asyncio.CancelledError`` is handled apart (it may be the
    host's own cancellation of an async hook)."""


class DeliveryError(HookyardError):
    """A delivery attempt failed. Subclasses say whether to retry."""

    def __init__(
        self, message: str, *, http_status: int | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.retry_after = retry_after


class RetryableError(DeliveryError):
    """Try again later: 408, 429, 5xx, connection errors and timeouts."""


class PermanentError(DeliveryError):
    """Retrying cannot help (other 4xx, unmappable event): goes to dead letters at once."""
