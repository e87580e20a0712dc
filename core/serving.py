"""How ``hookyard serve`` sets up its process and socket for uvicorn: the listening socket,
bound before anything is printed, and the open-files limit. The HTTP protocol it gives uvicorn
is :mod:`hookyard.http_protocol`.
"""

from __future__ import annotations

import errno
import socket

from .errors import ConfigError


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (uvicorn listens on it); ConfigError with the
    reason when that is not possible (port in use, address not on this machine)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        hint = " (another program uses it: choose another with --port)" \
            if exc.errno == errno.EADDRINUSE else ""
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}{hint}") from None
    sock.set_inheritable(True)
    return sock


def raise_fd_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit, and return it: every
    connection is a file, and at the limit new connections (``/healthz`` too) are reset
    without a log line. Many systems start services at a soft 1,024 under a far higher hard
    limit, as nginx's ``worker_rlimit_nofile`` and Go's runtime raise it too."""
    try:
        import resource
    except ImportError:  # pragma: no cover - not on POSIX
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def url_host(host: str) -> str:
    """``host`` as written in a URL (IPv6 in brackets)."""
    return f"[{host}]" if ":" in host else host
