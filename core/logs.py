"""Logging set-up: one JSON object per line when stderr is not a terminal, secrets redacted.

Every configured secret (write keys, the admin token, plugin settings that look like keys) is
replaced by ``[redacted]`` in every log record, whatever logger wrote it.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Iterable
from typing import Any

from .delivery.scrub import Scrubber

_STANDARD = set(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class RedactSecrets(logging.Filter):
    """Replaces known secret values in log messages and their arguments (as the stored
    attempts are scrubbed: :class:`hookyard.delivery.scrub.Scrubber`, base64 forms too)."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        self.scrubber = Scrubber(secrets)
        self.secrets = self.scrubber.secrets

    def redact(self, text: str) -> str:
        return self.scrubber.text(text) or text

    def filter(self, record: logging.LogRecord) -> bool:
        if self.secrets:
            record.msg = self.redact(record.getMessage())
            record.args = None
            if record.exc_info and not record.exc_text:  # formatted here, so it can be redacted
                record.exc_text = _TRACEBACKS.formatException(record.exc_info)
            if record.exc_text:
                record.exc_text = self.redact(record.exc_text)
            if record.stack_info:
                record.stack_info = self.redact(record.stack_info)
            for key, value in vars(record).items():  # extra={...} fields
                if key not in _STANDARD and isinstance(value, str):
                    setattr(record, key, self.redact(value))
        return True


_TRACEBACKS = logging.Formatter()

MAX_LOGGED_CHARACTERS = 16_384
"""A log record's message, and its traceback, are cut to this many characters: a plugin's
exception carrying 10 MB of text made 20 MB of log for two requests."""


class ClipLongRecords(logging.Filter):
    """Cuts a record's message and traceback to :data:`MAX_LOGGED_CHARACTERS`."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if len(message) > MAX_LOGGED_CHARACTERS:
            record.msg, record.args = _clipped(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text and len(record.exc_text) > MAX_LOGGED_CHARACTERS:
            record.exc_text = _clipped(record.exc_text)
        return True


def _clipped(text: str) -> str:
    half = MAX_LOGGED_CHARACTERS // 2
    return f"{text[:half]} ... [{len(text) - 2 * half} characters left out] ... {text[-half:]}"


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", ...extra fields}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_") and key != "color_message":
                data[key] = value
        if record.exc_text:  # formatted (and redacted) by RedactSecrets
            data["exception"] = record.exc_text
        elif record.exc_info:
            data["exception"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str)


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def _escaped(match: re.Match[str]) -> str:
    return match.group().encode("unicode_escape").decode("ascii")


class TextFormatter(logging.Formatter):
    """``time LEVEL logger: message`` for a terminal, with control characters in the message
    escaped (``\\r``, ``\\n``, ``\\x1b``): a userId or an error text from a client must not
    forge a log line of its own or send escape codes to the terminal. A traceback keeps its
    lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = _CONTROL.sub(_escaped, record.message)
        return super().formatMessage(record)


def log_failure(logger: logging.Logger, exc: BaseException, message: str, *args: Any) -> None:
    """``logger.exception(message)`` for a failure of a background loop, but a debug line for
    :class:`~hookyard.errors.StorageUnavailable`: the database logs an outage once when it
    starts and once when it ends, where each loop logged a traceback every second."""
    from .errors import StorageUnavailable

    if isinstance(exc, StorageUnavailable):
        logger.debug(message + ": %s", *args, exc)
    else:
        logger.error(message, *args, exc_info=exc)


def setup_logging(level: str = "info", secrets: Iterable[str] = (), json_lines: bool | None = None) -> None:
    """Configure the root logger (and uvicorn's) for the server and worker."""
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else TextFormatter())
    handler.addFilter(RedactSecrets(secrets))
    handler.addFilter(ClipLongRecords())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers = []
        logger.propagate = True


SECRET_WORDS = ("key", "token", "secret", "password")
"""A plugin setting whose name contains one of these holds a secret."""


def setting_secrets(value: Any, secret: bool = False) -> list[str]:
    """The secret strings of plugin settings: those under a name containing one of
    :data:`SECRET_WORDS`, at any depth (``headers = {"X-Acme-Key": "..."}`` included; a table
    or list under such a name is secret whole)."""
    if isinstance(value, str):
        return [value] if secret else []
    found: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            named = secret or any(w in str(key).lower() for w in SECRET_WORDS)
            found += setting_secrets(item, named)
    elif isinstance(value, list | tuple):
        for item in value:
            found += setting_secrets(item, secret)
    return found


def config_secrets(rt: Any) -> list[str]:
    """Every secret of a runtime: write keys, admin token, plugin settings named like keys
    (sources' and destinations'), values given as ``env:VAR``, the database password."""
    found = [s.write_key for s in rt.sources.values() if s.write_key] + [rt.admin_token]
    for source in rt.config.sources:
        found += setting_secrets(source.settings or {})
    for dest in rt.destinations.values():
        found += setting_secrets(dest.config.settings or {})
    found += env_secrets()
    url = rt.config.storage.url or ""
    if "@" in url:  # a PostgreSQL URL with a password
        from urllib.parse import urlsplit

        found += [url] + [p for p in [urlsplit(url).password] if p]
    return found


def env_secrets() -> list[str]:
    """The values given as ``env:VAR`` that count as secrets: not short ones or plain URLs
    (``base_url = "env:NOVU_URL"``)."""
    from .config import ENV_VALUES

    return [v for v in ENV_VALUES if len(v) >= 8 and ("@" in v or "://" not in v)]


def without_env_secrets(text: str) -> str:
    """``text`` (an error for the terminal) with :func:`env_secrets` redacted: a secret given
    as ``env:VAR`` that failed a check (a key in the wrong setting, a libpq string) was printed
    in the error, outside the log's redaction."""
    secrets = env_secrets()
    return (Scrubber(secrets).text(text) or text) if secrets else text
