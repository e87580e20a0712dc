"""How hookyard's long-running processes are set up: for ``hookyard serve`` the listening
socket (bound before anything is printed), the open-files limit and the lock that keeps a
second server off its data dir; for every process (``serve``, ``worker``, the deliver process)
the event loop (:func:`run_loop`), the garbage collector's tuning (:func:`tune_gc`) and the
exit after a graceful stop (:func:`end_like_the_signal`). The HTTP protocol ``serve`` gives
uvicorn is :mod:`hookyard.http_protocol`.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import signal
import socket
import sys
from pathlib import Path
from typing import IO, Any

from .errors import ConfigError

log = logging.getLogger("hookyard")


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


DELIVERY = "delivery"
"""The lock of the one process that delivers from a SQLite database: ``serve`` with its
workers, or ``worker``. Two would each hand out a user's deliveries, out of order."""


def warn_if_others_may_write(data_dir: Path) -> None:
    """A warning when another user owns the data dir or may write in it: they could replace
    its databases or lock files (hookyard makes it 0700; a shared or pre-made one may not be)."""
    geteuid = getattr(os, "geteuid", None)
    try:
        info = data_dir.stat()
    except OSError:
        return
    if geteuid is not None and info.st_uid != geteuid():
        log.warning("the data dir %s belongs to another user (uid %d), who may replace the"
                    " files in it; chown it to the user hookyard runs as", data_dir, info.st_uid)
    elif info.st_mode & 0o002:
        log.warning("every user may write in the data dir %s (mode %o), and replace the files in"
                    " it; chmod 700 %s", data_dir, info.st_mode & 0o7777, data_dir)


def lock_data_dir(data_dir: Path, role: str, file_name: str | None = None,
                  database: Path | None = None) -> IO[str] | None:
    """Hold ``<data_dir>/<role>.lock`` for the life of the process (the kernel lets go when it
    ends, ``kill -9`` included): a second ``hookyard <role>`` on the same data dir stops with
    :class:`ConfigError` naming the first one's pid. ``serve --no-workers`` and ``worker``
    take different locks and may share a data dir; ``serve`` with workers and ``worker`` both
    take :data:`DELIVERY` too (``file_name``: another name for the lock file in ``data_dir``;
    ``database``: the database it guards, for the message). Keep the returned file open."""
    try:
        import fcntl
    except ImportError:  # not POSIX: no lock
        return None
    path = data_dir / (file_name or f"{role}.lock")
    try:  # not through a symlink: one planted there would have this process overwrite its target
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o600)
        fh = os.fdopen(fd, "a+")
    except OSError as exc:
        if os.path.islink(path):
            raise ConfigError(f"{path} is a symbolic link: remove it (hookyard makes its own"
                              " lock file)") from None
        raise ConfigError(f"cannot open {path}: {exc.strerror or exc}") from None
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        pid = fh.read().strip() or "?"
        fh.close()
        if role == DELIVERY:
            raise ConfigError(
                f"another hookyard process (pid {pid}: `serve` with its workers, or `worker`)"
                f" delivers from the SQLite database {database or data_dir / 'hookyard.db'}"
                f" (lock {path}): one process per database"
                " delivers, to keep each user's deliveries in order. Beside a `hookyard worker`,"
                " run `hookyard serve --no-workers`") from None
        raise ConfigError(f"another `hookyard {role}` (pid {pid}) is running on the data dir"
                          f" {data_dir}: run one {role} per data directory") from None
    fh.seek(0)
    fh.truncate()
    fh.write(f"{os.getpid()}\n")
    fh.flush()
    return fh


def lock_delivery(data_dir: Path, storage: Any) -> list[IO[str] | None]:
    """Hold :data:`DELIVERY` on a SQLite database for a process that delivers (PostgreSQL's
    nodes share leases, and any number of them deliver: no lock). ``storage``: the config's
    ``[storage]`` settings. The lock is ``<database file>.delivery.lock`` beside the database,
    wherever it is (two data dirs sharing one database each took their own lock, and both
    delivered: delivery adversity audit and its re-check), and also ``delivery.lock`` in the
    data dir for a database in it (the lock of older versions). Keep the returned files
    open."""
    from .storage import POSTGRESQL, backend, sqlite_path

    if backend(storage) == POSTGRESQL:
        return []
    database = sqlite_path(storage, data_dir).resolve()
    locks = []
    if database.parent == data_dir.resolve():
        locks.append(lock_data_dir(data_dir, DELIVERY, database=database))
    locks.append(lock_data_dir(database.parent, DELIVERY, f"{database.name}.delivery.lock",
                               database=database))
    return locks


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
"""Signals that stop ``serve`` and ``worker`` gracefully. SIGHUP (the terminal closed, an SSH
session dropped) used to end them at once, with requests cut and deliveries left leased."""


def ensure_stdio() -> None:
    """Open ``/dev/null`` on any of descriptors 0-2 that is closed (``hookyard serve 2>&-``):
    with stderr closed the server died at its first log line without a word, and with stdout
    closed the listening socket became descriptor 1, which the helper processes inherited as
    their stdout."""
    for fd, name, mode in ((0, "stdin", "r"), (1, "stdout", "w"), (2, "stderr", "w")):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            if getattr(sys, name) is None:
                setattr(sys, name, open(fd, mode, closefd=False))  # noqa: SIM115 - for the process


def end_like_the_signal(sig: int) -> None:
    """After a graceful stop: SIGTERM and SIGHUP end the process by that signal again, as
    uvicorn does for ``serve`` (systemd and Kubernetes count death by SIGTERM as a clean stop,
    but not exit status 143; a shell shows 143 either way); SIGINT (Ctrl-C) exits with 130,
    quietly."""
    if sig in (signal.SIGTERM, signal.SIGHUP):
        sys.stdout.flush()
        sys.stderr.flush()
        signal.signal(sig, signal.SIG_DFL)
        os.kill(os.getpid(), sig)
    sys.exit(128 + sig)


GC_GEN0_THRESHOLD = 50_000


def tune_gc() -> None:
    """Fewer, larger passes of Python's cyclic garbage collector, for a long-running process.

    A ``/v1/batch`` request allocates thousands of container objects (decoded events, rows),
    so the default threshold (a young-generation pass every 700 allocations) ran the
    collector constantly, and its full passes walked every long-lived object, such as the
    dedupe's in-memory keys. Everything that exists after start-up is frozen (never scanned
    again) and a young pass runs every 50,000 allocations. Reference counting still frees
    all non-cyclic garbage at once, so memory does not grow. bench: batch ingest +15-25%
    (2 x 2 alternating 8 s rounds), delivery within the noise (+0-8%).
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, older, oldest)


def run_loop(coro: Any) -> Any:
    """Run ``coro`` on uvloop when it is installed (as ``hookyard serve`` does under uvicorn),
    else on asyncio's own loop (bench/delivery.py: single deliveries +30% on uvloop)."""
    try:
        import uvloop
    except ImportError:  # e.g. Windows: uvicorn[standard] does not install it there
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:  # any uvloop version
        return runner.run(coro)
