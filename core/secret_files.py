"""Secrets kept in the data dir (the default source's write key, the admin token): created
once, atomically and fsynced, and refused when empty, unusable or writable by other users."""

from __future__ import annotations

import os
import re
import secrets
from pathlib import Path

from .errors import ConfigError

_KEY_CHARACTERS = re.compile(r"[!-9;-~]+")  # printable ASCII but space and ':'

def usable_key(key: str) -> bool:
    """Whether every way a client may send the key can carry it: a Basic-auth user name, a
    Bearer token, a ``writeKey`` field."""
    return _KEY_CHARACTERS.fullmatch(key) is not None



def new_secret(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(24)}"


def read_or_create_secret(path: Path, prefix: str) -> tuple[str, bool]:
    """A secret kept in the data dir: (value, created_now).

    An empty file is refused, never taken as an empty secret (which would accept an empty key).
    A new secret is written to a temporary file, fsynced, then linked into place, so a crash
    never leaves the file empty or half written, and of two processes starting at once both
    use the one that got there first.
    """
    try:
        if not path.exists():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # the data dir: see Runtime.build
            value = new_secret(prefix)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                with os.fdopen(fd, "w") as fh:
                    fh.write(value + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                os.link(tmp, path)  # fails if another process made it meanwhile: theirs is kept
                fsync_path(path.parent)
                return value, True
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
        _check_secret_file(path)
        value = path.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read or create {path}: {exc.strerror or exc}") from None
    if not value:
        raise ConfigError(f"{path} is empty: write the secret in it, or delete it and a new one"
                          " is generated at the next start (clients then need the new one)")
    if len(value) < 8 or not usable_key(value):  # as a configured key must be
        raise ConfigError(
            f"{path} must hold a secret of at least 8 characters, printable ASCII without"
            " spaces or ':'; delete it and a new one is generated at the next start (clients"
            " then need the new one)"
        )
    return value, False


def fsync_path(path: Path) -> None:
    """fsync a file or a directory by its path (a directory: the names it holds are on disk)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _check_secret_file(path: Path) -> None:
    """Refuse a secret file that another user owns or may write: whoever can write it chooses
    the key (an audit planted an ``admin_token`` in a data dir made world-writable beforehand,
    and it was taken without a word)."""
    geteuid = getattr(os, "geteuid", None)
    if geteuid is None:  # not POSIX
        return
    info = path.stat()
    if info.st_uid != geteuid():
        raise ConfigError(f"{path} belongs to another user (uid {info.st_uid}): whoever can"
                          " write it chooses the key. Delete it (a new one is generated) or"
                          " chown it to the user hookyard runs as")
    if info.st_mode & 0o022:
        raise ConfigError(f"{path} may be written by other users (mode"
                          f" {info.st_mode & 0o777:o}): whoever can write it chooses the key."
                          f" chmod 600 {path}")
