"""Dashboard authentication: the admin token, as a Bearer header or through a login form.

The login form sets a session cookie ``hookyard_session`` = ``<expiry>.<session id>.<signature>``,
signed with HMAC-SHA256 under a key derived from the admin token (changing the token logs
everyone out), HttpOnly and SameSite=Strict. Forms posted with a session cookie must carry the
session's CSRF token (an HMAC of the session id) in the ``csrf`` field or ``X-CSRF-Token``
header. Requests with ``Authorization: Bearer <admin token>`` need no CSRF token: browsers never
add that header on their own, so a cross-site form cannot forge it.

The login form itself is protected by a double-submit nonce (cookie ``hookyard_login`` must
equal the form's ``csrf`` field), so another site cannot log a browser into this dashboard.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs

from starlette.requests import Request
from starlette.responses import Response

from ..errors import RequestError
from ..request_body import read_body

SESSION_COOKIE = "hookyard_session"
LOGIN_COOKIE = "hookyard_login"
SESSION_SECONDS = 12 * 3600
REVOKED_SESSIONS = "ui_revoked_sessions"  # in the data dir: sessions logged out before expiry
FORM_LIMIT = 64 * 1024
HOME = "/ui/events"


class Refused(Exception):
    """A dashboard request is refused: an HTTP ``status``, a reason for the operator, and the
    answer's extra ``headers`` (a 405's ``Allow``)."""

    def __init__(self, status: int, reason: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.headers = headers or {}


@dataclass(frozen=True)
class Identity:
    """Who is asking: ``kind`` is ``"cookie"`` (login form) or ``"bearer"`` (header)."""

    kind: str
    csrf: str = ""


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class SessionAuth:
    """Signs and checks session cookies and CSRF tokens for one admin token."""

    def __init__(self, admin_token: str, lifetime: float = SESSION_SECONDS,
                 revoked_file: Path | None = None) -> None:
        self.token = admin_token.encode()
        self.key = hmac.new(self.token, b"hookyard dashboard session v1", hashlib.sha256).digest()
        self.lifetime = lifetime
        # sessions logged out before they expire (session id -> expiry), kept in the data dir
        # so that a restart does not bring them back
        self.revoked_file = revoked_file
        self.revoked: dict[str, int] = _read_revoked(revoked_file)

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self.key, text.encode(), hashlib.sha256).digest())

    def token_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.strip().encode(), self.token)

    def new_session(self) -> str:
        payload = f"{int(time.time() + self.lifetime)}.{secrets.token_urlsafe(18)}"
        return f"{payload}.{self._sign(payload)}"

    def session_id(self, cookie: str | None) -> str | None:
        """The session id of a valid, unexpired cookie value, else None."""
        if not cookie or cookie.count(".") != 2:
            return None
        expiry, sid, signature = cookie.split(".")
        # bytes: compare_digest refuses str with non-ASCII characters (a TypeError, a 500)
        expected = self._sign(f"{expiry}.{sid}").encode()
        if not hmac.compare_digest(signature.encode("utf-8", "replace"), expected):
            return None
        if not expiry.isdigit() or int(expiry) < time.time():
            return None
        if sid in self.revoked:  # logged out
            return None
        return sid

    def revoke(self, cookie: str | None) -> None:
        """Log the session of ``cookie`` out for good: a copy of the cookie no longer opens
        the dashboard (it is a signed value that would otherwise stay valid until it expires)."""
        sid = self.session_id(cookie)
        if sid is None or cookie is None:
            return
        expiry = int(cookie.split(".")[0])
        now = time.time()
        self.revoked = {s: e for s, e in self.revoked.items() if e >= now}
        self.revoked[sid] = expiry
        if self.revoked_file is not None:
            try:
                text = "".join(f"{e} {s}\n" for s, e in self.revoked.items())
                self.revoked_file.write_text(text)
                self.revoked_file.chmod(0o600)
            except OSError:  # the logout still holds in memory
                pass

    def csrf_for(self, sid: str) -> str:
        return self._sign(f"csrf:{sid}")

    def identify(self, request: Request) -> Identity | None:
        """The caller's identity, None if anonymous; a wrong Bearer token raises Refused.
        Another scheme's header is not the dashboard's: a reverse proxy's Basic auth, which
        the browser then sends with every request, must not hide the session cookie."""
        header = request.headers.get("authorization")
        if header:
            scheme, _, value = header.partition(" ")
            if scheme.lower() == "bearer":
                if not self.token_ok(value):
                    raise Refused(401, "wrong admin token in the Authorization header")
                return Identity("bearer")
        sid = self.session_id(request.cookies.get(SESSION_COOKIE))
        if sid is None:
            return None
        return Identity("cookie", self.csrf_for(sid))

    def check_csrf(self, ident: Identity, form: dict[str, str], request: Request) -> None:
        if ident.kind != "cookie":
            return
        given = form.get("csrf") or request.headers.get("x-csrf-token") or ""
        if not hmac.compare_digest(given.encode(), ident.csrf.encode()):
            raise Refused(403, "missing or invalid CSRF token: reload the page and try again")

    def set_session(self, response: Response, request: Request) -> None:
        response.set_cookie(SESSION_COOKIE, self.new_session(), max_age=int(self.lifetime),
                            path="/", httponly=True, samesite="strict",
                            secure=request.url.scheme == "https")

    @staticmethod
    def clear_session(response: Response) -> None:
        response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")


def _read_revoked(path: Path | None) -> dict[str, int]:
    """The unexpired entries of a revoked-sessions file (``<expiry> <session id>`` lines)."""
    if path is None or not path.is_file():
        return {}
    now = time.time()
    found: dict[str, int] = {}
    for line in path.read_text(errors="replace").splitlines():
        expiry, _, sid = line.partition(" ")
        if expiry.isdigit() and sid and int(expiry) >= now:
            found[sid] = int(expiry)
    return found


def set_login_cookie(response: Response, request: Request, nonce: str) -> None:
    """Set the short-lived ``hookyard_login`` cookie the login form's nonce must match."""
    response.set_cookie(LOGIN_COOKIE, nonce, max_age=3600, path="/ui/login", httponly=True,
                        samesite="strict", secure=request.url.scheme == "https")


def same(a: str, b: str) -> bool:
    """Constant-time string comparison."""
    return hmac.compare_digest(a.encode(), b.encode())


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (first value of each field)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("", "application/x-www-form-urlencoded"):
        raise Refused(415, "forms must be sent as application/x-www-form-urlencoded")
    try:  # ingest's reader: 413 from Content-Length first, 408 when the body stalls
        body = await read_body(request, FORM_LIMIT)
    except RequestError as exc:
        raise Refused(exc.status, exc.reason) from None
    text = body.decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(text, keep_blank_values=True).items()}


def safe_next(value: str | None) -> str:
    """A post-login redirect target: a dashboard path on this server only."""
    if not value or not value.startswith("/ui/") or value.startswith("//"):
        return HOME
    if any(c in value for c in "\\\r\n\t") or "://" in value:
        return HOME
    return value
