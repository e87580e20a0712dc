"""Jinja2 rendering for the dashboard: autoescaped templates, secrets redacted in every output.

Every ``{{ expression }}`` passes through :meth:`Renderer.finalize`, which replaces each known
secret of the runtime (write keys, the admin token, plugin settings named like keys) by
``[redacted]`` before autoescaping, so a secret that reached stored data (an event carrying its
``writeKey``, a destination echoing a header) is never shown. Write keys are displayed masked.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.responses import HTMLResponse

from ..logs import RedactSecrets, config_secrets
from ..times import parse_iso

if TYPE_CHECKING:
    from ..runtime import Runtime

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"
SECRET_KEYS = {"writekey", "write_key", "authorization", "api_key", "apikey", "token", "password"}

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; style-src 'self';"
    " img-src 'self' data:; frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


def mask(secret: str | None) -> str:
    """A secret as it may be shown: its first three and last four characters, of one of 24
    characters or more (a generated key has 35); a shorter one not at all (a 12-character key
    showed 7 of its characters; newcomer audit)."""
    if not secret:
        return ""
    if len(secret) < 24:
        return "•" * 8
    return f"{secret[:3]}{'•' * 8}{secret[-4:]}"


def _mask_keys(value: Any) -> Any:
    """``value`` with the values of secret-looking keys (``writeKey``...) masked."""
    if isinstance(value, dict):
        return {
            k: (mask(v) if isinstance(v, str) and k.lower() in SECRET_KEYS else _mask_keys(v))
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_mask_keys(v) for v in value]
    return value


def pretty(value: Any) -> str:
    """Indented JSON of ``value`` (secret-looking keys masked); a notice instead for a value
    nested too deeply to walk (stored before ingest refused such events: hookyard.nesting)."""
    try:
        return json.dumps(_mask_keys(value), indent=2, ensure_ascii=False, default=str)
    except RecursionError:
        return "(nested too deeply to show here: read it through the API, GET /api/events?message_id=...)"


def compact(value: Any) -> str:
    """One-line JSON of ``value`` (secret-looking keys masked), its text as written: Arabic or
    an emoji shown as such, not as ``\\u`` escapes (the template autoescapes it)."""
    try:
        return json.dumps(_mask_keys(value), ensure_ascii=False, separators=(", ", ": "),
                          default=str)
    except RecursionError:
        return "(nested too deeply to show here)"


def item_url(base: str, item: Any, **query: Any) -> str:
    """The URL of one record under ``base`` (``/ui/subscribers``): its id as one path segment,
    every reserved character encoded, so that ``a/../b`` is not a path the browser resolves
    to another record. An id of ``.`` or ``..`` cannot be a path segment at all (browsers
    resolve even ``%2E%2E``): it goes in the query, ``base/?id=..``."""
    text = str(item)
    params = {k: v for k, v in query.items() if v is not None}
    if text in (".", ".."):
        return f"{base}/?{urlencode({'id': text, **params})}"
    return f"{base}/{quote(text, safe='')}" + (f"?{urlencode(params)}" if params else "")


def when(value: Any) -> str:
    """Unix seconds or an ISO-8601 string as ``YYYY-MM-DD HH:MM:SS`` UTC."""
    if value is None or value == "":
        return ""
    if isinstance(value, (int, float)):
        return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%S")
    text = str(value)
    parsed = parse_iso(text)  # without an offset: UTC, not the server's time zone
    if parsed is None:
        return text
    return parsed.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def millis(value: Any) -> str:
    if value is None:
        return ""
    return f"{float(value):.0f} ms" if value >= 10 else f"{float(value):.1f} ms"


def percent(value: float | None) -> str:
    return "" if value is None else f"{value * 100:.1f}%"


INVISIBLE = {code: f"\\u{code:04x}" for code in (
    *(c for c in range(0x20) if c not in (0x09, 0x0A, 0x0D)), 0x7F,  # control characters
    # (a NUL went into the page as is: judge audit)
    *range(0x200B, 0x2010),  # zero-width spaces and joiners, the LTR / RTL marks
    *range(0x202A, 0x202F),  # bidi embeddings and overrides
    *range(0x2066, 0x206A),  # bidi isolates
    0x2028, 0x2029, 0xFEFF, 0x061C,  # line / paragraph separators, BOM, Arabic letter mark
)}
"""Characters that change how the text around them is shown, or are not shown at all, as
visible ``\\uXXXX`` in every output: a userId of ``U+202E`` + ``eciffo-`` read ``-office`` and
reversed the line it was on, ``admin`` + ``U+200B`` looked like ``admin`` (web-surfaces audit).
Text in right-to-left scripts is shown as written."""


class Renderer:
    """The dashboard's template environment for one runtime."""

    def __init__(self, rt: Runtime) -> None:
        self.redactor = RedactSecrets(config_secrets(rt))
        self.env = Environment(
            loader=FileSystemLoader(TEMPLATES),
            autoescape=select_autoescape(default=True, default_for_string=True),
            finalize=self.finalize,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters.update(pretty=pretty, when=when, millis=millis, percent=percent,
                                mask=mask, compact=compact)
        self.env.globals["item_url"] = item_url
        self.env.globals["version"] = _version()

    def finalize(self, value: Any) -> Any:
        if value is None:
            return ""
        if isinstance(value, str):
            return self.redactor.redact(value).translate(INVISIBLE)
        return value

    def page(self, name: str, context: dict[str, Any], status: int = 200,
             headers: dict[str, str] | None = None) -> HTMLResponse:
        html = self.env.get_template(name).render(context)
        return HTMLResponse(html, status_code=status, headers={**SECURITY_HEADERS, **(headers or {})})


def _version() -> str:
    from .. import __version__

    return __version__
